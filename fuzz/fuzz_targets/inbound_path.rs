//! The inbound media path fed carrier payloads of any size and content, at any times.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use cxb_codecs::Encoding;
use cxb_media::Timestamp;
use cxb_media::path::{Inbound, InboundConfig};
use cxb_media::vad::VadConfig;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    linear16: bool,
    payloads: Vec<(u16, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let encoding = if input.linear16 { Encoding::L16 } else { Encoding::Mulaw };
    let mut path = Inbound::new(InboundConfig { encoding, vad: VadConfig::default(), end_of_turn: Duration::from_millis(500) });
    let mut now = Timestamp::ZERO;
    for (gap_ms, payload) in input.payloads {
        now += Duration::from_millis(u64::from(gap_ms));
        let _ = path.process(now, &payload);
        let _ = path.poll_turn(now);
    }
});
