//! Session descriptions of any text: errors, never panics; an offer this endpoint accepts gets
//! an answer that parses back to the same codec and telephone events.
#![no_main]

use cxb_sip::sdp::{Local, SessionDescription};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(offer) = SessionDescription::parse(text) else { return };
    let Ok(negotiated) = offer.negotiate() else { return };
    let local = Local { address: std::net::Ipv4Addr::LOCALHOST.into(), port: 20_000, session_id: 1, version: 1 };
    let answer = SessionDescription::parse(&local.answer(&negotiated)).expect("our answer parses");
    let back = answer.negotiate().expect("our answer is acceptable");
    assert_eq!((back.codec, back.dtmf), (negotiated.codec, negotiated.dtmf));
});
