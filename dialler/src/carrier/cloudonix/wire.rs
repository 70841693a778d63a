//! The REST API's side of the wire, pure: request paths and bodies, the created session's token,
//! a session's state, and what an HTTP status means for the dialler.

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Serialize;
use serde_json::Value;

use super::PROFILE_SESSION;
use super::time::{clip, time_ms};
use crate::carrier::{Answer, CallRequest, CallState, CarrierError};

/// Characters escaped in a path segment (RFC 3986 `pchar` minus what is safe).
const SEGMENT: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'/').add(b'<').add(b'>')
    .add(b'?').add(b'`').add(b'{').add(b'}').add(b'\\').add(b'^').add(b'|');

/// Longest error text kept from a response body.
const MAX_MESSAGE: usize = 200;

/// `POST {api_base}/calls/{domain}/application`: places a call that runs a voice application.
pub(super) fn create_call_url(api_base: &str, domain: &str) -> String {
    format!("{}/calls/{}/application", api_base.trim_end_matches('/'), segment(domain))
}

/// `{api_base}/customers/self/domains/{domain}/sessions/{token}`: `GET` reads the session,
/// `DELETE` ends the call.
pub(super) fn session_url(api_base: &str, domain: &str, token: &str) -> String {
    format!("{}/customers/self/domains/{}/sessions/{}", api_base.trim_end_matches('/'), segment(domain), segment(token))
}

fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The body of the create-call request (see the module documentation).
#[derive(Debug, Serialize)]
pub(super) struct CreateCall<'a> {
    destination: &'a str,
    #[serde(rename = "caller-id")]
    caller_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cxml: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    /// Ring timeout, whole seconds.
    timeout: u64,
    profile: BTreeMap<&'static str, &'a str>,
}

impl<'a> CreateCall<'a> {
    pub(super) fn new(call: &'a CallRequest) -> Self {
        let (cxml, url) = match &call.answer {
            Answer::Cxml(doc) => (Some(doc.as_str()), None),
            Answer::Url(url) => (None, Some(url.as_str())),
        };
        let ring = call.ring_timeout;
        CreateCall {
            destination: &call.to,
            caller_id: &call.from,
            cxml,
            url,
            timeout: (ring.as_secs() + u64::from(ring.subsec_nanos() > 0)).max(1),
            profile: BTreeMap::from([(PROFILE_SESSION, call.session.as_str())]),
        }
    }
}

/// The session token of a create-call response (`{"domainId":…, "token":"…", …}`).
pub(super) fn created_token(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()?.get("token")? {
        Value::String(t) if !t.trim().is_empty() && t.len() <= 256 => Some(t.trim().to_owned()),
        _ => None,
    }
}

/// A session read with `GET`: ended when it has a `callEndTime` or a final `status`; live
/// otherwise, including statuses this code does not know (a call Cloudonix still keeps without
/// an end time is treated as alive, so its CAC lease is not given up early).
pub(super) fn session_state(body: &[u8]) -> Result<CallState, CarrierError> {
    let Ok(Value::Object(session)) = serde_json::from_slice::<Value>(body) else {
        return Err(CarrierError::Unavailable("Cloudonix answered with a session that is not a JSON object".into()));
    };
    let time = |k: &str| time_ms(session.get(k)).ok().flatten();
    let ended_at = time("callEndTime").or_else(|| time("endTime"));
    let status: String = match session.get("status") {
        Some(Value::String(s)) => {
            s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
        }
        _ => String::new(),
    };
    let final_status = matches!(
        status.as_str(),
        "completed" | "noanswer" | "busy" | "nocredit" | "cancel" | "canceled" | "cancelled" | "failed" | "error"
            | "congestion" | "external" | "rejected" | "hangup" | "ended" | "terminated" | "disconnected"
    );
    Ok(if ended_at.is_some() || final_status { CallState::Ended } else { CallState::Live })
}

/// What a non-success status means: 401/403 are a wrong API key (or one without rights on the
/// domain) and need an operator; 408, 429 and 5xx are passing; other 4xx refuse this call.
pub(super) fn status_error(status: u16, body: &[u8]) -> CarrierError {
    let message = error_message(body);
    match status {
        401 | 403 => CarrierError::Config(format!(
            "Cloudonix refused the API key (HTTP {status}{}): check the domain and that its API key is valid for it",
            if message.is_empty() { String::new() } else { format!(": {message}") }
        )),
        408 | 429 | 500..=599 => CarrierError::Unavailable(format!("HTTP {status} {message}").trim_end().to_owned()),
        400..=499 => CarrierError::Rejected { status, message },
        _ => CarrierError::Unavailable(format!("unexpected HTTP {status} {message}").trim_end().to_owned()),
    }
}

/// A short, printable error text: a JSON body's `message` or `error`, else the body itself.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
        ["message", "error", "detail"].iter().find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
    });
    let text = from_json.unwrap_or_else(|| text.into_owned());
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    clip(&one_line, MAX_MESSAGE).to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn call(answer: Answer, ring: Duration) -> CallRequest {
        CallRequest {
            session: "c-1".into(),
            to: "+15551230001".into(),
            from: "+15559870000".into(),
            answer,
            ring_timeout: ring,
            cdr_url: "http://127.0.0.1/cdr?token=t".into(),
            engine: None,
        }
    }

    #[test]
    fn create_call_body_is_cloudonix_shaped() {
        let c = call(Answer::Cxml("<Response><Hangup/></Response>".into()), Duration::from_millis(25_500));
        let body = serde_json::to_value(CreateCall::new(&c)).unwrap();
        assert_eq!(body, serde_json::json!({
            "destination": "+15551230001", "caller-id": "+15559870000",
            "cxml": "<Response><Hangup/></Response>", "timeout": 26, "profile": {"cxb-session": "c-1"},
        }));
        let c = call(Answer::Url("https://x/answer?a=1&b=2".into()), Duration::ZERO);
        let body = serde_json::to_value(CreateCall::new(&c)).unwrap();
        assert_eq!(body["url"], "https://x/answer?a=1&b=2");
        assert!(body.get("cxml").is_none());
        assert_eq!(body["timeout"], 1);
    }

    #[test]
    fn paths_escape_their_segments() {
        assert_eq!(create_call_url("https://api.cloudonix.io/", "acme.cloudonix.net"),
            "https://api.cloudonix.io/calls/acme.cloudonix.net/application");
        assert_eq!(session_url("http://h", "d", "a/b?c"), "http://h/customers/self/domains/d/sessions/a%2Fb%3Fc");
    }

    #[test]
    fn session_states() {
        let state = |j: &str| session_state(j.as_bytes()).unwrap();
        assert_eq!(state(r#"{"status":"ringing","callEndTime":0}"#), CallState::Live);
        assert_eq!(state(r#"{"status":"connected","callAnswerTime":1716239102610}"#), CallState::Live);
        assert_eq!(state(r#"{"status":"something-new"}"#), CallState::Live);
        assert_eq!(state(r#"{"status":"connected","callEndTime":1716239134343}"#), CallState::Ended);
        assert_eq!(state(r#"{"status":"NoAnswer"}"#), CallState::Ended);
        assert_eq!(state(r#"{"status":"busy"}"#), CallState::Ended);
        assert!(session_state(b"[1]").is_err());
        assert!(session_state(b"\xff").is_err());
    }

    #[test]
    fn statuses_map_to_errors() {
        assert!(matches!(status_error(401, b""), CarrierError::Config(m) if m.contains("API key")));
        assert!(matches!(status_error(403, b"{}"), CarrierError::Config(_)));
        assert!(matches!(status_error(503, b"down"), CarrierError::Unavailable(m) if m == "HTTP 503 down"));
        assert!(matches!(status_error(429, b""), CarrierError::Unavailable(_)));
        assert!(matches!(status_error(408, b""), CarrierError::Unavailable(_)));
        assert!(matches!(status_error(400, br#"{"message":"bad  destination"}"#),
            CarrierError::Rejected { status: 400, message } if message == "bad destination"));
        let long = vec![b'x'; 10_000];
        let err = status_error(404, &long);
        assert!(matches!(err, CarrierError::Rejected { message, .. } if message.len() == MAX_MESSAGE));
    }

    #[test]
    fn created_token_reads_the_documented_response() {
        let body = br#"{"domainId":3,"subscriberId":372,"destination":"63121233333","direction":"outbound-api",
            "token":"16a7294c989b11e7b3d32b9edb8660c7"}"#;
        assert_eq!(created_token(body).as_deref(), Some("16a7294c989b11e7b3d32b9edb8660c7"));
        assert_eq!(created_token(br#"{"token":""}"#), None);
        assert_eq!(created_token(br#"{"token":5}"#), None);
        assert_eq!(created_token(b"nope"), None);
    }
}
