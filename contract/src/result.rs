//! A finished call's result: what the engine writes into its outbox and the API stores
//! (`POST /v1/runtime/results`). One type for both sides, with the bounds the API enforces
//! ([`CallResult::check`]) and the cleaning the engine applies so that what it writes passes
//! them ([`CallResult::clean`]): a result the API refuses is buried in the outbox's `dead/`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::call_token::Direction;
use crate::ids::{BotId, CallId, CampaignId, ContactId, OrgId};
use crate::phone::PhoneNumber;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    NoAnswer,
    Busy,
    Failed,
    Voicemail,
    Canceled,
    Error,
}

impl Outcome {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::NoAnswer => "no_answer",
            Outcome::Busy => "busy",
            Outcome::Failed => "failed",
            Outcome::Voicemail => "voicemail",
            Outcome::Canceled => "canceled",
            Outcome::Error => "error",
        }
    }
}

/// One line of the transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// `caller`, `bot`, `agent` (a person from the Agent Desk who took the call over), `tool`
    /// or `dtmf` (a key the caller pressed; `text` is the key).
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub role: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 65536))]
    pub text: String,
    /// Offset from the start of the call, ms.
    pub at_ms: u64,
    /// The bot was cut off; `text` is what the caller heard.
    #[serde(default)]
    pub interrupted: bool,
}

/// One cost item (e.g. STT seconds, LLM tokens, TTS characters, carrier minutes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CostLine {
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub item: String,
    pub quantity: f64,
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub unit: String,
    #[serde(default)]
    pub amount: f64,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub currency: String,
}

impl CostLine {
    /// A quantity without a price.
    pub fn quantity(item: &str, quantity: f64, unit: &str) -> CostLine {
        CostLine { item: item.to_string(), quantity, unit: unit.to_string(), amount: 0.0, currency: String::new() }
    }
}

/// Where the recording is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// Object-store key or URL.
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    pub location: String,
    pub duration_ms: u64,
    #[serde(default = "two")]
    pub channels: u8,
}

fn two() -> u8 {
    2
}

/// A finished call's package, as the engine's outbox delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CallResult {
    /// Unique per call across the fleet; the same id twice is stored once.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,128}$"))]
    pub call_id: CallId,
    /// Needed when there is no `bot_id`; else the bot's organization is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 128))]
    pub org_id: Option<OrgId>,
    pub direction: Direction,
    #[cfg_attr(feature = "openapi", schema(value_type = String, max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"))]
    pub from: PhoneNumber,
    #[cfg_attr(feature = "openapi", schema(value_type = String, max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"))]
    pub to: PhoneNumber,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 128))]
    pub bot_id: Option<BotId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 128))]
    pub campaign_id: Option<CampaignId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 128))]
    pub contact_id: Option<ContactId>,
    /// RFC 3339.
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub answered_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub ended_at: Option<String>,
    pub outcome: Outcome,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"))]
    pub end_reason: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub transcript: Vec<Turn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<Recording>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 100))]
    pub costs: Vec<CostLine>,
    /// Per-turn latencies, provider usage and anything else the engine measured.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metrics: Map<String, Value>,
}

/// The bounds of a result. The body as a whole is at most 1 MiB, the API's body limit; a
/// one-hour call's transcript is about 60 KB.
pub mod bounds {
    /// Identifiers (`org_id`, `bot_id`, `campaign_id`, `contact_id`, a transcript line's
    /// `role`, a cost line's `item`, `unit` and `currency`, metrics' keys): bytes, no control
    /// characters. `call_id` is stricter: 1 to 128 of `[A-Za-z0-9-_.:]`.
    pub const ID: usize = 128;
    /// Numbers and addresses (`from`, `to`: E.164, SIP URIs, `client:` names; empty when
    /// withheld): bytes, no control characters.
    pub const NUMBER: usize = 256;
    /// Times (`started_at`, `answered_at`, `ended_at`), before they are parsed.
    pub const TIME: usize = 64;
    /// `end_reason`: bytes, no control characters.
    pub const REASON: usize = 256;
    /// `recording.location`, an object-store key or URL: bytes, no control characters.
    pub const LOCATION: usize = 2048;
    /// Transcript lines.
    pub const TURNS: usize = 10_000;
    /// One transcript line's `text`, and any string in `metrics`: bytes of free text (no NUL,
    /// no control character but `\n`, `\r` and `\t`).
    pub const TEXT: usize = 64 * 1024;
    /// Cost lines.
    pub const COSTS: usize = 100;
    /// `metrics` as JSON, and how deep its values nest.
    pub const METRICS: usize = 256 * 1024;
    pub const DEPTH: usize = 16;
}

/// A field of a result outside its bounds: its path (`transcript[3].text`,
/// `metrics.tools[0].error`) and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_string(), message: message.into() }
}

/// An identifier, number or reason: at most `max` bytes and no control characters at all.
fn plain(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(invalid(field, format!("at most {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(())
}

fn is_free_text_char(c: char) -> bool {
    !c.is_control() || matches!(c, '\n' | '\r' | '\t')
}

/// Free text: at most `max` bytes, no NUL and no control characters but line breaks and tabs.
fn text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(invalid(field, format!("at most {max} bytes")));
    }
    if !value.chars().all(is_free_text_char) {
        return Err(invalid(field, "NUL and control characters other than newline, carriage return and tab are not allowed"));
    }
    Ok(())
}

fn check_metric(path: &str, value: &Value, depth: usize) -> Result<(), FieldError> {
    if depth > bounds::DEPTH {
        return Err(invalid(path, format!("nested deeper than {} levels", bounds::DEPTH)));
    }
    match value {
        Value::String(s) => text(path, s, bounds::TEXT),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| check_metric(&format!("{path}[{i}]"), v, depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let path = format!("{path}.{k}");
            plain(&path, k, bounds::ID)?;
            check_metric(&path, v, depth + 1)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl CallResult {
    /// Every string within its bound ([`bounds`]); the error names the first field that is not.
    pub fn check(&self) -> Result<(), FieldError> {
        let r = self;
        let call_id = r.call_id.as_str();
        if call_id.is_empty() || call_id.len() > bounds::ID || !call_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            return Err(invalid("call_id", "1 to 128 letters, digits, '-', '_', '.' or ':'"));
        }
        let ids = [
            ("org_id", r.org_id.as_ref().map(OrgId::as_str)),
            ("bot_id", r.bot_id.as_ref().map(BotId::as_str)),
            ("campaign_id", r.campaign_id.as_ref().map(CampaignId::as_str)),
            ("contact_id", r.contact_id.as_ref().map(ContactId::as_str)),
        ];
        for (field, value) in ids {
            if let Some(value) = value {
                plain(field, value, bounds::ID)?;
            }
        }
        plain("from", r.from.as_str(), bounds::NUMBER)?;
        plain("to", r.to.as_str(), bounds::NUMBER)?;
        plain("started_at", &r.started_at, bounds::TIME)?;
        for (field, value) in [("answered_at", &r.answered_at), ("ended_at", &r.ended_at)] {
            if let Some(value) = value {
                plain(field, value, bounds::TIME)?;
            }
        }
        plain("end_reason", &r.end_reason, bounds::REASON)?;
        if r.transcript.len() > bounds::TURNS {
            return Err(invalid("transcript", format!("at most {} lines", bounds::TURNS)));
        }
        for (i, turn) in r.transcript.iter().enumerate() {
            plain(&format!("transcript[{i}].role"), &turn.role, bounds::ID)?;
            text(&format!("transcript[{i}].text"), &turn.text, bounds::TEXT)?;
        }
        if let Some(recording) = &r.recording {
            plain("recording.location", &recording.location, bounds::LOCATION)?;
        }
        if r.costs.len() > bounds::COSTS {
            return Err(invalid("costs", format!("at most {} lines", bounds::COSTS)));
        }
        for (i, cost) in r.costs.iter().enumerate() {
            plain(&format!("costs[{i}].item"), &cost.item, bounds::ID)?;
            plain(&format!("costs[{i}].unit"), &cost.unit, bounds::ID)?;
            plain(&format!("costs[{i}].currency"), &cost.currency, bounds::ID)?;
        }
        let size = serde_json::to_vec(&r.metrics).map_or(usize::MAX, |v| v.len());
        if size > bounds::METRICS {
            return Err(invalid("metrics", format!("at most {} KiB as JSON", bounds::METRICS / 1024)));
        }
        for (key, value) in &r.metrics {
            let path = format!("metrics.{key}");
            plain(&path, key, bounds::ID)?;
            check_metric(&path, value, 1)?;
        }
        Ok(())
    }

    /// Makes what a call produced acceptable to [`CallResult::check`] without losing the call:
    /// free text (what the caller said, what the model wrote, tool errors) keeps only `\n`,
    /// `\r` and `\t` of the control characters and is cut to its bound; ids and numbers keep
    /// none and are cut to theirs; the transcript keeps its first [`bounds::TURNS`] lines.
    pub fn clean(&mut self) {
        fn plain(s: &mut String, max: usize) {
            s.retain(|c| !c.is_control());
            truncate(s, max);
        }
        fn free(s: &mut String, max: usize) {
            s.retain(is_free_text_char);
            truncate(s, max);
        }
        fn metric(v: &mut Value) {
            match v {
                Value::String(s) => free(s, bounds::TEXT),
                Value::Array(items) => items.iter_mut().for_each(metric),
                Value::Object(map) => map.values_mut().for_each(metric),
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
        let call_id = self.call_id.as_mut_string();
        call_id.retain(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        truncate(call_id, bounds::ID);
        let ids = [
            self.org_id.as_mut().map(OrgId::as_mut_string),
            self.bot_id.as_mut().map(BotId::as_mut_string),
            self.campaign_id.as_mut().map(CampaignId::as_mut_string),
            self.contact_id.as_mut().map(ContactId::as_mut_string),
        ];
        for id in ids.into_iter().flatten() {
            plain(id, bounds::ID);
        }
        plain(self.from.as_mut_string(), bounds::NUMBER);
        plain(self.to.as_mut_string(), bounds::NUMBER);
        plain(&mut self.end_reason, bounds::REASON);
        self.transcript.truncate(bounds::TURNS);
        for turn in &mut self.transcript {
            plain(&mut turn.role, bounds::ID);
            free(&mut turn.text, bounds::TEXT);
        }
        self.metrics.values_mut().for_each(metric);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CallResult {
        CallResult {
            call_id: "CA123".into(),
            org_id: Some("org_1".into()),
            direction: Direction::Outbound,
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            bot_id: Some("support".into()),
            campaign_id: None,
            contact_id: None,
            started_at: "2026-12-06T10:00:00Z".into(),
            answered_at: Some("2026-12-06T10:00:01Z".into()),
            ended_at: Some("2026-12-06T10:01:00Z".into()),
            outcome: Outcome::Completed,
            end_reason: "stopped".into(),
            transcript: vec![Turn { role: "caller".into(), text: "hi".into(), at_ms: 10, interrupted: false }],
            recording: None,
            costs: vec![CostLine::quantity("stt_audio", 1.5, "second")],
            metrics: json!({ "barge_ins": 0 }).as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn a_result_round_trips_through_json_and_unknown_fields_are_refused() {
        let r = sample();
        let text = serde_json::to_string(&r).expect("serializes");
        assert_eq!(serde_json::from_str::<CallResult>(&text).expect("parses"), r);
        let mut v: Value = serde_json::from_str(&text).expect("json");
        v["surprise"] = json!(1);
        assert!(serde_json::from_value::<CallResult>(v).is_err());
        assert!(r.check().is_ok());
    }

    #[test]
    fn debug_never_shows_a_whole_number() {
        let r = sample();
        let debug = format!("{r:?}");
        for number in ["+15550001111", "15550001111", "5550001", "+15550002222", "5550002"] {
            assert!(!debug.contains(number), "{number} in {debug}");
        }
        assert!(debug.contains("…1111") && debug.contains("…2222"), "{debug}");
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!((json["from"].as_str(), json["to"].as_str()), (Some("+15550001111"), Some("+15550002222")));
    }

    #[test]
    fn what_check_refuses_clean_repairs() {
        let mut r = sample();
        r.from = "+1555\u{0}0001111".into();
        r.transcript[0].text = "hello\u{7}\nthere".into();
        r.metrics.insert("tools".into(), json!([{ "error": "bad\u{1b}[31m" }]));
        r.end_reason = "x".repeat(400);
        assert_eq!(r.check().map_err(|e| e.field), Err("from".to_string()));
        r.clean();
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.from, "+15550001111");
        assert_eq!(r.transcript[0].text, "hello\nthere");
        assert_eq!(r.end_reason.len(), bounds::REASON);
        assert_eq!(r.metrics["tools"][0]["error"], "bad[31m");
    }

    #[test]
    fn bad_call_ids_and_deep_metrics_are_named() {
        let mut r = sample();
        r.call_id = "a/b".into();
        assert_eq!(r.check().map_err(|e| e.field), Err("call_id".to_string()));
        let mut r = sample();
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!([deep]);
        }
        r.metrics.insert("deep".into(), deep);
        assert!(r.check().is_err_and(|e| e.field.starts_with("metrics.deep")));
    }
}
