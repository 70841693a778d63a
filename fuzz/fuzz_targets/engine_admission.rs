//! Any request head against a bot's inbound settings: admitted or refused, never a panic; a
//! bot that allows nothing unsigned admits only what its secrets match.
#![no_main]

use cxb_engine::admission::{Admitted, check_inbound};
use cxb_engine::http::parse_head;
use cxb_pipeline::config::Inbound;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((req, _))) = parse_head(data) else { return };
    let mut inbound = Inbound::default();
    inbound.secrets.insert("twilio_auth_token".into(), "tok".into());
    inbound.secrets.insert("secret".into(), "a-long-enough-secret".into());
    let urls = vec![format!("ws://{}{}", req.host.clone().unwrap_or_default(), req.path)];
    if let Ok(admitted) = check_inbound(&inbound, &req, &urls) {
        assert!(matches!(admitted, Admitted::TwilioSignature | Admitted::InboundSecret));
    }
});
