//! Any text frame through both carrier dialects' parsers: an event or an error, never a panic;
//! a parsed start's stream id round-trips through an outbound message as valid JSON.
#![no_main]

use cxb_engine::protocol::{CarrierEvent, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    for protocol in [Protocol::Twilio, Protocol::Exotel] {
        if let Ok(CarrierEvent::Start(start)) = protocol.parse(text) {
            let mut out = String::new();
            protocol.mark(&start.stream_sid, text, &mut out);
            let v: serde_json::Value = serde_json::from_str(&out).expect("outbound mark is JSON");
            assert_eq!(v["mark"]["name"].as_str(), Some(text));
        }
    }
});
