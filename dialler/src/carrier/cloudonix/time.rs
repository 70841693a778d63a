//! Times as Cloudonix writes them: UNIX epoch milliseconds (`callStartTime`), epoch seconds
//! (the CDR's `timestamp`), ISO 8601 (`startTime`), as JSON numbers or strings. Pure and total:
//! every input yields a time or a reason.

use serde_json::Value;

/// The latest time accepted: 9999-12-31T23:59:59.999Z. Anything later is garbage, not a call.
const MAX_MS: i64 = 253_402_300_799_999;

/// Epoch values below this are seconds, above it milliseconds: 10^11 s is the year 5138, while
/// 10^11 ms is 1973, long before any call this code will see.
const SECONDS_BELOW: f64 = 1e11;

/// Reads a time field as Unix milliseconds. `Ok(None)` for absent, `null`, `0` and `""` (how
/// Cloudonix writes "never", e.g. `callAnswerTime` of an unanswered call); `Err` for values that
/// are present but not a time.
pub(super) fn time_ms(value: Option<&Value>) -> Result<Option<i64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map_or(Err("not a number".to_owned()), epoch_ms),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Ok(None)
            } else if let Ok(n) = s.parse::<f64>() {
                epoch_ms(n)
            } else {
                iso8601_ms(s).map(Some).ok_or_else(|| format!("not a time: {:?}", clip(s, 40)))
            }
        }
        Some(_) => Err("a time must be a number or a string".to_owned()),
    }
}

/// Reads a non-negative count (seconds, a SIP or Q.850 code) given as a number or a numeric
/// string. Out-of-range or fractional values are errors.
pub(super) fn count(value: Option<&Value>) -> Result<Option<u64>, String> {
    let n = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n <= u64::from(u32::MAX) => Ok(Some(n)),
        _ => Err("not a small whole number".to_owned()),
    }
}

fn epoch_ms(n: f64) -> Result<Option<i64>, String> {
    if !n.is_finite() || n < 0.0 {
        return Err("a time must be a positive number".to_owned());
    }
    if n == 0.0 {
        return Ok(None);
    }
    let ms = if n < SECONDS_BELOW { n * 1000.0 } else { n };
    if ms > MAX_MS as f64 {
        return Err("a time beyond the year 9999".to_owned());
    }
    // In range and finite: the cast is exact up to the millisecond.
    Ok(Some(ms.round() as i64))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` (a space may stand for the `T`; no offset
/// means UTC) to Unix milliseconds; `None` when malformed or out of range.
fn iso8601_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = b.get(19..)?;
    let mut millis = 0;
    if let Some((b'.' | b',', frac)) = rest.split_first() {
        let len = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        // Milliseconds from the first three digits; finer digits are dropped.
        millis = frac.iter().take(len.min(3)).fold(0, |acc, &c| acc * 10 + i64::from(c - b'0'));
        millis *= [100, 10, 1].get(len.min(3) - 1).copied()?;
        rest = frac.get(len..)?;
    }
    let offset_minutes = match rest {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), tz @ ..] => {
            let tz: Vec<u8> = tz.iter().copied().filter(|&c| c != b':').collect();
            let [h1, h2, m1, m2] = tz.as_slice() else { return None };
            if !tz.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let h = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let m = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'-' { -(h * 60 + m) } else { h * 60 + m }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    let ms = seconds * 1000 + millis;
    (0..=MAX_MS).contains(&ms).then_some(ms)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// At most `max` characters of `s`, cut on a character boundary.
pub(super) fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn epoch_milliseconds_seconds_and_strings() {
        assert_eq!(time_ms(Some(&json!(1_716_239_100_387_i64))), Ok(Some(1_716_239_100_387)));
        assert_eq!(time_ms(Some(&json!(1_716_239_100))), Ok(Some(1_716_239_100_000)));
        assert_eq!(time_ms(Some(&json!("1716239100387"))), Ok(Some(1_716_239_100_387)));
        assert_eq!(time_ms(Some(&json!(1_716_239_100.5))), Ok(Some(1_716_239_100_500)));
        assert_eq!(time_ms(Some(&json!(0))), Ok(None));
        assert_eq!(time_ms(Some(&json!(""))), Ok(None));
        assert_eq!(time_ms(None), Ok(None));
        assert!(time_ms(Some(&json!(-5))).is_err());
        assert!(time_ms(Some(&json!(1e300))).is_err());
        assert!(time_ms(Some(&json!(true))).is_err());
        assert!(time_ms(Some(&json!({"a": 1}))).is_err());
    }

    #[test]
    fn iso8601_forms() {
        let at = |s: &str| time_ms(Some(&json!(s)));
        assert_eq!(at("2024-05-20T21:05:00Z"), Ok(Some(1_716_239_100_000)));
        assert_eq!(at("2024-05-20T21:05:00.387Z"), Ok(Some(1_716_239_100_387)));
        assert_eq!(at("2024-05-20T21:05:00.3Z"), Ok(Some(1_716_239_100_300)));
        assert_eq!(at("2024-05-20T21:05:00.387654321Z"), Ok(Some(1_716_239_100_387)));
        assert_eq!(at("2024-05-20 21:05:00"), Ok(Some(1_716_239_100_000)));
        assert_eq!(at("2024-05-20T23:05:00+02:00"), Ok(Some(1_716_239_100_000)));
        assert_eq!(at("2024-05-20T16:05:00-0500"), Ok(Some(1_716_239_100_000)));
        assert_eq!(at("2024-02-29T00:00:00Z"), Ok(Some(1_709_164_800_000)));
        for bad in ["2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z", "2024-05-20T24:00:00Z", "2024-05-20",
            "2024-05-20T21:05:00+2", "2024-05-20T21:05:00.Z", "2024-05-20T21:05:00Zjunk", "1969-12-31T23:59:59Z",
            "２０２４-05-20T21:05:00Z", "2024-05-20T21:05:0é"] {
            assert!(at(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(count(Some(&json!(486))), Ok(Some(486)));
        assert_eq!(count(Some(&json!("28"))), Ok(Some(28)));
        assert_eq!(count(Some(&json!(null))), Ok(None));
        assert!(count(Some(&json!(-1))).is_err());
        assert!(count(Some(&json!(1.5))).is_err());
        assert!(count(Some(&json!(u64::MAX))).is_err());
        assert!(count(Some(&json!([1]))).is_err());
    }

    #[test]
    fn clip_cuts_on_char_boundaries() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("hi", 10), "hi");
    }
}
