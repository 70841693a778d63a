//! Whisper-style log-mel features: what the turn-completion model (Smart Turn v3) reads.
//!
//! The last 8 s of the caller's 16 kHz audio, zeros in front when there is less, normalized
//! to zero mean and unit variance; a centred short-time Fourier transform (400-sample periodic
//! Hann window, hop 160, the signal reflected at both ends), its power projected onto 80
//! Slaney-normalized triangular mel filters from 0 to 8 kHz; `log10` floored at 1e-10, then
//! clamped to 8 below its maximum and mapped by `(x + 4) / 4`. The last of the 801 frames is
//! dropped, leaving 80 × 800 values, mel-major, as `input_features` of shape `[1, 80, 800]`.
//! This is the feature extractor of OpenAI's Whisper with an 8 s window (as `transformers`'
//! `WhisperFeatureExtractor(chunk_length=8)` computes it); the tests hold it to reference
//! values computed that way.
//!
//! Pure: samples in, features out, no allocation after [`LogMel::new`].

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Samples the model reads: 8 s at 16 kHz.
pub const SAMPLES: usize = 128_000;
/// Mel bands.
pub const MELS: usize = 80;
/// Frames: one per 10 ms.
pub const FRAMES: usize = 800;
/// The analysis window.
const N_FFT: usize = 400;
/// Samples between frames.
const HOP: usize = 160;
/// Frequency bins of one frame's spectrum.
const BINS: usize = N_FFT / 2 + 1;

/// One mel filter: its first frequency bin and its weights from there.
#[derive(Debug, Clone)]
struct Filter {
    first: usize,
    weights: Vec<f64>,
}

/// The feature extractor, with its window, filters, FFT plan and buffers made once.
pub struct LogMel {
    window: Vec<f64>,
    filters: Vec<Filter>,
    fft: Arc<dyn RealToComplex<f64>>,
    signal: Vec<f64>,
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").field("mels", &self.filters.len()).finish_non_exhaustive()
    }
}

impl Default for LogMel {
    fn default() -> LogMel {
        LogMel::new()
    }
}

fn hz_to_mel(hz: f64) -> f64 {
    // Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
    if hz < 1000.0 { 3.0 * hz / 200.0 } else { 15.0 + (hz / 1000.0).ln() * 27.0 / 6.4f64.ln() }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel < 15.0 { 200.0 * mel / 3.0 } else { 1000.0 * ((mel - 15.0) * 6.4f64.ln() / 27.0).exp() }
}

impl LogMel {
    /// An extractor with its filters and FFT plan made.
    pub fn new() -> LogMel {
        let window = (0..N_FFT).map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()).collect();
        // Band edges evenly spaced in mels from 0 Hz to 8 kHz; bins evenly spaced in Hz.
        let (low, high) = (hz_to_mel(0.0), hz_to_mel(8000.0));
        let edges: Vec<f64> = (0..MELS + 2).map(|i| mel_to_hz(low + (high - low) * i as f64 / (MELS + 1) as f64)).collect();
        let bin_hz = |k: usize| 8000.0 * k as f64 / (BINS - 1) as f64;
        let filters = (0..MELS)
            .map(|m| {
                let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
                let norm = 2.0 / (right - left);
                let weights: Vec<(usize, f64)> = (0..BINS)
                    .map(|k| {
                        let f = bin_hz(k);
                        let up = (f - left) / (centre - left);
                        let down = (right - f) / (right - centre);
                        (k, up.min(down).max(0.0) * norm)
                    })
                    .filter(|(_, w)| *w > 0.0)
                    .collect();
                let first = weights.first().map_or(0, |(k, _)| *k);
                Filter { first, weights: weights.into_iter().map(|(_, w)| w).collect() }
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        LogMel {
            window,
            filters,
            fft,
            signal: vec![0.0; SAMPLES + N_FFT],
            frame: vec![0.0; N_FFT],
            spectrum,
            scratch,
            power: vec![0.0; BINS],
        }
    }

    /// The features of `audio` (16 kHz, in [-1, 1]; its last 8 s are used, zeros in front
    /// of a shorter one) into `out` (`MELS × FRAMES`, mel-major).
    pub fn compute(&mut self, audio: &[f32], out: &mut [f32; MELS * FRAMES]) {
        let audio = &audio[audio.len().saturating_sub(SAMPLES)..];
        let pad = N_FFT / 2;
        // The normalized signal, reflected by `pad` samples at each end.
        let lead = SAMPLES - audio.len();
        let mean = audio.iter().map(|&s| f64::from(s)).sum::<f64>() / SAMPLES as f64;
        let var = (audio.iter().map(|&s| (f64::from(s) - mean).powi(2)).sum::<f64>() + lead as f64 * mean * mean) / SAMPLES as f64;
        // The reference normalizes in f32.
        let scale = 1.0 / f64::from((var as f32 + 1e-7).sqrt());
        let at = |i: usize| -> f64 {
            let raw = if i < lead { 0.0 } else { f64::from(audio[i - lead]) };
            f64::from(((raw - mean) * scale) as f32)
        };
        for i in 0..SAMPLES {
            self.signal[pad + i] = at(i);
        }
        for i in 0..pad {
            self.signal[pad - 1 - i] = self.signal[pad + 1 + i];
            self.signal[pad + SAMPLES + i] = self.signal[pad + SAMPLES - 2 - i];
        }
        let mut top = f64::MIN;
        for t in 0..FRAMES {
            let start = t * HOP;
            for (k, x) in self.frame.iter_mut().enumerate() {
                *x = self.signal[start + k] * self.window[k];
            }
            // The buffers have the plan's lengths, so this cannot fail.
            let _ = self.fft.process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch);
            for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
                *p = c.norm_sqr();
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let energy: f64 = filter.weights.iter().zip(&self.power[filter.first..]).map(|(w, p)| w * p).sum();
                let log = energy.max(1e-10).log10();
                top = top.max(log);
                out[m * FRAMES + t] = log as f32;
            }
        }
        let floor = (top - 8.0) as f32;
        for v in out.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_gives_the_floor_and_a_tone_lights_its_band() {
        let mut mel = LogMel::new();
        let mut out = Box::new([0.0f32; MELS * FRAMES]);
        mel.compute(&[], &mut out);
        assert!(out.iter().all(|v| v.is_finite()));
        // 1 kHz for the last second: its band (about mel 25 of 80 on this scale) is loudest.
        let tone: Vec<f32> = (0..16_000).map(|n| (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 16_000.0).sin() * 0.5).collect();
        mel.compute(&tone, &mut out);
        let frame = FRAMES - 50;
        let loudest = (0..MELS).max_by(|&a, &b| out[a * FRAMES + frame].total_cmp(&out[b * FRAMES + frame])).unwrap_or(0);
        let expected = (hz_to_mel(1000.0) / hz_to_mel(8000.0) * (MELS + 1) as f64).round() as usize;
        assert!(loudest.abs_diff(expected) <= 1, "loudest band {loudest}, expected about {expected}");
        assert!(out[loudest * FRAMES + frame] > out[loudest * FRAMES + 10], "the tone is only at the end");
    }
}
