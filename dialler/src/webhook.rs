//! The dialler's answers to the API's telephony routes: direct outbound calls
//! (`POST /v1/calls`) and carriers' call-end webhooks (`POST /v1/carriers/{org}/cdr`).

use std::sync::Arc;

use axum::http::StatusCode;
use cxb_contacts::E164;
use cxb_control_plane::AppState;
use cxb_control_plane::attempts::{self, CallEnd, NewCall};
use cxb_control_plane::db::new_id;
use cxb_control_plane::error::{ApiError, ApiResult};
use cxb_control_plane::fleet;
use cxb_control_plane::telephony::{CarrierWebhook, DirectCall, Reply, Telephony};
use serde_json::{Value, json};
use sqlx::Row;

use crate::carrier::{CarrierError, CdrError, Disposition, constant_time_eq};
use crate::place::{RouteError, Routed, Target};
use crate::run::Shared;

/// The dialler as the API's telephony.
#[derive(Debug, Clone)]
pub struct DiallerTelephony(pub Arc<Shared>);

impl Telephony for DiallerTelephony {
    fn place_call(&self, state: AppState, org: String, call: DirectCall) -> Reply {
        let s = self.0.clone();
        Box::pin(async move { place_direct(&s, &state, &org, call).await })
    }

    fn carrier_webhook(&self, _state: AppState, org: String, webhook: CarrierWebhook) -> Reply {
        let s = self.0.clone();
        Box::pin(async move { call_end(&s, &org, webhook).await })
    }
}

fn carrier_error(e: CarrierError) -> ApiError {
    match e {
        CarrierError::Rejected { status, message } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "carrier_rejected", format!("the carrier refused the call ({status}): {message}"))
        }
        CarrierError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "carrier_unavailable", m),
        CarrierError::Config(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "carrier_settings", m),
    }
}

async fn place_direct(s: &Arc<Shared>, state: &AppState, org: &str, call: DirectCall) -> ApiResult<(StatusCode, Value)> {
    let bot: Option<String> = sqlx::query_scalar("SELECT id FROM bots WHERE id = $1 AND org_id = $2").bind(&call.bot_id).bind(org).fetch_optional(&s.db).await?;
    bot.ok_or_else(|| ApiError::invalid("bot_id", "no such bot"))?;
    let (carrier, settings) = s.carriers.for_org(&s.db, org).await.map_err(carrier_error)?;
    let cc = settings.default_country_code.as_deref();
    let to = E164::parse(&call.to, cc).map_err(|e| ApiError::invalid("to", e.to_string()))?;
    let from = call.from.as_deref().or(settings.default_caller_id.as_deref()).ok_or_else(|| ApiError::invalid("from", "required when the organization has no default_caller_id"))?;
    let from = E164::parse(from, cc).map_err(|e| ApiError::invalid("from", e.to_string()))?;
    let on_dnc: Option<String> = sqlx::query_scalar("SELECT id FROM dnc WHERE org_id = $1 AND phone = $2").bind(org).bind(to.as_str()).fetch_optional(&s.db).await?;
    if on_dnc.is_some() {
        return Err(ApiError::conflict("do_not_call", "the number is on the do-not-call list"));
    }
    let now = s.now();
    let target = Target {
        org: org.to_string(),
        session: new_id("cl", now),
        from: from.as_str().to_string(),
        to: to.as_str().to_string(),
        metadata: call.metadata.into_iter().collect(),
        ..Target::default()
    };
    let (destination, slot) = s.engine_stream(&call.bot_id, &target).await.map_err(|e| match e {
        RouteError::NoCapacity => ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", "no engine host has a free slot") },
        other => ApiError::internal(other),
    })?;
    let routed = Routed {
        destination,
        assistant_id: None,
        bot_id: Some(call.bot_id.clone()),
        expects_result: true,
        notes: json!({ "type": "direct", "bot_id": call.bot_id }),
        slot: Some(slot.clone()),
    };
    let token = new_id("tok", now);
    let record = NewCall {
        id: target.session.clone(),
        org_id: org.to_string(),
        campaign_id: None,
        contact_id: None,
        attempt: None,
        from: target.from.clone(),
        to: target.to.clone(),
        bot_id: routed.bot_id.clone(),
        assistant_id: None,
        carrier: carrier.name().to_string(),
        cdr_token: token.clone(),
        expects_result: true,
        routing: routed.notes.clone(),
        lease_until: now + s.config.call_lease_ttl.as_millis() as i64,
        slot: Some(slot.clone()),
    };
    let recorded = async {
        let mut tx = s.db.begin().await?;
        attempts::insert_call(&mut tx, &record, now).await?;
        tx.commit().await?;
        ApiResult::Ok(())
    };
    if let Err(e) = recorded.await {
        // No call will come for the slot.
        let _ = fleet::release(&s.db, &slot, now).await;
        return Err(e);
    }
    let request = s.request(&target, &routed, settings.webhook_url.as_deref(), &token);
    match carrier.create_call(&request).await {
        Ok(placed) => attempts::set_carrier_call_id(&s.db, &target.session, &placed.carrier_call_id).await?,
        Err(e) => {
            let end = CallEnd { outcome: "failed", reason: Some("carrier_rejected".into()), answered_at: None, ended_at: s.now() };
            attempts::record_end(&s.db, &target.session, &end, s.now()).await?;
            return Err(carrier_error(e));
        }
    }
    let view = cxb_control_plane::calls::view_call(state, org, &target.session).await?;
    Ok((StatusCode::CREATED, view))
}

async fn call_end(s: &Arc<Shared>, org: &str, webhook: CarrierWebhook) -> ApiResult<(StatusCode, Value)> {
    let (carrier, _) = s.carriers.for_org(&s.db, org).await.map_err(carrier_error)?;
    let token = webhook.query.as_deref().and_then(form_urlencoded_token);
    // Carriers that post every call's record to one configured URL (Cloudonix's
    // `cdr-endpoint`) can carry the organization's webhook token in that URL's query.
    let mut headers = webhook.headers;
    if let Some(t) = &token
        && !headers.iter().any(|(k, _)| k == "authorization")
    {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    let cdr = carrier.parse_cdr(&headers, &webhook.body).map_err(|e| match e {
        CdrError::Unauthorized => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
        CdrError::Malformed(m) => ApiError::new(StatusCode::BAD_REQUEST, "malformed_cdr", m),
    })?;
    let row = sqlx::query("SELECT id, cdr_token FROM calls WHERE org_id = $1 AND (id = $2 OR carrier_call_id = $3) LIMIT 1")
        .bind(org)
        .bind(cdr.session.clone().unwrap_or_default())
        .bind(&cdr.carrier_call_id)
        .fetch_optional(&s.db)
        .await?;
    let Some(row) = row else {
        // Unknown calls answer 401 to the unauthenticated, so ids cannot be probed.
        return Err(if cdr.authenticated { ApiError::not_found("call") } else { ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown call or token") });
    };
    let call: String = row.try_get(0)?;
    let expected: Option<String> = row.try_get(1)?;
    let token_ok = matches!((&token, &expected), (Some(t), Some(e)) if constant_time_eq(t.as_bytes(), e.as_bytes()));
    if !cdr.authenticated && !token_ok {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown call or token"));
    }
    let (outcome, reason) = match cdr.disposition {
        Disposition::Answered => ("completed", None),
        Disposition::Busy => ("busy", None),
        Disposition::NoAnswer => ("no_answer", None),
        Disposition::InvalidNumber => ("failed", Some("invalid_number".to_string())),
        Disposition::Failed => ("failed", None),
        Disposition::Canceled => ("canceled", None),
    };
    let end = CallEnd {
        outcome,
        reason: reason.or(cdr.cause.clone()),
        answered_at: cdr.answered_at_ms,
        ended_at: cdr.ended_at_ms.max(cdr.started_at_ms),
    };
    let fresh = attempts::record_end(&s.db, &call, &end, s.now()).await?;
    Ok((StatusCode::OK, json!({ "call_id": call, "duplicate": !fresh })))
}

/// The `token` parameter of a query string.
fn form_urlencoded_token(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.strip_prefix("token=")).map(|t| percent_encoding::percent_decode_str(t).decode_utf8_lossy().into_owned())
}
