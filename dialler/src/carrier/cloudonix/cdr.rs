//! Cloudonix's call-end record (CDR) webhook: the optional token check and the record itself,
//! read into a [`Cdr`]. Pure (no runtime), total (every input is a `Cdr` or a `CdrError`), and
//! tolerant as the module documentation describes.

use serde_json::{Map, Value};

use super::time::{clip, count, time_ms};
use super::PROFILE_SESSION;
use crate::carrier::{Cdr, CdrError, Disposition, constant_time_eq};

/// Longest carrier id or session id accepted; longer is not an id.
const MAX_ID: usize = 256;
/// Longest hangup-cause name kept in [`Cdr::cause`].
const MAX_CAUSE: usize = 100;

/// Checks the webhook's token (when `webhook_token` is set and not empty) and reads the CDR.
///
/// With a token configured the request must carry it as `Authorization: Bearer <token>`,
/// `Authorization: Basic <base64(any-user:token)>` (the form a `https://user:token@host/…`
/// `cdr-endpoint` produces) or `X-CX-APIKey: <token>`, else [`CdrError::Unauthorized`], before
/// the body is looked at. Without one, the CDR is read with `authenticated: false`. Header
/// names are matched case-insensitively. Never panics.
pub fn parse_cdr(webhook_token: Option<&str>, headers: &[(String, String)], body: &[u8]) -> Result<Cdr, CdrError> {
    let authenticated = match webhook_token.filter(|t| !t.is_empty()) {
        Some(token) if presents_token(headers, token.as_bytes()) => true,
        Some(_) => return Err(CdrError::Unauthorized),
        None => false,
    };
    let root: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let Value::Object(top) = &root else { return Err(malformed("not a JSON object")) };
    let session = match top.get("session") {
        None | Some(Value::Null) => None,
        Some(Value::Object(s)) => Some(s),
        Some(_) => return Err(malformed("`session` is not an object")),
    };
    // The session's own fields first, then the record's.
    let objects: Vec<&Map<String, Value>> = session.into_iter().chain([top]).collect();

    let carrier_call_id = match first(&objects, &["token"]) {
        Some(Value::String(t)) if !t.trim().is_empty() && t.len() <= MAX_ID => t.trim().to_owned(),
        Some(_) => return Err(malformed("the session token is not a short string")),
        None => return Err(malformed("no session token")),
    };
    let raw_disposition = match top.get("disposition") {
        Some(Value::String(d)) if !d.trim().is_empty() => d.trim(),
        Some(Value::Null) | None => return Err(malformed("no disposition")),
        Some(_) => return Err(malformed("`disposition` is not a string")),
    };

    let started_at_ms = first_time(&objects, &["callStartTime", "startTime"])?
        .or(first_time(&[top], &["timestamp"])?)
        .ok_or_else(|| malformed("no start time"))?;
    let duration_s = count(top.get("duration")).map_err(|e| malformed(format!("`duration`: {e}")))?;
    let billsec = count(top.get("billsec")).map_err(|e| malformed(format!("`billsec`: {e}")))?;
    let ended_at_ms = match first_time(&objects, &["callEndTime", "endTime"])? {
        Some(end) => end,
        None => duration_s
            .and_then(|d| i64::try_from(d).ok()?.checked_mul(1000)?.checked_add(started_at_ms))
            .ok_or_else(|| malformed("no end time"))?,
    };
    if ended_at_ms < started_at_ms {
        return Err(malformed("the call ended before it started"));
    }

    let causes = Causes::read(&objects)?;
    let known = disposition_of(raw_disposition);
    let mut disposition = known.unwrap_or(Disposition::Failed);
    if disposition != Disposition::Answered && causes.says_invalid_number() {
        disposition = Disposition::InvalidNumber;
    }
    let answered_at_ms = match first_time(&objects, &["callAnswerTime", "answerTime"])? {
        Some(at) => Some(at),
        // Answered without an answer time: the billed seconds end at the hangup.
        None if disposition == Disposition::Answered => billsec
            .filter(|&b| b > 0)
            .and_then(|b| ended_at_ms.checked_sub(i64::try_from(b).ok()?.checked_mul(1000)?)),
        None => None,
    };

    let mut cause: Vec<String> = Vec::new();
    if known.is_none() {
        cause.push(format!("disposition {}", clip(raw_disposition, MAX_CAUSE)));
    }
    cause.extend(causes.describe());
    Ok(Cdr {
        carrier_call_id,
        session: echoed_session(&objects),
        disposition,
        cause: (!cause.is_empty()).then(|| cause.join("; ")),
        started_at_ms,
        answered_at_ms,
        ended_at_ms,
        authenticated,
    })
}

/// Cloudonix dispositions (`ANSWER`, `BUSY`, `NOANSWER`, `CANCEL`, `FAILED`, `CONGESTION`) and the
/// spellings seen beside them (`CONNECTED`, `ANSWERED`, `NO ANSWER`, `CANCELLED`, …), compared
/// without case, spaces, `-` or `_`. `None` for anything else.
fn disposition_of(raw: &str) -> Option<Disposition> {
    let key: String = raw.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect();
    Some(match key.as_str() {
        "ANSWER" | "ANSWERED" | "CONNECTED" | "COMPLETED" => Disposition::Answered,
        "BUSY" | "USERBUSY" => Disposition::Busy,
        "NOANSWER" | "NORESPONSE" | "NOUSERRESPONSE" => Disposition::NoAnswer,
        "CANCEL" | "CANCELED" | "CANCELLED" => Disposition::Canceled,
        "FAILED" | "FAILURE" | "CONGESTION" | "CHANUNAVAIL" | "ERROR" | "NOCREDIT" | "REJECTED" => {
            Disposition::Failed
        }
        _ => return None,
    })
}

/// The hangup reasons a record may carry, under the names Cloudonix and its integrators use.
struct Causes<'a> {
    name: Option<&'a str>,
    sip: Option<u64>,
    q850: Option<u64>,
}

impl<'a> Causes<'a> {
    fn read(objects: &[&'a Map<String, Value>]) -> Result<Self, CdrError> {
        let name = match first(objects, &["hangupCause", "hangup_cause", "cause"]) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim()),
            _ => None,
        };
        let code = |what: &str, names: &[&str]| {
            count(first(objects, names)).map_err(|e| malformed(format!("{what}: {e}")))
        };
        let sip = code("SIP status", &["sipCode", "sip_code", "sipStatus", "sip_status"])?;
        let q850 = code("Q.850 cause", &["hangupCauseCode", "hangup_cause_code", "q850", "q850Cause", "q850_cause"])?;
        // `"404 Not Found"` as the cause names the SIP status.
        let sip = sip.or_else(|| name.and_then(leading_sip_status));
        Ok(Causes { name, sip, q850 })
    }

    /// SIP 404/484/604, Q.850 1 (unallocated number) or 28 (invalid number format).
    fn says_invalid_number(&self) -> bool {
        let by_name = self.name.is_some_and(|n| {
            let n = n.to_ascii_uppercase();
            n.contains("UNALLOCATED_NUMBER") || n.contains("INVALID_NUMBER_FORMAT")
        });
        by_name || matches!(self.sip, Some(404 | 484 | 604)) || matches!(self.q850, Some(1 | 28))
    }

    fn describe(&self) -> impl Iterator<Item = String> + '_ {
        let name = self.name.map(|n| clip(n, MAX_CAUSE).to_owned());
        // A name that is the SIP status already says it.
        let sip = self.sip.filter(|s| !self.name.is_some_and(|n| n.starts_with(&s.to_string())));
        name.into_iter().chain(sip.map(|s| format!("SIP {s}"))).chain(self.q850.map(|q| format!("Q.850 {q}")))
    }
}

/// The status code opening a SIP reason phrase (`486 Busy Here`).
fn leading_sip_status(reason: &str) -> Option<u64> {
    let (code, rest) = reason.split_at_checked(3)?;
    let is_status = code.bytes().all(|c| c.is_ascii_digit()) && (rest.is_empty() || rest.starts_with(' '));
    if is_status { code.parse().ok() } else { None }
}

/// Our session id, when the session's `profile` carries what `create_call` put there.
fn echoed_session(objects: &[&Map<String, Value>]) -> Option<String> {
    objects.iter().find_map(|o| match o.get("profile")?.get(PROFILE_SESSION)? {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_ID => Some(s.clone()),
        _ => None,
    })
}

/// The first non-null value of any of `names`, object by object.
fn first<'a>(objects: &[&'a Map<String, Value>], names: &[&str]) -> Option<&'a Value> {
    objects.iter().flat_map(|o| names.iter().filter_map(move |n| o.get(*n))).find(|v| !v.is_null())
}

/// The first of `names` holding a time; a present field that is not a time is an error.
fn first_time(objects: &[&Map<String, Value>], names: &[&str]) -> Result<Option<i64>, CdrError> {
    for object in objects {
        for name in names {
            if let Some(ms) = time_ms(object.get(*name)).map_err(|e| malformed(format!("`{name}`: {e}")))? {
                return Ok(Some(ms));
            }
        }
    }
    Ok(None)
}

fn malformed(why: impl Into<String>) -> CdrError {
    CdrError::Malformed(why.into())
}

/// Whether any credential header carries `token`. Every candidate is compared in constant time
/// and none short-circuits, so timing says nothing about which header matched or how much.
fn presents_token(headers: &[(String, String)], token: &[u8]) -> bool {
    let mut found = false;
    for (name, value) in headers {
        let value = value.trim();
        let presented: Option<Vec<u8>> = if name.eq_ignore_ascii_case("x-cx-apikey") {
            Some(value.as_bytes().to_vec())
        } else if name.eq_ignore_ascii_case("authorization") {
            match value.split_once(' ') {
                Some((scheme, cred)) if scheme.eq_ignore_ascii_case("bearer") => Some(cred.trim().as_bytes().to_vec()),
                // `user:password`; the password is the token.
                Some((scheme, cred)) if scheme.eq_ignore_ascii_case("basic") => base64_decode(cred.trim())
                    .and_then(|pair| Some(pair.get(pair.iter().position(|&c| c == b':')? + 1..)?.to_vec())),
                _ => None,
            }
        } else {
            None
        };
        if let Some(presented) = presented {
            found |= constant_time_eq(&presented, token);
        }
    }
    found
}


/// Standard or URL-safe base64, padding optional; `None` on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("Y3hiOnMzY3JldA=="), Some(b"cxb:s3cret".to_vec()));
        assert_eq!(base64_decode("Y3hiOnMzY3JldA"), Some(b"cxb:s3cret".to_vec()));
        assert_eq!(base64_decode(""), Some(Vec::new()));
        assert_eq!(base64_decode("a b"), None);
    }

    #[test]
    fn dispositions_in_every_spelling() {
        for (raw, want) in [("ANSWER", Disposition::Answered), ("CONNECTED", Disposition::Answered),
            ("answered", Disposition::Answered), ("BUSY", Disposition::Busy),
            ("NOANSWER", Disposition::NoAnswer), ("NO ANSWER", Disposition::NoAnswer),
            ("no-answer", Disposition::NoAnswer), ("CANCEL", Disposition::Canceled),
            ("CANCELLED", Disposition::Canceled), ("FAILED", Disposition::Failed),
            ("CONGESTION", Disposition::Failed)] {
            assert_eq!(disposition_of(raw), Some(want), "{raw}");
        }
        assert_eq!(disposition_of("VOICEMAIL?"), None);
    }
}
