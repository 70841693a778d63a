//! Contact CSV import and phone normalising on any bytes: never a panic; every accepted
//! number is E.164 (`+`, 8 to 15 digits, no leading 0) and normalising it again is a no-op;
//! rows are reported at most once.
#![no_main]

use cxb_contacts::{E164, import_csv};
use libfuzzer_sys::fuzz_target;

fn check(p: &E164) {
    let s = p.as_str();
    let digits = &s[1..];
    assert!(s.starts_with('+') && (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()), "{s}");
    assert!(!digits.starts_with('0'));
    assert_eq!(E164::parse(s, None).as_ref(), Ok(p));
}

fuzz_target!(|data: &[u8]| {
    let (country, body) = match data.split_first() {
        Some((b, rest)) if b % 3 == 0 => (Some("44"), rest),
        Some((b, rest)) if b % 3 == 1 => (Some("1"), rest),
        Some((_, rest)) => (None, rest),
        None => (None, data),
    };
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(p) = E164::parse(text, country) {
            check(&p);
        }
    }
    if let Ok(report) = import_csv(body, country) {
        let mut phones: Vec<&str> = report.contacts.iter().map(|c| c.phone.as_str()).collect();
        report.contacts.iter().for_each(|c| check(&c.phone));
        let n = phones.len();
        phones.sort_unstable();
        phones.dedup();
        assert_eq!(phones.len(), n, "duplicates are merged");
        let mut rows: Vec<u64> = report.rejected.iter().map(|r| r.row).collect();
        rows.dedup();
        assert_eq!(rows.len(), report.rejected.len(), "a row is rejected at most once");
    }
});
