//! Base64 media payloads from any text: decode errors leave the output untouched, and what
//! decodes re-encodes to a payload that decodes to the same bytes.
#![no_main]

use cxb_codecs::payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut bytes = vec![1, 2, 3];
    match payload::decode_into(text, &mut bytes) {
        Ok(()) => {
            let mut again = String::new();
            payload::encode_into(&bytes[3..], &mut again);
            let mut round = Vec::new();
            payload::decode_into(&again, &mut round).expect("our own encoding decodes");
            assert_eq!(round, bytes[3..]);
        }
        Err(_) => assert_eq!(bytes, [1, 2, 3]),
    }
});
