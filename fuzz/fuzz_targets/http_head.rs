//! Any bytes as an HTTP request head: a request, "need more", or an error.
#![no_main]

use cxb_engine::http::{MAX_HEAD, parse_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, len))) = parse_head(data) {
        assert!(len <= data.len() && len <= MAX_HEAD.max(data.len()));
    }
});
