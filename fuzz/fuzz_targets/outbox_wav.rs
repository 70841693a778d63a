//! Recording WAV files: any bytes through the header reader (refused or read within bounds),
//! and any sequence of writes through `RecordingWriter` reads back with the same length.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use cxb_codecs::SampleRate;
use cxb_codecs::wav::{Channel, RecordingWriter, WavInfo};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Write {
    bot: bool,
    at_ms: u16,
    len: u16,
    value: i16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    bytes: Vec<u8>,
    wide: bool,
    writes: Vec<Write>,
}

fuzz_target!(|input: Input| {
    if let Ok(info) = WavInfo::parse(&input.bytes) {
        assert!(info.data_offset + info.data_len <= input.bytes.len());
        assert!(info.channels == 1 || info.channels == 2);
        assert_eq!(info.channel(&input.bytes, 0).len() as u64, info.frames());
    }

    let rate = if input.wide { SampleRate::Hz16000 } else { SampleRate::Hz8000 };
    let mut w = RecordingWriter::new(rate, Duration::from_secs(2));
    for write in input.writes.iter().take(64) {
        let channel = if write.bot { Channel::Bot } else { Channel::Caller };
        let samples = vec![write.value; usize::from(write.len % 4000)];
        w.write(channel, Duration::from_millis(u64::from(write.at_ms % 4000)), &samples);
    }
    let duration = w.duration();
    assert!(duration <= Duration::from_secs(2));
    let bytes = w.finish();
    let info = WavInfo::parse(&bytes).expect("the writer's own file reads back");
    assert_eq!((info.data_offset, info.channels, info.sample_rate), (44, 2, rate.hz()));
    assert_eq!(bytes.len(), 44 + info.data_len);
    assert_eq!(info.duration(), duration);
});
