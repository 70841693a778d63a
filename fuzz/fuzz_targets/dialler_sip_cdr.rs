//! The engine's call-end record (the `sip` carrier's CDR) through its parser: any body. Never
//! a panic; what it accepts is bounded and unauthenticated (the call's token must vouch).
#![no_main]

use cxb_dialler::carrier::sip::parse_engine_cdr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cdr) = parse_engine_cdr(data) {
        assert!(!cdr.authenticated);
        assert!(cdr.carrier_call_id.len() <= 512 && cdr.session.as_ref().is_some_and(|s| s.len() <= 128));
    }
});
