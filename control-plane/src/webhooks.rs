//! CRM webhooks: events are queued in the database in the same transaction as the record
//! they describe, then POSTed with an HMAC-SHA256 signature and retried with exponential
//! back-off; every attempt's outcome is visible in the webhook's delivery log. Deliveries run
//! concurrently, a few per organization at most, and redirects are not followed.
//!
//! Signature header: `X-CXB-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::AppState;
use crate::auth::Caller;
use crate::clock::rfc3339;
use crate::db::new_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Arg, Filter, Query, limit};
use crate::model::Webhook;

/// Attempts before a delivery is given up.
pub(crate) const MAX_ATTEMPTS: i64 = 10;
const FIRST_BACKOFF_MS: i64 = 10_000;
const MAX_BACKOFF_MS: i64 = 3_600_000;
/// How long a sender owns a delivery it picked, so two senders never both send it.
const CLAIM_MS: i64 = 60_000;

/// The wait after failed attempt `n` (1-based): 10 s, 20 s, 40 s … at most an hour.
pub(crate) fn backoff_ms(attempt: i64) -> i64 {
    FIRST_BACKOFF_MS.saturating_mul(1 << (attempt - 1).clamp(0, 20)).min(MAX_BACKOFF_MS)
}

/// `t=…,v1=…` for `body` sent at `unix_seconds`.
pub(crate) fn signature(secret: &str, unix_seconds: i64, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("{unix_seconds}.{body}").as_bytes());
    format!("t={unix_seconds},v1={}", crate::db::hex(&mac.finalize().into_bytes()))
}

/// Queues `event` about `subject` for every enabled webhook of `org` that subscribes to it.
pub(crate) async fn enqueue(tx: &mut sqlx::AnyConnection, org: &str, event: &str, subject: &str, data: &Value, now: i64) -> ApiResult<()> {
    let hooks: Vec<(String, String)> = sqlx::query_as("SELECT id, body FROM webhooks WHERE org_id = $1").bind(org).fetch_all(&mut *tx).await?;
    for (id, body) in hooks {
        let hook: Webhook = serde_json::from_str(&body).map_err(ApiError::internal)?;
        let wanted = hook.events.iter().any(|e| e.as_str() == event);
        if !hook.enabled || !wanted {
            continue;
        }
        let delivery = new_id("whd", now);
        let payload = json!({ "id": delivery, "event": event, "created_at": rfc3339(now), "data": data }).to_string();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, subject_id, payload, status, attempts, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, $9) ON CONFLICT (webhook_id, event, subject_id) DO NOTHING",
        )
        .bind(&delivery)
        .bind(org)
        .bind(&id)
        .bind(event)
        .bind(subject)
        .bind(payload)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Room for deliveries in flight: a few per organization and more in all, so that one
/// organization's slow or dead receiver (10 s per attempt) delays only that organization.
#[derive(Debug)]
pub(crate) struct Slots {
    all: Arc<Semaphore>,
    per_org: usize,
    orgs: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One delivery's room, held until its attempt is recorded.
#[derive(Debug)]
struct Slot {
    _all: OwnedSemaphorePermit,
    _org: OwnedSemaphorePermit,
}

impl Slots {
    pub(crate) fn new(all: usize, per_org: usize) -> Slots {
        Slots { all: Arc::new(Semaphore::new(all)), per_org, orgs: Mutex::new(HashMap::new()) }
    }

    /// Room for one more delivery of `org`, if there is any.
    fn take(&self, org: &str) -> Option<Slot> {
        let mut orgs = self.orgs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let per_org = self.per_org;
        let sem = orgs.entry(org.to_string()).or_insert_with(|| Arc::new(Semaphore::new(per_org))).clone();
        let org_permit = sem.try_acquire_owned().ok()?;
        let all = self.all.clone().try_acquire_owned().ok()?;
        Some(Slot { _all: all, _org: org_permit })
    }

    fn has_room(&self) -> bool {
        self.all.available_permits() > 0
    }

    /// Forgets organizations with nothing in flight (under the lock, so no slot is taken from
    /// a semaphore being forgotten).
    fn sweep(&self) {
        let mut orgs = self.orgs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        orgs.retain(|_, sem| sem.available_permits() < self.per_org);
    }
}

/// Starts every due delivery that has room, overall and in its organization, each on its own
/// task; returns the tasks. The rest stay due for the next round.
pub(crate) async fn start_due(s: &AppState) -> Vec<JoinHandle<()>> {
    match start_batch(s).await {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e.message, "starting webhook deliveries");
            Vec::new()
        }
    }
}

/// Starts the due deliveries that have room and waits for them; returns how many were attempted.
pub(crate) async fn deliver_due(s: &AppState) -> usize {
    let started = start_due(s).await;
    let n = started.len();
    for task in started {
        let _ = task.await;
    }
    n
}

async fn start_batch(s: &AppState) -> ApiResult<Vec<JoinHandle<()>>> {
    let now = s.now();
    s.webhook_slots.sweep();
    // Organizations with something due, the longest waiting first: one organization's
    // backlog cannot hide another's deliveries.
    let orgs: Vec<String> = sqlx::query_scalar(
        "SELECT org_id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
         GROUP BY org_id ORDER BY MIN(next_attempt_at) LIMIT 1000",
    )
    .bind(now)
    .fetch_all(&s.db)
    .await?;
    let mut started = Vec::new();
    for org in orgs {
        if !s.webhook_slots.has_room() {
            break;
        }
        let due: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT id, webhook_id, payload, attempts, next_attempt_at FROM webhook_deliveries \
             WHERE org_id = $1 AND status = 'pending' AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3",
        )
        .bind(&org)
        .bind(now)
        .bind(s.config.webhook_per_org as i64)
        .fetch_all(&s.db)
        .await?;
        for (id, hook_id, payload, attempts, due_at) in due {
            let Some(slot) = s.webhook_slots.take(&org) else {
                break;
            };
            let claimed = sqlx::query("UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = $2 AND status = 'pending' AND next_attempt_at = $3")
                .bind(now + CLAIM_MS)
                .bind(&id)
                .bind(due_at)
                .execute(&s.db)
                .await?;
            if claimed.rows_affected() == 0 {
                continue; // another sender has it
            }
            let s = s.clone();
            started.push(tokio::spawn(async move {
                if let Err(e) = attempt(&s, &id, &hook_id, &payload, attempts, now).await {
                    tracing::warn!(delivery = %id, error = %e.message, "webhook delivery attempt");
                }
                drop(slot);
            }));
        }
    }
    Ok(started)
}

/// One attempt of a claimed delivery, and its outcome recorded.
async fn attempt(s: &AppState, id: &str, hook_id: &str, payload: &str, attempts: i64, now: i64) -> ApiResult<()> {
    let body: Option<String> = sqlx::query_scalar("SELECT body FROM webhooks WHERE id = $1").bind(hook_id).fetch_optional(&s.db).await?;
    let hook = body.and_then(|b| {
        let mut doc: Value = serde_json::from_str(&b).ok()?;
        if let Err(e) = s.secrets.open_document(&mut doc) {
            tracing::error!(webhook = %hook_id, error = %e, "opening the webhook's secrets");
            return None;
        }
        serde_json::from_value::<Webhook>(doc).ok()
    });
    let (status, error) = match &hook {
        Some(hook) if hook.enabled => send(s, hook, id, payload, now).await,
        _ => (None, Some("the webhook was disabled".to_string())),
    };
    let attempts = attempts + 1;
    let delivered = status.is_some_and(|c| (200..300).contains(&c));
    let (state, next) = if delivered {
        ("delivered", now)
    } else if attempts >= MAX_ATTEMPTS || hook.as_ref().is_none_or(|h| !h.enabled) {
        ("failed", now)
    } else {
        ("pending", now + backoff_ms(attempts))
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, last_status = $4, last_error = $5, updated_at = $6 WHERE id = $7",
    )
    .bind(state)
    .bind(attempts)
    .bind(next)
    .bind(status.map(i64::from))
    .bind(error)
    .bind(now)
    .bind(id)
    .execute(&s.db)
    .await?;
    metrics::counter!("cxb_api_webhook_attempts_total", "result" => state).increment(1);
    Ok(())
}

/// One POST through the outbound-request guard (which follows no redirects and reaches no
/// internal address): the HTTP status, or the error that prevented one. A redirect is a
/// failed attempt like any other non-2xx: the receiver's URL is the one its owner registered,
/// nowhere else.
async fn send(s: &AppState, hook: &Webhook, delivery: &str, payload: &str, now: i64) -> (Option<u16>, Option<String>) {
    let secret = hook.secrets.get("signing_secret").map_or("", String::as_str);
    let request = s
        .egress
        .client()
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-cxb-signature", signature(secret, now / 1000, payload))
        .header("x-cxb-delivery", delivery)
        .body(payload.to_string())
        .build();
    let request = match request {
        Ok(r) => r,
        Err(e) => return (None, Some(format!("{e}"))),
    };
    match s.egress.execute(request).await {
        Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
        Ok(r) if r.status().is_redirection() => (Some(r.status().as_u16()), Some(format!("the receiver answered {}; redirects are not followed", r.status()))),
        Ok(r) => (Some(r.status().as_u16()), Some(format!("the receiver answered {}", r.status()))),
        Err(e) => (None, Some(format!("{e}"))),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeliveryQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/webhooks/{id}/deliveries`: newest first.
pub(crate) async fn deliveries(State(s): State<AppState>, caller: Caller, Path(hook): Path<String>, Query(q): Query<DeliveryQuery>) -> ApiResult<Json<Value>> {
    let limit = limit(q.limit)?;
    if !crate::resources::exists(&s, "webhooks", &caller.org_id, &hook).await? {
        return Err(ApiError::not_found("webhook"));
    }
    let mut f = Filter::new(
        "SELECT id, event, subject_id, status, attempts, next_attempt_at, last_status, last_error, created_at, updated_at \
         FROM webhook_deliveries WHERE webhook_id = ",
    );
    f.and("? AND org_id = ?", [Arg::Text(hook), Arg::Text(caller.org_id)]);
    f.newest_first(q.cursor, limit);
    Ok(Json(f.page_by_id(&s.db, limit, delivery_view).await?))
}

fn delivery_view(r: &sqlx::any::AnyRow) -> ApiResult<Value> {
    let status: String = r.try_get("status")?;
    let next: i64 = r.try_get("next_attempt_at")?;
    Ok(json!({
        "id": r.try_get::<String, _>("id")?,
        "event": r.try_get::<String, _>("event")?,
        "subject_id": r.try_get::<String, _>("subject_id")?,
        "status": status,
        "attempts": r.try_get::<i64, _>("attempts")?,
        "next_attempt_at": if status == "pending" { Value::from(rfc3339(next)) } else { Value::Null },
        "last_status": r.try_get::<Option<i64>, _>("last_status")?,
        "last_error": r.try_get::<Option<String>, _>("last_error")?,
        "created_at": rfc3339(r.try_get("created_at")?),
        "updated_at": rfc3339(r.try_get("updated_at")?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(backoff_ms(1), 10_000);
        assert_eq!(backoff_ms(2), 20_000);
        assert_eq!(backoff_ms(9), 2_560_000);
        assert_eq!(backoff_ms(10), 3_600_000);
        assert_eq!(backoff_ms(100), 3_600_000);
    }

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // Checked against Python's hmac module.
        let s = signature("Jefe", 0, "what do ya want for nothing?");
        assert_eq!(s, "t=0,v1=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc");
        assert_ne!(signature("Jefe", 1, "x"), signature("Jefe", 2, "x"));
    }
}
