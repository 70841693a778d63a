//! Any bytes as a STUN message (what ICE-lite answers on a call's port before anything
//! else): parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = str0m::ice::StunMessage::parse(data);
});
