//! LINEAR16 decoding of any bytes: odd lengths are errors, even lengths round-trip.
#![no_main]

use cxb_codecs::l16;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pcm = Vec::new();
    match l16::decode_into(data, &mut pcm) {
        Ok(()) => {
            let mut back = Vec::new();
            l16::encode_into(&pcm, &mut back);
            assert_eq!(&back[..], data);
        }
        Err(e) => {
            assert_eq!(e.len % 2, 1);
            assert!(pcm.is_empty());
        }
    }
});
