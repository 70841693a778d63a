//! The built-in sentence-embedding model: WordLlama (MIT), a table of token embeddings learned
//! from a large language model's, averaged over a text's tokens. `cargo xtask embed-model`
//! takes its two files from the `wordllama` wheel on PyPI: the 256-dimension table of the
//! `l2_supercat` model (float16 safetensors, 16 MB) and its Llama 2 tokenizer. A query embeds
//! in microseconds on one core, with no runtime to load.

use std::path::Path;

use crate::bpe::Bpe;

/// The table of token embeddings in a model directory.
pub const WEIGHTS_FILE: &str = "l2_supercat_256.safetensors";
/// The tokenizer in a model directory.
pub const TOKENIZER_FILE: &str = "l2_supercat_tokenizer_config.json";
/// The name results and stored vectors carry.
pub const MODEL_NAME: &str = "wordllama-l2-supercat-256";

/// A static embedding model: tokenizer and table.
#[derive(Debug)]
pub struct StaticModel {
    bpe: Bpe,
    dim: usize,
    rows: usize,
    table: Vec<f32>,
}

impl StaticModel {
    /// Loads the model from `dir` (as `cargo xtask embed-model` leaves it); why not, naming
    /// the file and the command that fetches it.
    pub fn load(dir: &Path) -> Result<StaticModel, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| format!("{}: {e} (`cargo xtask embed-model --dir {}` fetches it)", path.display(), dir.display()))
        };
        let tokenizer = String::from_utf8(read(TOKENIZER_FILE)?).map_err(|_| format!("{TOKENIZER_FILE} is not UTF-8"))?;
        StaticModel::from_parts(&tokenizer, &read(WEIGHTS_FILE)?)
    }

    /// The model from a tokenizer file's text and a safetensors file's bytes holding one 2-D
    /// table (float16 or float32) with a row per token.
    pub fn from_parts(tokenizer: &str, safetensors: &[u8]) -> Result<StaticModel, String> {
        let bpe = Bpe::from_json(tokenizer)?;
        let (rows, dim, table) = read_table(safetensors)?;
        if rows < bpe.vocab_size() {
            return Err(format!("the table has {rows} rows for {} tokens", bpe.vocab_size()));
        }
        Ok(StaticModel { bpe, dim, rows, table })
    }

    /// The length of a vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The token ids of `text`.
    pub fn tokens(&self, text: &str) -> Vec<u32> {
        self.bpe.encode(text)
    }

    /// `text` as a unit vector: the mean of its tokens' rows, normalized (all zeros when it
    /// has no tokens).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut sum = vec![0.0f32; self.dim];
        let tokens = self.bpe.encode(text);
        for &t in &tokens {
            let t = (t as usize).min(self.rows - 1);
            for (s, w) in sum.iter_mut().zip(&self.table[t * self.dim..(t + 1) * self.dim]) {
                *s += w;
            }
        }
        normalize(&mut sum);
        sum
    }
}

/// Scales `v` to length 1 (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    } else {
        v.iter_mut().for_each(|x| *x = 0.0);
    }
}

/// The one 2-D tensor of a safetensors file: rows, columns, values.
fn read_table(bytes: &[u8]) -> Result<(usize, usize, Vec<f32>), String> {
    let bad = |why: &str| format!("the weights file: {why}");
    let len = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).ok_or_else(|| bad("too short"))?;
    let header_end = usize::try_from(len).ok().and_then(|l| l.checked_add(8)).filter(|&e| e <= bytes.len()).ok_or_else(|| bad("header past the end"))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..header_end]).map_err(|e| bad(&e.to_string()))?;
    let data = &bytes[header_end..];
    let tensor = header.iter().filter(|(k, _)| *k != "__metadata__").map(|(_, v)| v).find(|v| v["shape"].as_array().is_some_and(|s| s.len() == 2)).ok_or_else(|| bad("no 2-D tensor"))?;
    let dims: Vec<usize> = tensor["shape"].as_array().into_iter().flatten().filter_map(|d| d.as_u64()).map(|d| d as usize).collect();
    let (rows, cols) = match dims[..] {
        [r, c] if r > 0 && c > 0 && c <= 4096 => (r, c),
        _ => return Err(bad("a table of rows and at most 4096 columns is needed")),
    };
    let offsets: Vec<usize> = tensor["data_offsets"].as_array().into_iter().flatten().filter_map(|d| d.as_u64()).map(|d| d as usize).collect();
    let raw = match offsets[..] {
        [a, b] if a <= b && b <= data.len() => &data[a..b],
        _ => return Err(bad("data offsets out of the file")),
    };
    let width = match tensor["dtype"].as_str() {
        Some("F16") => 2,
        Some("F32") => 4,
        other => return Err(bad(&format!("dtype {other:?} (F16 or F32 are read)"))),
    };
    if raw.len() != rows.checked_mul(cols).and_then(|n| n.checked_mul(width)).ok_or_else(|| bad("too large"))? {
        return Err(bad("the data does not match the shape"));
    }
    let table = if width == 2 {
        raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
    } else {
        raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    Ok((rows, cols, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file holding one table.
    pub(crate) fn safetensors(rows: usize, cols: usize, values: &[f32]) -> Vec<u8> {
        let data: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let header = format!(r#"{{"embedding.weight":{{"dtype":"F16","shape":[{rows},{cols}],"data_offsets":[0,{}]}},"__metadata__":{{}}}}"#, data.len());
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&data);
        out
    }

    const TOKENIZER: &str = r#"{"model": {"type": "BPE", "vocab": {"<unk>": 0, "▁": 1, "a": 2, "b": 3, "▁a": 4, "▁b": 5}, "merges": ["▁ a", "▁ b"]}}"#;

    #[test]
    fn a_text_is_the_normalized_mean_of_its_tokens() {
        // Rows: <unk>, ▁, a, b, ▁a = (1, 0), ▁b = (0, 1).
        let table = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let model = StaticModel::from_parts(TOKENIZER, &safetensors(6, 2, &table)).expect("model");
        assert_eq!(model.dim(), 2);
        assert_eq!(model.embed("a"), [1.0, 0.0]);
        let ab = model.embed("a b");
        assert!((ab[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-3 && (ab[0] - ab[1]).abs() < 1e-6, "{ab:?}");
        assert_eq!(model.embed(""), [0.0, 0.0]);
    }

    #[test]
    fn malformed_weights_are_refused_not_panicked_on() {
        let good = safetensors(6, 2, &[0.0; 12]);
        assert!(StaticModel::from_parts(TOKENIZER, &good).is_ok());
        for bad in [&b""[..], &good[..7], &good[..good.len() - 1], &[0xff; 16][..]] {
            assert!(StaticModel::from_parts(TOKENIZER, bad).is_err());
        }
        assert!(StaticModel::from_parts(TOKENIZER, &safetensors(3, 2, &[0.0; 6])).is_err(), "fewer rows than tokens");
        let mut huge = safetensors(6, 2, &[0.0; 12]);
        huge[0] = 0xff;
        assert!(StaticModel::from_parts(TOKENIZER, &huge).is_err());
    }
}
