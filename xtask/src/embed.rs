//! `cargo xtask embed-model`: fetches the built-in sentence-embedding model into
//! `target/embed-model` (or `--dir`): WordLlama's `l2_supercat` table at 256 dimensions
//! (`l2_supercat_256.safetensors`, float16, 16 MB) and its Llama 2 tokenizer
//! (`l2_supercat_tokenizer_config.json`, 1.8 MB), both shipped inside the `wordllama` wheel
//! (MIT) on PyPI. `cxb api --embed-model DIR` (or `CXB_EMBED_MODEL`) loads them.
//!
//! `--check` compares the Rust tokenizer and embedding with the reference the Python
//! `tokenizers` library and NumPy computed from the same files
//! (`knowledge/tests/data/wordllama-reference.json`).


use cxb_knowledge::model::{StaticModel, TOKENIZER_FILE, WEIGHTS_FILE};
use serde_json::Value;

const WORDLLAMA: &str = "wordllama==0.4.0.post1";

const USAGE: &str = "usage: cargo xtask embed-model [--dir DIR] [--check]   (default: target/embed-model)
  --check   compare token ids and vectors with the Python reference";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let Some((dir, check)) = crate::pypi::options(args, "embed-model", USAGE)? else { return Ok(()) };
    crate::pypi::fetch(
        &dir,
        &[crate::pypi::Wheel {
            spec: WORDLLAMA,
            prefix: "wordllama-",
            files: &[("wordllama/weights/l2_supercat_256.safetensors", WEIGHTS_FILE), ("wordllama/tokenizers/l2_supercat_tokenizer_config.json", TOKENIZER_FILE)],
        }],
    )?;
    eprintln!("embedding model in {}", dir.display());
    if check {
        self::check(&dir)?;
    }
    Ok(())
}

fn check(dir: &std::path::Path) -> Result<(), String> {
    let model = StaticModel::load(dir)?;
    let path = crate::root().join("knowledge/tests/data/wordllama-reference.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?).map_err(|e| e.to_string())?;
    let sentences = reference["sentences"].as_array().ok_or("no sentences in the reference")?;
    let mut vectors = Vec::new();
    for s in sentences {
        let text = s["text"].as_str().unwrap_or_default();
        let want: Vec<u32> = s["ids"].as_array().into_iter().flatten().filter_map(Value::as_u64).map(|i| i as u32).collect();
        let got = model.tokens(text);
        if got != want {
            return Err(format!("tokens of {text:?}: {got:?}, the reference {want:?}"));
        }
        let vector = model.embed(text);
        for (i, r) in s["vector_head"].as_array().into_iter().flatten().filter_map(Value::as_f64).enumerate() {
            if (f64::from(vector[i]) - r).abs() > 1e-4 {
                return Err(format!("vector of {text:?} at {i}: {}, the reference {r}", vector[i]));
            }
        }
        vectors.push(vector);
    }
    for pair in reference["similarities"].as_array().into_iter().flatten() {
        let (a, b, want) = (pair[0].as_u64().unwrap_or(0) as usize, pair[1].as_u64().unwrap_or(0) as usize, pair[2].as_f64().unwrap_or(0.0));
        let got = f64::from(cxb_knowledge::search::dot(&vectors[a], &vectors[b]));
        if (got - want).abs() > 1e-4 {
            return Err(format!("similarity of sentences {a} and {b}: {got}, the reference {want}"));
        }
    }
    let started = std::time::Instant::now();
    let n = 1_000;
    for i in 0..n {
        std::hint::black_box(model.embed(&format!("Can I bring my dog to room {i}?")));
    }
    eprintln!("{} sentences match the reference (tokens, vectors, similarities); a query embeds in {:.1} us", sentences.len(), started.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    Ok(())
}
