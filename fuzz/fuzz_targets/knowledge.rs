//! Knowledge bases on any bytes: documents cut into passages (never empty, never over the
//! bound, every heading path from headings in the text), their terms and a search over them;
//! and the embedding model's files (a tokenizer and a safetensors table, split at the first
//! NUL) read without a panic, a model read from them embedding text to a unit or zero vector.
#![no_main]

use cxb_knowledge::chunk::{MAX_CHARS, chunk};
use cxb_knowledge::model::StaticModel;
use cxb_knowledge::search::{Fusion, Index, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let chunks = chunk(&text);
    for (i, c) in chunks.iter().enumerate() {
        assert!(!c.text.is_empty() && c.text.chars().count() <= MAX_CHARS);
        assert_eq!(c.position, i);
    }
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    let index = Index::new(&texts, 0, Vec::new());
    for hit in index.search(&text, None, Mode::Hybrid(Fusion::DEFAULT), 5, 0.0) {
        assert!(hit.index < texts.len() && hit.score.is_finite());
    }
    let (tokenizer, weights) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(model) = StaticModel::from_parts(&String::from_utf8_lossy(tokenizer), weights) {
        let v = model.embed(&text);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!(norm == 0.0 || (norm - 1.0).abs() < 1e-2, "{norm}");
    }
});
