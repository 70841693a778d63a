//! Call records: written once per call by the engine's result outbox
//! (`POST /v1/runtime/results`, idempotent by call id), read by people with filters.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Fleet};
use crate::clock::{parse_time, rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Arg, Body, Filter, Query, limit, page};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    fn as_str(self) -> &'static str {
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// `caller`, `bot` or `tool`.
    pub role: String,
    pub text: String,
    /// Offset from the start of the call, ms.
    pub at_ms: u64,
    /// The bot was cut off; `text` is what the caller heard.
    #[serde(default)]
    pub interrupted: bool,
}

/// One cost item (e.g. STT seconds, LLM tokens, TTS characters, carrier minutes).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CostLine {
    pub item: String,
    pub quantity: f64,
    pub unit: String,
    #[serde(default)]
    pub amount: f64,
    #[serde(default)]
    pub currency: String,
}

/// Where the recording is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// Object-store key or URL.
    pub location: String,
    pub duration_ms: u64,
    #[serde(default = "two")]
    pub channels: u8,
}

fn two() -> u8 {
    2
}

/// A finished call's package, as the engine's outbox delivers it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallResult {
    /// Unique per call across the fleet; the same id twice is stored once.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub call_id: String,
    /// Needed when there is no `bot_id`; else the bot's organization is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    pub direction: Direction,
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub from: String,
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    pub outcome: Outcome,
    #[serde(default)]
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub end_reason: String,
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub transcript: Vec<Turn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<Recording>,
    #[serde(default)]
    #[schema(max_items = 100)]
    pub costs: Vec<CostLine>,
    /// Per-turn latencies, provider usage and anything else the engine measured.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metrics: serde_json::Map<String, Value>,
}

/// Bounds on a call result, checked before anything reaches the database (a NUL in `from`
/// made PostgreSQL fail with 500, which the engine's outbox retries forever). The body as a
/// whole is at most 1 MiB, the API's body limit; a one-hour call's transcript is about 60 KB.
mod bounds {
    /// Identifiers (`org_id`, `bot_id`, `campaign_id`, `contact_id`, a transcript line's
    /// `role`, a cost line's `item`, `unit` and `currency`, metrics' keys): bytes, no control
    /// characters. `call_id` is stricter: 1 to 128 of `[A-Za-z0-9-_.:]`.
    pub(super) const ID: usize = 128;
    /// Numbers and addresses (`from`, `to`: E.164, SIP URIs, `client:` names; empty when
    /// withheld): bytes, no control characters.
    pub(super) const NUMBER: usize = 256;
    /// Times (`started_at`, `answered_at`, `ended_at`), before they are parsed.
    pub(super) const TIME: usize = 64;
    /// `end_reason`: bytes, no control characters.
    pub(super) const REASON: usize = 256;
    /// `recording.location`, an object-store key or URL: bytes, no control characters.
    pub(super) const LOCATION: usize = 2048;
    /// Transcript lines.
    pub(super) const TURNS: usize = 10_000;
    /// One transcript line's `text`, and any string in `metrics`: bytes of free text (no NUL,
    /// no control character but `\n`, `\r` and `\t`).
    pub(super) const TEXT: usize = 64 * 1024;
    /// Cost lines.
    pub(super) const COSTS: usize = 100;
    /// `metrics` as JSON, and how deep its values nest.
    pub(super) const METRICS: usize = 256 * 1024;
    pub(super) const DEPTH: usize = 16;
}

/// An identifier, number or reason: at most `max` bytes and no control characters at all.
fn plain(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.len() > max {
        return Err(ApiError::invalid(field, format!("at most {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, "control characters are not allowed"));
    }
    Ok(())
}

/// Free text: at most `max` bytes, no NUL and no control characters but line breaks and tabs.
fn text(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.len() > max {
        return Err(ApiError::invalid(field, format!("at most {max} bytes")));
    }
    if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(ApiError::invalid(field, "NUL and control characters other than newline, carriage return and tab are not allowed"));
    }
    Ok(())
}

/// Every string of a result within its bound ([`bounds`]); the error names the field, such as
/// `transcript[3].text` or `metrics.tools[0].error`.
fn check_result(r: &CallResult) -> ApiResult<()> {
    if r.call_id.is_empty() || r.call_id.len() > bounds::ID || !r.call_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        return Err(ApiError::invalid("call_id", "1 to 128 letters, digits, '-', '_', '.' or ':'"));
    }
    for (field, value) in [("org_id", &r.org_id), ("bot_id", &r.bot_id), ("campaign_id", &r.campaign_id), ("contact_id", &r.contact_id)] {
        if let Some(value) = value {
            plain(field, value, bounds::ID)?;
        }
    }
    plain("from", &r.from, bounds::NUMBER)?;
    plain("to", &r.to, bounds::NUMBER)?;
    plain("started_at", &r.started_at, bounds::TIME)?;
    for (field, value) in [("answered_at", &r.answered_at), ("ended_at", &r.ended_at)] {
        if let Some(value) = value {
            plain(field, value, bounds::TIME)?;
        }
    }
    plain("end_reason", &r.end_reason, bounds::REASON)?;
    if r.transcript.len() > bounds::TURNS {
        return Err(ApiError::invalid("transcript", format!("at most {} lines", bounds::TURNS)));
    }
    for (i, turn) in r.transcript.iter().enumerate() {
        plain(&format!("transcript[{i}].role"), &turn.role, bounds::ID)?;
        text(&format!("transcript[{i}].text"), &turn.text, bounds::TEXT)?;
    }
    if let Some(recording) = &r.recording {
        plain("recording.location", &recording.location, bounds::LOCATION)?;
    }
    if r.costs.len() > bounds::COSTS {
        return Err(ApiError::invalid("costs", format!("at most {} lines", bounds::COSTS)));
    }
    for (i, cost) in r.costs.iter().enumerate() {
        plain(&format!("costs[{i}].item"), &cost.item, bounds::ID)?;
        plain(&format!("costs[{i}].unit"), &cost.unit, bounds::ID)?;
        plain(&format!("costs[{i}].currency"), &cost.currency, bounds::ID)?;
    }
    let size = serde_json::to_vec(&r.metrics).map_or(usize::MAX, |v| v.len());
    if size > bounds::METRICS {
        return Err(ApiError::invalid("metrics", format!("at most {} KiB as JSON", bounds::METRICS / 1024)));
    }
    for (key, value) in &r.metrics {
        let path = format!("metrics.{key}");
        plain(&path, key, bounds::ID)?;
        check_metric(&path, value, 1)?;
    }
    Ok(())
}

fn check_metric(path: &str, value: &Value, depth: usize) -> ApiResult<()> {
    if depth > bounds::DEPTH {
        return Err(ApiError::invalid(path, format!("nested deeper than {} levels", bounds::DEPTH)));
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

fn time(field: &str, t: &str) -> ApiResult<i64> {
    parse_time(t).ok_or_else(|| ApiError::invalid(field, "an RFC 3339 time"))
}

/// Stores a result once; the second delivery of the same call id answers 200 `duplicate`. A
/// result outside [`bounds`] answers 422 naming the field, which the engine's outbox treats as
/// final (the entry goes to its `dead/` folder) instead of retrying it.
pub(crate) async fn post_result(State(s): State<AppState>, _fleet: Fleet, Body(r): Body<CallResult>) -> ApiResult<(StatusCode, Json<Value>)> {
    check_result(&r)?;
    let org = match (&r.bot_id, &r.org_id) {
        (Some(bot), given) => {
            let org: Option<String> = sqlx::query_scalar("SELECT org_id FROM bots WHERE id = $1").bind(bot).fetch_optional(&s.db).await?;
            let org = org.ok_or_else(|| ApiError::invalid("bot_id", "no such bot"))?;
            if given.as_ref().is_some_and(|g| *g != org) {
                return Err(ApiError::invalid("org_id", "not the bot's organization"));
            }
            org
        }
        (None, Some(org)) => {
            let known: Option<String> = sqlx::query_scalar("SELECT id FROM orgs WHERE id = $1").bind(org).fetch_optional(&s.db).await?;
            known.ok_or_else(|| ApiError::invalid("org_id", "no such organization"))?
        }
        (None, None) => return Err(ApiError::invalid("bot_id", "a bot_id or an org_id is required")),
    };
    let started = time("started_at", &r.started_at)?;
    let answered = r.answered_at.as_deref().map(|t| time("answered_at", t)).transpose()?;
    let ended = r.ended_at.as_deref().map(|t| time("ended_at", t)).transpose()?;
    let duration = ended.map(|e| (e - answered.unwrap_or(started)).max(0));
    let now = s.now();
    let body = serde_json::to_string(&r).map_err(ApiError::internal)?;
    let mut tx = s.db.begin().await?;
    // A call the dialler placed already has its row: the result is merged into it.
    let value = serde_json::to_value(&r).map_err(ApiError::internal)?;
    if let Some(merged) = crate::attempts::merge_result(&mut tx, &r.call_id, &org, &value, now).await? {
        tx.commit().await?;
        let status = if merged { StatusCode::CREATED } else { StatusCode::OK };
        return Ok((status, Json(json!({ "call_id": r.call_id, "duplicate": !merged }))));
    }
    let done = sqlx::query(
        "INSERT INTO calls (id, org_id, direction, from_number, to_number, bot_id, campaign_id, contact_id, started_at, answered_at, \
         ended_at, duration_ms, outcome, body, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&r.call_id)
    .bind(&org)
    .bind(if r.direction == Direction::Inbound { "inbound" } else { "outbound" })
    .bind(&r.from)
    .bind(&r.to)
    .bind(r.bot_id.clone())
    .bind(r.campaign_id.clone())
    .bind(r.contact_id.clone())
    .bind(started)
    .bind(answered)
    .bind(ended)
    .bind(duration)
    .bind(r.outcome.as_str())
    .bind(&body)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok((StatusCode::OK, Json(json!({ "call_id": r.call_id, "duplicate": true }))));
    }
    let record = fetch(&mut tx, &org, &r.call_id).await?;
    crate::webhooks::enqueue(&mut tx, &org, "call.completed", &r.call_id, &record, now).await?;
    tx.commit().await?;
    metrics::counter!("cxb_api_call_results_total", "outcome" => r.outcome.as_str()).increment(1);
    Ok((StatusCode::CREATED, Json(json!({ "call_id": r.call_id, "duplicate": false }))))
}

const COLUMNS: &str = "id, direction, from_number, to_number, bot_id, campaign_id, contact_id, started_at, answered_at, ended_at, duration_ms, outcome, body";

fn view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    let body: String = row.try_get("body")?;
    let body: Value = serde_json::from_str(&body).map_err(ApiError::internal)?;
    let opt_time = |c: &str| -> ApiResult<Value> { Ok(row.try_get::<Option<i64>, _>(c)?.map_or(Value::Null, |t| rfc3339(t).into())) };
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "direction": row.try_get::<String, _>("direction")?,
        "from": row.try_get::<String, _>("from_number")?,
        "to": row.try_get::<String, _>("to_number")?,
        "bot_id": row.try_get::<Option<String>, _>("bot_id")?,
        "campaign_id": row.try_get::<Option<String>, _>("campaign_id")?,
        "contact_id": row.try_get::<Option<String>, _>("contact_id")?,
        "started_at": rfc3339(row.try_get("started_at")?),
        "answered_at": opt_time("answered_at")?,
        "ended_at": opt_time("ended_at")?,
        "duration_ms": row.try_get::<Option<i64>, _>("duration_ms")?,
        // A placed call whose engine result is still awaited shows as in progress.
        "outcome": match row.try_get::<String, _>("outcome")? {
            o if o.starts_with("pending_") => "in_progress".to_string(),
            o => o,
        },
        "end_reason": body["end_reason"],
        "transcript": body["transcript"],
        "recording": body["recording"],
        "costs": body["costs"],
        "metrics": body["metrics"],
    }))
}

pub(crate) async fn fetch(conn: &mut sqlx::AnyConnection, org: &str, id: &str) -> ApiResult<Value> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE id = $1 AND org_id = $2");
    let row = sqlx::query(AssertSqlSafe(sql)).bind(id).bind(org).fetch_optional(conn).await?;
    view(&row.ok_or_else(|| ApiError::not_found("call"))?)
}

pub(crate) async fn get(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let mut conn = s.db.acquire().await?;
    Ok(Json(fetch(&mut conn, &caller.org_id, &id).await?))
}

#[derive(Debug, Deserialize)]
pub(crate) struct CallQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// Calls started at or after (RFC 3339).
    since: Option<String>,
    /// Calls started before (RFC 3339).
    until: Option<String>,
    campaign_id: Option<String>,
    bot_id: Option<String>,
    outcome: Option<String>,
    direction: Option<String>,
}

/// Newest first; the cursor is `started_at ms:id` of the last call shown.
pub(crate) async fn list(State(s): State<AppState>, caller: Caller, Query(q): Query<CallQuery>) -> ApiResult<Json<Value>> {
    let limit = limit(q.limit)?;
    let mut f = Filter::new(&format!("SELECT {COLUMNS} FROM calls WHERE org_id = "));
    f.and("?", [Arg::Text(caller.org_id)]);
    for (clause, v) in [
        (" AND campaign_id = ?", q.campaign_id),
        (" AND bot_id = ?", q.bot_id),
        (" AND outcome = ?", q.outcome),
        (" AND direction = ?", q.direction),
    ] {
        if let Some(v) = v {
            f.and(clause, [Arg::Text(v)]);
        }
    }
    if let Some(t) = &q.since {
        f.and(" AND started_at >= ?", [Arg::Int(time("since", t)?)]);
    }
    if let Some(t) = &q.until {
        f.and(" AND started_at < ?", [Arg::Int(time("until", t)?)]);
    }
    if let Some(c) = &q.cursor {
        let (at, id) = c
            .split_once(':')
            .and_then(|(a, i)| Some((a.parse::<i64>().ok()?, i.to_string())))
            .ok_or_else(|| ApiError::invalid("cursor", "not a cursor from this API"))?;
        f.and(" AND (started_at < ? OR (started_at = ? AND id < ?))", [Arg::Int(at), Arg::Int(at), Arg::Text(id)]);
    }
    f.push(&format!(" ORDER BY started_at DESC, id DESC LIMIT {}", limit + 1));
    let rows = f.fetch_all(&s.db).await?;
    let items = rows.iter().map(view).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |v| {
        let at = v["started_at"].as_str().and_then(parse_time).unwrap_or_default();
        format!("{at}:{}", v["id"].as_str().unwrap_or_default())
    })))
}

/// One call record as the API shows it.
pub async fn view_call(s: &AppState, org: &str, id: &str) -> ApiResult<Value> {
    let mut conn = s.db.acquire().await?;
    fetch(&mut conn, org, id).await
}
