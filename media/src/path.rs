//! A call's media path, composed from the pieces of this crate: carrier payload in ->
//! 8 kHz PCM -> 16 kHz -> voice activity and turn detection; 16 kHz audio out -> 8 kHz ->
//! carrier encoding -> playout clock.
//!
//! Both directions own their scratch buffers, so a call in steady state does not allocate.

use std::time::Duration;

use cxb_codecs::{Encoding, FrameDuration, Hz8, Hz16, Pcm, SampleRate};

use crate::Timestamp;
use crate::playout::{Playout, PlayoutConfig, Released};
use crate::resample::Resampler;
use crate::turn::{TurnDetector, TurnEvent};
use crate::vad::{BadFrameLength, VadConfig, VadEvent, VoiceDetector};

/// A carrier payload the inbound path cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// LINEAR16 with an odd number of bytes.
    #[error(transparent)]
    OddLength(#[from] cxb_codecs::l16::OddLength),
    /// Not a 10, 20 or 30 ms frame.
    #[error(transparent)]
    FrameLength(#[from] BadFrameLength),
}

/// What one inbound frame revealed about the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heard {
    /// A change between silence and speech.
    pub vad: Option<VadEvent>,
    /// A turn starting (a turn's end comes from [`Inbound::poll_turn`]).
    pub turn: Option<TurnEvent>,
    /// Of the payload's 20 ms frames, how many the detector judged voiced.
    pub voiced_frames: u32,
}

/// Settings of the inbound path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InboundConfig {
    /// The carrier's encoding at 8 kHz.
    pub encoding: Encoding,
    /// Voice detection.
    pub vad: VadConfig,
    /// Silence that ends the caller's turn.
    pub end_of_turn: Duration,
}

/// Carrier audio in, 16 kHz pipeline audio and speech events out.
#[derive(Debug)]
pub struct Inbound {
    encoding: Encoding,
    narrow: Pcm<Hz8>,
    up: Resampler<Hz8, Hz16>,
    wide: Pcm<Hz16>,
    frame: Pcm<Hz16>,
    vad: VoiceDetector<Hz16>,
    turn: TurnDetector,
}

impl Inbound {
    /// A path for one call.
    pub fn new(config: InboundConfig) -> Inbound {
        Inbound {
            encoding: config.encoding,
            narrow: Pcm::with_capacity(FrameDuration::MS_20),
            up: Resampler::new(),
            wide: Pcm::with_capacity(FrameDuration::MS_20),
            frame: Pcm::with_capacity(FrameDuration::MS_20),
            vad: VoiceDetector::new(config.vad),
            turn: TurnDetector::new(config.end_of_turn),
        }
    }

    /// Runs one payload (any whole number of 20 ms frames, as Exotel's 100 ms chunks) that
    /// began at `now`. The 16 kHz audio is left in [`Inbound::audio`]; speech events are
    /// those of the payload's last frame that produced one.
    pub fn process(&mut self, now: Timestamp, payload: &[u8]) -> Result<Heard, InboundError> {
        self.narrow.clear();
        self.encoding.decode_into(payload, self.narrow.samples_mut())?;
        self.wide.clear();
        self.up.process(&self.narrow, &mut self.wide);
        let per_frame = SampleRate::Hz16000.samples_per(FrameDuration::MS_20);
        let mut heard = Heard::default();
        let mut at = now;
        for chunk in self.wide.samples().chunks(per_frame) {
            self.frame.clear();
            self.frame.samples_mut().extend_from_slice(chunk);
            if chunk.len() != per_frame {
                // A trailing partial frame (an odd-sized payload) is padded for the detector.
                self.frame.samples_mut().resize(per_frame, 0);
            }
            let before = self.vad.voiced_frames();
            let event = self.vad.process(at, &self.frame)?;
            heard.voiced_frames += u32::from(self.vad.voiced_frames() > before);
            if let Some(event) = event {
                heard.vad = Some(event);
                if let Some(turn) = self.turn.on_vad(event) {
                    heard.turn = Some(turn);
                }
            }
            at += FrameDuration::MS_20.as_duration();
        }
        Ok(heard)
    }

    /// The 16 kHz audio of the last processed payload.
    pub fn audio(&self) -> &Pcm<Hz16> {
        &self.wide
    }

    /// The last processed payload decoded, at the carrier's 8 kHz: decoded once here, for
    /// whoever else needs the caller's samples (recording, speech-to-text, detectors).
    pub fn narrow(&self) -> &Pcm<Hz8> {
        &self.narrow
    }

    /// The end of the caller's turn, once the silence after their speech is long enough.
    pub fn poll_turn(&mut self, now: Timestamp) -> Option<TurnEvent> {
        self.turn.poll(now)
    }

    /// When [`Inbound::poll_turn`] may next report.
    pub fn turn_deadline(&self) -> Option<Timestamp> {
        self.turn.deadline()
    }

    /// True while the caller is speaking.
    pub fn caller_speaking(&self) -> bool {
        self.vad.in_speech()
    }

    /// True from the start of the caller's turn until its end has been reported.
    pub fn in_turn(&self) -> bool {
        self.turn.in_turn()
    }

    /// While the caller pauses within a turn: when their speech stopped.
    pub fn paused_since(&self) -> Option<Timestamp> {
        self.turn.paused_since()
    }

    /// Ends turns after `end_silence` of silence from now on.
    pub fn set_end_of_turn(&mut self, end_silence: Duration) {
        self.turn.set_end_silence(end_silence);
    }

    /// Ends the caller's turn now if they are pausing (a model judged them done).
    pub fn end_turn_now(&mut self, now: Timestamp) -> Option<TurnEvent> {
        self.turn.end_now(now)
    }
}

/// 16 kHz pipeline audio in, carrier-encoded frames out on the playout clock.
#[derive(Debug)]
pub struct Outbound<M> {
    encoding: Encoding,
    down: Resampler<Hz16, Hz8>,
    narrow: Pcm<Hz8>,
    encoded: Vec<u8>,
    playout: Playout<u8, M>,
}

impl<M> Outbound<M> {
    /// A path for one call holding at most `capacity` of queued audio, releasing at most
    /// `max_burst` frames per tick when catching up, letting at most `max_lead` of audio wait
    /// ahead of the schedule (`None`: pace all of it).
    pub fn new(encoding: Encoding, capacity: Duration, max_burst: usize, max_lead: Option<Duration>) -> Outbound<M> {
        let frame_len = SampleRate::Hz8000.samples_per(FrameDuration::MS_20) * encoding.bytes_per_sample();
        let frames = (capacity.as_millis() / 20).max(1) as usize;
        Outbound {
            encoding,
            down: Resampler::new(),
            narrow: Pcm::with_capacity(FrameDuration::MS_20),
            encoded: Vec::with_capacity(frame_len),
            playout: Playout::new(PlayoutConfig {
                frame_len,
                period: FrameDuration::MS_20.as_duration(),
                capacity: frames * frame_len,
                max_burst,
                silence: encoding.silence_byte(),
                max_lead: max_lead.map(|d| (d.as_millis() / 20) as usize),
            }),
        }
    }

    /// Queues 16 kHz audio for playing; returns false if the queue was too full to take all.
    pub fn push(&mut self, audio: &Pcm<Hz16>) -> bool {
        self.narrow.clear();
        self.down.process(audio, &mut self.narrow);
        self.encoded.clear();
        self.encoding.encode_into(self.narrow.samples(), &mut self.encoded);
        self.playout.push(&self.encoded) == self.encoded.len()
    }

    /// Queues 8 kHz audio, as much of it as the queue has room for; returns how many samples
    /// it took.
    pub fn push_narrow(&mut self, samples: &[i16]) -> usize {
        let n = samples.len().min(self.playout.room() / self.encoding.bytes_per_sample());
        self.encoded.clear();
        self.encoding.encode_into(&samples[..n], &mut self.encoded);
        self.playout.push(&self.encoded);
        n
    }

    /// Appends the encoded frames due at `now` to `out`.
    pub fn tick(&mut self, now: Timestamp, out: &mut Vec<u8>) -> Released {
        self.playout.tick(now, out)
    }

    /// The playout queue, for marks, clears and its deadline.
    pub fn playout(&mut self) -> &mut Playout<u8, M> {
        &mut self.playout
    }
}
