//! Knowledge bases, pure: text in, ranked passages out. No I/O but reading a model's files.
//!
//! - [`chunk`]: documents cut into passages that follow their structure (headings,
//!   paragraphs, sentences), bounded in size, overlapping by a sentence, each with its heading
//!   path and position, so an answer can say where it came from.
//! - [`terms`]: the words BM25 ranks by (lowercased, stop words and contractions out, plurals
//!   reduced).
//! - [`bpe`] and [`model`]: a static sentence-embedding model (WordLlama, token embeddings
//!   averaged), read from the files the `wordllama` wheel on PyPI ships, run on the CPU in
//!   microseconds per query.
//! - [`search`]: an index over a base's passages: BM25 with precomputed term frequencies,
//!   exact cosine similarity over unit vectors, and the two fused by reciprocal rank.

pub mod bpe;
pub mod chunk;
pub mod model;
pub mod search;
pub mod terms;
