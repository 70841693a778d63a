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

use cxb_codecs::{Pcm, Rate, SampleRate};

/// Stop-band attenuation of the designed filters, in dB.
const ATTENUATION_DB: f64 = 60.0;
/// Pass-band edge as a fraction of the lower of the two rates.
const PASS_EDGE: f64 = 0.425;
/// Stop-band edge as a fraction of the lower of the two rates.
const STOP_EDGE: f64 = 0.575;
/// Taps per phase are a multiple of this, so the inner loop runs on whole SIMD lanes.
const LANES: usize = 8;

/// A streaming rational resampler for rates known at run time.
#[derive(Clone)]
pub struct Polyphase {
    up: usize,
    down: usize,
    taps: usize,
    /// `up` phases of `taps` coefficients each, each phase reversed so that it lines up with
    /// `buf` for a plain dot product.
    bank: Vec<f32>,
    /// The last `taps - 1` input samples, then the input being converted.
    buf: Vec<f32>,
    /// Position of the next output in the upsampled domain, relative to the first sample of
    /// the next input chunk.
    next: usize,
}

impl std::fmt::Debug for Polyphase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Polyphase({}/{} x {} taps)", self.up, self.down, self.taps)
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

impl Polyphase {
    /// A resampler from `from` to `to`. Equal rates give a 1/1 filter that still filters;
    /// prefer [`Resampler`], which passes audio through untouched in that case.
    pub fn new(from: SampleRate, to: SampleRate) -> Polyphase {
        let (fin, fout) = (from.hz(), to.hz());
        let g = gcd(fin, fout);
        let (up, down) = ((fout / g) as usize, (fin / g) as usize);
        let lower = f64::from(fin.min(fout));
        let fs = f64::from(fin) * up as f64; // rate of the upsampled domain
        let transition = (STOP_EDGE - PASS_EDGE) * lower / fs; // cycles per sample
        let cutoff = 0.5 * (PASS_EDGE + STOP_EDGE) * lower / fs;
        let min_len = (ATTENUATION_DB - 8.0) / (2.285 * 2.0 * PI * transition) + 1.0;
        let taps = (min_len / up as f64).ceil() as usize;
        let taps = taps.div_ceil(LANES) * LANES;
        let len = taps * up;
        let beta = 0.1102 * (ATTENUATION_DB - 8.7);
        let centre = (len - 1) as f64 / 2.0;
        let norm = bessel_i0(beta);
        let mut proto: Vec<f64> = (0..len)
            .map(|m| {
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
        // Unity gain through the whole conversion: each phase sums to about one.
        let sum: f64 = proto.iter().sum();
        proto.iter_mut().for_each(|h| *h *= up as f64 / sum);

        let mut bank = vec![0f32; up * taps];
        for p in 0..up {
            for j in 0..taps {
                bank[p * taps + j] = proto[p + (taps - 1 - j) * up] as f32;
            }
        }
        Polyphase { up, down, taps, bank, buf: vec![0.0; taps - 1], next: 0 }
    }

    /// Taps computed per output sample.
    pub fn taps_per_output(&self) -> usize {
        self.taps
    }

    /// Converts `input`, appending the output samples to `out`. Any chunk length works; the
    /// output length is `input.len() * up / down`, carried exactly across calls.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let n = input.len();
        self.buf.extend(input.iter().map(|&s| f32::from(s)));
        let end = n * self.up;
        let mut u = self.next;
        out.reserve((end.saturating_sub(u)).div_ceil(self.down));
        while u < end {
            let (i, phase) = (u / self.up, u % self.up);
            let coeffs = &self.bank[phase * self.taps..(phase + 1) * self.taps];
            let window = &self.buf[i..i + self.taps];
            out.push(to_i16(dot(coeffs, window)));
            u += self.down;
        }
        self.next = u - end;
        self.buf.drain(..n);
    }

    /// Forgets the carried input, as at the start of a new stream.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.buf.resize(self.taps - 1, 0.0);
        self.next = 0;
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
