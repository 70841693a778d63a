//! Streaming sample-rate conversion between 8, 16, 24 and 48 kHz.
//!
//! A rational polyphase FIR: conceptually upsample by `L`, low-pass, downsample by `M`, but
//! only the taps that land on real input samples are computed. The filter is a Kaiser-windowed
//! sinc designed per rate pair: pass band to 42.5% of the lower rate (3.4 kHz at 8 kHz), stop
//! band from 57.5% (4.6 kHz), 60 dB attenuation. The last input samples are kept between
//! calls, so audio cut into 20 ms frames comes out exactly as if it had been converted in one
//! piece: there is nothing at frame edges to click.
//!
//! [`Resampler`] is the typed face (8 kHz in, 16 kHz out is `Resampler<Hz8, Hz16>`);
//! [`Polyphase`] is the engine underneath for rates chosen at run time. When both rates are
//! equal the resampler is a pass-through that copies samples unchanged.

use std::f64::consts::PI;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use cxb_codecs::{Pcm, Rate, SampleRate};

/// Stop-band attenuation of the designed filters, in dB.
const ATTENUATION_DB: f64 = 60.0;
/// Pass-band edge as a fraction of the lower of the two rates.
const PASS_EDGE: f64 = 0.425;
/// Stop-band edge as a fraction of the lower of the two rates.
const STOP_EDGE: f64 = 0.575;
/// Taps per phase in the general (non-integer ratio) path are a multiple of this, so its
/// inner dot product runs on whole SIMD lanes.
const LANES: usize = 8;

/// How the filter is applied; integer ratios get loops that vectorise across outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `L/1`: each phase is an ordinary FIR over the input.
    Up,
    /// `1/M`: the input is split into `M` interleaved streams, each an ordinary FIR.
    Down,
    /// `L/M` otherwise (16 <-> 24 kHz): a dot product per output.
    Rational,
}

/// A filter designed for one rate pair: immutable, computed once per process and shared by
/// every call converting between those rates (one copy in cache instead of one per call).
#[derive(Debug)]
struct Design {
    up: usize,
    down: usize,
    taps: usize,
    shape: Shape,
    /// `up` phases of `taps` coefficients each, each phase reversed so that it lines up with
    /// `buf` for a plain dot product.
    bank: Vec<f32>,
    /// The non-zero taps of each FIR the integer shapes run: per phase (up) or per
    /// interleaved stream (down), as (offset, coefficient).
    sparse: Vec<Vec<(usize, f32)>>,
}

/// The shared designs, one per (from, to) pair of [`SampleRate::ALL`].
const RATES: usize = SampleRate::ALL.len();
static DESIGNS: [OnceLock<Arc<Design>>; RATES * RATES] = [const { OnceLock::new() }; RATES * RATES];

fn design(from: SampleRate, to: SampleRate) -> Arc<Design> {
    let index = |r: SampleRate| SampleRate::ALL.iter().position(|x| *x == r).unwrap_or(0);
    DESIGNS[index(from) * RATES + index(to)].get_or_init(|| Arc::new(Design::new(from, to))).clone()
}

/// A streaming rational resampler for rates known at run time.
#[derive(Clone)]
pub struct Polyphase {
    design: Arc<Design>,
    /// The last `taps - 1` input samples, then the input being converted.
    buf: Vec<f32>,
    /// Position of the next output in the upsampled domain, relative to the first sample of
    /// the next input chunk.
    next: usize,
    /// Per-output accumulators, and the deinterleaved input of the `Down` shape.
    acc: Vec<f32>,
    streams: Vec<f32>,
}

impl std::fmt::Debug for Polyphase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.design;
        write!(f, "Polyphase({}/{} x {} taps, {:?})", d.up, d.down, d.taps, d.shape)
    }
}

const fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The zeroth-order modified Bessel function of the first kind, by its power series.
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, mut k) = (1.0, 1.0, 1.0);
    while term > 1e-12 * sum {
        term *= (x / (2.0 * k)) * (x / (2.0 * k));
        sum += term;
        k += 1.0;
    }
    sum
}

impl Design {
    fn new(from: SampleRate, to: SampleRate) -> Design {
        let (fin, fout) = (from.hz(), to.hz());
        let g = gcd(fin, fout);
        let (up, down) = ((fout / g) as usize, (fin / g) as usize);
        let shape = match (up, down) {
            (_, 1) => Shape::Up,
            (1, _) => Shape::Down,
            _ => Shape::Rational,
        };
        let lower = f64::from(fin.min(fout));
        let fs = f64::from(fin) * up as f64; // rate of the upsampled domain
        let transition = (STOP_EDGE - PASS_EDGE) * lower / fs; // cycles per sample
        let cutoff = 0.5 * (PASS_EDGE + STOP_EDGE) * lower / fs;
        let min_len = (ATTENUATION_DB - 8.0) / (2.285 * 2.0 * PI * transition) + 1.0;
        let taps = (min_len / up as f64).ceil() as usize;
        let taps = match shape {
            Shape::Up => taps,
            Shape::Down => taps.div_ceil(down) * down,
            Shape::Rational => taps.div_ceil(LANES) * LANES,
        };
        let len = taps * up;
        // An odd number of real taps (the last slot stays zero) puts the centre on a tap, so
        // a half-band filter (2:1 either way) has exact zeros, which `sparse` then skips.
        let real = if len % 2 == 0 { len - 1 } else { len };
        let beta = 0.1102 * (ATTENUATION_DB - 8.7);
        let centre = (real - 1) as f64 / 2.0;
        let norm = bessel_i0(beta);
        let mut proto: Vec<f64> = (0..len)
            .map(|m| {
                if m >= real {
                    return 0.0;
                }
                let t = m as f64 - centre;
                let sinc = if t == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * PI * cutoff * t).sin() / (PI * t)
                };
                let r = t / centre;
                sinc * bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / norm
            })
            .collect();
        let peak = proto.iter().fold(0f64, |m, h| m.max(h.abs()));
        proto.iter_mut().filter(|h| h.abs() < peak * 1e-9).for_each(|h| *h = 0.0);
        // Unity gain through the whole conversion: each phase sums to about one.
        let sum: f64 = proto.iter().sum();
        proto.iter_mut().for_each(|h| *h *= up as f64 / sum);

        let mut bank = vec![0f32; up * taps];
        for p in 0..up {
            for j in 0..taps {
                bank[p * taps + j] = proto[p + (taps - 1 - j) * up] as f32;
            }
        }
        let sparse = match shape {
            Shape::Up => (0..up)
                .map(|p| (0..taps).map(|j| (j, bank[p * taps + j])).filter(|t| t.1 != 0.0).collect())
                .collect(),
            Shape::Down => (0..down)
                .map(|r| (0..taps / down).map(|i| (i, bank[i * down + r])).filter(|t| t.1 != 0.0).collect())
                .collect(),
            Shape::Rational => Vec::new(),
        };
        Design { up, down, taps, shape, bank, sparse }
    }
}

impl Polyphase {
    /// A resampler from `from` to `to`. Equal rates give a 1/1 filter that still filters;
    /// prefer [`Resampler`], which passes audio through untouched in that case.
    pub fn new(from: SampleRate, to: SampleRate) -> Polyphase {
        let design = design(from, to);
        let history = design.taps - 1;
        Polyphase { design, buf: vec![0.0; history], next: 0, acc: Vec::new(), streams: Vec::new() }
    }

    /// Taps computed per output sample.
    pub fn taps_per_output(&self) -> usize {
        self.design.taps
    }

    /// Converts `input`, appending the output samples to `out`. Any chunk length works; the
    /// output length is `input.len() * up / down`, carried exactly across calls.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let n = input.len();
        self.buf.extend(input.iter().map(|&s| f32::from(s)));
        match self.design.shape {
            Shape::Up => self.upsample(n, out),
            Shape::Down => self.downsample(n, out),
            Shape::Rational => self.rational(n, out),
        }
        self.buf.drain(..n);
    }

    /// `L/1`: output `n * L + p` is phase `p`'s FIR at input `n`. Loops run over outputs, so
    /// each tap is one vector multiply-add across the frame.
    fn upsample(&mut self, n: usize, out: &mut Vec<i16>) {
        let d = &*self.design;
        let l = d.up;
        // Phase p's outputs go to acc[p*n..][..n]; then one pass interleaves them.
        self.acc.clear();
        self.acc.resize(n * l, 0.0);
        for (p, acc) in self.acc.chunks_exact_mut(n.max(1)).enumerate() {
            fir_add(&d.sparse[p], &self.buf, acc);
        }
        let start = out.len();
        out.resize(start + n * l, 0);
        if l == 2 {
            let (even, odd) = self.acc.split_at(n);
            for (o, (a, b)) in out[start..].chunks_exact_mut(2).zip(even.iter().zip(odd)) {
                o[0] = to_i16(*a);
                o[1] = to_i16(*b);
            }
        } else {
            for (i, o) in out[start..].chunks_exact_mut(l).enumerate() {
                for (p, v) in o.iter_mut().enumerate() {
                    *v = to_i16(self.acc[p * n + i]);
                }
            }
        }
    }

    /// `1/M`: output `j` is `sum_k h[k] x[j*M + k + next]`. Splitting the input into `M`
    /// interleaved streams turns that into `M` ordinary FIRs with `taps / M` taps each.
    fn downsample(&mut self, n: usize, out: &mut Vec<i16>) {
        let d = &*self.design;
        let (m, k, skip) = (d.down, d.taps, self.next);
        let outputs = n.saturating_sub(skip).div_ceil(m);
        let q = k / m;
        let len = outputs + q - 1;
        self.streams.clear();
        self.streams.resize(m * len, 0.0);
        let input = &self.buf[skip..skip + len * m];
        if m == 2 {
            let (even, odd) = self.streams.split_at_mut(len);
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(input.chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
        } else {
            for (r, stream) in self.streams.chunks_exact_mut(len).enumerate() {
                for (x, group) in stream.iter_mut().zip(input.chunks_exact(m)) {
                    *x = group[r];
                }
            }
        }
        let mut total = std::mem::take(&mut self.acc);
        total.clear();
        total.resize(outputs, 0.0);
        for r in 0..m {
            // Taps r, r + M, r + 2M, ... of the reversed bank line up with stream r.
            fir_add(&d.sparse[r], &self.streams[r * len..(r + 1) * len], &mut total);
        }
        out.extend(total.iter().map(|&y| to_i16(y)));
        self.acc = total;
        self.next = skip + outputs * m - n;
    }

    /// `L/M` in general: one dot product per output.
    fn rational(&mut self, n: usize, out: &mut Vec<i16>) {
        let d = &*self.design;
        let end = n * d.up;
        let mut u = self.next;
        out.reserve((end.saturating_sub(u)).div_ceil(d.down));
        while u < end {
            let (i, phase) = (u / d.up, u % d.up);
            let coeffs = &d.bank[phase * d.taps..(phase + 1) * d.taps];
            let window = &self.buf[i..i + d.taps];
            out.push(to_i16(dot(coeffs, window)));
            u += d.down;
        }
        self.next = u - end;
    }

    /// Forgets the carried input, as at the start of a new stream.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.buf.resize(self.design.taps - 1, 0.0);
        self.next = 0;
    }
}

/// Outputs computed together in registers by [`fir_add`].
const BLOCK: usize = 16;

/// Adds `sum c * x[i + j]` over the `(j, c)` taps to `acc[i]` for every `i`, with AVX2 and FMA when the
/// CPU has them (chosen at run time; the baseline build targets plain x86-64).
fn fir_add(coeffs: &[(usize, f32)], x: &[f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU was just checked to support every feature `fir_add_avx2` enables.
        unsafe {
            fir_add_avx2(coeffs, x, acc)
        };
        return;
    }
    fir_add_body::<false>(coeffs, x, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fir_add_avx2(coeffs: &[(usize, f32)], x: &[f32], acc: &mut [f32]) {
    fir_add_body::<true>(coeffs, x, acc);
}

/// The filter loop. Outputs are done `BLOCK` at a time with their sums held in registers
/// across all taps, so each tap costs one broadcast, unaligned loads and multiply-adds, and
/// no memory traffic for the sums. `FMA` fuses each multiply-add (only where the CPU has
/// FMA: elsewhere `mul_add` is a slow library call).
#[inline(always)]
fn fir_add_body<const FMA: bool>(coeffs: &[(usize, f32)], x: &[f32], acc: &mut [f32]) {
    let n = acc.len();
    let whole = n / BLOCK * BLOCK;
    let mac = |s: f32, c: f32, v: f32| if FMA { c.mul_add(v, s) } else { s + c * v };
    for (b, out) in acc[..whole].chunks_exact_mut(BLOCK).enumerate() {
        let base = b * BLOCK;
        let mut sums = [0f32; BLOCK];
        for &(j, c) in coeffs {
            let xs = &x[base + j..base + j + BLOCK];
            for t in 0..BLOCK {
                sums[t] = mac(sums[t], c, xs[t]);
            }
        }
        for (o, s) in out.iter_mut().zip(sums) {
            *o += s;
        }
    }
    for (i, o) in acc.iter_mut().enumerate().skip(whole) {
        *o += coeffs.iter().fold(0.0, |s, &(j, c)| mac(s, c, x[i + j]));
    }
}

/// A dot product written so the compiler keeps `LANES` independent sums (SIMD lanes).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for k in 0..LANES {
            acc[k] += ca[k] * cb[k];
        }
    }
    acc.iter().sum()
}

/// Rounds to the nearest sample value, saturating at full scale.
#[inline]
fn to_i16(y: f32) -> i16 {
    // `as` saturates; adding half away from zero rounds without a libm call.
    (if y >= 0.0 { y + 0.5 } else { y - 0.5 }) as i16
}

/// Converts audio from the rate `F` to the rate `T`, 20 ms frame after frame.
#[derive(Debug, Clone)]
pub struct Resampler<F: Rate, T: Rate> {
    engine: Option<Polyphase>,
    rates: PhantomData<(F, T)>,
}

impl<F: Rate, T: Rate> Default for Resampler<F, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Rate, T: Rate> Resampler<F, T> {
    /// A resampler from `F` to `T`; a pass-through when they are the same rate.
    pub fn new() -> Self {
        let engine = (F::RATE != T::RATE).then(|| Polyphase::new(F::RATE, T::RATE));
        Resampler { engine, rates: PhantomData }
    }

    /// True when the two rates are equal and samples are copied unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.engine.is_none()
    }

    /// Converts `input`, appending to `out`.
    pub fn process(&mut self, input: &Pcm<F>, out: &mut Pcm<T>) {
        match &mut self.engine {
            Some(engine) => engine.process(input.samples(), out.samples_mut()),
            None => out.samples_mut().extend_from_slice(input.samples()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxb_codecs::{FrameDuration, Hz8, Hz16, Hz24, Hz48};

    fn tone(rate: SampleRate, freq: f64, amplitude: f64, seconds: f64) -> Vec<i16> {
        let n = (f64::from(rate.hz()) * seconds) as usize;
        (0..n)
            .map(|i| (amplitude * (2.0 * PI * freq * i as f64 / f64::from(rate.hz())).sin()) as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn in_frames<F: Rate, T: Rate>(r: &mut Resampler<F, T>, x: &[i16]) -> Vec<i16> {
        let frame = F::RATE.samples_per(FrameDuration::MS_20);
        let mut out = Pcm::<T>::new();
        for chunk in x.chunks(frame) {
            r.process(&Pcm::from_samples(chunk.to_vec()), &mut out);
        }
        out.into_samples()
    }

    #[test]
    fn tone_through_8_16_8_loses_under_half_a_db() {
        let input = tone(SampleRate::Hz8000, 1000.0, 10_000.0, 1.0);
        let wide = in_frames(&mut Resampler::<Hz8, Hz16>::new(), &input);
        let back = in_frames(&mut Resampler::<Hz16, Hz8>::new(), &wide);
        assert_eq!(back.len(), input.len());
        // Skip the filters' start-up (a few ms) before measuring.
        let loss_db = 20.0 * (rms(&input[800..]) / rms(&back[800..])).log10();
        assert!(loss_db.abs() < 0.5, "1 kHz tone lost {loss_db:.3} dB");
    }

    #[test]
    fn five_khz_at_16_is_40_db_down_at_8() {
        let input = tone(SampleRate::Hz16000, 5000.0, 20_000.0, 1.0);
        let out = in_frames(&mut Resampler::<Hz16, Hz8>::new(), &input);
        let down_db = 20.0 * (rms(&input[1600..]) / rms(&out[800..]).max(1e-9)).log10();
        assert!(down_db >= 40.0, "5 kHz only {down_db:.1} dB down");
    }

    #[test]
    fn every_pair_keeps_frame_lengths_and_tone_level() {
        for from in SampleRate::ALL {
            for to in SampleRate::ALL {
                let mut r = Polyphase::new(from, to);
                let input = tone(from, 440.0, 8_000.0, 0.5);
                let mut out = Vec::new();
                for chunk in input.chunks(from.samples_per(FrameDuration::MS_20)) {
                    let before = out.len();
                    r.process(chunk, &mut out);
                    assert_eq!(out.len() - before, to.samples_per(FrameDuration::MS_20), "{from}->{to}");
                }
                let skip = out.len() / 5;
                let gain_db = 20.0 * (rms(&out[skip..]) / rms(&input[input.len() / 5..])).log10();
                assert!(gain_db.abs() < 0.2, "{from}->{to}: 440 Hz changed by {gain_db:.3} dB");
            }
        }
    }

    #[test]
    fn frames_join_without_seams() {
        let input = tone(SampleRate::Hz8000, 1234.0, 12_000.0, 0.3);
        let mut whole = Vec::new();
        Polyphase::new(SampleRate::Hz8000, SampleRate::Hz24000).process(&input, &mut whole);
        let framed = in_frames(&mut Resampler::<Hz8, Hz24>::new(), &input);
        assert_eq!(framed, whole);
    }

    proptest::proptest! {
        /// Any way of cutting the input into chunks gives the same output as one piece, for
        /// every shape of ratio (up, down, rational).
        #[test]
        fn chunking_never_changes_the_output(
            cuts in proptest::collection::vec(1usize..400, 1..12),
            pair in 0usize..6,
        ) {
            let (from, to) = [
                (SampleRate::Hz16000, SampleRate::Hz8000),
                (SampleRate::Hz48000, SampleRate::Hz8000),
                (SampleRate::Hz24000, SampleRate::Hz16000),
                (SampleRate::Hz16000, SampleRate::Hz24000),
                (SampleRate::Hz8000, SampleRate::Hz48000),
                (SampleRate::Hz22050, SampleRate::Hz8000),
            ][pair];
            let total: usize = cuts.iter().sum();
            let input: Vec<i16> = (0..total).map(|i| ((i * 7919) % 20_000) as i16 - 10_000).collect();
            let mut whole = Vec::new();
            Polyphase::new(from, to).process(&input, &mut whole);
            let mut pieces = Vec::new();
            let mut r = Polyphase::new(from, to);
            let mut at = 0;
            for c in cuts {
                r.process(&input[at..at + c], &mut pieces);
                at += c;
            }
            proptest::prop_assert_eq!(pieces, whole);
        }
    }

    #[test]
    fn equal_rates_pass_through_untouched() {
        let mut r = Resampler::<Hz16, Hz16>::new();
        assert!(r.is_passthrough());
        assert!(!Resampler::<Hz48, Hz16>::new().is_passthrough());
        let input = tone(SampleRate::Hz16000, 300.0, 9_000.0, 0.02);
        let mut out = Pcm::new();
        r.process(&Pcm::from_samples(input.clone()), &mut out);
        assert_eq!(out.samples(), &input[..]);
    }

    #[test]
    fn full_scale_saturates_instead_of_wrapping() {
        let input = vec![i16::MAX; 800].into_iter().chain(vec![i16::MIN; 800]).collect::<Vec<_>>();
        let mut out = Vec::new();
        Polyphase::new(SampleRate::Hz8000, SampleRate::Hz16000).process(&input, &mut out);
        // Around the step the filter rings past full scale; it must clip, not wrap sign.
        assert!(out[200..1500].iter().all(|&s| s > 0), "positive half stays positive");
        assert!(out[1800..3100].iter().all(|&s| s < 0), "negative half stays negative");
    }
}
