//! Placed calls from the dialler's side: the record made when a call is placed, the carrier's
//! call-end record (CDR) and the engine's result merged into it, and the decision that follows
//! (the contact's disposition or its next attempt, the `call.completed` webhook). Then each
//! campaign's statistics, computed from those rows.
//!
//! A placed call's row goes `live` (placed) → `ended` (call-end record in) → `final` (decided).
//! It is final once the call-end record is in and, when an engine runs the call, its result too
//! (or that result is given up on). Every step is one conditional `UPDATE`, so a repeated
//! webhook or a second dialler changes nothing.
//!
//! An answered call that an engine was to run counts as `completed` only on the engine's word:
//! with no result at all (given up on after the grace, or at once when the engine's host stopped
//! heartbeating) or a result whose stream broke before the callee said anything, it is `failed`
//! and retried by the campaign's policy. The engine slot reserved for a call is given back when
//! its call-end record comes (see [`crate::fleet::release_in`]).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Row};

use crate::AppState;
use crate::auth::Caller;
use crate::calls::fetch;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::fleet::{self, SlotHold};
use crate::model::{Campaign, RetryOn};

/// A call the dialler is about to place.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub id: String,
    pub org_id: String,
    pub campaign_id: Option<String>,
    pub contact_id: Option<String>,
    /// The contact's attempt number this call is (1-based); direct calls have none.
    pub attempt: Option<i64>,
    pub from: String,
    pub to: String,
    pub bot_id: Option<String>,
    pub assistant_id: Option<String>,
    pub carrier: String,
    /// The secret the carrier's call-end webhook presents (`?token=`).
    pub cdr_token: String,
    /// Whether an engine runs the answered call (so its result is awaited).
    pub expects_result: bool,
    /// Routing notes kept in the record: destination type, balancer, members tried.
    pub routing: Value,
    /// The call's live lease runs out then unless renewed.
    pub lease_until: i64,
    /// The engine slot reserved for the call, given back when the call ends.
    pub slot: Option<SlotHold>,
}

/// Writes the record and the live-call lease of a call about to be placed, in `tx`.
pub async fn insert_call(tx: &mut AnyConnection, call: &NewCall, now: i64) -> ApiResult<()> {
    let body = json!({
        "call_id": call.id,
        "direction": "outbound",
        "from": call.from,
        "to": call.to,
        "started_at": rfc3339(now),
        "outcome": "in_progress",
        "metrics": { "routing": call.routing },
    });
    sqlx::query(
        "INSERT INTO calls (id, org_id, direction, from_number, to_number, bot_id, campaign_id, contact_id, started_at, outcome, body, \
         created_at, status, attempt, carrier, cdr_token, expects_result, assistant_id, engine_host, reservation, reservation_until) \
         VALUES ($1, $2, 'outbound', $3, $4, $5, $6, $7, $8, 'in_progress', $9, $8, 'live', $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(&call.id)
    .bind(&call.org_id)
    .bind(&call.from)
    .bind(&call.to)
    .bind(call.bot_id.clone())
    .bind(call.campaign_id.clone())
    .bind(call.contact_id.clone())
    .bind(now)
    .bind(body.to_string())
    .bind(call.attempt)
    .bind(&call.carrier)
    .bind(&call.cdr_token)
    .bind(i64::from(call.expects_result))
    .bind(call.assistant_id.clone())
    .bind(call.slot.as_ref().map(|h| h.host_id.clone()))
    .bind(call.slot.as_ref().map(|h| h.token.clone()))
    .bind(call.slot.as_ref().map(|h| h.until))
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO call_leases (call_id, org_id, campaign_id, assistant_id, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&call.id)
        .bind(&call.org_id)
        .bind(call.campaign_id.clone())
        .bind(call.assistant_id.clone())
        .bind(call.lease_until)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Notes the carrier's id of a placed call.
pub async fn set_carrier_call_id(db: &AnyPool, call_id: &str, carrier_call_id: &str) -> ApiResult<()> {
    sqlx::query("UPDATE calls SET carrier_call_id = $1 WHERE id = $2").bind(carrier_call_id).bind(call_id).execute(db).await?;
    Ok(())
}

/// How a call ended, from the carrier's call-end record (or from the dialler when the carrier
/// refused the call or its record never came).
#[derive(Debug, Clone)]
pub struct CallEnd {
    /// `completed` (answered), `busy`, `no_answer`, `failed`, `canceled`.
    pub outcome: &'static str,
    /// Why, e.g. `invalid_number`, `486 Busy Here`, `no_cdr`.
    pub reason: Option<String>,
    pub answered_at: Option<i64>,
    pub ended_at: i64,
}

/// Records a call's end: the row becomes `ended` (once: a repeated record returns `false`), its
/// live lease and its engine slot's reservation are released, and the call is decided if
/// nothing else is awaited.
pub async fn record_end(db: &AnyPool, call_id: &str, end: &CallEnd, now: i64) -> ApiResult<bool> {
    let mut tx = db.begin().await?;
    // Write first, so SQLite takes the write lock at the start of the transaction (a read
    // upgraded to a write fails when another writer got in between).
    let claimed = sqlx::query("UPDATE calls SET cdr_at = $1 WHERE id = $2 AND cdr_at IS NULL").bind(now).bind(call_id).execute(&mut *tx).await?;
    if claimed.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    let row = sqlx::query("SELECT body, outcome, result_at, expects_result, engine_host, reservation, reservation_until FROM calls WHERE id = $1")
        .bind(call_id)
        .fetch_one(&mut *tx)
        .await?;
    let mut body: Value = serde_json::from_str(&row.try_get::<String, _>(0)?).map_err(ApiError::internal)?;
    let current: String = row.try_get(1)?;
    let result_in = row.try_get::<Option<i64>, _>(2)?.is_some();
    let awaits_result = row.try_get::<i64, _>(3)? != 0 && end.answered_at.is_some() && !result_in;
    if let (Some(host_id), Some(token), Some(until)) = (row.try_get::<Option<String>, _>(4)?, row.try_get::<Option<String>, _>(5)?, row.try_get::<Option<i64>, _>(6)?) {
        // Whether or not the call reached its engine, it will not come any more: a slot still
        // held for it is free again (an engine that took the call holds no reservation for it).
        fleet::release_in(&mut tx, &SlotHold { host_id, token, until }, now).await?;
    }
    // The engine's verdict (an answering machine; a stream that broke before anyone spoke)
    // outranks the carrier's "answered".
    let outcome = match current.as_str() {
        "voicemail" => "voicemail",
        "failed" if result_in && end.outcome == "completed" => "failed",
        _ => end.outcome,
    };
    body["outcome"] = outcome.into();
    if body.get("end_reason").is_none_or(Value::is_null) {
        body["end_reason"] = end.reason.clone().unwrap_or_else(|| outcome.to_string()).into();
    }
    body["carrier_end_reason"] = end.reason.clone().into();
    let duration = end.answered_at.map(|a| (end.ended_at - a).max(0));
    sqlx::query(
        "UPDATE calls SET cdr_at = $1, status = 'ended', outcome = $2, answered_at = $3, ended_at = $4, duration_ms = $5, body = $6 \
         WHERE id = $7",
    )
    .bind(now)
    .bind(if awaits_result { "in_progress" } else { outcome })
    .bind(end.answered_at)
    .bind(end.ended_at)
    .bind(duration)
    .bind(body.to_string())
    .bind(call_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM call_leases WHERE call_id = $1").bind(call_id).execute(&mut *tx).await?;
    if awaits_result {
        // Keep the carrier's outcome until the result comes (or is given up on).
        sqlx::query("UPDATE calls SET outcome = $1 WHERE id = $2").bind(format!("pending_{outcome}")).bind(call_id).execute(&mut *tx).await?;
    } else {
        finalize_in(&mut tx, call_id, now).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Merges the engine's result into a placed call's row (the dialler made it; the engine was
/// told its id). Returns `None` when no placed call has that id, `Some(false)` when the result
/// was already merged. A result that comes after the call was decided without it (see
/// [`give_up_result`]) is still merged, once: its transcript, recording, costs and metrics
/// join the record, whose metrics gain `result_late: true`; the outcome and the contact's
/// disposition stay as they were decided.
pub(crate) async fn merge_result(tx: &mut AnyConnection, call_id: &str, org: &str, result: &Value, now: i64) -> ApiResult<Option<bool>> {
    // Write first (see `record_end`): claim the result slot, then read.
    let claimed = sqlx::query(
        "UPDATE calls SET result_at = $1, result_overdue_at = NULL \
         WHERE id = $2 AND org_id = $3 AND carrier IS NOT NULL AND (result_at IS NULL OR result_overdue_at IS NOT NULL)",
    )
    .bind(now)
    .bind(call_id)
    .bind(org)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        let placed: Option<String> = sqlx::query_scalar("SELECT org_id FROM calls WHERE id = $1 AND carrier IS NOT NULL").bind(call_id).fetch_optional(&mut *tx).await?;
        return match placed {
            None => Ok(None),
            Some(owner) if owner != org => Err(ApiError::invalid("call_id", "belongs to another organization")),
            Some(_) => Ok(Some(false)),
        };
    }
    let row = sqlx::query("SELECT body, outcome, status, cdr_at FROM calls WHERE id = $1").bind(call_id).fetch_one(&mut *tx).await?;
    let mut body: Value = serde_json::from_str(&row.try_get::<String, _>(0)?).map_err(ApiError::internal)?;
    let late = row.try_get::<String, _>(2)? == "final";
    let fields: &[&str] = if late { &["transcript", "recording", "costs"] } else { &["transcript", "recording", "costs", "end_reason"] };
    for &field in fields {
        if let Some(v) = result.get(field) {
            body[field] = v.clone();
        }
    }
    let routing = body["metrics"]["routing"].take();
    body["metrics"] = result.get("metrics").cloned().unwrap_or_else(|| json!({}));
    body["metrics"]["routing"] = routing;
    let first_audio = result["metrics"]["answer_to_first_audio_ms"].as_i64();
    let bot = result["bot_id"].as_str().map(str::to_string);
    if late {
        body["metrics"]["result_late"] = true.into();
        sqlx::query("UPDATE calls SET body = $1, first_audio_ms = $2, bot_id = COALESCE(bot_id, $3) WHERE id = $4")
            .bind(body.to_string())
            .bind(first_audio)
            .bind(bot)
            .bind(call_id)
            .execute(&mut *tx)
            .await?;
        return Ok(Some(true));
    }
    let machine = result["outcome"] == "voicemail";
    let mut outcome: String = row.try_get(1)?;
    if let Some(carrier) = outcome.strip_prefix("pending_") {
        outcome = carrier.to_string();
    }
    let answered = outcome == "completed" || outcome == "in_progress";
    if machine && answered {
        outcome = "voicemail".into();
    } else if answered && broke_before_conversation(result) {
        outcome = "failed".into();
    }
    body["outcome"] = outcome.clone().into();
    let cdr_in = row.try_get::<Option<i64>, _>(3)?.is_some();
    sqlx::query("UPDATE calls SET body = $1, outcome = $2, first_audio_ms = $3, bot_id = COALESCE(bot_id, $4) WHERE id = $5")
        .bind(body.to_string())
        .bind(&outcome)
        .bind(first_audio)
        .bind(bot)
        .bind(call_id)
        .execute(&mut *tx)
        .await?;
    if cdr_in {
        finalize_in(tx, call_id, now).await?;
    }
    Ok(Some(true))
}

/// Why an ended call's engine result is given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoResult {
    /// None came within the grace after the call-end record.
    Overdue,
    /// The engine host the call was routed to stopped heartbeating: none can come.
    HostLost,
}

impl NoResult {
    /// The end reason of an answered call decided without its result.
    pub fn reason(self) -> &'static str {
        match self {
            NoResult::Overdue => "no_engine_result",
            NoResult::HostLost => "engine_host_lost",
        }
    }
}

/// Engine end reasons that say the call's media stream failed (or the engine did), rather than
/// that the call ended: the carrier never sent `stop`, broke the protocol, stopped reading or
/// sending, the call's processing panicked, or the engine shut down under it.
const BROKEN_STREAM: &[&str] = &["stream_error", "protocol_error", "peer_closed", "slow_consumer", "panicked", "idle_timeout", "shutdown"];

/// Whether an engine's result says its stream broke (or the engine failed it) before the callee
/// said anything: no caller turn in the transcript. Such an answered call is `failed`, not
/// `completed`, and retried by the campaign's policy.
pub fn broke_before_conversation(result: &Value) -> bool {
    let reason = result["end_reason"].as_str().unwrap_or_default();
    let broke = BROKEN_STREAM.contains(&reason) || result["outcome"] == "error";
    let spoke = result["transcript"].as_array().is_some_and(|t| t.iter().any(|turn| turn["role"] == "caller"));
    broke && !spoke
}

/// Decides an ended call whose engine result is overdue or cannot come (`why`). An answered call
/// that an engine never reported on did not reach the bot as far as anyone can tell: it is
/// `failed` with `why`'s reason and retried by the campaign's policy; other outcomes stand. A
/// result that still comes is merged by [`merge_result`] without changing the decision.
pub async fn give_up_result(db: &AnyPool, call_id: &str, why: NoResult, now: i64) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    let claimed = sqlx::query("UPDATE calls SET result_at = $1, result_overdue_at = $1 WHERE id = $2 AND status = 'ended' AND result_at IS NULL")
        .bind(now)
        .bind(call_id)
        .execute(&mut *tx)
        .await?;
    if claimed.rows_affected() > 0 {
        let row = sqlx::query("SELECT outcome, body FROM calls WHERE id = $1").bind(call_id).fetch_one(&mut *tx).await?;
        let outcome: String = row.try_get(0)?;
        let carrier = outcome.strip_prefix("pending_").unwrap_or(&outcome).to_string();
        if carrier == "completed" {
            let mut body: Value = serde_json::from_str(&row.try_get::<String, _>(1)?).map_err(ApiError::internal)?;
            body["outcome"] = "failed".into();
            body["end_reason"] = why.reason().into();
            sqlx::query("UPDATE calls SET outcome = 'failed', body = $1 WHERE id = $2").bind(body.to_string()).bind(call_id).execute(&mut *tx).await?;
        } else {
            sqlx::query("UPDATE calls SET outcome = $1 WHERE id = $2").bind(carrier).bind(call_id).execute(&mut *tx).await?;
        }
        finalize_in(&mut tx, call_id, now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Which retry rule an outcome falls under; `None`: never retried.
fn retry_rule(outcome: &str, reason: &str) -> Option<RetryOn> {
    match outcome {
        "busy" => Some(RetryOn::Busy),
        "no_answer" => Some(RetryOn::NoAnswer),
        "failed" | "canceled" if reason != "invalid_number" => Some(RetryOn::Failed),
        "voicemail" => Some(RetryOn::Voicemail),
        _ => None,
    }
}

/// Makes an ended call final: sets its contact's disposition or next attempt and queues the
/// `call.completed` webhook. Nothing happens for a call already final.
async fn finalize_in(tx: &mut AnyConnection, call_id: &str, now: i64) -> ApiResult<()> {
    let done = sqlx::query("UPDATE calls SET status = 'final' WHERE id = $1 AND status <> 'final'").bind(call_id).execute(&mut *tx).await?;
    if done.rows_affected() == 0 {
        return Ok(());
    }
    let row = sqlx::query("SELECT org_id, campaign_id, contact_id, outcome, attempt, body FROM calls WHERE id = $1").bind(call_id).fetch_one(&mut *tx).await?;
    let org: String = row.try_get(0)?;
    let outcome: String = row.try_get(3)?;
    if let (Some(campaign), Some(contact)) = (row.try_get::<Option<String>, _>(1)?, row.try_get::<Option<String>, _>(2)?) {
        let body: Value = serde_json::from_str(&row.try_get::<String, _>(5)?).map_err(ApiError::internal)?;
        let reason = body["end_reason"].as_str().unwrap_or_default().to_string();
        let attempt = row.try_get::<Option<i64>, _>(4)?.unwrap_or(1);
        let stored: Option<String> = sqlx::query_scalar("SELECT body FROM campaigns WHERE id = $1").bind(&campaign).fetch_optional(&mut *tx).await?;
        let policy = match stored {
            Some(b) => serde_json::from_str::<Campaign>(&b).map_err(ApiError::internal)?.retry,
            None => Default::default(),
        };
        let rule = retry_rule(&outcome, &reason);
        let (status, disposition, next) = match rule {
            Some(r) if policy.retry_on.contains(&r) && attempt < i64::from(policy.max_attempts) => {
                ("pending", None, Some(now + policy.backoff_ms(attempt as u32)))
            }
            Some(r) if policy.retry_on.contains(&r) => ("done", Some("max_attempts".to_string()), None),
            _ if reason == "invalid_number" => ("done", Some("invalid_number".to_string()), None),
            _ => ("done", Some(outcome.clone()), None),
        };
        sqlx::query(
            "UPDATE contacts SET status = $1, disposition = $2, next_attempt_at = $3, updated_at = $4 \
             WHERE id = $5 AND status = 'dialing'",
        )
        .bind(status)
        .bind(disposition)
        .bind(next)
        .bind(now)
        .bind(&contact)
        .execute(&mut *tx)
        .await?;
    }
    let record = fetch(tx, &org, call_id).await?;
    crate::webhooks::enqueue(tx, &org, "call.completed", call_id, &record, now).await?;
    metrics::counter!("cxb_api_call_results_total", "outcome" => outcome).increment(1);
    Ok(())
}

/// The nearest rank (1-based) of the `p`-th percentile (0–100) among `n` values.
fn nearest_rank(n: i64, p: f64) -> i64 {
    (((p / 100.0) * n as f64).ceil() as i64).clamp(1, n.max(1))
}

/// A campaign's calls' `column` where `filter` holds (both constants of this file; `$1` is
/// the campaign): how many, their sum, and the nearest-rank percentiles `ps`. Counted and
/// ranked by the database, so a campaign of any size sends back a few numbers.
async fn distribution(s: &AppState, column: &str, filter: &str, id: &str, ps: &[f64]) -> ApiResult<(i64, i64, Vec<Option<i64>>)> {
    let where_ = format!("campaign_id = $1 AND {column} IS NOT NULL{filter}");
    let (n, sum): (i64, Option<i64>) = sqlx::query_as(AssertSqlSafe(format!("SELECT COUNT(*), CAST(SUM({column}) AS BIGINT) FROM calls WHERE {where_}")))
        .bind(id)
        .fetch_one(&s.db)
        .await?;
    let mut out = Vec::with_capacity(ps.len());
    for &p in ps {
        let value: Option<i64> = if n == 0 {
            None
        } else {
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT {column} FROM calls WHERE {where_} ORDER BY {column} LIMIT 1 OFFSET $2")))
                .bind(id)
                .bind(nearest_rank(n, p) - 1)
                .fetch_optional(&s.db)
                .await?
        };
        out.push(value);
    }
    Ok((n, sum.unwrap_or(0), out))
}

/// `GET /v1/campaigns/{id}/stats`.
pub(crate) async fn stats(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM campaigns WHERE id = $1 AND org_id = $2")
        .bind(&id)
        .bind(&caller.org_id)
        .fetch_optional(&s.db)
        .await?;
    let state = state.ok_or_else(|| ApiError::not_found("campaign"))?;
    let now = s.now();
    let by_outcome: Vec<(String, i64)> =
        sqlx::query_as("SELECT outcome, COUNT(*) FROM calls WHERE campaign_id = $1 GROUP BY outcome").bind(&id).fetch_all(&s.db).await?;
    let count = |names: &[&str]| -> i64 { by_outcome.iter().filter(|(o, _)| names.contains(&o.as_str())).map(|(_, n)| n).sum() };
    let attempts: i64 = by_outcome.iter().map(|(_, n)| n).sum();
    let in_progress: i64 = by_outcome.iter().filter(|(o, _)| o == "in_progress" || o.starts_with("pending_")).map(|(_, n)| n).sum();
    let answered = count(&["completed"]);
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_leases WHERE campaign_id = $1 AND expires_at > $2")
        .bind(&id)
        .bind(now)
        .fetch_one(&s.db)
        .await?;
    let (answered_calls, talked, duration_p95) =
        distribution(&s, "duration_ms", " AND status = 'final' AND answered_at IS NOT NULL", &id, &[95.0]).await?;
    let (first_audio_calls, _, first_audio) = distribution(&s, "first_audio_ms", "", &id, &[50.0, 95.0]).await?;
    let contacts: Vec<(String, Option<String>, i64)> =
        sqlx::query_as("SELECT status, disposition, COUNT(*) FROM contacts WHERE campaign_id = $1 GROUP BY status, disposition")
            .bind(&id)
            .fetch_all(&s.db)
            .await?;
    let mut dispositions = serde_json::Map::new();
    let (mut pending, mut dialing, mut done) = (0, 0, 0);
    for (status, disposition, n) in &contacts {
        match status.as_str() {
            "pending" => pending += n,
            "dialing" => dialing += n,
            _ => done += n,
        }
        if let Some(d) = disposition {
            dispositions.insert(d.clone(), json!(n));
        }
    }
    let dnc_skipped = dispositions.get("dnc").and_then(Value::as_i64).unwrap_or(0);
    let finished = attempts - in_progress;
    let average = (answered_calls > 0).then(|| talked / answered_calls);
    Ok(Json(json!({
        "campaign_id": id,
        "state": state,
        "attempts": attempts,
        "answered": answered,
        "busy": count(&["busy"]),
        "no_answer": count(&["no_answer"]),
        "voicemail": count(&["voicemail"]),
        "failed": count(&["failed", "error"]),
        "canceled": count(&["canceled"]),
        "in_progress": in_progress,
        "dnc_skipped": dnc_skipped,
        "live_now": live,
        "answer_rate": if finished > 0 { answered as f64 / finished as f64 } else { 0.0 },
        "duration_ms": { "average": average, "p95": duration_p95[0] },
        "answer_to_first_audio_ms": { "p50": first_audio[0], "p95": first_audio[1], "calls": first_audio_calls },
        "contacts": { "total": pending + dialing + done, "pending": pending, "dialing": dialing, "done": done, "dispositions": dispositions },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(nearest_rank(100, 50.0), 50);
        assert_eq!(nearest_rank(100, 95.0), 95);
        assert_eq!(nearest_rank(20, 95.0), 19);
        assert_eq!(nearest_rank(1, 95.0), 1);
        assert_eq!(nearest_rank(3, 0.0), 1);
    }

    #[test]
    fn retry_rules_follow_outcomes() {
        assert_eq!(retry_rule("busy", "486 Busy Here"), Some(RetryOn::Busy));
        assert_eq!(retry_rule("failed", "invalid_number"), None);
        assert_eq!(retry_rule("completed", ""), None);
        assert_eq!(retry_rule("voicemail", ""), Some(RetryOn::Voicemail));
    }

    #[test]
    fn a_stream_that_broke_before_the_callee_spoke_is_no_conversation() {
        let result = |reason: &str, roles: &[&str]| {
            let transcript: Vec<Value> = roles.iter().map(|r| json!({"role": r, "text": "…", "at_ms": 0})).collect();
            json!({"outcome": "completed", "end_reason": reason, "transcript": transcript})
        };
        assert!(broke_before_conversation(&result("stream_error", &[])));
        assert!(broke_before_conversation(&result("protocol_error", &["bot"])), "the greeting alone is no conversation");
        assert!(broke_before_conversation(&result("peer_closed", &[])));
        assert!(!broke_before_conversation(&result("peer_closed", &["bot", "caller"])), "the callee spoke");
        assert!(!broke_before_conversation(&result("stopped", &[])), "the carrier ended the stream");
        assert!(!broke_before_conversation(&result("bot_hangup", &["bot"])));
        assert!(broke_before_conversation(&json!({"outcome": "error", "end_reason": "", "transcript": []})));
        assert!(!broke_before_conversation(&json!({})), "no reason: nothing says it broke");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = crate::model::RetryPolicy { backoff_seconds: 300, backoff_multiplier: 2.0, max_backoff_seconds: 3600, ..Default::default() };
        assert_eq!(p.backoff_ms(1), 300_000);
        assert_eq!(p.backoff_ms(2), 600_000);
        assert_eq!(p.backoff_ms(5), 3_600_000);
        assert_eq!(p.backoff_ms(1000), 3_600_000);
    }
}
