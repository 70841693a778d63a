//! The recording writer through the public API: two sides written out of step come out
//! aligned in a WAV file that reads back; malformed WAV bytes are refused, never a panic.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cxb_codecs::SampleRate;
use cxb_outbox::wav::{Channel, RecordingWriter, WavInfo};

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
