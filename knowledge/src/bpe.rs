//! Byte-pair encoding as SentencePiece-style tokenizers in Hugging Face's `tokenizer.json`
//! format do it (the Llama 2 tokenizer the embedding model was trained with): spaces become
//! `▁` and the text gets one in front, characters outside the vocabulary fall back to byte
//! tokens (`<0x0A>`), and adjacent symbols merge by the merges' order until none applies.
//! Words (from one `▁` to the next) are encoded apart; runs of spaces are collapsed first, so
//! no merge across words is lost.

use std::collections::HashMap;

use serde::Deserialize;

/// A tokenizer: the vocabulary, the merges by rank, the byte tokens.
#[derive(Debug)]
pub struct Bpe {
    vocab: HashMap<String, u32>,
    /// `(left, right)` → (rank, merged token).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The token of each byte (`<0xNN>`), or the unknown token.
    bytes: Vec<u32>,
}

#[derive(Deserialize)]
struct File {
    model: Model,
}

#[derive(Deserialize)]
struct Model {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, u32>,
    merges: Vec<Merge>,
    #[serde(default)]
    unk_token: Option<String>,
}

/// A merge, as `"a b"` (older files) or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair(String, String),
}

impl Bpe {
    /// Reads a `tokenizer.json` whose model is BPE.
    pub fn from_json(json: &str) -> Result<Bpe, String> {
        let file: File = serde_json::from_str(json).map_err(|e| format!("the tokenizer file: {e}"))?;
        let m = file.model;
        if m.kind != "BPE" {
            return Err(format!("the tokenizer is {}, not BPE", m.kind));
        }
        let unk = m.unk_token.as_ref().and_then(|u| m.vocab.get(u)).copied().unwrap_or(0);
        let bytes = (0..=255u8).map(|b| m.vocab.get(&format!("<0x{b:02X}>")).copied().unwrap_or(unk)).collect();
        let mut merges = HashMap::with_capacity(m.merges.len());
        for (rank, merge) in m.merges.iter().enumerate() {
            let (a, b) = match merge {
                Merge::Joined(s) => s.split_once(' ').ok_or_else(|| format!("merge {rank} `{s}` is not two symbols"))?,
                Merge::Pair(a, b) => (a.as_str(), b.as_str()),
            };
            let (Some(&left), Some(&right), Some(&merged)) = (m.vocab.get(a), m.vocab.get(b), m.vocab.get(&format!("{a}{b}"))) else {
                continue;
            };
            merges.entry((left, right)).or_insert((rank as u32, merged));
        }
        Ok(Bpe { vocab: m.vocab, merges, bytes })
    }

    /// The largest token id, plus one.
    pub fn vocab_size(&self) -> usize {
        self.vocab.values().max().map_or(0, |&m| m as usize + 1)
    }

    /// The token ids of `text` (no special tokens).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut symbols = Vec::new();
        let mut word = String::new();
        for piece in text.split_whitespace() {
            word.clear();
            word.push('▁');
            word.push_str(piece);
            symbols.clear();
            let mut utf8 = [0u8; 4];
            for c in word.chars() {
                match self.vocab.get(c.encode_utf8(&mut utf8) as &str) {
                    Some(&id) => symbols.push(id),
                    None => symbols.extend(c.encode_utf8(&mut utf8).bytes().map(|b| self.bytes[usize::from(b)])),
                }
            }
            self.merge(&mut symbols);
            out.extend_from_slice(&symbols);
        }
        out
    }

    /// Merges the adjacent pair of lowest rank until none merges.
    fn merge(&self, symbols: &mut Vec<u32>) {
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(rank, merged)| (rank, i, merged)))
                .min();
            let Some((_, i, merged)) = best else { return };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Bpe {
        let json = r#"{"model": {"type": "BPE", "unk_token": "<unk>",
            "vocab": {"<unk>": 0, "<0x0A>": 1, "<0xC3>": 2, "<0xA9>": 3, "▁": 4, "c": 5, "a": 6, "t": 7, "s": 8,
                      "▁c": 9, "at": 10, "▁cat": 11, "▁ca": 12},
            "merges": ["a t", "▁ c", "▁c at", ["▁c", "a"]]}}"#;
        Bpe::from_json(json).expect("tokenizer")
    }

    #[test]
    fn merges_apply_by_rank_and_unknown_characters_fall_back_to_bytes() {
        let bpe = tiny();
        // "at" (rank 0) before "▁c" (1), then "▁c" + "at" (2); "▁c a" (3) never gets a turn.
        assert_eq!(bpe.encode("cat"), [11]);
        assert_eq!(bpe.encode("cats  cat"), [11, 8, 11], "words apart, runs of spaces collapsed");
        assert_eq!(bpe.encode("é"), [4, 2, 3], "é is two byte tokens");
        assert_eq!(bpe.encode("x"), [4, 0], "a byte without a token is unknown");
        assert!(bpe.encode("").is_empty() && bpe.encode(" \n ").is_empty());
        assert_eq!(bpe.vocab_size(), 13);
    }

    #[test]
    fn a_file_that_is_not_a_bpe_tokenizer_is_refused() {
        assert!(Bpe::from_json("{}").is_err());
        assert!(Bpe::from_json(r#"{"model": {"type": "WordPiece", "vocab": {}, "merges": []}}"#).is_err());
        assert!(Bpe::from_json(r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["nospace"]}}"#).is_err());
    }
}
