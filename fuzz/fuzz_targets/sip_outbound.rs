//! An outbound SIP call fed any messages and times: no panic, and everything it sends parses.
#![no_main]

use std::time::Duration;

use cxb_sip::message::Message;
use cxb_sip::outbound::{Dial, DialOutput, OutboundCall};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dial = Dial {
        target: "sip:+15550100@127.0.0.1:5080".into(),
        from: "<sip:+15550199@127.0.0.1>".into(),
        to: "<sip:+15550100@127.0.0.1>".into(),
        call_id: "out1".into(),
        tag: "t1".into(),
        contact: "sip:cxb@127.0.0.1:5060".into(),
        sent_by: "127.0.0.1:5060".into(),
        transport: "UDP",
        sdp: "v=0\r\n".into(),
        credentials: Some(("trunk".into(), "secret".into())),
        headers: Vec::new(),
        ring_timeout: Duration::from_secs(30),
    };
    let mut now = Duration::ZERO;
    let mut call = OutboundCall::new(now, dial);
    // Each piece, split at 0xff, is a message; its first byte also moves the clock and
    // picks what the owner does.
    for piece in data.split(|&b| b == 0xff) {
        let op = piece.first().copied().unwrap_or(0);
        now += Duration::from_millis(u64::from(op) * 40);
        match op % 8 {
            0 => call.hang_up(now),
            1 => call.answer_reoffer("v=0\r\n"),
            _ => {}
        }
        if let Ok(m) = Message::parse(piece.get(1..).unwrap_or_default()) {
            call.on_message(now, &m);
        }
        call.handle_timeout(now);
        loop {
            match call.poll_output() {
                DialOutput::Transmit(m) => assert!(Message::parse(m.as_bytes()).is_ok(), "{m}"),
                DialOutput::Event(_) => {}
                DialOutput::Timeout(_) => break,
            }
        }
    }
});
