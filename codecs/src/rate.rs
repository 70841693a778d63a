//! Sample rates and frame durations as types.
//!
//! [`Pcm<R>`] is audio at the rate `R`: a function that wants 16 kHz audio takes `&Pcm<Hz16>`,
//! so passing 8 kHz audio does not compile. Where the rate is only known at run time (a
//! provider's configured format), [`AnyPcm`] carries it as a value and converting it to a
//! typed frame checks it ([`RateMismatch`]).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// The sample rates the platform handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleRate {
    /// 8 kHz: narrowband telephony.
    Hz8000,
    /// 16 kHz: wideband, the pipeline rate.
    Hz16000,
    /// 22.05 kHz: what Piper voices produce.
    Hz22050,
    /// 24 kHz: common text-to-speech output.
    Hz24000,
    /// 48 kHz: WebRTC and studio audio.
    Hz48000,
}

impl SampleRate {
    /// Every supported rate, lowest first.
    pub const ALL: [SampleRate; 5] =
        [SampleRate::Hz8000, SampleRate::Hz16000, SampleRate::Hz22050, SampleRate::Hz24000, SampleRate::Hz48000];

    /// Samples per second.
    pub const fn hz(self) -> u32 {
        match self {
            SampleRate::Hz8000 => 8_000,
            SampleRate::Hz16000 => 16_000,
            SampleRate::Hz22050 => 22_050,
            SampleRate::Hz24000 => 24_000,
            SampleRate::Hz48000 => 48_000,
        }
    }

    /// The rate for a number of samples per second, if supported.
    pub const fn from_hz(hz: u32) -> Result<SampleRate, UnsupportedRate> {
        match hz {
            8_000 => Ok(SampleRate::Hz8000),
            16_000 => Ok(SampleRate::Hz16000),
            22_050 => Ok(SampleRate::Hz22050),
            24_000 => Ok(SampleRate::Hz24000),
            48_000 => Ok(SampleRate::Hz48000),
            _ => Err(UnsupportedRate(hz)),
        }
    }

    /// Samples in one frame of `duration` at this rate.
    pub const fn samples_per(self, duration: FrameDuration) -> usize {
        self.hz() as usize * duration.millis() as usize / 1000
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.hz())
    }
}

/// A sample rate this platform does not handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported sample rate {0} Hz (supported: 8000, 16000, 24000, 48000)")]
pub struct UnsupportedRate(pub u32);

/// The duration of one frame of audio, in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameDuration(u32);

impl FrameDuration {
    /// 10 ms.
    pub const MS_10: FrameDuration = FrameDuration(10);
    /// 20 ms: the telephony packetisation interval and the engine's tick.
    pub const MS_20: FrameDuration = FrameDuration(20);

    /// A frame duration of `ms` milliseconds; `None` for zero.
    pub const fn from_millis(ms: u32) -> Option<FrameDuration> {
        if ms == 0 { None } else { Some(FrameDuration(ms)) }
    }

    /// Whole milliseconds.
    pub const fn millis(self) -> u32 {
        self.0
    }

    /// As a [`Duration`].
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0 as u64)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A sample rate known at compile time. Implemented by [`Hz8`], [`Hz16`], [`Hz24`], [`Hz48`].
pub trait Rate: sealed::Sealed + Copy + Default + fmt::Debug + Send + Sync + 'static {
    /// The rate as a value.
    const RATE: SampleRate;
}

macro_rules! rate_marker {
    ($name:ident, $rate:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;
        impl sealed::Sealed for $name {}
        impl Rate for $name {
            const RATE: SampleRate = $rate;
        }
    };
}

rate_marker!(Hz8, SampleRate::Hz8000, "8 kHz, the carrier rate.");
rate_marker!(Hz16, SampleRate::Hz16000, "16 kHz, the pipeline rate.");
rate_marker!(Hz24, SampleRate::Hz24000, "24 kHz.");
rate_marker!(Hz48, SampleRate::Hz48000, "48 kHz.");

/// Mono 16-bit PCM at the rate `R`.
///
/// The buffer is meant to be reused: [`Pcm::clear`] keeps its capacity, so a call's frames
/// stop allocating after the first one.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Pcm<R: Rate> {
    samples: Vec<i16>,
    rate: PhantomData<R>,
}

impl<R: Rate> Pcm<R> {
    /// Empty audio.
    pub const fn new() -> Self {
        Pcm { samples: Vec::new(), rate: PhantomData }
    }

    /// Empty audio with room for one frame of `duration` without allocating.
    pub fn with_capacity(duration: FrameDuration) -> Self {
        Pcm { samples: Vec::with_capacity(R::RATE.samples_per(duration)), rate: PhantomData }
    }

    /// Audio made of `samples`, declared to be at the rate `R`.
    pub fn from_samples(samples: Vec<i16>) -> Self {
        Pcm { samples, rate: PhantomData }
    }

    /// The rate of this audio.
    pub const fn rate(&self) -> SampleRate {
        R::RATE
    }

    /// The samples.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// The samples, for appending or editing in place; the rate stays `R`.
    pub fn samples_mut(&mut self) -> &mut Vec<i16> {
        &mut self.samples
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Removes every sample, keeping the capacity.
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// How long the audio lasts.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.samples.len() as u64 * 1_000_000 / u64::from(R::RATE.hz()))
    }

    /// Forgets the rate, for code that handles several rates at run time.
    pub fn into_any(self) -> AnyPcm {
        AnyPcm { rate: R::RATE, samples: self.samples }
    }

    /// The samples, consuming the frame.
    pub fn into_samples(self) -> Vec<i16> {
        self.samples
    }
}

impl<R: Rate> fmt::Debug for Pcm<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pcm<{}>({} samples)", R::RATE, self.samples.len())
    }
}

/// Audio whose rate is known only at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnyPcm {
    /// The rate of `samples`.
    pub rate: SampleRate,
    /// Mono 16-bit samples.
    pub samples: Vec<i16>,
}

/// Audio handed to a consumer that expects another rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audio at {actual} given where {expected} is required")]
pub struct RateMismatch {
    /// The rate the consumer needs.
    pub expected: SampleRate,
    /// The rate the audio has.
    pub actual: SampleRate,
}

impl AnyPcm {
    /// The typed frame, if the audio has the rate `R`.
    pub fn into_rate<R: Rate>(self) -> Result<Pcm<R>, RateMismatch> {
        if self.rate == R::RATE {
            Ok(Pcm::from_samples(self.samples))
        } else {
            Err(RateMismatch { expected: R::RATE, actual: self.rate })
        }
    }
}

/// Handing 8 kHz audio to a 16 kHz consumer does not compile:
///
/// ```compile_fail
/// use cxb_codecs::{Hz8, Hz16, Pcm};
/// fn wants_wideband(_: &Pcm<Hz16>) {}
/// wants_wideband(&Pcm::<Hz8>::new());
/// ```
#[doc(hidden)]
pub fn _rate_mismatch_does_not_compile() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(SampleRate::Hz8000.samples_per(FrameDuration::MS_20), 160);
        assert_eq!(SampleRate::Hz16000.samples_per(FrameDuration::MS_20), 320);
        assert_eq!(SampleRate::Hz24000.samples_per(FrameDuration::MS_20), 480);
        assert_eq!(SampleRate::Hz22050.samples_per(FrameDuration::MS_20), 441);
        assert_eq!(SampleRate::Hz48000.samples_per(FrameDuration::MS_10), 480);
        assert_eq!(FrameDuration::from_millis(0), None);
    }

    #[test]
    fn rates_round_trip_and_reject_unknown() {
        for rate in SampleRate::ALL {
            assert_eq!(SampleRate::from_hz(rate.hz()), Ok(rate));
        }
        assert_eq!(SampleRate::from_hz(11_025), Err(UnsupportedRate(11_025)));
    }

    #[test]
    fn wrong_rate_is_a_typed_error() {
        let narrow = Pcm::<Hz8>::from_samples(vec![0; 160]).into_any();
        let err = narrow.clone().into_rate::<Hz16>().expect_err("8 kHz is not 16 kHz");
        assert_eq!(err, RateMismatch { expected: SampleRate::Hz16000, actual: SampleRate::Hz8000 });
        let back: Pcm<Hz8> = narrow.into_rate().expect("same rate");
        assert_eq!(back.duration(), Duration::from_millis(20));
    }
}

