//! The simulator's call-end record: the JSON it posts to a call's `cdr_url`, and the parser
//! (pure, fuzzed: `dialler_simulator_cdr`).
//!
//! ```json
//! {"carrier":"simulator","call_id":"sim-5f3a0c1e-17","session":"c_01H…",
//!  "from":"+15550100000","to":"+15550100001","disposition":"answered","callee":"human",
//!  "cause":"callee_hangup","started_at":1767225600000,"answered_at":1767225604210,
//!  "ended_at":1767225619020,"duration_ms":14810,"answer_to_first_audio_ms":640}
//! ```
//!
//! - Times are Unix milliseconds. `answered_at` is `null` unless the call was answered;
//!   `duration_ms` is answer to end (0 when unanswered).
//! - `disposition`: `answered`, `busy`, `no_answer`, `failed` or `canceled`.
//! - `callee`: who answered, `human` or `voicemail` (`null` when unanswered). A real carrier
//!   does not know this; the simulator tells it so answering-machine detection can be checked.
//! - `cause`: `callee_hangup` (the person's talk time ran out), `voicemail_limit`, `bot_hangup`
//!   (the engine closed the stream), `cxml_hangup`, `service_ended` (a SIP service, simulated as
//!   talk time), `api_hangup` (hung up through the API after the answer), `stream_failed`
//!   (the `<Stream>` WebSocket did not open), `stream_error` (it broke), `cxml_fetch_failed`,
//!   `cxml_invalid`, `unsupported_verb`; unanswered: `user_busy`, `no_answer`,
//!   `network_failure`, `canceled`.
//! - `answer_to_first_audio_ms`: answer to the first non-silent media frame from the engine.
//!
//! Unknown fields are ignored. The record carries no signature: the per-call token in the
//! `cdr_url` query authenticates it.

use serde::{Deserialize, Serialize};

use crate::carrier::{Cdr, CdrError, Disposition};

/// The `carrier` field's value.
pub const CARRIER: &str = "simulator";
/// The largest CDR body read.
pub const MAX_CDR_BYTES: usize = 16 * 1024;

/// Who picked up an answered simulated call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Callee {
    Human,
    Voicemail,
}

/// The simulator's CDR document, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatorCdr {
    /// Always `"simulator"`.
    pub carrier: String,
    /// The carrier call id `create_call` returned.
    pub call_id: String,
    /// The request's session.
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    pub disposition: Disposition,
    #[serde(default)]
    pub callee: Option<Callee>,
    #[serde(default)]
    pub cause: Option<String>,
    /// Unix ms.
    pub started_at: i64,
    #[serde(default)]
    pub answered_at: Option<i64>,
    pub ended_at: i64,
    #[serde(default)]
    pub duration_ms: i64,
    #[serde(default)]
    pub answer_to_first_audio_ms: Option<i64>,
}

/// Reads a simulator CDR body. Never panics. `authenticated` is always `false`: the per-call
/// token of the `cdr_url` is the only credential.
pub fn parse_cdr(body: &[u8]) -> Result<Cdr, CdrError> {
    if body.len() > MAX_CDR_BYTES {
        return Err(CdrError::Malformed(format!("body larger than {MAX_CDR_BYTES} bytes")));
    }
    let doc: SimulatorCdr = serde_json::from_slice(body).map_err(|e| CdrError::Malformed(e.to_string()))?;
    if doc.carrier != CARRIER {
        return Err(CdrError::Malformed(format!("carrier is not `{CARRIER}`")));
    }
    if doc.call_id.is_empty() {
        return Err(CdrError::Malformed("empty call_id".into()));
    }
    if doc.ended_at < doc.started_at {
        return Err(CdrError::Malformed("ended_at is before started_at".into()));
    }
    if doc.answered_at.is_some_and(|a| a < doc.started_at || a > doc.ended_at) {
        return Err(CdrError::Malformed("answered_at is outside the call".into()));
    }
    Ok(Cdr {
        carrier_call_id: doc.call_id,
        session: doc.session,
        disposition: doc.disposition,
        cause: doc.cause,
        started_at_ms: doc.started_at,
        answered_at_ms: doc.answered_at,
        ended_at_ms: doc.ended_at,
        authenticated: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SimulatorCdr {
        SimulatorCdr {
            carrier: CARRIER.into(),
            call_id: "sim-1-1".into(),
            session: Some("s1".into()),
            from: "+15550100000".into(),
            to: "+15550100001".into(),
            disposition: Disposition::Answered,
            callee: Some(Callee::Voicemail),
            cause: Some("bot_hangup".into()),
            started_at: 1_000,
            answered_at: Some(4_000),
            ended_at: 9_000,
            duration_ms: 5_000,
            answer_to_first_audio_ms: Some(700),
        }
    }

    #[test]
    fn what_the_simulator_posts_reads_back() {
        let body = serde_json::to_vec(&sample()).expect("serializes");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(r#""disposition":"answered""#) && text.contains(r#""callee":"voicemail""#), "{text}");
        let cdr = parse_cdr(&body).expect("parses");
        assert_eq!(
            cdr,
            Cdr {
                carrier_call_id: "sim-1-1".into(),
                session: Some("s1".into()),
                disposition: Disposition::Answered,
                cause: Some("bot_hangup".into()),
                started_at_ms: 1_000,
                answered_at_ms: Some(4_000),
                ended_at_ms: 9_000,
                authenticated: false,
            }
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_optional_ones_may_be_missing() {
        let body = br#"{"carrier":"simulator","call_id":"x","disposition":"no_answer","started_at":5,
            "ended_at":5,"future_field":{"a":[1,2]}}"#;
        let cdr = parse_cdr(body).expect("parses");
        assert_eq!((cdr.disposition, cdr.session, cdr.answered_at_ms), (Disposition::NoAnswer, None, None));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let mut answered_late = sample();
        answered_late.answered_at = Some(10_000);
        let mut backwards = sample();
        backwards.ended_at = 0;
        let mut other = sample();
        other.carrier = "cloudonix".into();
        let mut no_id = sample();
        no_id.call_id.clear();
        for doc in [answered_late, backwards, other, no_id] {
            let body = serde_json::to_vec(&doc).expect("serializes");
            assert!(matches!(parse_cdr(&body), Err(CdrError::Malformed(_))), "{doc:?}");
        }
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            b"\xff\xfe",
            br#"{"carrier":"simulator","call_id":"x","disposition":"exploded","started_at":1,"ended_at":2}"#,
            br#"{"carrier":"simulator","call_id":"x","disposition":"busy","started_at":"1","ended_at":2}"#,
            br#"{"carrier":"simulator","call_id":"x","disposition":"busy","started_at":1e99,"ended_at":2}"#,
        ] {
            assert!(matches!(parse_cdr(bad), Err(CdrError::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
        let huge = vec![b' '; MAX_CDR_BYTES + 1];
        assert!(matches!(parse_cdr(&huge), Err(CdrError::Malformed(_))));
    }
}
