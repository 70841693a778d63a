//! `cargo xtask turn-eval`: how well turns end and barge-ins are told apart, on the labelled
//! caller utterances of `eval/turns.json`, spoken by the Piper voice that `e2e-local`
//! installs.
//!
//! Each utterance goes through the engine's own inbound path (`cxb_media::path::Inbound`:
//! 8 kHz audio, resampled to 16 kHz, voice detection, the turn detector) frame by frame on a
//! virtual clock, once per policy:
//!
//! - `silence 700`: the turn ends after 700 ms of silence (the default);
//! - `model`: the turn-completion model (`cxb_engine::turn_model`, the real Smart Turn v3.2
//!   on ONNX Runtime) is asked at each 200 ms pause; "done" ends the turn when its answer
//!   comes (the measured inference time is added to the clock), else the turn ends at 2 s.
//!
//! For `complete` and `paused` utterances it reports cut-ins (the turn ended before the caller
//! finished: in a mid-sentence pause) and the delay from the real end of speech (the last
//! sample above -40 dBFS) to the decision, mean and p95. For `backchannel` and `interruption`
//! utterances (spoken over the bot) it reports, for the old rule (any speech stops the bot)
//! and the bots' default (500 ms of voiced speech), the false barge-ins (acknowledgements that
//! would stop the bot) and the missed ones (interruptions that would not). The word rule
//! (interim words) needs a streaming speech-to-text and is not measured here; nor is the
//! speech-to-text's own endpointing, which needs Deepgram.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cxb_codecs::{Encoding, SampleRate};
use cxb_engine::turn_model::{ModelTurns, SmartTurn, TurnJudge};
use cxb_media::Timestamp;
use cxb_media::path::{Inbound, InboundConfig};
use cxb_media::turn::TurnEvent;
use cxb_media::vad::VadConfig;
use serde_json::Value;

const USAGE: &str = "usage: cargo xtask turn-eval [--limit N] [--threshold P] [--model-dir DIR]
  --limit N        only the first N utterances of each kind (a quick look)
  --threshold P    the model's \"done\" threshold (default 0.5)
  --model-dir DIR  the turn model (default target/turn-model; fetched there when missing)";

/// Silence before each utterance and after it.
const LEAD_MS: usize = 300;
const TAIL_MS: usize = 3_000;
/// Samples per 20 ms frame at 8 kHz.
const FRAME: usize = 160;

struct Options {
    limit: usize,
    threshold: f64,
    model_dir: PathBuf,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut o = Options { limit: usize::MAX, threshold: 0.5, model_dir: crate::root().join("target/turn-model") };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(USAGE);
        match arg.as_str() {
            "--limit" => o.limit = value()?.parse().map_err(|_| USAGE)?,
            "--threshold" => o.threshold = value()?.parse().map_err(|_| USAGE)?,
            "--model-dir" => o.model_dir = PathBuf::from(value()?),
            "--help" | "-h" => {
                eprintln!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown option `{other}`\n{USAGE}")),
        }
    }
    let set: Value = serde_json::from_str(include_str!("../../eval/turns.json")).map_err(|e| format!("eval/turns.json: {e}"))?;
    let items = set["items"].as_array().ok_or("eval/turns.json has no items")?;
    crate::turn::fetch(&o.model_dir)?;
    let model = TimedJudge { model: Arc::new(SmartTurn::load(&o.model_dir)?), last_ms: Arc::default() };
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::root().join("target"), PathBuf::from).join("e2e-local");
    // The speech servers listen on loopback, which the outbound-request guard refuses unless allowed.
    cxb_pipeline::egress::set_policy(cxb_contract::egress::EgressPolicy::with_loopback());
    let runtime = compio::runtime::Runtime::new().map_err(|e| format!("a compio runtime: {e}"))?;
    runtime.block_on(async {
        let speech = crate::e2e::LocalSpeech::start(&dir).await?;
        let mut turns = Tally::default();
        let mut barge = Barge::default();
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        for item in items {
            let kind = item["kind"].as_str().unwrap_or("");
            let seen = counts.entry(kind).or_default();
            if *seen >= o.limit {
                continue;
            }
            *seen += 1;
            match kind {
                "complete" => {
                    let audio = to_8k(&speech.speak(item["text"].as_str().unwrap_or("")).await?);
                    turns.add(false, &timeline(&[audio], 0), &model, o.threshold);
                }
                "paused" => {
                    let parts = item["parts"].as_array().ok_or("a paused item without parts")?;
                    let first = format!("{},", parts[0].as_str().unwrap_or("").trim_end_matches(','));
                    let a = to_8k(&speech.speak(&first).await?);
                    let b = to_8k(&speech.speak(parts[1].as_str().unwrap_or("")).await?);
                    let pause = item["pause_ms"].as_u64().unwrap_or(500) as usize;
                    turns.add(true, &timeline(&[a, b], pause), &model, o.threshold);
                }
                "backchannel" | "interruption" => {
                    let audio = to_8k(&speech.speak(item["text"].as_str().unwrap_or("")).await?);
                    barge.add(kind == "interruption", &timeline(&[audio], 0));
                }
                _ => {}
            }
        }
        turns.report(o.threshold);
        barge.report();
        Ok::<(), String>(())
    })
}

/// Piper's 22,050 Hz audio at the carrier rate.
fn to_8k(pcm: &[u8]) -> Vec<i16> {
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut out = Vec::new();
    cxb_media::resample::Polyphase::new(SampleRate::Hz22050, SampleRate::Hz8000).process(&samples, &mut out);
    out
}

/// An utterance laid out on the call's timeline: lead silence, the parts with `pause_ms`
/// between them, tail silence; where each part's speech really ends (ms).
struct Timeline {
    samples: Vec<i16>,
    /// Per part: the first and last sample above -40 dBFS, in ms from the start.
    spoken: Vec<(u64, u64)>,
}

fn timeline(parts: &[Vec<i16>], pause_ms: usize) -> Timeline {
    let mut samples = vec![0i16; LEAD_MS * 8];
    let mut spoken = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            samples.extend(std::iter::repeat_n(0, pause_ms * 8));
        }
        let loud = |s: &&i16| s.unsigned_abs() > 328;
        let first = part.iter().position(|s| loud(&s)).unwrap_or(0);
        let last = part.iter().rposition(|s| loud(&s)).unwrap_or(part.len());
        let at = samples.len();
        spoken.push((((at + first) / 8) as u64, ((at + last) / 8) as u64));
        samples.extend_from_slice(part);
    }
    samples.extend(std::iter::repeat_n(0, TAIL_MS * 8));
    let whole = samples.len().div_ceil(FRAME) * FRAME;
    samples.resize(whole, 0);
    Timeline { samples, spoken }
}

fn inbound(end_ms: u64) -> Inbound {
    Inbound::new(InboundConfig { encoding: Encoding::L16, vad: VadConfig::default(), end_of_turn: Duration::from_millis(end_ms) })
}

fn frames(t: &Timeline) -> impl Iterator<Item = (Timestamp, Vec<u8>)> + '_ {
    t.samples.chunks(FRAME).enumerate().map(|(k, f)| (Timestamp::from_millis(k as u64 * 20), f.iter().flat_map(|s| s.to_le_bytes()).collect()))
}

/// When a turn first ended, in ms, under the silence rule.
fn silence_decision(t: &Timeline, end_ms: u64) -> Option<u64> {
    let mut path = inbound(end_ms);
    for (now, payload) in frames(t) {
        let _ = path.process(now, &payload).ok()?;
        if let Some(TurnEvent::Ended { decided_at, .. }) = path.poll_turn(now) {
            return Some(decided_at.as_micros() / 1000);
        }
    }
    None
}

/// The model, answering at once and noting how long each answer took.
#[derive(Debug, Clone)]
struct TimedJudge {
    model: Arc<SmartTurn>,
    last_ms: Arc<AtomicU64>,
}

impl TurnJudge for TimedJudge {
    fn judge(&self, audio: Vec<i16>) -> flume::Receiver<Option<f32>> {
        let started = Instant::now();
        let p = self.model.judge(audio).recv().ok().flatten();
        self.last_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let (reply, answer) = flume::bounded(1);
        let _ = reply.send(p);
        answer
    }
}

/// When a turn first ended, in ms, with the model asked at each pause (its answer counts
/// only after the time it really took) and a 2 s cap; how many times it was asked, and how
/// long each answer took.
fn model_decision(t: &Timeline, model: &TimedJudge, threshold: f64) -> (Option<u64>, u32, Vec<u64>) {
    let judge: Arc<dyn TurnJudge> = Arc::new(model.clone());
    let settings = cxb_contract::bot::TurnDetection { model_after_ms: 200, max_silence_ms: 2_000, threshold, ..Default::default() };
    let mut turns = ModelTurns::new(judge, &settings);
    let mut path = inbound(2_000);
    let mut pending: Option<(u64, f32, Timestamp)> = None;
    let (mut asked, mut took) = (0, Vec::new());
    for (now, payload) in frames(t) {
        if path.process(now, &payload).is_err() {
            return (None, asked, took);
        }
        turns.frame(path.audio().samples(), path.paused_since());
        if let Some((pause, p, at)) = pending.filter(|(.., at)| now >= *at) {
            pending = None;
            if turns.verdict(pause, Some(p), at) && turns.take_end() && path.end_turn_now(at).is_some() {
                return (Some(at.as_micros() / 1000), asked, took);
            }
        }
        if pending.is_none()
            && let Some((pause, answer)) = turns.poll(now)
        {
            asked += 1;
            if let Ok(Some(p)) = answer.recv() {
                let ms = model.last_ms.load(Ordering::Relaxed);
                took.push(ms);
                pending = Some((pause, p, now + Duration::from_millis(ms)));
            }
        }
        if let Some(TurnEvent::Ended { decided_at, .. }) = path.poll_turn(now) {
            return (Some(decided_at.as_micros() / 1000), asked, took);
        }
    }
    (None, asked, took)
}

/// Decisions on `complete` and `paused` utterances.
#[derive(Default)]
struct Tally {
    silence: Policy,
    model: Policy,
    asked: u32,
    inference_ms: Vec<u64>,
}

#[derive(Default)]
struct Policy {
    utterances: usize,
    cut_ins: usize,
    paused: usize,
    paused_cut_ins: usize,
    delays: Vec<u64>,
    none: usize,
}

impl Policy {
    fn add(&mut self, paused: bool, t: &Timeline, decision: Option<u64>) {
        self.utterances += 1;
        self.paused += usize::from(paused);
        let end = t.spoken.last().map_or(0, |s| s.1);
        match decision {
            None => self.none += 1,
            Some(at) if at < end => {
                self.cut_ins += 1;
                self.paused_cut_ins += usize::from(paused);
            }
            Some(at) => self.delays.push(at - end),
        }
    }

    fn line(&self, name: &str) {
        let mut d = self.delays.clone();
        d.sort_unstable();
        let mean = if d.is_empty() { 0 } else { d.iter().sum::<u64>() / d.len() as u64 };
        let p95 = d.get((d.len() * 95).div_ceil(100).saturating_sub(1)).copied().unwrap_or(0);
        eprintln!(
            "{name:<14} {:>4} utterances  cut-ins {:>3} ({:>3} of {} paused)  delay mean {mean:>5} ms  p95 {p95:>5} ms  undecided {}",
            self.utterances, self.cut_ins, self.paused_cut_ins, self.paused, self.none
        );
    }
}

impl Tally {
    fn add(&mut self, paused: bool, t: &Timeline, model: &TimedJudge, threshold: f64) {
        self.silence.add(paused, t, silence_decision(t, 700));
        let (decision, asked, took) = model_decision(t, model, threshold);
        self.asked += asked;
        self.inference_ms.extend(took);
        self.model.add(paused, t, decision);
    }

    fn report(&self, threshold: f64) {
        eprintln!("\nturn ends (complete and paused utterances; delay from the real end of speech):");
        self.silence.line("silence 700");
        self.model.line(&format!("model p>={threshold}"));
        let mut ms = self.inference_ms.clone();
        ms.sort_unstable();
        if !ms.is_empty() {
            eprintln!("model asked {} times; inference median {} ms, max {} ms", self.asked, ms[ms.len() / 2], ms[ms.len() - 1]);
        }
    }
}

/// Barge-in rules on speech over the bot.
#[derive(Default)]
struct Barge {
    backchannels: usize,
    interruptions: usize,
    /// (any speech, 500 ms voiced): acknowledgements that would stop the bot.
    false_any: usize,
    false_500: usize,
    /// Interruptions that would not.
    missed_any: usize,
    missed_500: usize,
}

impl Barge {
    fn add(&mut self, interruption: bool, t: &Timeline) {
        let mut path = inbound(700);
        let (mut started, mut voiced) = (false, 0u64);
        for (now, payload) in frames(t) {
            let Ok(heard) = path.process(now, &payload) else { return };
            if let Some(TurnEvent::Started { at }) = heard.turn {
                started = true;
                voiced = (now.as_micros().saturating_sub(at.as_micros())) / 1000;
            } else if started && path.in_turn() {
                voiced += 20 * u64::from(heard.voiced_frames);
            }
            let _ = path.poll_turn(now);
        }
        let (any, long) = (started, voiced >= 500);
        if interruption {
            self.interruptions += 1;
            self.missed_any += usize::from(!any);
            self.missed_500 += usize::from(!long);
        } else {
            self.backchannels += 1;
            self.false_any += usize::from(any);
            self.false_500 += usize::from(long);
        }
    }

    fn report(&self) {
        eprintln!("\nspeech over the bot ({} acknowledgements, {} interruptions):", self.backchannels, self.interruptions);
        eprintln!("any speech     false barge-ins {:>3}  missed barge-ins {:>3}", self.false_any, self.missed_any);
        eprintln!("500 ms voiced  false barge-ins {:>3}  missed barge-ins {:>3}", self.false_500, self.missed_500);
    }
}
