//! The recording writer through the public API: two sides written out of step come out
//! aligned in a WAV file that reads back; a long call is recorded in bounded memory; a sink
//! that falls behind costs audio, not memory; malformed WAV bytes are refused, never a panic.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cxb_codecs::SampleRate;
use cxb_codecs::wav::{Channel, RecordingSink, RecordingWriter, WavInfo};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn two_sides_written_out_of_step_stay_aligned() {
    let mut w = RecordingWriter::new(SampleRate::Hz16000, Duration::from_secs(10));
    // The caller speaks 20 ms frames from 0 to 400 ms, with one frame's timestamp 4 ms late.
    for i in 0..20u64 {
        let jitter = if i == 7 { 4 } else { 0 };
        w.write(Channel::Caller, ms(i * 20 + jitter), &[i as i16 + 1; 320]);
    }
    // The bot answers at 1 s with 100 ms of audio, written before the caller's tail would be.
    w.write(Channel::Bot, ms(1000), &[-7; 1600]);
    assert_eq!(w.duration(), ms(1100));
    let bytes = w.finish();

    let info = WavInfo::parse(&bytes).unwrap();
    assert_eq!((info.sample_rate, info.channels, info.data_offset, info.frames()), (16_000, 2, 44, 17_600));
    assert_eq!(bytes.len(), 44 + 17_600 * 4);
    assert_eq!(info.duration(), ms(1100));
    let (caller, bot) = (info.channel(&bytes, 0), info.channel(&bytes, 1));
    assert_eq!((caller.len(), bot.len()), (17_600, 17_600));
    for (i, frame) in caller[..6400].chunks(320).enumerate() {
        assert!(frame.iter().all(|&s| s == i as i16 + 1), "caller frame {i}");
    }
    assert!(caller[6400..].iter().all(|&s| s == 0), "the caller is silent after 400 ms");
    assert!(bot[..16_000].iter().all(|&s| s == 0), "the bot is silent before 1 s");
    assert!(bot[16_000..].iter().all(|&s| s == -7));
    // Interleaving: left then right, little-endian.
    let frame = 16_000 * 4 + 44;
    assert_eq!(&bytes[frame..frame + 4], &[0, 0, 0xf9, 0xff]);
}

#[test]
fn malformed_wav_bytes_are_refused_without_panicking() {
    let mut w = RecordingWriter::new(SampleRate::Hz8000, Duration::from_secs(1));
    w.append(Channel::Bot, &[3; 80]);
    let good = w.finish();
    // Every truncation, and every single-byte corruption of the header.
    for cut in 0..good.len() {
        if let Ok(info) = WavInfo::parse(&good[..cut]) {
            assert!(info.data_offset + info.data_len <= cut);
            let _ = info.channel(&good[..cut], 1);
        }
    }
    for at in 0..44 {
        for value in [0u8, 1, 0x7f, 0xff] {
            let mut bad = good.clone();
            bad[at] = value;
            if let Ok(info) = WavInfo::parse(&bad) {
                assert!(info.data_offset + info.data_len <= bad.len());
                assert!(info.channels == 1 || info.channels == 2);
            }
        }
    }
    // Pseudo-random junk, some of it starting like a WAV file.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for n in 0..2000usize {
        let mut junk: Vec<u8> = (0..n % 97)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if n % 2 == 0 {
            junk.splice(0..0, good[..12 + n % 30].iter().copied());
        }
        let _ = WavInfo::parse(&junk);
    }
}

/// A sink that checks each chunk against the audio it should hold, keeps nothing, and hands
/// its one buffer back at once (a writer thread that keeps up), or, `behind`, stops handing
/// buffers back after two.
#[derive(Debug)]
struct Checking {
    expected: fn(u64) -> (i16, i16),
    next_frame: u64,
    spare: Option<Vec<u8>>,
    made: usize,
    behind: bool,
}

impl Checking {
    fn new(expected: fn(u64) -> (i16, i16)) -> Checking {
        Checking { expected, next_frame: 0, spare: None, made: 0, behind: false }
    }
}

impl RecordingSink for Checking {
    fn write(&mut self, frame: u64, data: Vec<u8>) {
        assert!(frame >= self.next_frame, "chunks come in order, each frame once");
        for (i, f) in data.chunks_exact(4).enumerate() {
            let at = frame + i as u64;
            let got = (i16::from_le_bytes([f[0], f[1]]), i16::from_le_bytes([f[2], f[3]]));
            assert_eq!(got, (self.expected)(at), "frame {at}");
        }
        self.next_frame = frame + (data.len() / 4) as u64;
        if !self.behind {
            self.spare = Some(data);
        }
    }

    fn spare(&mut self) -> Option<Vec<u8>> {
        self.spare.take().or_else(|| {
            (self.made < 2).then(|| {
                self.made += 1;
                Vec::new()
            })
        })
    }

    fn held_bytes(&self) -> usize {
        self.spare.as_ref().map_or(0, Vec::capacity)
    }
}

/// The caller says frame n's value; the bot says its negation from 2 s on, 200 ms behind.
fn expected(frame: u64) -> (i16, i16) {
    let tick = frame / 160;
    let bot = if frame >= 16_000 - 1_600 && frame + 1_600 < 30 * 60 * 8_000 { -((((frame + 1_600) / 160) % 30_000) as i16) - 1 } else { 0 };
    (((tick % 30_000) as i16) + 1, bot)
}

/// Half an hour of a call through a sink that keeps up: the writer's memory is what it
/// allocated when it was made (48,000 bytes at 8 kHz: 1.5 s of two channels) plus one 16,000
/// byte buffer, at every moment; every frame reaches the sink once, in order, where it belongs.
#[test]
fn a_long_call_is_recorded_in_bounded_memory() {
    let mut w = RecordingWriter::with_sink(SampleRate::Hz8000, Duration::from_secs(3600), Checking::new(expected));
    let made = w.memory();
    assert_eq!(made, 48_000);
    for tick in 0..90_000u64 {
        w.append(Channel::Caller, &[((tick % 30_000) as i16) + 1; 160]);
        if tick >= 100 {
            w.write(Channel::Bot, ms(tick * 20 - 200), &[-(((tick % 30_000) as i16) + 1); 160]);
        }
        assert!(w.memory() <= made + 16_000, "{} at tick {tick}", w.memory());
    }
    assert_eq!(w.dropped(), Duration::ZERO);
    let (sink, summary) = w.close();
    assert_eq!(sink.next_frame, 90_000 * 160, "every frame reached the sink");
    assert_eq!((summary.frames, summary.duration(), summary.truncated), (90_000 * 160, Duration::from_secs(1800), false));
}

/// A sink that falls behind (its buffers do not come back) costs audio, never memory: the
/// stretches it could not take are counted and read back as silence, and the timeline still
/// has the whole length.
#[test]
fn a_sink_that_falls_behind_costs_audio_not_memory() {
    let mut sink = Checking::new(|frame| if frame < 8_000 { (5, 0) } else { (0, 0) });
    sink.behind = true;
    let mut w = RecordingWriter::with_sink(SampleRate::Hz8000, Duration::from_secs(60), sink);
    for _ in 0..500 {
        w.append(Channel::Caller, &[5; 160]);
    }
    // Two chunks (1 s) went to the sink; the next 7.5 s had no buffer, 1.5 s are still held.
    assert_eq!(w.dropped(), Duration::from_millis(7_500));
    assert!(w.memory() <= 48_000 + 2 * 16_000);
    let (_, summary) = w.close();
    assert_eq!(summary.frames, 80_000);
    assert_eq!(summary.dropped_frames, 72_000, "the held 1.5 s found no buffer either");
}

/// Audio placed more than `KEEP` behind the furthest audio is already with the sink: it is
/// dropped and counted, what falls after that point is kept, and a channel left behind goes
/// on from there.
#[test]
fn audio_placed_too_far_back_is_dropped_and_counted() {
    let mut w = RecordingWriter::new(SampleRate::Hz8000, Duration::from_secs(10));
    w.append(Channel::Caller, &[1; 24_000]);
    // Held: 1.5 s at most, whole 0.5 s chunks: frames from 12,000 on.
    assert_eq!(w.position(Channel::Bot), Duration::from_millis(1_500), "left behind, it goes on from there");
    w.write(Channel::Bot, Duration::ZERO, &[2; 800]);
    w.write(Channel::Bot, Duration::from_millis(1_450), &[3; 800]);
    assert_eq!(w.dropped(), Duration::from_millis(150));
    let bytes = w.finish();
    let info = WavInfo::parse(&bytes).unwrap();
    let bot = info.channel(&bytes, 1);
    assert!(bot[..12_000].iter().all(|&s| s == 0));
    assert!(bot[12_000..12_400].iter().all(|&s| s == 3));
    assert!(bot[12_400..].iter().all(|&s| s == 0));
    assert!(info.channel(&bytes, 0).iter().all(|&s| s == 1));
}
