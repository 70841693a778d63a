//! The seam between the API and the dialler: the API serves the routes carriers and people call
//! (`POST /v1/calls`, the carriers' call-end webhooks) and documents them; the dialler, which
//! knows the carriers, answers them. An API started without a dialler answers 503.

use std::future::Future;
use std::pin::Pin;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;

/// A boxed future answering a request.
pub type Reply = Pin<Box<dyn Future<Output = ApiResult<(StatusCode, Value)>> + Send>>;

/// `POST /v1/calls`: one outbound call from a bot.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectCall {
    /// The CX Bridge bot that talks.
    pub bot_id: String,
    /// The number to call (E.164, or national with the organization's default country code).
    pub to: String,
    /// The caller ID; the organization's default caller ID when absent.
    #[serde(default)]
    pub from: Option<String>,
    /// Metadata the bot receives as stream parameters.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// A carrier's webhook as it arrived.
#[derive(Debug, Clone)]
pub struct CarrierWebhook {
    /// The URL's query string (the per-call `token=` rides there).
    pub query: Option<String>,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// What the dialler provides the API.
pub trait Telephony: Send + Sync + std::fmt::Debug {
    /// Places one call for `org`; answers 201 with the call record.
    fn place_call(&self, state: AppState, org: String, call: DirectCall) -> Reply;
    /// Handles a carrier's call-end webhook for `org`.
    fn carrier_webhook(&self, state: AppState, org: String, webhook: CarrierWebhook) -> Reply;
}

fn telephony(s: &AppState) -> ApiResult<std::sync::Arc<dyn Telephony>> {
    s.telephony.get().cloned().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "telephony_unavailable", "this API runs without a dialler; run `cxb up` or `cxb api`")
    })
}

pub(crate) async fn place_call(State(s): State<AppState>, caller: Caller, Body(call): Body<DirectCall>) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let t = telephony(&s)?;
    let (status, body) = t.place_call(s, caller.org_id, call).await?;
    Ok((status, Json(body)))
}

pub(crate) async fn carrier_webhook(
    State(s): State<AppState>,
    Path(org): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let t = telephony(&s)?;
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect();
    let (status, body) = t.carrier_webhook(s, org, CarrierWebhook { query, headers, body }).await?;
    Ok((status, Json(body)))
}
