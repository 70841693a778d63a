//! Call records: written once per call by the engine's result outbox
//! (`POST /v1/runtime/results`, idempotent by call id), read by people with filters.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};

use crate::AppState;
use crate::auth::{Caller, Fleet};
use crate::clock::{parse_time, rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Arg, Body, Filter, Query, limit, page};

pub use cxb_contract::result::{CallResult, CostLine, Direction, Outcome, Recording, Turn};

/// Every string of a result within its bound (`cxb_contract::result::bounds`); the error
/// names the field, such as `transcript[3].text` or `metrics.tools[0].error`.
fn check_result(r: &CallResult) -> ApiResult<()> {
    r.check().map_err(|e| ApiError::invalid(&e.field, e.message))
}

fn time(field: &str, t: &str) -> ApiResult<i64> {
    parse_time(t).ok_or_else(|| ApiError::invalid(field, "an RFC 3339 time"))
}

/// Stores a result once; the second delivery of the same call id answers 200 `duplicate`. A
/// result outside [`bounds`] answers 422 naming the field, which the engine's outbox treats as
/// final (the entry goes to its `dead/` folder) instead of retrying it.
pub(crate) async fn post_result(State(s): State<AppState>, _fleet: Fleet, Body(mut r): Body<CallResult>) -> ApiResult<(StatusCode, Json<Value>)> {
    check_result(&r)?;
    let org = match (&r.bot_id, &r.org_id) {
        (Some(bot), given) => {
            let org: Option<String> = sqlx::query_scalar("SELECT org_id FROM bots WHERE id = $1").bind(bot.as_str()).fetch_optional(&s.db).await?;
            let org = org.ok_or_else(|| ApiError::invalid("bot_id", "no such bot"))?;
            if given.as_ref().is_some_and(|g| *g != org) {
                return Err(ApiError::invalid("org_id", "not the bot's organization"));
            }
            org
        }
        (None, Some(org)) => {
            let known: Option<String> = sqlx::query_scalar("SELECT id FROM orgs WHERE id = $1").bind(org.as_str()).fetch_optional(&s.db).await?;
            known.ok_or_else(|| ApiError::invalid("org_id", "no such organization"))?
        }
        (None, None) => return Err(ApiError::invalid("bot_id", "a bot_id or an org_id is required")),
    };
    crate::analytics::price(&s, &org, &mut r).await?;
    let started = time("started_at", &r.started_at)?;
    let answered = r.answered_at.as_deref().map(|t| time("answered_at", t)).transpose()?;
    let ended = r.ended_at.as_deref().map(|t| time("ended_at", t)).transpose()?;
    let duration = ended.map(|e| (e - answered.unwrap_or(started)).max(0));
    let now = s.now();
    let body = serde_json::to_string(&r).map_err(ApiError::internal)?;
    let mut tx = s.db.begin().await?;
    // A call the dialler placed already has its row: the result is merged into it.
    let value = serde_json::to_value(&r).map_err(ApiError::internal)?;
    if let Some(merged) = crate::attempts::merge_result(&mut tx, r.call_id.as_str(), &org, &value, now).await? {
        if merged {
            crate::analytics::record(&mut tx, &org, &r).await?;
        }
        tx.commit().await?;
        let status = if merged { StatusCode::CREATED } else { StatusCode::OK };
        return Ok((status, Json(json!({ "call_id": r.call_id, "duplicate": !merged }))));
    }
    let done = sqlx::query(
        "INSERT INTO calls (id, org_id, direction, from_number, to_number, bot_id, campaign_id, contact_id, started_at, answered_at, \
         ended_at, duration_ms, outcome, body, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(r.call_id.as_str())
    .bind(&org)
    .bind(if r.direction == Direction::Inbound { "inbound" } else { "outbound" })
    .bind(r.from.as_str())
    .bind(r.to.as_str())
    .bind(r.bot_id.as_ref().map(|id| id.to_string()))
    .bind(r.campaign_id.as_ref().map(|id| id.to_string()))
    .bind(r.contact_id.as_ref().map(|id| id.to_string()))
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
    crate::analytics::record(&mut tx, &org, &r).await?;
    let record = fetch(&mut tx, &org, r.call_id.as_str()).await?;
    crate::webhooks::enqueue(&mut tx, &org, "call.completed", r.call_id.as_str(), &record, now).await?;
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
    pub(crate) limit: Option<u32>,
    pub(crate) cursor: Option<String>,
    /// Calls started at or after (RFC 3339).
    pub(crate) since: Option<String>,
    /// Calls started before (RFC 3339).
    pub(crate) until: Option<String>,
    pub(crate) campaign_id: Option<String>,
    pub(crate) bot_id: Option<String>,
    pub(crate) outcome: Option<String>,
    pub(crate) direction: Option<String>,
    /// Calls from or to this number.
    pub(crate) number: Option<String>,
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
    if let Some(n) = q.number {
        f.and(" AND (from_number = ? OR to_number = ?)", [Arg::Text(n.clone()), Arg::Text(n)]);
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
