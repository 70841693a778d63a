//! Search over one knowledge base's passages: BM25 (k1 = 1.2, b = 0.75) over an inverted
//! index, exact cosine similarity over unit vectors, and the two fused (by default by
//! reciprocal rank: each list's rank r adds weight / (60 + r)). BM25 reads the postings of the
//! query's terms only; vector search reads every vector (10,000 passages of 256 dimensions are
//! 10 MB) and keeps the best 200 by selection, not a full sort. Times per base size are in
//! docs/PERFORMANCE.md (`cargo bench -p cxb-knowledge --bench search`).

use std::collections::HashMap;

use crate::terms::terms;

/// The reciprocal-rank constant.
const RRF_K: f64 = 60.0;

/// What a search ranks by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Keywords only.
    Bm25,
    /// Vector similarity only.
    Vector,
    /// Both, fused (keywords alone when there are no vectors).
    Hybrid(Fusion),
}

/// How keyword and vector rankings become one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Reciprocal rank: a passage at rank r (from 1) of a list gains weight / (60 + r); the
    /// keyword list's weight is the first number, the vector list's 1. Keyword matches
    /// scoring below the second number (BM25) are left out of the keyword list.
    Rrf(f64, f64),
    /// A convex sum of the similarity and the BM25 score relative to the best BM25 score:
    /// `alpha * similarity + (1 - alpha) * bm25 / best`.
    Convex(f64),
}

impl Fusion {
    /// The fusion searches use, the best recall@5 measured on the evaluation set (`cargo
    /// xtask knowledge-eval`, docs/PERFORMANCE.md): reciprocal rank, where a keyword match
    /// votes only with a BM25 score of at least 4 (about one rare term): callers' everyday
    /// words then cannot outvote the vectors, while a code or a name still ranks first.
    pub const DEFAULT: Fusion = Fusion::Rrf(1.0, 4.0);
}

/// One passage found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The passage's index in the base.
    pub index: usize,
    /// What it was ranked by: the fused score, or BM25, or the similarity.
    pub score: f64,
    /// Its BM25 score (0 when no term matched).
    pub bm25: f64,
    /// Its cosine similarity to the query (0 without vectors).
    pub similarity: f32,
}

/// How deep each ranking goes before fusion: a passage ranked below this in both lists adds
/// less than 1 / (60 + 200) to any score.
const DEPTH: usize = 200;

/// An index over a base's passages: an inverted index of terms (postings of passage and term
/// frequency) for BM25, and the passages' unit vectors back to back.
#[derive(Debug, Default)]
pub struct Index {
    terms: HashMap<String, u32>,
    /// Per term: (passage, frequency), in passage order.
    postings: Vec<Vec<(u32, u16)>>,
    lengths: Vec<f32>,
    average: f32,
    dim: usize,
    /// Unit vectors, one per passage, back to back (empty without vectors).
    vectors: Vec<f32>,
}

impl Index {
    /// An index of `texts`, with `vectors` (unit vectors of `dim`, one per text, back to
    /// back) when the base has them; vectors of the wrong count are ignored.
    pub fn new(texts: &[&str], dim: usize, vectors: Vec<f32>) -> Index {
        let mut index = Index { dim, ..Index::default() };
        let mut tf: HashMap<u32, u16> = HashMap::new();
        for (p, text) in texts.iter().enumerate() {
            let words = terms(text);
            index.lengths.push(words.len() as f32);
            tf.clear();
            for w in words {
                let next = index.terms.len() as u32;
                let id = *index.terms.entry(w).or_insert(next);
                if id as usize == index.postings.len() {
                    index.postings.push(Vec::new());
                }
                let f = tf.entry(id).or_default();
                *f = f.saturating_add(1);
            }
            for (&id, &f) in &tf {
                index.postings[id as usize].push((p as u32, f));
            }
        }
        index.average = (index.lengths.iter().sum::<f32>() / texts.len().max(1) as f32).max(1.0);
        if dim > 0 && vectors.len() == dim * texts.len() {
            index.vectors = vectors;
        }
        index
    }

    /// Passages in the index.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether it has no passages.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Whether its passages have vectors.
    pub fn has_vectors(&self) -> bool {
        !self.vectors.is_empty()
    }

    /// BM25 of the passages that share a term with `query`, best first (at most [`DEPTH`]).
    pub fn bm25(&self, query: &str) -> Vec<(usize, f64)> {
        const K1: f32 = 1.2;
        const B: f32 = 0.75;
        let mut wanted: Vec<u32> = terms(query).iter().filter_map(|t| self.terms.get(t).copied()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Vec::new();
        }
        let n = self.len() as f32;
        let mut scores: HashMap<u32, f32> = HashMap::new();
        for id in wanted {
            let postings = &self.postings[id as usize];
            let d = postings.len() as f32;
            let idf = (1.0 + (n - d + 0.5) / (d + 0.5)).ln();
            for &(p, f) in postings {
                let (f, len) = (f32::from(f), self.lengths[p as usize]);
                *scores.entry(p).or_default() += idf * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * len / self.average));
            }
        }
        best(scores.into_iter().map(|(p, s)| (p as usize, f64::from(s))).collect())
    }

    /// The passages most similar to the unit vector `query`, best first (at most [`DEPTH`]).
    pub fn nearest(&self, query: &[f32]) -> Vec<(usize, f32)> {
        if query.len() != self.dim || self.vectors.is_empty() {
            return Vec::new();
        }
        let scored: Vec<(usize, f64)> = self.vectors.chunks_exact(self.dim).map(|v| f64::from(dot(v, query))).enumerate().collect();
        best(scored).into_iter().map(|(i, s)| (i, s as f32)).collect()
    }

    /// The `k` best passages for `query` (text) and `vector` (its embedding, if the base has
    /// vectors) by `mode`. `min_similarity`: with vectors, passages less similar than this
    /// are left out (so a question the base cannot answer finds nothing).
    pub fn search(&self, query: &str, vector: Option<&[f32]>, mode: Mode, k: usize, min_similarity: f32) -> Vec<Hit> {
        let keywords = if mode == Mode::Vector { Vec::new() } else { self.bm25(query) };
        let near = match (mode, vector) {
            (Mode::Bm25, _) | (_, None) => Vec::new(),
            (_, Some(v)) => self.nearest(v),
        };
        let similarity: HashMap<usize, f32> = near.iter().copied().collect();
        let bm25: HashMap<usize, f64> = keywords.iter().copied().collect();
        let vectors = !near.is_empty();
        let hit = |index: usize, score: f64| Hit { index, score, bm25: bm25.get(&index).copied().unwrap_or(0.0), similarity: similarity.get(&index).copied().unwrap_or(0.0) };
        let ranked: Vec<Hit> = match mode {
            Mode::Bm25 => keywords.iter().map(|&(i, s)| hit(i, s)).collect(),
            Mode::Vector => near.iter().map(|&(i, s)| hit(i, f64::from(s))).collect(),
            Mode::Hybrid(_) if !vectors => keywords.iter().map(|&(i, s)| hit(i, s)).collect(),
            Mode::Hybrid(fusion) => {
                let mut fused: HashMap<usize, f64> = HashMap::new();
                match fusion {
                    Fusion::Rrf(weight, min_bm25) => {
                        for (rank, &(i, _)) in keywords.iter().filter(|k| k.1 >= min_bm25).enumerate() {
                            *fused.entry(i).or_default() += weight / (RRF_K + rank as f64 + 1.0);
                        }
                        for (rank, &(i, _)) in near.iter().enumerate() {
                            *fused.entry(i).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
                        }
                    }
                    Fusion::Convex(alpha) => {
                        let best = keywords.first().map_or(1.0, |k| k.1.max(1e-9));
                        for &(i, s) in &near {
                            fused.insert(i, alpha * f64::from(s) + (1.0 - alpha) * bm25.get(&i).map_or(0.0, |b| b / best));
                        }
                    }
                }
                let mut all: Vec<Hit> = fused.into_iter().map(|(i, s)| hit(i, s)).collect();
                all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
                all
            }
        };
        ranked.into_iter().filter(|h| !vectors || h.similarity >= min_similarity).take(k).collect()
    }
}

/// The [`DEPTH`] highest scores, best first (ties in passage order).
fn best(mut scored: Vec<(usize, f64)>) -> Vec<(usize, f64)> {
    let order = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > DEPTH {
        scored.select_nth_unstable_by(DEPTH, order);
        scored.truncate(DEPTH);
    }
    scored.sort_unstable_by(order);
    scored
}

/// The dot product, in eight lanes the compiler can keep in SIMD registers.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXTS: [&str; 4] = [
        "Refunds are issued within fourteen days.",
        "Companion animals are welcome in every room.",
        "The garage is open all night; parking costs 20 a day.",
        "Refunds for gift cards are not possible.",
    ];

    #[test]
    fn keywords_prefer_rare_terms_and_dense_passages() {
        let index = Index::new(&TEXTS, 0, Vec::new());
        let hits = index.bm25("refunds for gift cards");
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [3, 0]);
        assert!(index.bm25("what's up, I need to come").is_empty(), "everyday words match nothing");
        assert!(!index.has_vectors() && index.len() == 4);
    }

    #[test]
    fn vectors_find_what_keywords_miss_and_fusion_keeps_both() {
        // Two dimensions: "money back" and "pets".
        let vectors = vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8, 0.96, 0.28];
        let index = Index::new(&TEXTS, 2, vectors);
        let dog = [0.0, 1.0];
        let hits = index.search("can I bring my dog", Some(&dog), Mode::Hybrid(Fusion::Rrf(1.0, 0.0)), 2, 0.0);
        assert_eq!(hits[0].index, 1, "no keyword matches, the vector does: {hits:?}");
        assert!((hits[0].similarity - 1.0).abs() < 1e-6);
        let money = [0.96, 0.28];
        let hits = index.search("refunds for gift cards", Some(&money), Mode::Hybrid(Fusion::Rrf(1.0, 0.0)), 3, 0.0);
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>()[..2], [3, 0], "first on both lists");
        // A floor on similarity leaves out what is not close.
        let hits = index.search("can I bring my dog", Some(&dog), Mode::Hybrid(Fusion::DEFAULT), 4, 0.5);
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(index.search("dog", Some(&dog), Mode::Bm25, 4, 0.5), []);
        assert_eq!(index.search("x", Some(&[1.0]), Mode::Vector, 4, 0.0), [], "a vector of another size finds nothing");
    }

    #[test]
    fn dot_products_match_the_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.01).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-3);
    }
}
