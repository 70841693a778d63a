//! Knowledge search over bases of 10,000 and 100,000 passages (issue 17's targets: p99 under
//! 20 ms and 50 ms on one core, the query's embedding aside): BM25 over the inverted index,
//! exact vector search over 256-dimension unit vectors, and the two fused. Passages are 60
//! words drawn from a 20,000-word vocabulary with a Zipf-like skew; vectors are random unit
//! vectors (their values do not change the work). The built-in model's query embedding is
//! timed by `cargo xtask embed-model --check` (it needs the model's files).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use cxb_knowledge::search::{Fusion, Index, Mode};

const DIM: usize = 256;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A word index, skewed towards small ones (common words).
    fn word(&mut self) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        (20_000f64.powf(u) as usize).min(19_999)
    }

    fn unit(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM).map(|_| (self.next() % 2_000) as f32 / 1_000.0 - 1.0).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }
}

fn word(i: usize) -> String {
    format!("w{i:x}q")
}

fn base(n: usize) -> Index {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let texts: Vec<String> = (0..n).map(|_| (0..60).map(|_| word(rng.word())).collect::<Vec<_>>().join(" ")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors: Vec<f32> = (0..n).flat_map(|_| rng.unit()).collect();
    Index::new(&refs, DIM, vectors)
}

fn search(c: &mut Criterion) {
    let mut group = c.benchmark_group("knowledge");
    for n in [10_000, 100_000] {
        let index = base(n);
        let mut rng = Rng(42);
        let query = format!("{} {} {} {}", word(rng.word()), word(rng.word()), word(3), word(rng.word()));
        let vector = rng.unit();
        group.bench_with_input(BenchmarkId::new("bm25", n), &n, |b, _| b.iter(|| black_box(index.bm25(black_box(&query)))));
        group.bench_with_input(BenchmarkId::new("vector", n), &n, |b, _| b.iter(|| black_box(index.nearest(black_box(&vector)))));
        group.bench_with_input(BenchmarkId::new("hybrid", n), &n, |b, _| {
            b.iter(|| black_box(index.search(black_box(&query), Some(&vector), Mode::Hybrid(Fusion::DEFAULT), 5, 0.0)))
        });
    }
    group.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
