//! SIP messages and TCP streams of any bytes: errors, never panics; a request that parses gets
//! a response that parses back with the same Call-ID, CSeq and Via headers.
#![no_main]

use cxb_sip::message::{Message, StartLine, frame, response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = frame(data) {
        assert!(n > 0 && n <= data.len());
    }
    let Ok(m) = Message::parse(data) else { return };
    if let StartLine::Request { .. } = m.start {
        let mut out = String::new();
        response(&m, 200, "OK", Some("t1"), &[], "", &mut out);
        // Header values are copied as they came: a value holding CR or LF would not
        // survive (it cannot: lines are split at CRLF), so the response must parse.
        let r = Message::parse(out.as_bytes()).expect("our response parses");
        assert_eq!(r.call_id(), m.call_id());
        assert_eq!(r.cseq(), m.cseq());
        assert_eq!(r.headers("Via").count(), m.headers("Via").count());
    }
});
