//! An inbound SIP call fed any messages and times: no panic, and everything it sends parses.
#![no_main]

use std::time::Duration;

use cxb_sip::call::{InboundCall, Local, Output};
use cxb_sip::message::Message;
use libfuzzer_sys::fuzz_target;

const INVITE: &[u8] = b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag=a1\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Ok(invite) = Message::parse(INVITE) else { return };
    let local = Local { tag: "b1".into(), contact: "sip:bot@127.0.0.1".into(), sent_by: "127.0.0.1:5060".into(), transport: "UDP" };
    let Some(mut call) = InboundCall::new(&invite, local) else { return };
    let mut now = Duration::ZERO;
    // Each piece, split at 0xff, is a message; its first byte also moves the clock and
    // picks what the owner does.
    for piece in data.split(|&b| b == 0xff) {
        let op = piece.first().copied().unwrap_or(0);
        now += Duration::from_millis(u64::from(op) * 40);
        match op % 8 {
            0 => call.ring(now),
            1 => call.answer(now, "v=0\r\n"),
            2 => call.refuse(now, 486, "Busy Here"),
            3 => call.hang_up(now),
            4 => call.answer_reoffer("v=0\r\n"),
            5 => call.refer(now, "sip:+15550100@127.0.0.1"),
            _ => {}
        }
        if let Ok(m) = Message::parse(piece.get(1..).unwrap_or_default()) {
            call.on_message(now, &m);
        }
        call.handle_timeout(now);
        loop {
            match call.poll_output() {
                Output::Transmit(m) => assert!(Message::parse(m.as_bytes()).is_ok(), "{m}"),
                Output::Event(_) => {}
                Output::Timeout(_) => break,
            }
        }
    }
});
