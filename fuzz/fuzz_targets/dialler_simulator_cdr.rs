#![no_main]
//! The simulator's CDR parser on any bytes: never panics; what it accepts is consistent and
//! survives a write-and-read round trip.
use cxb_dialler::simulator::{CARRIER, SimulatorCdr, parse_cdr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cdr) = parse_cdr(data) else { return };
    assert!(!cdr.authenticated);
    assert!(!cdr.carrier_call_id.is_empty());
    assert!(cdr.ended_at_ms >= cdr.started_at_ms);
    // Rewritten in the simulator's own shape, it reads back the same.
    let doc = SimulatorCdr {
        carrier: CARRIER.into(),
        call_id: cdr.carrier_call_id.clone(),
        session: cdr.session.clone(),
        from: String::new(),
        to: String::new(),
        disposition: cdr.disposition,
        callee: None,
        cause: cdr.cause.clone(),
        started_at: cdr.started_at_ms,
        answered_at: cdr.answered_at_ms,
        ended_at: cdr.ended_at_ms,
        duration_ms: 0,
        answer_to_first_audio_ms: None,
    };
    let body = serde_json::to_vec(&doc).expect("a CDR serializes");
    assert_eq!(parse_cdr(&body).ok(), Some(cdr));
});
