//! `cargo xtask turn-model`: fetches the turn-completion model and the ONNX Runtime library
//! that runs it, both from PyPI, into `target/turn-model` (or `--dir`):
//!
//! - `smart-turn-v3.2-cpu.onnx`: Smart Turn v3.2 (BSD-2-Clause, by Daily), int8, about 8 MB,
//!   shipped inside the `pipecat-ai` wheel (`pipecat/audio/turn/smart_turn/data/`);
//! - `libonnxruntime.so`: ONNX Runtime's shared library (MIT), from the `onnxruntime` wheel
//!   (`onnxruntime/capi/`), which the engine loads at start.
//!
//! Wheels are fetched with `pip download` (no dependencies, binary only, pinned versions) in a
//! venv of this directory, and only those two files are kept. A second run with both files
//! present does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The wheels, pinned.
const PIPECAT: &str = "pipecat-ai==1.14.0";
const ONNXRUNTIME: &str = "onnxruntime==1.32.0";
/// The files kept: the member of which wheel, and its name here.
const MODEL: (&str, &str) = ("pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx", "smart-turn-v3.2-cpu.onnx");
const RUNTIME: (&str, &str) = ("onnxruntime/capi/libonnxruntime.so.1.32.0", "libonnxruntime.so");

const USAGE: &str = "usage: cargo xtask turn-model [--dir DIR] [--check]   (default: target/turn-model)
  --check   run the model on a few sentences spoken by espeak-ng, whole and cut off, and print
            its probability that the speaker is done, and the time each decision took";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let Some((dir, check)) = crate::pypi::options(args, "turn-model", USAGE)? else { return Ok(()) };
    let (model, runtime) = fetch(&dir)?;
    eprintln!("model   {} ({} bytes)", model.display(), size(&model));
    eprintln!("runtime {} ({} bytes)", runtime.display(), size(&runtime));
    if check {
        self::check(&dir)?;
    }
    Ok(())
}

/// Sentences, whole (the speaker is done) and cut off (they are not).
const SENTENCES: &[(bool, &str)] = &[
    (true, "What time do you open tomorrow?"),
    (true, "I would like to book a table for two on Friday evening."),
    (true, "No, that is all, thank you."),
    (false, "I would like to book a table for"),
    (false, "My account number is one two three and"),
    (false, "Could you tell me whether the"),
];

/// Runs the model on [`SENTENCES`] spoken by espeak-ng, each followed by the 200 ms pause at
/// which the engine asks.
fn check(dir: &Path) -> Result<(), String> {
    use cxb_engine::turn_model::TurnJudge;
    let model = cxb_engine::turn_model::SmartTurn::load(dir)?;
    let wav = dir.join("check.wav");
    let mut right = 0;
    for (done, text) in SENTENCES {
        crate::run_command(Command::new("espeak-ng").arg("-w").arg(&wav).arg(text))?;
        let mut audio = to_16k(&std::fs::read(&wav).map_err(|e| format!("{}: {e}", wav.display()))?)?;
        audio.extend(std::iter::repeat_n(0, 3_200));
        let started = std::time::Instant::now();
        let p = model.judge(audio).recv().ok().flatten().ok_or("the model gave no answer")?;
        let took = started.elapsed().as_millis();
        right += usize::from((p >= 0.5) == *done);
        eprintln!("{:9} p(done) = {p:.3}  {took:>3} ms  {text}", if *done { "whole" } else { "cut off" });
    }
    eprintln!("{right} of {} judged right at 0.5", SENTENCES.len());
    // What the engine's /metrics shows of the model.
    let counters = model.counters();
    let decisions = counters.iter().find(|(name, ..)| *name == "cxb_turn_model_decisions_total").map(|c| c.2);
    if decisions != Some(SENTENCES.len() as u64) {
        return Err(format!("the model counted {decisions:?} decisions for {} sentences", SENTENCES.len()));
    }
    let _ = std::fs::remove_file(&wav);
    Ok(())
}

/// espeak-ng's WAV (22,050 Hz, 16-bit mono) as 16 kHz samples.
fn to_16k(wav: &[u8]) -> Result<Vec<i16>, String> {
    let at = wav.windows(4).position(|w| w == b"data").ok_or("no data chunk in espeak-ng's WAV")? + 8;
    let samples: Vec<i16> = wav.get(at..).unwrap_or_default().chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut out = Vec::new();
    cxb_media::resample::Polyphase::new(cxb_codecs::SampleRate::Hz22050, cxb_codecs::SampleRate::Hz16000).process(&samples, &mut out);
    Ok(out)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Fetches both files into `dir` unless they are there; their paths.
pub(crate) fn fetch(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    crate::pypi::fetch(
        dir,
        &[
            crate::pypi::Wheel { spec: PIPECAT, prefix: "pipecat_ai-", files: &[MODEL] },
            crate::pypi::Wheel { spec: ONNXRUNTIME, prefix: "onnxruntime-", files: &[RUNTIME] },
        ],
    )?;
    Ok((dir.join(MODEL.1), dir.join(RUNTIME.1)))
}
