//! G.711 decoding of any bytes, then re-encoding: every code maps back to itself (mu-law's
//! negative zero aside) and nothing panics.
#![no_main]

use cxb_codecs::g711;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pcm = Vec::new();
    g711::decode_mulaw_into(data, &mut pcm);
    let mut back = Vec::new();
    g711::encode_mulaw_into(&pcm, &mut back);
    for (a, b) in data.iter().zip(&back) {
        assert!(a == b || (*a == 0x7F && *b == 0xFF));
    }
    pcm.clear();
    back.clear();
    g711::decode_alaw_into(data, &mut pcm);
    g711::encode_alaw_into(&pcm, &mut back);
    assert_eq!(&back[..], data);
});
