//! The turn-completion model: is the caller done, or only pausing?
//!
//! Smart Turn v3.2 (an ONNX model from the `pipecat-ai` wheel; `cargo xtask turn-model`
//! fetches it and ONNX Runtime's library) reads the last 8 s of the caller's 16 kHz audio as
//! Whisper-style log-mel features (`cxb_media::mel`) and answers the probability that they
//! finished. One decision takes about 70 ms of one core on this project's test machine, and
//! batching several calls' decisions into one run gives nothing per decision (measured,
//! docs/PERFORMANCE.md), so the model runs on a thread of its own per host, never on a call's
//! worker: a worker sends the audio and goes on; the answer comes back through a channel.
//! A decision that waited longer than [`MAX_WAIT`] in the queue is answered `None` unrun, and
//! the call falls back to its silence cap: an overloaded model makes turns end later, never
//! stalls a call.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cxb_media::mel::{FRAMES, LogMel, MELS};

/// The model file in a turn-model directory.
pub const MODEL_FILE: &str = "smart-turn-v3.2-cpu.onnx";
/// ONNX Runtime's library in a turn-model directory.
pub const RUNTIME_FILE: &str = "libonnxruntime.so";
/// The longest a decision waits for the model before it is given up.
pub const MAX_WAIT: Duration = Duration::from_millis(400);

/// Judges whether a caller finished their turn.
pub trait TurnJudge: Send + Sync + std::fmt::Debug {
    /// Asks about `audio` (16 kHz, the caller's last seconds, at most 8 s are read): the
    /// probability that they are done, or `None` when it cannot tell.
    fn judge(&self, audio: Vec<i16>) -> flume::Receiver<Option<f32>>;

    /// Its counters for `/metrics`: (name, help, value).
    fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }
}

/// What the model thread did, for `/metrics`.
#[derive(Debug, Default)]
pub struct TurnModelStats {
    /// Decisions made.
    pub decisions: AtomicU64,
    /// Decisions given up unrun (waited past [`MAX_WAIT`]) or failed.
    pub skipped: AtomicU64,
    /// Time spent on decisions (features and inference), µs.
    pub busy_micros: AtomicU64,
}

struct Job {
    audio: Vec<i16>,
    queued: Instant,
    reply: flume::Sender<Option<f32>>,
}

/// Smart Turn v3.2 on ONNX Runtime, on its own thread.
#[derive(Debug)]
pub struct SmartTurn {
    jobs: flume::Sender<Job>,
    stats: Arc<TurnModelStats>,
}

impl SmartTurn {
    /// Loads ONNX Runtime and the model from `dir` (as `cargo xtask turn-model` leaves them)
    /// and starts the model's thread; why not, when either is missing or unreadable.
    pub fn load(dir: &Path) -> Result<SmartTurn, String> {
        let (runtime, model) = (dir.join(RUNTIME_FILE), dir.join(MODEL_FILE));
        for file in [&runtime, &model] {
            if !file.is_file() {
                return Err(format!("{} is missing (`cargo xtask turn-model --dir {}` fetches it)", file.display(), dir.display()));
            }
        }
        ort::init_from(&runtime).map_err(|e| format!("loading ONNX Runtime from {}: {e}", runtime.display()))?.commit();
        let session = ort::session::Session::builder()
            .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(&model))
            .map_err(|e| format!("loading the turn model {}: {e}", model.display()))?;
        let (jobs, queue) = flume::unbounded::<Job>();
        let stats = Arc::new(TurnModelStats::default());
        let counters = stats.clone();
        std::thread::Builder::new()
            .name("turn-model".into())
            .spawn(move || serve(session, queue, &counters))
            .map_err(|e| format!("starting the turn model's thread: {e}"))?;
        Ok(SmartTurn { jobs, stats })
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<TurnModelStats> {
        self.stats.clone()
    }
}

impl TurnJudge for SmartTurn {
    fn judge(&self, audio: Vec<i16>) -> flume::Receiver<Option<f32>> {
        let (reply, answer) = flume::bounded(1);
        // The thread is gone only when the process is ending; the caller then hears `None`.
        let _ = self.jobs.send(Job { audio, queued: Instant::now(), reply });
        answer
    }

    fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let s = &self.stats;
        vec![
            ("cxb_turn_model_decisions_total", "Pauses the turn-completion model judged.", s.decisions.load(Ordering::Relaxed)),
            ("cxb_turn_model_skipped_total", "Pauses given up unjudged (waited past 400 ms in the model's queue) or failed: those turns ended at the silence cap.", s.skipped.load(Ordering::Relaxed)),
            ("cxb_turn_model_busy_microseconds_total", "Time the model's thread spent judging (features and inference).", s.busy_micros.load(Ordering::Relaxed)),
            ("cxb_turn_model_queued", "Pauses waiting for the model now.", self.jobs.len() as u64),
        ]
    }
}

fn serve(mut session: ort::session::Session, queue: flume::Receiver<Job>, stats: &TurnModelStats) {
    let mut mel = LogMel::new();
    let mut features = vec![0.0f32; MELS * FRAMES];
    let mut samples = Vec::new();
    while let Ok(job) = queue.recv() {
        if job.queued.elapsed() > MAX_WAIT {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(None);
            continue;
        }
        let started = Instant::now();
        samples.clear();
        samples.extend(job.audio.iter().map(|&s| f32::from(s) / 32_768.0));
        let features: &mut [f32; MELS * FRAMES] = match features.as_mut_slice().try_into() {
            Ok(f) => f,
            Err(_) => return,
        };
        mel.compute(&samples, features);
        let answer = infer(&mut session, features);
        stats.busy_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match answer {
            Ok(p) => {
                stats.decisions.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Some(p));
            }
            Err(e) => {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("turn model: {e}");
                let _ = job.reply.send(None);
            }
        }
    }
}

/// One run of the model on one window of features: the probability of "done".
fn infer(session: &mut ort::session::Session, features: &[f32]) -> Result<f32, String> {
    let input = ort::value::TensorRef::from_array_view(([1usize, MELS, FRAMES], features)).map_err(|e| e.to_string())?;
    let outputs = session.run(ort::inputs!["input_features" => input]).map_err(|e| e.to_string())?;
    let (_, values) = outputs[0].try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
    values.first().copied().filter(|p| p.is_finite()).ok_or_else(|| "the model answered no probability".to_string())
}

/// A judge that answers at once with a fixed probability (tests, and the load benchmark's
/// model-free runs).
#[derive(Debug, Clone, Copy)]
pub struct FixedJudge(pub Option<f32>);

impl TurnJudge for FixedJudge {
    fn judge(&self, _audio: Vec<i16>) -> flume::Receiver<Option<f32>> {
        let (reply, answer) = flume::bounded(1);
        let _ = reply.send(self.0);
        answer
    }
}

/// Samples of 16 kHz audio the model reads.
const WINDOW: usize = cxb_media::mel::SAMPLES;

/// One call's use of the model, sans-IO: it keeps the caller's last 8 s of audio, asks about
/// each pause once it has lasted the bot's `model_after_ms`, and turns an answer of "done"
/// into the end of the turn, if the caller is still in that pause.
#[derive(Debug)]
pub struct ModelTurns {
    judge: Arc<dyn TurnJudge>,
    after: Duration,
    threshold: f64,
    audio: Vec<i16>,
    /// The pause the caller is in: when their speech stopped.
    paused: Option<cxb_media::Timestamp>,
    /// The last pause asked about, its number, and when.
    asked: Option<(cxb_media::Timestamp, u64, cxb_media::Timestamp)>,
    next: u64,
    end: bool,
    decisions: u32,
    done: u32,
    unanswered: u32,
    waited_ms: u64,
}

impl ModelTurns {
    /// A call's turns, judged by `judge` per the bot's settings.
    pub fn new(judge: Arc<dyn TurnJudge>, settings: &cxb_contract::bot::TurnDetection) -> ModelTurns {
        ModelTurns {
            judge,
            after: Duration::from_millis(u64::from(settings.model_after_ms)),
            threshold: settings.threshold,
            audio: Vec::with_capacity(WINDOW + 16_000),
            paused: None,
            asked: None,
            next: 0,
            end: false,
            decisions: 0,
            done: 0,
            unanswered: 0,
            waited_ms: 0,
        }
    }

    /// A 20 ms frame of the caller (16 kHz), and the pause they are in, if any.
    pub fn frame(&mut self, samples: &[i16], paused_since: Option<cxb_media::Timestamp>) {
        self.audio.extend_from_slice(samples);
        if self.audio.len() > WINDOW + 16_000 {
            // Dropped a second at a time, so the copy is rare.
            self.audio.drain(..self.audio.len() - WINDOW);
        }
        self.paused = paused_since;
    }

    /// When the pause the caller is in is to be asked about.
    pub fn deadline(&self) -> Option<cxb_media::Timestamp> {
        let paused = self.paused?;
        (self.asked.map(|(p, ..)| p) != Some(paused)).then(|| paused + self.after)
    }

    /// At `now`: the question about the caller's pause, when it is due (its number and where
    /// the answer comes).
    pub fn poll(&mut self, now: cxb_media::Timestamp) -> Option<(u64, flume::Receiver<Option<f32>>)> {
        let due = self.deadline()?;
        if now < due {
            return None;
        }
        let paused = self.paused?;
        self.next += 1;
        self.asked = Some((paused, self.next, now));
        let start = self.audio.len().saturating_sub(WINDOW);
        Some((self.next, self.judge.judge(self.audio[start..].to_vec())))
    }

    /// The answer about pause `pause` came at `now`: whether it ends the caller's turn (they
    /// are done and still in that pause).
    pub fn verdict(&mut self, pause: u64, probability: Option<f32>, now: cxb_media::Timestamp) -> bool {
        let Some((paused, _, at)) = self.asked.filter(|(_, n, _)| *n == pause) else { return false };
        self.waited_ms += now.saturating_since(at).as_millis() as u64;
        let Some(p) = probability else {
            self.unanswered += 1;
            return false;
        };
        self.decisions += 1;
        let done = f64::from(p) >= self.threshold && self.paused == Some(paused);
        if done {
            self.done += 1;
            self.end = true;
        }
        done
    }

    /// Whether a verdict ended the turn since the last call.
    pub fn take_end(&mut self) -> bool {
        std::mem::take(&mut self.end)
    }

    /// For the call's result: decisions, those that ended a turn, questions left unanswered
    /// (the model busy), and the mean wait for an answer.
    pub fn summary(&self) -> serde_json::Value {
        let asked = u64::from(self.decisions + self.unanswered);
        serde_json::json!({
            "decisions": self.decisions,
            "ended_turns": self.done,
            "unanswered": self.unanswered,
            "mean_wait_ms": self.waited_ms.checked_div(asked).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxb_media::Timestamp;

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_millis(n)
    }

    #[test]
    fn a_pause_is_asked_about_once_and_done_ends_the_turn_only_if_still_paused() {
        let settings = cxb_contract::bot::TurnDetection { model_after_ms: 200, threshold: 0.5, ..Default::default() };
        let mut t = ModelTurns::new(Arc::new(FixedJudge(Some(0.9))), &settings);
        t.frame(&[1; 320], None);
        assert_eq!((t.deadline(), t.poll(ms(100)).is_some()), (None, false), "speaking");
        t.frame(&[0; 320], Some(ms(1_000)));
        assert_eq!(t.deadline(), Some(ms(1_200)));
        assert!(t.poll(ms(1_100)).is_none(), "not yet");
        let (n, answer) = t.poll(ms(1_200)).expect("asked");
        assert_eq!((t.deadline(), t.poll(ms(1_300)).is_none()), (None, true), "once per pause");
        assert_eq!(answer.recv().ok().flatten(), Some(0.9));
        assert!(t.verdict(n, Some(0.9), ms(1_270)) && t.take_end() && !t.take_end());

        // The caller spoke again before the answer: it ends nothing.
        t.frame(&[0; 320], Some(ms(3_000)));
        let (n, _) = t.poll(ms(3_200)).expect("asked");
        t.frame(&[1; 320], None);
        assert!(!t.verdict(n, Some(0.95), ms(3_300)));
        // Not done, and no answer, end nothing either.
        t.frame(&[0; 320], Some(ms(5_000)));
        let (n, _) = t.poll(ms(5_200)).expect("asked");
        assert!(!t.verdict(n, Some(0.2), ms(5_280)));
        t.frame(&[0; 320], Some(ms(6_000)));
        let (n, _) = t.poll(ms(6_200)).expect("asked");
        assert!(!t.verdict(n, None, ms(6_700)) && !t.take_end());
        let s = t.summary();
        assert_eq!((s["decisions"].as_u64(), s["ended_turns"].as_u64(), s["unanswered"].as_u64()), (Some(3), Some(1), Some(1)), "{s}");
    }

    #[test]
    fn it_keeps_only_the_last_eight_seconds() {
        let mut t = ModelTurns::new(Arc::new(FixedJudge(None)), &Default::default());
        for _ in 0..600 {
            t.frame(&[7; 320], None);
        }
        assert!(t.audio.len() <= WINDOW + 16_000 && t.audio.len() >= WINDOW);
        t.frame(&[0; 320], Some(ms(0)));
        let (_, _) = t.poll(ms(10_000)).expect("asked");
    }
}
