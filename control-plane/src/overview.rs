//! `GET /v1/overview`: what an organization's operators look at first (the console's home):
//! calls live now, today's calls and answer rate, the campaigns running with their progress,
//! and recent calls that failed; for admins also the fleet's capacity.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use sqlx::Row;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::clock::rfc3339;
use crate::error::ApiResult;

pub(crate) async fn get(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let now = s.now();
    let org = caller.org_id.as_str();
    let midnight = now - now.rem_euclid(86_400_000);
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_leases WHERE org_id = $1 AND expires_at > $2")
        .bind(org)
        .bind(now)
        .fetch_one(&s.db)
        .await?;
    // Failed: the call did not happen for a reason on our side or the carrier's.
    let today = sqlx::query(
        "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN answered_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN outcome IN ('failed', 'error') THEN 1 ELSE 0 END), 0) AS BIGINT) FROM calls WHERE org_id = $1 AND started_at >= $2",
    )
    .bind(org)
    .bind(midnight)
    .fetch_one(&s.db)
    .await?;
    let (calls, answered, failed): (i64, i64, i64) = (today.try_get(0)?, today.try_get(1)?, today.try_get(2)?);

    let rows = sqlx::query(
        "SELECT c.id, c.name, c.state, \
         (SELECT COUNT(*) FROM contacts k WHERE k.campaign_id = c.id), \
         (SELECT COUNT(*) FROM contacts k WHERE k.campaign_id = c.id AND k.status NOT IN ('pending', 'dialing')), \
         (SELECT COUNT(*) FROM call_leases l WHERE l.campaign_id = c.id AND l.expires_at > $2) \
         FROM campaigns c WHERE c.org_id = $1 AND c.state IN ('ACTIVE', 'PAUSED') ORDER BY c.updated_at DESC LIMIT 20",
    )
    .bind(org)
    .bind(now)
    .fetch_all(&s.db)
    .await?;
    let mut campaigns = Vec::with_capacity(rows.len());
    for r in &rows {
        campaigns.push(json!({
            "id": r.try_get::<String, _>(0)?,
            "name": r.try_get::<String, _>(1)?,
            "state": r.try_get::<String, _>(2)?,
            "contacts": r.try_get::<i64, _>(3)?,
            "done": r.try_get::<i64, _>(4)?,
            "live_now": r.try_get::<i64, _>(5)?,
        }));
    }

    let rows = sqlx::query(
        "SELECT id, started_at, outcome, body, bot_id, campaign_id, to_number FROM calls \
         WHERE org_id = $1 AND started_at >= $2 AND outcome IN ('failed', 'error') ORDER BY started_at DESC LIMIT 10",
    )
    .bind(org)
    .bind(now - 86_400_000)
    .fetch_all(&s.db)
    .await?;
    let mut failures = Vec::with_capacity(rows.len());
    for r in &rows {
        let body: Value = serde_json::from_str(&r.try_get::<String, _>(3)?).unwrap_or_default();
        failures.push(json!({
            "call_id": r.try_get::<String, _>(0)?,
            "started_at": rfc3339(r.try_get(1)?),
            "outcome": r.try_get::<String, _>(2)?,
            "end_reason": body["end_reason"],
            "bot_id": r.try_get::<Option<String>, _>(4)?,
            "campaign_id": r.try_get::<Option<String>, _>(5)?,
            "to": r.try_get::<String, _>(6)?,
        }));
    }

    // The fleet serves every organization: its size is for admins.
    let fleet = if caller.role >= Role::Admin {
        let cutoff = now - s.config.host_ttl.as_millis() as i64;
        let r = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(slots_total), 0) AS BIGINT), CAST(COALESCE(SUM(slots_free), 0) AS BIGINT), \
             CAST(COALESCE(SUM(live_calls), 0) AS BIGINT) FROM hosts WHERE last_seen >= $1",
        )
        .bind(cutoff)
        .fetch_one(&s.db)
        .await?;
        json!({ "hosts": r.try_get::<i64, _>(0)?, "slots_total": r.try_get::<i64, _>(1)?, "slots_free": r.try_get::<i64, _>(2)?, "live_calls": r.try_get::<i64, _>(3)? })
    } else {
        Value::Null
    };

    Ok(Json(json!({
        "live_calls": live,
        "today": {
            "since": rfc3339(midnight),
            "calls": calls,
            "answered": answered,
            "failed": failed,
            "answer_rate": if calls > 0 { answered as f64 / calls as f64 } else { 0.0 },
        },
        "campaigns": campaigns,
        "failures": failures,
        "fleet": fleet,
    })))
}
