//! The Agent Desk's handoffs. A bot's `handoff` tool makes one; the engine's handoff outbox
//! posts it (`POST /v1/runtime/handoffs`, once per handoff id however often it is sent) and a
//! `handoff.created` webhook goes out with it. People see them waiting, oldest first, claim
//! one, add notes and resolve it (called back, ticket, no action).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Fleet, Role};
use crate::clock::{parse_time, rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Query, limit};

/// A handoff as an engine sends it.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct NewHandoff {
    /// Unique per handoff (the call's id and its number in the call).
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,160}$")]
    pub(crate) handoff_id: String,
    #[schema(max_length = 128)]
    pub(crate) call_id: String,
    /// Needed when there is no `bot_id`; else the bot's organization is used.
    #[serde(default)]
    pub(crate) org_id: Option<String>,
    #[serde(default)]
    pub(crate) bot_id: Option<String>,
    /// The caller's number, if known.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub(crate) caller: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub(crate) reason: String,
    #[serde(default)]
    #[schema(max_length = 8000)]
    pub(crate) summary: String,
    /// The transcript so far (`role`, `text`, `at_ms`, `interrupted`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub(crate) transcript: Vec<Value>,
    /// When the bot handed off (RFC 3339).
    #[serde(default)]
    pub(crate) created_at: Option<String>,
    /// The call stays up for a person to take over from the desk (the engine takes WebRTC and
    /// the handoff did not transfer the call).
    #[serde(default)]
    pub(crate) live: bool,
}

fn bounded(field: &str, s: &str, max: usize) -> ApiResult<()> {
    if s.len() > max {
        return Err(ApiError::invalid(field, format!("at most {max} bytes")));
    }
    Ok(())
}

/// `POST /v1/runtime/handoffs` (fleet token): stores the handoff once; a repeat answers 200.
pub(crate) async fn post(State(s): State<AppState>, fleet: Fleet, Body(h): Body<NewHandoff>) -> ApiResult<(StatusCode, Json<Value>)> {
    if h.handoff_id.is_empty() || h.handoff_id.len() > 160 || !h.handoff_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) {
        return Err(ApiError::invalid("handoff_id", "1 to 160 letters, digits, '.', '_', ':' or '-'"));
    }
    bounded("call_id", &h.call_id, 128)?;
    bounded("caller", &h.caller, 256)?;
    bounded("reason", &h.reason, 2_000)?;
    bounded("summary", &h.summary, 8_000)?;
    if h.transcript.len() > 10_000 {
        return Err(ApiError::invalid("transcript", "at most 10000 lines"));
    }
    let transcript = Value::Array(h.transcript).to_string();
    bounded("transcript", &transcript, 1 << 20)?;
    let org = match (&h.bot_id, &h.org_id) {
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
    let now = s.now();
    let created = h.created_at.as_deref().and_then(parse_time).unwrap_or(now);
    let mut tx = s.db.begin().await?;
    let done = sqlx::query(
        "INSERT INTO handoffs (id, org_id, call_id, bot_id, caller, reason, summary, transcript, status, notes, created_at, updated_at, live, host_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'waiting', '[]', $9, $10, $11, $12) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&h.handoff_id)
    .bind(&org)
    .bind(&h.call_id)
    .bind(&h.bot_id)
    .bind(&h.caller)
    .bind(&h.reason)
    .bind(&h.summary)
    .bind(&transcript)
    .bind(created)
    .bind(now)
    .bind(i64::from(h.live))
    .bind(&fleet.host_id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok((StatusCode::OK, Json(json!({ "handoff_id": h.handoff_id, "duplicate": true }))));
    }
    let view = fetch(&mut tx, &org, &h.handoff_id).await?;
    crate::webhooks::enqueue(&mut tx, &org, "handoff.created", &h.handoff_id, &view, now).await?;
    tx.commit().await?;
    metrics::counter!("cxb_api_handoffs_total").increment(1);
    Ok((StatusCode::CREATED, Json(json!({ "handoff_id": h.handoff_id, "duplicate": false }))))
}

/// A handoff is live while its call is: kept up for the desk, and no result has ended it.
const COLUMNS: &str = "id, call_id, bot_id, caller, reason, summary, transcript, status, claimed_by, claimed_at, resolution, resolved_at, notes, created_at, updated_at, \
     CAST(CASE WHEN live = 1 AND status <> 'resolved' AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.id = handoffs.call_id AND c.ended_at IS NOT NULL) THEN 1 ELSE 0 END AS BIGINT) AS live_now";

fn view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    let parse = |c: &str| -> ApiResult<Value> { serde_json::from_str(&row.try_get::<String, _>(c)?).map_err(ApiError::internal) };
    let time = |c: &str| -> ApiResult<Value> { Ok(row.try_get::<Option<i64>, _>(c)?.map_or(Value::Null, |t| rfc3339(t).into())) };
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "call_id": row.try_get::<String, _>("call_id")?,
        "bot_id": row.try_get::<Option<String>, _>("bot_id")?,
        "caller": row.try_get::<String, _>("caller")?,
        "reason": row.try_get::<String, _>("reason")?,
        "summary": row.try_get::<String, _>("summary")?,
        "transcript": parse("transcript")?,
        "status": row.try_get::<String, _>("status")?,
        "claimed_by": row.try_get::<Option<String>, _>("claimed_by")?,
        "claimed_at": time("claimed_at")?,
        "resolution": row.try_get::<Option<String>, _>("resolution")?,
        "resolved_at": time("resolved_at")?,
        "notes": parse("notes")?,
        "created_at": time("created_at")?,
        "updated_at": time("updated_at")?,
        "live": row.try_get::<i64, _>("live_now")? == 1,
    }))
}

async fn fetch(conn: &mut sqlx::AnyConnection, org: &str, id: &str) -> ApiResult<Value> {
    let sql = format!("SELECT {COLUMNS} FROM handoffs WHERE id = $1 AND org_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(org).fetch_optional(conn).await?;
    view(&row.ok_or_else(|| ApiError::not_found("handoff"))?)
}

/// Who may work the desk: agents, operators and admins (viewers read only).
fn desk(caller: &Caller) -> ApiResult<()> {
    if caller.role == Role::Agent || caller.role >= Role::Operator {
        Ok(())
    } else {
        Err(ApiError::forbidden("working the Agent Desk needs the agent, operator or admin role"))
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct HandoffQuery {
    pub(crate) limit: Option<u32>,
    /// `waiting`, `claimed`, `resolved` or `open` (waiting and claimed; the default).
    pub(crate) status: Option<String>,
}

/// `GET /v1/handoffs`: open ones oldest first (the desk's queue); resolved ones newest first.
pub(crate) async fn list(State(s): State<AppState>, caller: Caller, Query(q): Query<HandoffQuery>) -> ApiResult<Json<Value>> {
    let limit = limit(q.limit)?;
    let (filter, order) = match q.status.as_deref().unwrap_or("open") {
        "open" => ("status IN ('waiting', 'claimed')", "created_at ASC, id ASC"),
        "waiting" => ("status = 'waiting'", "created_at ASC, id ASC"),
        "claimed" => ("status = 'claimed'", "created_at ASC, id ASC"),
        "resolved" => ("status = 'resolved'", "resolved_at DESC, id DESC"),
        _ => return Err(ApiError::invalid("status", "open, waiting, claimed or resolved")),
    };
    let sql = format!("SELECT {COLUMNS} FROM handoffs WHERE org_id = $1 AND {filter} ORDER BY {order} LIMIT {limit}");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&caller.org_id).fetch_all(&s.db).await?;
    let items = rows.iter().map(view).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({ "items": items, "next_cursor": null })))
}

pub(crate) async fn get(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let mut conn = s.db.acquire().await?;
    Ok(Json(fetch(&mut conn, &caller.org_id, &id).await?))
}

/// Who is acting: the user's email, or the key's role for API keys.
async fn actor(s: &AppState, caller: &Caller) -> ApiResult<String> {
    match &caller.user_id {
        Some(id) => Ok(sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(id).fetch_one(&s.db).await?),
        None => Ok(format!("API key ({})", caller.role.as_str())),
    }
}

/// `POST /v1/handoffs/{id}/claim`: a waiting handoff becomes this person's.
pub(crate) async fn claim(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    desk(&caller)?;
    let who = actor(&s, &caller).await?;
    let now = s.now();
    let done = sqlx::query("UPDATE handoffs SET status = 'claimed', claimed_by = $1, claimed_at = $2, updated_at = $2 WHERE id = $3 AND org_id = $4 AND status = 'waiting'")
        .bind(&who)
        .bind(now)
        .bind(&id)
        .bind(&caller.org_id)
        .execute(&s.db)
        .await?;
    let mut conn = s.db.acquire().await?;
    let current = fetch(&mut conn, &caller.org_id, &id).await?;
    if done.rows_affected() == 0 {
        let by = current["claimed_by"].as_str().unwrap_or("someone");
        return Err(ApiError::conflict("invalid_state", format!("the handoff is {} (by {by})", current["status"].as_str().unwrap_or(""))));
    }
    Ok(Json(current))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Note {
    /// 1 to 4,000 bytes.
    #[schema(min_length = 1, max_length = 4000)]
    pub(crate) text: String,
}

/// `POST /v1/handoffs/{id}/notes`: adds a note (who and when are recorded).
pub(crate) async fn note(State(s): State<AppState>, caller: Caller, Path(id): Path<String>, Body(n): Body<Note>) -> ApiResult<Json<Value>> {
    desk(&caller)?;
    let text = n.text.trim();
    if text.is_empty() || text.len() > 4_000 {
        return Err(ApiError::invalid("text", "1 to 4000 bytes"));
    }
    let who = actor(&s, &caller).await?;
    let now = s.now();
    let mut tx = s.db.begin().await?;
    let current = fetch(&mut tx, &caller.org_id, &id).await?;
    let mut notes = current["notes"].as_array().cloned().unwrap_or_default();
    if notes.len() >= 200 {
        return Err(ApiError::conflict("limit_reached", "a handoff keeps at most 200 notes"));
    }
    notes.push(json!({ "by": who, "at": rfc3339(now), "text": text }));
    sqlx::query("UPDATE handoffs SET notes = $1, updated_at = $2 WHERE id = $3 AND org_id = $4")
        .bind(Value::Array(notes).to_string())
        .bind(now)
        .bind(&id)
        .bind(&caller.org_id)
        .execute(&mut *tx)
        .await?;
    let out = fetch(&mut tx, &caller.org_id, &id).await?;
    tx.commit().await?;
    Ok(Json(out))
}

/// The engine host carrying handoff `id`'s call (its id and address), while it reports to the
/// API.
pub(crate) async fn engine_host(s: &AppState, org: &str, id: &str) -> ApiResult<Option<(String, String)>> {
    let fresh = s.now() - s.config.host_ttl.as_millis() as i64;
    Ok(sqlx::query_as("SELECT h.id, h.address FROM handoffs o JOIN hosts h ON h.id = o.host_id WHERE o.id = $1 AND o.org_id = $2 AND h.last_seen >= $3")
        .bind(id)
        .bind(org)
        .bind(fresh)
        .fetch_optional(&s.db)
        .await?)
}

/// How long a takeover token admits its person: they join at once.
const TAKEOVER_SECONDS: u64 = 60;

/// `POST /v1/handoffs/{id}/takeover`: a person on the desk joins the handoff's call, still
/// live, from the browser. Answers a one-use takeover token and the WebRTC URL of the engine
/// host carrying the call (`POST` an SDP offer there with the token, as the widget does); the
/// handoff becomes this person's.
pub(crate) async fn takeover(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    desk(&caller)?;
    let who = actor(&s, &caller).await?;
    let now = s.now();
    let mut conn = s.db.acquire().await?;
    let current = fetch(&mut conn, &caller.org_id, &id).await?;
    if current["live"] != true {
        return Err(ApiError::conflict("not_live", "the call is over, or its bot did not keep it up for the desk"));
    }
    if current["status"] == "claimed" && current["claimed_by"].as_str() != Some(who.as_str()) {
        return Err(ApiError::conflict("invalid_state", format!("the handoff is claimed by {}", current["claimed_by"].as_str().unwrap_or("someone"))));
    }
    let (host, address) = engine_host(&s, &caller.org_id, &id).await?.ok_or_else(|| ApiError::conflict("host_gone", "the engine host carrying the call no longer reports to the API"))?;
    sqlx::query("UPDATE handoffs SET status = 'claimed', claimed_by = $1, claimed_at = $2, updated_at = $2 WHERE id = $3 AND org_id = $4 AND status = 'waiting'")
        .bind(&who)
        .bind(now)
        .bind(&id)
        .bind(&caller.org_id)
        .execute(&mut *conn)
        .await?;
    let exp = now.max(0) as u64 / 1000 + TAKEOVER_SECONDS;
    let claims = cxb_contract::call_token::CallClaims {
        bot_id: current["bot_id"].as_str().unwrap_or_default().into(),
        call_id: current["call_id"].as_str().unwrap_or_default().into(),
        org_id: caller.org_id.as_str().into(),
        exp,
        host_id: Some(host),
        direction: cxb_contract::call_token::Direction::Inbound,
        takeover: true,
        ..Default::default()
    };
    let token = crate::call_tokens::issue(&s.db, &s.secrets, now, claims).await?;
    let handoff = fetch(&mut conn, &caller.org_id, &id).await?;
    Ok(Json(json!({
        "token": token,
        "webrtc_url": format!("{}/webrtc/takeover", crate::widget::engine_http(&address)),
        "expires_at": rfc3339(exp as i64 * 1000),
        "handoff": handoff,
    })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resolve {
    /// `called_back`, `ticket` or `no_action`.
    #[schema(pattern = "^(called_back|ticket|no_action)$")]
    pub(crate) resolution: String,
}

/// `POST /v1/handoffs/{id}/resolve`: closes an open handoff with what was done.
pub(crate) async fn resolve(State(s): State<AppState>, caller: Caller, Path(id): Path<String>, Body(r): Body<Resolve>) -> ApiResult<Json<Value>> {
    desk(&caller)?;
    if !["called_back", "ticket", "no_action"].contains(&r.resolution.as_str()) {
        return Err(ApiError::invalid("resolution", "called_back, ticket or no_action"));
    }
    let who = actor(&s, &caller).await?;
    let now = s.now();
    let done = sqlx::query(
        "UPDATE handoffs SET status = 'resolved', resolution = $1, resolved_at = $2, updated_at = $2, claimed_by = COALESCE(claimed_by, $3) \
         WHERE id = $4 AND org_id = $5 AND status IN ('waiting', 'claimed')",
    )
    .bind(&r.resolution)
    .bind(now)
    .bind(&who)
    .bind(&id)
    .bind(&caller.org_id)
    .execute(&s.db)
    .await?;
    let mut conn = s.db.acquire().await?;
    let current = fetch(&mut conn, &caller.org_id, &id).await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::conflict("invalid_state", "the handoff is already resolved"));
    }
    Ok(Json(current))
}
