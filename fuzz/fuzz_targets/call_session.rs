//! A call fed any sequence of carrier frames (after a real `start`, or without one), at any
//! times: it keeps going or ends with a reason; it never panics.
#![no_main]

use arbitrary::Arbitrary;
use cxb_engine::bots::BotKind;
use cxb_engine::call::{Call, CallConfig};
use cxb_engine::metrics::WorkerMetrics;
use cxb_engine::protocol::Protocol;
use cxb_media::Timestamp;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    exotel: bool,
    turn_echo: bool,
    started: bool,
    frames: Vec<(u16, String)>,
}

fuzz_target!(|input: Input| {
    let protocol = if input.exotel { Protocol::Exotel } else { Protocol::Twilio };
    let bot = if input.turn_echo { BotKind::TurnEcho } else { BotKind::Echo };
    let metrics = WorkerMetrics::default();
    let mut call = Call::new(CallConfig::new(protocol, bot));
    let mut now = Timestamp::ZERO;
    if input.started {
        let start = if input.exotel {
            r#"{"event":"start","stream_sid":"s1","start":{"stream_sid":"s1"}}"#
        } else {
            r#"{"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1"}}"#
        };
        call.on_text(now, start, &metrics).expect("a valid start is accepted");
    }
    for (gap, text) in input.frames {
        now += std::time::Duration::from_millis(u64::from(gap));
        if call.on_text(now, &text, &metrics).is_err() {
            break;
        }
        call.on_timeout(now, &metrics);
        while call.poll_transmit().is_some() {}
    }
});
