//! Digest headers of any text: `None`, never a panic; credentials that parse verify without
//! panicking; a challenge that parses writes a header that parses back to itself.
#![no_main]

use cxb_sip::digest::{Challenge, Credentials, nonce_fresh};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(c) = Credentials::parse(text) {
        let _ = c.verify("INVITE", "password");
        let _ = nonce_fresh(b"key", &c.nonce, 1_000, 300);
    }
    if let Some(challenge) = Challenge::parse(text)
        && !challenge.realm.contains(['"', '\\'])
        && !challenge.nonce.contains(['"', '\\'])
    {
        assert_eq!(Challenge::parse(&challenge.header()).as_ref(), Some(&challenge));
    }
});
