//! Call recordings as two-channel 16-bit PCM WAV files: [`RecordingWriter`] collects the
//! caller (left) and the bot (right) on one timeline, [`WavInfo::parse`] reads a header back.
//!
//! Sans-IO and runtime-free: the engine calls this on its own worker thread, positions are
//! offsets from the start of the recording that the caller passes in, never a clock read.

use std::time::Duration;

use cxb_codecs::SampleRate;

/// Which side of the call a piece of audio is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// What the caller said: the left channel.
    Caller,
    /// What the bot said (as played to the caller): the right channel.
    Bot,
}

/// How far (in time) a write may land from the end of its channel and still be appended right
/// after it: absorbs the jitter of timestamps taken from a real clock, so audio that arrives
/// back to back stays back to back instead of gaining clicks of silence or losing samples.
pub const SNAP: Duration = Duration::from_millis(10);

/// Collects a call's two sides at one sample rate and writes them as one stereo WAV file.
///
/// Each write carries its position (offset from the start of the recording); a channel with no
/// audio at some time is silent there, so the two sides stay aligned however they arrive.
#[derive(Debug, Clone)]
pub struct RecordingWriter {
    rate: SampleRate,
    max_samples: usize,
    left: Vec<i16>,
    right: Vec<i16>,
    truncated: bool,
}

impl RecordingWriter {
    /// A recording at `rate` that keeps at most `max` of audio (later audio is dropped and
    /// [`RecordingWriter::truncated`] says so), to bound the memory of a call that never ends.
    pub fn new(rate: SampleRate, max: Duration) -> RecordingWriter {
        let max_samples = usize::try_from(max.as_millis() * u128::from(rate.hz()) / 1000).unwrap_or(usize::MAX);
        RecordingWriter { rate, max_samples, left: Vec::new(), right: Vec::new(), truncated: false }
    }

    /// The sample rate of both channels.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// Places `samples` (mono, 16-bit) on `channel` starting at offset `at`.
    ///
    /// Within [`SNAP`] of the channel's end the samples are appended right after it. Later, the
    /// gap is silence. Earlier, they overwrite what the channel had from `at` on.
    pub fn write(&mut self, channel: Channel, at: Duration, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        let rate = u128::from(self.rate.hz());
        let start = usize::try_from(at.as_micros() * rate / 1_000_000).unwrap_or(usize::MAX);
        let snap = usize::try_from(SNAP.as_micros() * rate / 1_000_000).unwrap_or(0);
        let max = self.max_samples;
        let track = match channel {
            Channel::Caller => &mut self.left,
            Channel::Bot => &mut self.right,
        };
        let start = if start.abs_diff(track.len()) <= snap { track.len() } else { start };
        let end = start.saturating_add(samples.len());
        let kept = end.min(max);
        if kept < end {
            self.truncated = true;
        }
        if kept <= start {
            return;
        }
        if track.len() < kept {
            track.resize(kept, 0);
        }
        if let (Some(dst), Some(src)) = (track.get_mut(start..kept), samples.get(..kept - start)) {
            dst.copy_from_slice(src);
        }
    }

    /// Appends `samples` right after what `channel` already has.
    pub fn append(&mut self, channel: Channel, samples: &[i16]) {
        let at = self.position(channel);
        self.write(channel, at, samples);
    }

    /// The offset just after the last sample of `channel`.
    pub fn position(&self, channel: Channel) -> Duration {
        let n = match channel {
            Channel::Caller => self.left.len(),
            Channel::Bot => self.right.len(),
        };
        samples_to_duration(n as u64, self.rate.hz())
    }

    /// The length of the recording: the longer of the two channels.
    pub fn duration(&self) -> Duration {
        samples_to_duration(self.left.len().max(self.right.len()) as u64, self.rate.hz())
    }

    /// Some audio was dropped because the recording reached its maximum length.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The WAV file: a 44-byte header, then the two channels interleaved, the shorter one
    /// padded with silence at the end.
    pub fn finish(self) -> Vec<u8> {
        let frames = self.left.len().max(self.right.len());
        let data_len = frames * 4;
        let mut out = Vec::with_capacity(HEADER_LEN + data_len);
        // A frame count over u32 cannot happen: `max_samples` would have to exceed ~2^30, and
        // `u32::MAX` in the header still yields a file that players read up to that length.
        let data_len32 = u32::try_from(data_len).unwrap_or(u32::MAX - 36);
        let rate = self.rate.hz();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data_len32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&2u16.to_le_bytes()); // channels
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 4).to_le_bytes()); // bytes per second
        out.extend_from_slice(&4u16.to_le_bytes()); // block align
        out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len32.to_le_bytes());
        out.resize(HEADER_LEN + data_len, 0);
        let silence = std::iter::repeat(&0i16);
        let samples = self.left.iter().chain(silence.clone()).zip(self.right.iter().chain(silence));
        for (frame, (l, r)) in out[HEADER_LEN..].chunks_exact_mut(4).zip(samples) {
            frame[..2].copy_from_slice(&l.to_le_bytes());
            frame[2..].copy_from_slice(&r.to_le_bytes());
        }
        out
    }
}

fn samples_to_duration(samples: u64, hz: u32) -> Duration {
    Duration::from_micros(samples.saturating_mul(1_000_000) / u64::from(hz))
}

/// The length of the canonical header [`RecordingWriter::finish`] writes.
pub const HEADER_LEN: usize = 44;

/// What a WAV file holds, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// 1 or 2.
    pub channels: u16,
    /// Where the samples start in the file.
    pub data_offset: usize,
    /// Bytes of samples (as present in the file, if the header claims more).
    pub data_len: usize,
}

/// Why bytes are not a WAV file this platform records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// No `RIFF`…`WAVE` at the start.
    #[error("not a RIFF/WAVE file")]
    NotWave,
    /// The file ends inside a chunk header or before the `fmt ` or `data` chunk.
    #[error("truncated")]
    Truncated,
    /// Not 16-bit integer PCM in one or two channels at a non-zero rate.
    #[error("not 16-bit PCM in one or two channels")]
    Format,
}

impl WavInfo {
    /// Reads the header of a 16-bit PCM WAV file, skipping chunks other than `fmt ` and `data`.
    pub fn parse(bytes: &[u8]) -> Result<WavInfo, WavError> {
        if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
            return Err(WavError::NotWave);
        }
        let mut pos = 12usize;
        let mut format = None;
        loop {
            let head = bytes.get(pos..).and_then(|b| b.get(..8)).ok_or(WavError::Truncated)?;
            let (id, size) = head.split_at(4);
            let size = usize::try_from(u32::from_le_bytes(size.try_into().map_err(|_| WavError::Truncated)?)).map_err(|_| WavError::Truncated)?;
            let body = pos + 8;
            match id {
                b"fmt " => {
                    let fmt = bytes.get(body..body.saturating_add(size)).filter(|f| f.len() >= 16).ok_or(WavError::Truncated)?;
                    let u16_at = |i: usize| fmt.get(i..i + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                    let rate = fmt.get(4..8).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    let (tag, channels, bits) = (u16_at(0), u16_at(2), u16_at(14));
                    if tag != 1 || bits != 16 || !(1..=2).contains(&channels) || rate == 0 {
                        return Err(WavError::Format);
                    }
                    format = Some((rate, channels));
                }
                b"data" => {
                    let (sample_rate, channels) = format.ok_or(WavError::Truncated)?;
                    let data_len = size.min(bytes.len() - body);
                    return Ok(WavInfo { sample_rate, channels, data_offset: body, data_len });
                }
                _ => {}
            }
            // Chunks are padded to an even length.
            pos = body.checked_add(size).and_then(|p| p.checked_add(size & 1)).ok_or(WavError::Truncated)?;
        }
    }

    /// Whole sample frames (one sample per channel) in the data.
    pub fn frames(&self) -> u64 {
        (self.data_len / (2 * usize::from(self.channels.max(1)))) as u64
    }

    /// The length of the audio.
    pub fn duration(&self) -> Duration {
        samples_to_duration(self.frames(), self.sample_rate)
    }

    /// The samples of `channel` (0 = left), from the file the header was read from.
    pub fn channel(&self, bytes: &[u8], channel: u16) -> Vec<i16> {
        let data = bytes.get(self.data_offset..).and_then(|d| d.get(..self.data_len)).unwrap_or_default();
        let step = 2 * usize::from(self.channels.max(1));
        let at = 2 * usize::from(channel);
        data.chunks_exact(step).filter_map(|f| f.get(at..at + 2)).map(|s| i16::from_le_bytes([s[0], s[1]])).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn header_is_canonical_and_reads_back() {
        let mut w = RecordingWriter::new(SampleRate::Hz8000, HOUR);
        w.append(Channel::Caller, &[1, 2, 3]);
        let bytes = w.finish();
        assert_eq!(bytes.len(), 44 + 3 * 4);
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 36 + 12);
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 8000);
        assert_eq!(u32::from_le_bytes(bytes[28..32].try_into().unwrap()), 32_000);
        let info = WavInfo::parse(&bytes).unwrap();
        assert_eq!(info, WavInfo { sample_rate: 8000, channels: 2, data_offset: 44, data_len: 12 });
        assert_eq!(info.channel(&bytes, 0), [1, 2, 3]);
        assert_eq!(info.channel(&bytes, 1), [0, 0, 0]);
    }

    #[test]
    fn snap_appends_near_the_end_and_gaps_become_silence() {
        let mut w = RecordingWriter::new(SampleRate::Hz8000, HOUR);
        w.write(Channel::Bot, Duration::ZERO, &[5; 160]);
        // 3 ms late: still back to back.
        w.write(Channel::Bot, Duration::from_millis(23), &[6; 160]);
        assert_eq!(w.position(Channel::Bot), Duration::from_millis(40));
        // 60 ms later: a 60 ms gap of silence.
        w.write(Channel::Bot, Duration::from_millis(100), &[7; 8]);
        let bytes = w.finish();
        let bot = WavInfo::parse(&bytes).unwrap().channel(&bytes, 1);
        assert_eq!(bot.len(), 808);
        assert!(bot[..160].iter().all(|&s| s == 5) && bot[160..320].iter().all(|&s| s == 6));
        assert!(bot[320..800].iter().all(|&s| s == 0) && bot[800..].iter().all(|&s| s == 7));
    }

    #[test]
    fn earlier_writes_overwrite_and_the_limit_truncates() {
        let mut w = RecordingWriter::new(SampleRate::Hz8000, Duration::from_millis(50));
        w.append(Channel::Caller, &[1; 320]);
        w.write(Channel::Caller, Duration::ZERO, &[2; 80]);
        assert!(!w.truncated());
        w.append(Channel::Caller, &[3; 160]);
        assert!(w.truncated());
        assert_eq!(w.duration(), Duration::from_millis(50));
        let bytes = w.finish();
        let left = WavInfo::parse(&bytes).unwrap().channel(&bytes, 0);
        assert_eq!(left.len(), 400);
        assert!(left[..80].iter().all(|&s| s == 2) && left[80..320].iter().all(|&s| s == 1) && left[320..].iter().all(|&s| s == 3));
    }

    #[test]
    fn parse_skips_other_chunks_and_rejects_junk() {
        let mut w = RecordingWriter::new(SampleRate::Hz16000, HOUR);
        w.append(Channel::Caller, &[9; 16]);
        let plain = w.finish();
        // A LIST chunk of odd length (padded) between fmt and data.
        let mut with_list = plain[..36].to_vec();
        with_list.extend_from_slice(b"LIST\x03\x00\x00\x00abc\x00");
        with_list.extend_from_slice(&plain[36..]);
        let info = WavInfo::parse(&with_list).unwrap();
        assert_eq!((info.sample_rate, info.channels, info.data_offset, info.frames()), (16_000, 2, 56, 16));
        assert_eq!(info.duration(), Duration::from_millis(1));

        assert_eq!(WavInfo::parse(b""), Err(WavError::NotWave));
        assert_eq!(WavInfo::parse(b"RIFF\0\0\0\0WAVE"), Err(WavError::Truncated));
        for cut in 0..plain.len() {
            let _ = WavInfo::parse(&plain[..cut]);
        }
        let mut eight_bit = plain.clone();
        eight_bit[34] = 8;
        assert_eq!(WavInfo::parse(&eight_bit), Err(WavError::Format));
        let mut huge = plain.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(WavInfo::parse(&huge), Err(WavError::Truncated));
    }
}
