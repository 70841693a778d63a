//! Any string as a call token: refused with a reason, never a panic; and any claims signed
//! then verified come back unchanged, while a token with any byte changed is refused.
#![no_main]

use arbitrary::Arbitrary;
use cxb_contract::call_token::{CallClaims, CallKey, KeyRing};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    token: String,
    bot: String,
    call: String,
    org: String,
    exp: u64,
    now: u64,
    flip: usize,
}

fuzz_target!(|input: Input| {
    let ring = KeyRing::new(vec![CallKey::new("k1", &[9; 32]).expect("key")]);
    let _ = ring.verify(&input.token, input.now);
    let claims = CallClaims { jti: "j".into(), bot_id: input.bot.into(), call_id: input.call.into(), org_id: input.org.into(), exp: input.exp, ..CallClaims::default() };
    let token = ring.sign(&claims).expect("signed");
    match ring.verify(&token, input.now) {
        Ok(back) => assert_eq!(back, claims),
        Err(e) => assert!(input.now > input.exp || token.len() > cxb_contract::call_token::MAX_LEN, "{e}"),
    }
    let mut bytes = token.into_bytes();
    if !bytes.is_empty() {
        let i = input.flip % bytes.len();
        bytes[i] ^= 1;
        if let Ok(changed) = String::from_utf8(bytes) {
            // Base64 may decode a changed last character to the same bytes; then it is the
            // same token.
            if let Ok(back) = ring.verify(&changed, 0) {
                assert_eq!(back, claims);
            }
        }
    }
});
