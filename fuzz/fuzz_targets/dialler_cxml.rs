#![no_main]
//! Placeholder: filled by the dialler work.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = data;
});
