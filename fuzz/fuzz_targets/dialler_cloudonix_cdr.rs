//! Cloudonix's CDR webhook through the pure parser the adapter uses: any headers, any body, with
//! and without a configured token. Never a panic; what it accepts is sane.
//!
//! Input layout (so seeds are readable): the first line is `token<TAB>name:value<TAB>…` (an
//! empty token means none configured), the rest is the body.
#![no_main]

use cxb_dialler::carrier::cloudonix::parse_cdr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let head = String::from_utf8_lossy(head);
    let mut fields = head.split('\t');
    let token = fields.next().filter(|t| !t.is_empty());
    let headers: Vec<(String, String)> = fields
        .map(|h| match h.split_once(':') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => (h.to_owned(), String::new()),
        })
        .collect();
    if let Ok(cdr) = parse_cdr(token, &headers, body) {
        assert!(cdr.started_at_ms >= 0 && cdr.ended_at_ms >= cdr.started_at_ms);
        assert!(!cdr.carrier_call_id.is_empty());
        assert_eq!(cdr.authenticated, token.is_some());
    }
});
