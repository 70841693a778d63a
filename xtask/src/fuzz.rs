//! `cargo xtask fuzz`: every target in `fuzz/`, for a given time each.

use std::process::Command;

use crate::{root, run_command};

/// The fuzz targets declared in `fuzz/Cargo.toml`.
fn targets() -> Result<Vec<String>, String> {
    let manifest = root().join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let name = value.trim_start_matches([' ', '=']).trim().trim_matches('"');
            names.push(name.to_string());
        }
    }
    Ok(names)
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = 60u64;
    let mut build_only = false;
    let mut chosen = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a number")?;
                seconds = v.parse().map_err(|_| format!("--seconds: `{v}` is not a number"))?;
            }
            "--build-only" => build_only = true,
            name => chosen.push(name.to_string()),
        }
    }
    let all = targets()?;
    if let Some(unknown) = chosen.iter().find(|c| !all.contains(c)) {
        return Err(format!("no fuzz target `{unknown}`; targets: {}", all.join(", ")));
    }
    let targets = if chosen.is_empty() { all } else { chosen };
    let fuzz_dir = root().join("fuzz");
    // Stable toolchain: no sanitizer (RUSTC_BOOTSTRAP=1 with `-s address` for ASan).
    run_command(Command::new("cargo").current_dir(&fuzz_dir).args(["fuzz", "build", "--sanitizer", "none"]))?;
    if build_only {
        eprintln!("built {} fuzz targets", targets.len());
        return Ok(());
    }
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        eprintln!("fuzzing {target} for {seconds} s");
        run_command(Command::new("cargo")
            .current_dir(&fuzz_dir)
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}
