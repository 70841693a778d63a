//! Dial request bodies of any bytes (`POST /sip/dial/BOT`): an error, or a request whose
//! fields are safe to write into SIP messages (no CR, LF or quotes) and an http(s) record URL.
#![no_main]

use cxb_engine::sip::dial::{DialRequest, host_part, user_part};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = DialRequest::parse(data) else { return };
    assert!(user_part(&r.to) && user_part(&r.from) && host_part(&r.trunk.host));
    for s in [Some(&r.to), Some(&r.from), Some(&r.trunk.host), r.trunk.username.as_ref(), r.trunk.password.as_ref()].into_iter().flatten() {
        assert!(!s.contains(['\r', '\n', '"']), "{s:?}");
    }
    assert!(r.cdr_url.is_none_or(|u| u.starts_with("http") && !u.contains(['\r', '\n'])));
});
