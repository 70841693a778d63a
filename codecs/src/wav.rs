//! Call recordings as two-channel 16-bit PCM WAV files: [`RecordingWriter`] lays the caller
//! (left) and the bot (right) on one timeline and hands the interleaved audio on, in chunks, to
//! a [`RecordingSink`] as the call goes; [`WavInfo::parse`] reads a header back.
//!
//! Sans-IO and runtime-free: the engine calls this on its own worker thread, positions are
//! offsets from the start of the recording that the caller passes in, never a clock read.
//!
//! **Memory is bounded whatever the call's length.** The writer keeps only the last [`KEEP`]
//! of the timeline (plus one [`CHUNK`]) per channel, allocated once when it is made: at 8 kHz,
//! 2 channels x 1.5 s x 8,000 samples x 2 bytes = 48 KB. Older audio goes to the sink in chunks
//! of whole frames. [`MemoryWav`] is a sink that keeps the whole file in memory (short
//! recordings, tests, sinks that cannot stream); the outbox's recording stream sends each
//! chunk to the outbox's writer thread, which writes it into a file, and hands the buffer back
//! for reuse, so the steady state allocates nothing.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use crate::SampleRate;

/// Which side of the call a piece of audio is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// What the caller said: the left channel.
    Caller,
    /// What the bot said (as played to the caller): the right channel.
    Bot,
}

impl Channel {
    fn index(self) -> usize {
        match self {
            Channel::Caller => 0,
            Channel::Bot => 1,
        }
    }
}

/// How far (in time) a write may land from the end of its channel and still be appended right
/// after it: absorbs the jitter of timestamps taken from a real clock, so audio that arrives
/// back to back stays back to back instead of gaining clicks of silence or losing samples.
pub const SNAP: Duration = Duration::from_millis(10);

/// How far behind the furthest audio written a later write may still land (and overwrite or
/// fill in): the two channels arrive on their own schedules (the caller's frames after the
/// jitter buffer, the bot's as the playout clock releases them), a few hundred milliseconds
/// apart at worst. Audio placed earlier than that is dropped (it is already with the sink) and
/// counted in [`RecordingWriter::dropped`]; a channel left that far behind continues from there.
pub const KEEP: Duration = Duration::from_secs(1);

/// How much audio goes to the sink at a time (must not exceed [`KEEP`]).
pub const CHUNK: Duration = Duration::from_millis(500);

/// Bytes per frame of a two-channel 16-bit recording.
pub const FRAME_BYTES: usize = 4;

/// Where a recording's audio goes as the call runs.
///
/// `Any`, so that whoever made a sink can take it back from a `Box<dyn RecordingSink>` (the
/// engine hands its recording back to the result sink it came from).
pub trait RecordingSink: Any + Send + fmt::Debug {
    /// Takes `data`, whole frames (the caller's sample, then the bot's, each 16-bit
    /// little-endian), the first of which is frame `frame` of the recording. Frames never
    /// written read back as silence. Must not block.
    fn write(&mut self, frame: u64, data: Vec<u8>);

    /// An empty buffer to fill for the next [`RecordingSink::write`]: one handed back after an
    /// earlier write, or a new one. `None` while the sink holds as many as it allows (its
    /// storage is behind): the writer then drops that stretch of audio rather than hold more.
    fn spare(&mut self) -> Option<Vec<u8>>;

    /// Bytes of buffers the sink holds for this recording (spare, or in flight).
    fn held_bytes(&self) -> usize {
        0
    }
}

impl<S: RecordingSink + ?Sized> RecordingSink for Box<S> {
    fn write(&mut self, frame: u64, data: Vec<u8>) {
        (**self).write(frame, data);
    }

    fn spare(&mut self) -> Option<Vec<u8>> {
        (**self).spare()
    }

    fn held_bytes(&self) -> usize {
        (**self).held_bytes()
    }
}

/// A sink that keeps the whole WAV file in memory; [`RecordingWriter::finish`] returns it.
#[derive(Debug, Clone, Default)]
pub struct MemoryWav {
    /// The file so far: room for the header, then the frames written.
    file: Vec<u8>,
    spare: Vec<u8>,
}

impl RecordingSink for MemoryWav {
    fn write(&mut self, frame: u64, data: Vec<u8>) {
        let at = usize::try_from(frame).unwrap_or(usize::MAX).saturating_mul(FRAME_BYTES).saturating_add(HEADER_LEN);
        let end = at.saturating_add(data.len());
        if self.file.len() < end {
            self.file.resize(end, 0);
        }
        if let Some(dst) = self.file.get_mut(at..end) {
            dst.copy_from_slice(&data);
        }
        self.spare = data;
    }

    fn spare(&mut self) -> Option<Vec<u8>> {
        Some(std::mem::take(&mut self.spare))
    }

    fn held_bytes(&self) -> usize {
        self.file.capacity() + self.spare.capacity()
    }
}

/// What a finished recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingSummary {
    /// The sample rate of both channels.
    pub rate: SampleRate,
    /// Frames (one sample per channel) from the start to the end of the longer channel.
    pub frames: u64,
    /// Audio was dropped because the recording reached its maximum length.
    pub truncated: bool,
    /// Frames of audio that were dropped and read back as silence: placed more than [`KEEP`]
    /// behind, or not taken by a sink that was behind.
    pub dropped_frames: u64,
}

impl RecordingSummary {
    /// The length of the recording.
    pub fn duration(&self) -> Duration {
        samples_to_duration(self.frames, self.rate.hz())
    }

    /// The WAV file's header for this recording.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        header(self.rate.hz(), self.frames)
    }

    /// The length of the whole WAV file.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.frames.saturating_mul(FRAME_BYTES as u64)
    }
}

/// Lays a call's two sides on one timeline at one sample rate and writes them, as one stereo
/// WAV file's frames, to its sink `S` ([`MemoryWav`] unless another is given).
///
/// Each write carries its position (offset from the start of the recording); a channel with no
/// audio at some time is silent there, so the two sides stay aligned however they arrive.
#[derive(Clone)]
pub struct RecordingWriter<S = MemoryWav> {
    rate: SampleRate,
    max_frames: u64,
    snap: u64,
    keep: usize,
    chunk: usize,
    /// The frame `tracks[_][0]` is; everything before is with the sink. A multiple of `chunk`.
    base: u64,
    /// The caller's and the bot's samples from `base` on.
    tracks: [Vec<i16>; 2],
    truncated: bool,
    dropped: u64,
    sink: S,
}

impl<S: fmt::Debug> fmt::Debug for RecordingWriter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingWriter")
            .field("rate", &self.rate)
            .field("base", &self.base)
            .field("held", &[self.tracks[0].len(), self.tracks[1].len()])
            .field("truncated", &self.truncated)
            .field("dropped", &self.dropped)
            .field("sink", &self.sink)
            .finish()
    }
}

impl RecordingWriter<MemoryWav> {
    /// A recording in memory at `rate` that keeps at most `max` of audio (later audio is
    /// dropped and [`RecordingWriter::truncated`] says so).
    pub fn new(rate: SampleRate, max: Duration) -> RecordingWriter {
        RecordingWriter::with_sink(rate, max, MemoryWav::default())
    }

    /// The WAV file: a 44-byte header, then the two channels interleaved, the shorter one
    /// padded with silence at the end.
    pub fn finish(self) -> Vec<u8> {
        let (sink, summary) = self.close();
        let mut file = sink.file;
        // A frame count over usize cannot happen: `max` bounds it.
        file.resize(usize::try_from(summary.file_len()).unwrap_or(usize::MAX), 0);
        if let Some(head) = file.get_mut(..HEADER_LEN) {
            head.copy_from_slice(&summary.header());
        }
        file
    }
}

impl<S: RecordingSink> RecordingWriter<S> {
    /// A recording at `rate` that keeps at most `max` of audio and hands it to `sink` as it
    /// goes. Its memory is allocated here, once.
    pub fn with_sink(rate: SampleRate, max: Duration, sink: S) -> RecordingWriter<S> {
        let hz = rate.hz();
        let max_frames = frames_in(max, hz);
        let keep = usize::try_from(frames_in(KEEP, hz)).unwrap_or(usize::MAX).max(1);
        let chunk = usize::try_from(frames_in(CHUNK, hz)).unwrap_or(usize::MAX).clamp(1, keep);
        let room = usize::try_from(max_frames).unwrap_or(usize::MAX).min(keep + chunk);
        RecordingWriter {
            rate,
            max_frames,
            snap: frames_in(SNAP, hz),
            keep,
            chunk,
            base: 0,
            tracks: [Vec::with_capacity(room), Vec::with_capacity(room)],
            truncated: false,
            dropped: 0,
            sink,
        }
    }

    /// The sample rate of both channels.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// Places `samples` (mono, 16-bit) on `channel` starting at offset `at`.
    ///
    /// Within [`SNAP`] of the channel's end the samples are appended right after it. Later, the
    /// gap is silence. Earlier, they overwrite what the channel had from `at` on, back to
    /// [`KEEP`] behind the furthest audio of either channel; what lands before that is dropped.
    pub fn write(&mut self, channel: Channel, at: Duration, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        let c = channel.index();
        let end = self.end(c);
        let start = frames_in(at, self.rate.hz());
        let start = if start.abs_diff(end) <= self.snap { end } else { start };
        let stop = start.saturating_add(samples.len() as u64);
        let kept = stop.min(self.max_frames);
        if kept < stop {
            self.truncated = true;
        }
        if kept <= start {
            return;
        }
        let mut samples = samples.get(..to_usize(kept - start)).unwrap_or(samples);
        let mut start = start;
        if start < self.base {
            let late = to_usize(self.base - start).min(samples.len());
            self.dropped += late as u64;
            samples = samples.get(late..).unwrap_or_default();
            start = self.base;
        }
        let room = (self.keep + self.chunk) as u64;
        for piece in samples.chunks(self.chunk) {
            let stop = start + piece.len() as u64;
            if stop - self.base > room {
                // Whole chunks go out; `base` stays at or before `start` (a piece is at most a
                // chunk, and a chunk at most `keep`).
                self.advance(stop - room);
            }
            let at = to_usize(start - self.base);
            let track = &mut self.tracks[c];
            if track.len() < at + piece.len() {
                track.resize(at + piece.len(), 0);
            }
            if let Some(dst) = track.get_mut(at..at + piece.len()) {
                dst.copy_from_slice(piece);
            }
            start = stop;
        }
    }

    /// Appends `samples` right after what `channel` already has.
    pub fn append(&mut self, channel: Channel, samples: &[i16]) {
        let at = self.position(channel);
        self.write(channel, at, samples);
    }

    /// The offset just after the last sample of `channel` (or where the audio already handed
    /// to the sink ends, if that is later: a channel left [`KEEP`] behind continues there).
    pub fn position(&self, channel: Channel) -> Duration {
        samples_to_duration(self.end(channel.index()), self.rate.hz())
    }

    /// The length of the recording: the longer of the two channels.
    pub fn duration(&self) -> Duration {
        samples_to_duration(self.frames(), self.rate.hz())
    }

    /// Some audio was dropped because the recording reached its maximum length.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// How much audio was dropped (and reads back as silence): placed more than [`KEEP`]
    /// behind, or not taken by a sink that was behind.
    pub fn dropped(&self) -> Duration {
        samples_to_duration(self.dropped, self.rate.hz())
    }

    /// Bytes this recording holds in memory: the writer's timeline and the sink's buffers.
    pub fn memory(&self) -> usize {
        (self.tracks[0].capacity() + self.tracks[1].capacity()) * 2 + self.sink.held_bytes()
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Hands everything still held to the sink; returns the sink and what the recording holds.
    pub fn close(mut self) -> (S, RecordingSummary) {
        let frames = self.frames();
        while self.held() > 0 {
            self.flush();
        }
        let summary = RecordingSummary { rate: self.rate, frames, truncated: self.truncated, dropped_frames: self.dropped };
        (self.sink, summary)
    }

    fn end(&self, c: usize) -> u64 {
        self.base + self.tracks[c].len() as u64
    }

    fn frames(&self) -> u64 {
        self.base + self.held() as u64
    }

    fn held(&self) -> usize {
        self.tracks[0].len().max(self.tracks[1].len())
    }

    /// Moves `base` to `to` or just past it, a chunk at a time; a stretch with no audio on
    /// either channel is skipped, not written (it reads back as silence).
    fn advance(&mut self, to: u64) {
        let chunk = self.chunk as u64;
        while self.base < to {
            if self.held() == 0 {
                self.base += (to - self.base).div_ceil(chunk) * chunk;
                return;
            }
            self.flush();
        }
    }

    /// Hands the oldest chunk to the sink (or drops it, if the sink has no buffer for it).
    fn flush(&mut self) {
        let data = self.chunk.min(self.held());
        if data > 0 {
            match self.sink.spare() {
                Some(mut buf) => {
                    buf.clear();
                    buf.reserve(data * FRAME_BYTES);
                    let [left, right] = &self.tracks;
                    for i in 0..data {
                        let l = left.get(i).copied().unwrap_or(0);
                        let r = right.get(i).copied().unwrap_or(0);
                        buf.extend_from_slice(&l.to_le_bytes());
                        buf.extend_from_slice(&r.to_le_bytes());
                    }
                    self.sink.write(self.base, buf);
                }
                None => self.dropped += data as u64,
            }
        }
        for track in &mut self.tracks {
            let n = self.chunk.min(track.len());
            track.drain(..n);
        }
        self.base += self.chunk as u64;
    }
}

/// The canonical 44-byte header of a two-channel 16-bit PCM WAV file of `frames` frames.
pub fn header(rate_hz: u32, frames: u64) -> [u8; HEADER_LEN] {
    // A frame count over u32 cannot happen for a call (`max` would have to exceed ~37 hours at
    // 8 kHz); `u32::MAX` in the header still yields a file players read up to that length.
    let data_len = u32::try_from(frames.saturating_mul(FRAME_BYTES as u64)).unwrap_or(u32::MAX - 36).min(u32::MAX - 36);
    let fields: [&[u8]; 12] = [
        b"RIFF",
        &(36 + data_len).to_le_bytes(),
        b"WAVEfmt ",
        &16u32.to_le_bytes(), // fmt chunk size
        &1u16.to_le_bytes(),  // PCM
        &2u16.to_le_bytes(),  // channels
        &rate_hz.to_le_bytes(),
        &rate_hz.saturating_mul(4).to_le_bytes(), // bytes per second
        &4u16.to_le_bytes(),                      // block align
        &16u16.to_le_bytes(),                     // bits per sample
        b"data",
        &data_len.to_le_bytes(),
    ];
    let mut out = [0u8; HEADER_LEN];
    for (dst, src) in out.iter_mut().zip(fields.into_iter().flatten()) {
        *dst = *src;
    }
    out
}

fn frames_in(d: Duration, hz: u32) -> u64 {
    u64::try_from(d.as_micros() * u128::from(hz) / 1_000_000).unwrap_or(u64::MAX)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn samples_to_duration(samples: u64, hz: u32) -> Duration {
    Duration::from_micros(samples.saturating_mul(1_000_000) / u64::from(hz))
}

/// The length of the canonical header [`header`] writes.
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
