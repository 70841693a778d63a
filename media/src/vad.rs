//! Voice activity: webrtc-vad's per-frame decision, an energy gate in front of it, and a
//! speech-start / speech-stop state machine behind it.
//!
//! The per-frame decision is noisy: a click or a breath can score as voice for one frame and a
//! soft consonant as silence. The state machine turns frame decisions into speech segments:
//! speech starts after `start` of voiced audio (short unvoiced gaps of up to `hangover` inside
//! that run are tolerated), and stops after `stop` of unvoiced audio. Event timestamps are
//! when the speech really began and ended (the first and last voiced frame), not when the
//! machine became sure of it.

use std::marker::PhantomData;
use std::time::Duration;

use cxb_codecs::{FrameDuration, Hz8, Hz16, Pcm, Rate};

use crate::Timestamp;

/// The rates webrtc-vad runs at here.
pub trait VadRate: Rate {
    #[doc(hidden)]
    const WEBRTC: fn() -> webrtc_vad::SampleRate;
}
impl VadRate for Hz8 {
    const WEBRTC: fn() -> webrtc_vad::SampleRate = || webrtc_vad::SampleRate::Rate8kHz;
}
impl VadRate for Hz16 {
    const WEBRTC: fn() -> webrtc_vad::SampleRate = || webrtc_vad::SampleRate::Rate16kHz;
}

/// How eagerly webrtc-vad calls a frame voiced; higher modes reject more noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggressiveness {
    /// Mode 0: most frames with any voice in them count.
    Quality,
    /// Mode 1.
    LowBitrate,
    /// Mode 2.
    Aggressive,
    /// Mode 3: the fewest false positives.
    VeryAggressive,
}

/// Settings of the voice detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// Voiced audio needed before speech is declared started.
    pub start: Duration,
    /// Unvoiced audio needed before speech is declared stopped.
    pub stop: Duration,
    /// Unvoiced gaps up to this long do not interrupt a run of voiced frames that has not yet
    /// reached `start`.
    pub hangover: Duration,
    /// Frames quieter than this (RMS, dB relative to full scale) are unvoiced whatever
    /// webrtc-vad says.
    pub energy_floor_dbfs: f32,
    /// webrtc-vad's mode.
    pub aggressiveness: Aggressiveness,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            start: Duration::from_millis(60),
            stop: Duration::from_millis(240),
            hangover: Duration::from_millis(20),
            energy_floor_dbfs: -50.0,
            aggressiveness: Aggressiveness::Aggressive,
        }
    }
}

/// A change between silence and speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began at `at` (the start of its first voiced frame).
    SpeechStarted {
        /// When.
        at: Timestamp,
    },
    /// Speech ended at `at` (the end of its last voiced frame).
    SpeechStopped {
        /// When.
        at: Timestamp,
    },
}

/// A frame the detector cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("voice detection needs 10, 20 or 30 ms frames; got {samples} samples")]
pub struct BadFrameLength {
    /// The frame's length in samples.
    pub samples: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Silence,
    /// Voiced frames are accumulating; `voiced` so far, current unvoiced gap `gap`.
    Starting { since: Timestamp, voiced: Duration, gap: Duration },
    Speech,
    /// Unvoiced frames are accumulating after speech that last voiced at `last_voiced`.
    Stopping { last_voiced: Timestamp, silent: Duration },
}

/// Voice activity detection at the rate `R` (8 or 16 kHz).
///
/// Not `Send`: webrtc-vad keeps a raw pointer to its C state, and a call's detector lives on
/// the call's core anyway.
pub struct VoiceDetector<R: VadRate> {
    vad: webrtc_vad::Vad,
    config: VadConfig,
    energy_floor: f64,
    state: State,
    voiced_frames: u64,
    rate: PhantomData<R>,
}

impl<R: VadRate> std::fmt::Debug for VoiceDetector<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceDetector").field("config", &self.config).field("state", &self.state).finish()
    }
}

impl<R: VadRate> VoiceDetector<R> {
    /// A detector with `config`, in silence.
    pub fn new(config: VadConfig) -> Self {
        let mode = match config.aggressiveness {
            Aggressiveness::Quality => webrtc_vad::VadMode::Quality,
            Aggressiveness::LowBitrate => webrtc_vad::VadMode::LowBitrate,
            Aggressiveness::Aggressive => webrtc_vad::VadMode::Aggressive,
            Aggressiveness::VeryAggressive => webrtc_vad::VadMode::VeryAggressive,
        };
        // Mean square of a full-scale-relative RMS floor, compared without a square root.
        let floor = 32768.0 * 10f64.powf(f64::from(config.energy_floor_dbfs) / 20.0);
        VoiceDetector {
            vad: webrtc_vad::Vad::new_with_rate_and_mode((R::WEBRTC)(), mode),
            config,
            energy_floor: floor * floor,
            state: State::Silence,
            voiced_frames: 0,
            rate: PhantomData,
        }
    }

    /// True while the detector considers the caller to be speaking.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speech | State::Stopping { .. })
    }

    /// Frames judged voiced so far.
    pub fn voiced_frames(&self) -> u64 {
        self.voiced_frames
    }

    /// Classifies one frame that began at `now`, returning a speech start or stop if this
    /// frame completes one.
    pub fn process(&mut self, now: Timestamp, frame: &Pcm<R>) -> Result<Option<VadEvent>, BadFrameLength> {
        let samples = frame.samples();
        let per_ms = R::RATE.samples_per(FrameDuration::MS_10) / 10;
        if !matches!(samples.len() / per_ms, 10 | 20 | 30) || !samples.len().is_multiple_of(per_ms) {
            return Err(BadFrameLength { samples: samples.len() });
        }
        let length = frame.duration();
        let voiced = self.loud_enough(samples) && self.vad.is_voice_segment(samples).unwrap_or(false);
        self.voiced_frames += u64::from(voiced);
        Ok(self.step(now, length, voiced))
    }

    fn loud_enough(&self, samples: &[i16]) -> bool {
        let energy: i64 = samples.iter().map(|&s| i64::from(s) * i64::from(s)).sum();
        energy as f64 / samples.len() as f64 >= self.energy_floor
    }

    /// Advances the state machine by one frame of `length` starting at `now`.
    fn step(&mut self, now: Timestamp, length: Duration, voiced: bool) -> Option<VadEvent> {
        let c = self.config;
        let (next, event) = match (self.state, voiced) {
            (State::Silence, false) => (State::Silence, None),
            (State::Silence, true) => self.start_run(now, length),
            (State::Starting { since, voiced: v, .. }, true) => {
                let v = v + length;
                if v >= c.start {
                    (State::Speech, Some(VadEvent::SpeechStarted { at: since }))
                } else {
                    (State::Starting { since, voiced: v, gap: Duration::ZERO }, None)
                }
            }
            (State::Starting { since, voiced: v, gap }, false) => {
                let gap = gap + length;
                if gap > c.hangover {
                    (State::Silence, None)
                } else {
                    (State::Starting { since, voiced: v, gap }, None)
                }
            }
            (State::Speech, true) => (State::Speech, None),
            (State::Speech, false) => self.silent_after_speech(now, length, Duration::ZERO),
            (State::Stopping { .. }, true) => (State::Speech, None),
            (State::Stopping { last_voiced, silent }, false) => {
                self.silent_after_speech(last_voiced, length, silent)
            }
        };
        self.state = next;
        event
    }

    fn start_run(&self, now: Timestamp, length: Duration) -> (State, Option<VadEvent>) {
        if length >= self.config.start {
            (State::Speech, Some(VadEvent::SpeechStarted { at: now }))
        } else {
            (State::Starting { since: now, voiced: length, gap: Duration::ZERO }, None)
        }
    }

    fn silent_after_speech(&self, last_voiced: Timestamp, length: Duration, silent: Duration) -> (State, Option<VadEvent>) {
        let silent = silent + length;
        if silent >= self.config.stop {
            (State::Silence, Some(VadEvent::SpeechStopped { at: last_voiced }))
        } else {
            (State::Stopping { last_voiced, silent }, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Duration = Duration::from_millis(20);

    fn drive(config: VadConfig, pattern: &str) -> Vec<(usize, VadEvent)> {
        // Drives the state machine alone: 'x' a voiced frame, '.' an unvoiced one.
        let mut d = VoiceDetector::<Hz16>::new(config);
        let mut events = Vec::new();
        for (i, c) in pattern.chars().enumerate() {
            let now = Timestamp::ZERO + F * i as u32;
            if let Some(e) = d.step(now, F, c == 'x') {
                events.push((i, e));
            }
        }
        events
    }

    fn at(frame: u32) -> Timestamp {
        Timestamp::ZERO + F * frame
    }

    #[test]
    fn start_needs_enough_voice_and_reports_its_beginning() {
        let c = VadConfig { start: Duration::from_millis(60), hangover: Duration::ZERO, ..VadConfig::default() };
        assert_eq!(drive(c, "..xx..xx.."), vec![]);
        assert_eq!(drive(c, "..xxx"), vec![(4, VadEvent::SpeechStarted { at: at(2) })]);
    }

    #[test]
    fn hangover_bridges_short_gaps_while_starting() {
        let c = VadConfig { start: Duration::from_millis(60), hangover: Duration::from_millis(20), ..VadConfig::default() };
        assert_eq!(drive(c, "x.xx"), vec![(3, VadEvent::SpeechStarted { at: at(0) })]);
        assert_eq!(drive(c, "x..xx"), vec![]);
    }

    #[test]
    fn stop_needs_enough_silence_and_reports_the_last_voice() {
        let c = VadConfig { start: F, stop: Duration::from_millis(100), ..VadConfig::default() };
        let events = drive(c, "xxx....x.....");
        assert_eq!(events, vec![
            (0, VadEvent::SpeechStarted { at: at(0) }),
            (12, VadEvent::SpeechStopped { at: at(8) }),
        ]);
    }

    #[test]
    fn quiet_frames_never_count_as_voice() {
        let mut d = VoiceDetector::<Hz8>::new(VadConfig { start: F, ..VadConfig::default() });
        let whisper = Pcm::from_samples((0..160).map(|i| if i % 2 == 0 { 20 } else { -20 }).collect());
        for i in 0..50 {
            assert_eq!(d.process(at(i), &whisper), Ok(None));
        }
        assert_eq!(d.voiced_frames(), 0);
    }

    #[test]
    fn odd_frame_lengths_are_rejected() {
        let mut d = VoiceDetector::<Hz16>::new(VadConfig::default());
        for n in [0, 1, 100, 319, 321, 1000] {
            let frame = Pcm::from_samples(vec![0; n]);
            assert_eq!(d.process(Timestamp::ZERO, &frame), Err(BadFrameLength { samples: n }));
        }
        assert_eq!(d.process(Timestamp::ZERO, &Pcm::from_samples(vec![0; 160])), Ok(None));
    }
}
