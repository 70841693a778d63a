//! Any `Range` header against any object size, and any `Cookie` header: never a panic; a
//! range that is answered lies inside the object and is not empty; a cookie found is a piece
//! of the header.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    range: String,
    size: u64,
    cookie: String,
    name: String,
}

fuzz_target!(|input: Input| {
    if let Ok(Some(r)) = cxb_contract::http::byte_range(Some(&input.range), input.size) {
        assert!(r.start < r.end && r.end <= input.size, "{r:?} of {}", input.size);
    }
    if let Some(v) = cxb_contract::http::cookie(&input.cookie, &input.name) {
        assert!(input.cookie.contains(v));
    }
});
