//! The document resources: bots, AI assistants, load balancers, webhooks and campaigns share
//! one shape (a typed JSON document plus id, organization, name and times) and one set of
//! handlers: list with a cursor, create, get, merge-patch, delete. Every statement filters by
//! the caller's organization.

use std::future::Future;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::clock::rfc3339;
use crate::db::new_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Arg, Filter, JsonObject, Query, limit, typed_strict};
use crate::model::{self, AiAssistant, Bot, Campaign, CampaignState, LoadBalancer, PhoneNumber, RoutingType, Webhook};

/// A resource stored as a JSON document in its own table.
pub(crate) trait Document: Serialize + DeserializeOwned + ToSchema + Send + Sync + 'static {
    const TABLE: &'static str;
    const PREFIX: &'static str;
    /// Singular, for messages ("bot").
    const WHAT: &'static str;
    /// Campaigns carry a state column.
    const STATEFUL: bool = false;
    fn name(&self) -> &str;
    /// Checks and normalises, looking up references in organization `org`.
    fn check(&mut self, state: &AppState, org: &str) -> impl Future<Output = ApiResult<()>> + Send;
    /// On creation: fills in generated values and returns those to show once.
    fn generate(&mut self) -> Option<Value> {
        None
    }
}

/// Deletes row `id` of `table` in organization `org`: 204, or 404 naming `what`.
pub(crate) async fn delete_owned(state: &AppState, table: &str, org: &str, id: &str, what: &str) -> ApiResult<StatusCode> {
    let sql = format!("DELETE FROM {table} WHERE id = $1 AND org_id = $2");
    let done = sqlx::query(AssertSqlSafe(sql)).bind(id).bind(org).execute(&state.db).await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(what));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// True when `id` is a row of `table` in organization `org`.
pub(crate) async fn exists(state: &AppState, table: &str, org: &str, id: &str) -> ApiResult<bool> {
    let sql = format!("SELECT 1 FROM {table} WHERE id = $1 AND org_id = $2");
    Ok(sqlx::query(AssertSqlSafe(sql)).bind(id).bind(org).fetch_optional(&state.db).await?.is_some())
}

impl Document for Bot {
    const TABLE: &'static str = "bots";
    const PREFIX: &'static str = "bot";
    const WHAT: &'static str = "bot";
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&mut self, _: &AppState, _: &str) -> ApiResult<()> {
        crate::widget::check(&mut self.widget)?;
        Bot::check(self)
    }
}

/// Bots every engine has, which need no row.
pub(crate) const BUILT_IN_BOTS: [&str; 2] = ["echo", "turn-echo"];

impl Document for AiAssistant {
    const TABLE: &'static str = "ai_assistants";
    const PREFIX: &'static str = "asst";
    const WHAT: &'static str = "AI assistant";
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&mut self, state: &AppState, org: &str) -> ApiResult<()> {
        AiAssistant::check(self)?;
        // The engine's built-in bots (`echo`, `turn-echo`) are there for trying routes out.
        if let Some(bot) = &self.bot_id
            && !BUILT_IN_BOTS.contains(&bot.as_str())
            && !exists(state, "bots", org, bot).await?
        {
            return Err(ApiError::invalid("bot_id", "no such bot"));
        }
        Ok(())
    }
}

impl Document for PhoneNumber {
    const TABLE: &'static str = "phone_numbers";
    const PREFIX: &'static str = "num";
    const WHAT: &'static str = "phone number";
    fn name(&self) -> &str {
        &self.number
    }
    async fn check(&mut self, state: &AppState, org: &str) -> ApiResult<()> {
        PhoneNumber::check(self)?;
        if !BUILT_IN_BOTS.contains(&self.bot_id.as_str()) && !exists(state, "bots", org, &self.bot_id).await? {
            return Err(ApiError::invalid("bot_id", "no such bot"));
        }
        Ok(())
    }
}

impl Document for LoadBalancer {
    const TABLE: &'static str = "load_balancers";
    const PREFIX: &'static str = "lb";
    const WHAT: &'static str = "load balancer";
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&mut self, state: &AppState, org: &str) -> ApiResult<()> {
        LoadBalancer::check(self)?;
        for (i, m) in self.members.iter().enumerate() {
            if !exists(state, "ai_assistants", org, &m.assistant_id).await? {
                return Err(ApiError::invalid(format!("members[{i}].assistant_id"), "no such AI assistant"));
            }
        }
        Ok(())
    }
}

impl Document for Webhook {
    const TABLE: &'static str = "webhooks";
    const PREFIX: &'static str = "wh";
    const WHAT: &'static str = "webhook";
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&mut self, _: &AppState, _: &str) -> ApiResult<()> {
        Webhook::check(self)
    }
    fn generate(&mut self) -> Option<Value> {
        if self.secrets.contains_key("signing_secret") {
            return None;
        }
        let secret = crate::db::new_secret("whsec");
        self.secrets.insert("signing_secret".into(), secret.clone());
        Some(json!({ "signing_secret": secret }))
    }
}

impl Document for Campaign {
    const TABLE: &'static str = "campaigns";
    const PREFIX: &'static str = "cmp";
    const WHAT: &'static str = "campaign";
    const STATEFUL: bool = true;
    fn name(&self) -> &str {
        &self.name
    }
    async fn check(&mut self, state: &AppState, org: &str) -> ApiResult<()> {
        Campaign::check(self)?;
        let table = match self.routing.kind {
            RoutingType::AiAssistant => "ai_assistants",
            RoutingType::AiLoadBalancer => "load_balancers",
            RoutingType::Hangup => return Ok(()),
        };
        let target = self.routing.target_id.as_deref().unwrap_or("");
        if !exists(state, table, org, target).await? {
            return Err(ApiError::invalid("routing.target_id", format!("no such {}", table.trim_end_matches('s').replace('_', " "))));
        }
        Ok(())
    }
}

/// `?limit=&cursor=&name=&state=`
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// Names containing this text.
    name: Option<String>,
    /// Campaigns in this state.
    state: Option<String>,
}

fn columns<T: Document>() -> &'static str {
    if T::STATEFUL { "id, name, body, created_at, updated_at, state" } else { "id, name, body, created_at, updated_at, NULL AS state" }
}

/// The document as people see it: secrets redacted, with id, times and state.
pub(crate) fn view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    let body: String = row.try_get("body")?;
    let mut doc: Value = serde_json::from_str(&body).map_err(ApiError::internal)?;
    model::redact(&mut doc);
    let Value::Object(doc) = doc else { return Err(ApiError::internal("a stored document is not an object")) };
    let mut out = serde_json::Map::new();
    out.insert("id".into(), Value::String(row.try_get("id")?));
    out.extend(doc);
    if let Ok(Some(state)) = row.try_get::<Option<String>, _>("state") {
        out.insert("state".into(), Value::String(state));
    }
    out.insert("created_at".into(), rfc3339(row.try_get("created_at")?).into());
    out.insert("updated_at".into(), rfc3339(row.try_get("updated_at")?).into());
    Ok(Value::Object(out))
}

pub(crate) async fn list<T: Document>(State(s): State<AppState>, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let limit = limit(q.limit)?;
    let mut f = Filter::new(&format!("SELECT {} FROM {} WHERE org_id = ", columns::<T>(), T::TABLE));
    f.and("?", [Arg::Text(caller.org_id)]);
    if let Some(name) = q.name {
        let escaped: String = name.to_lowercase().chars().flat_map(|c| if matches!(c, '%' | '_' | '\\') { vec!['\\', c] } else { vec![c] }).collect();
        f.and(" AND LOWER(name) LIKE ? ESCAPE '\\'", [Arg::Text(format!("%{escaped}%"))]);
    }
    if let Some(state) = q.state {
        if !T::STATEFUL || CampaignState::parse(&state).is_none() {
            return Err(ApiError::invalid("state", "DRAFT, ACTIVE, PAUSED, COMPLETED or ARCHIVED"));
        }
        f.and(" AND state = ?", [Arg::Text(state)]);
    }
    f.newest_first(q.cursor, limit);
    Ok(Json(f.page_by_id(&s.db, limit, view).await?))
}

async fn fetch<T: Document>(s: &AppState, org: &str, id: &str) -> ApiResult<sqlx::any::AnyRow> {
    let sql = format!("SELECT {} FROM {} WHERE id = $1 AND org_id = $2", columns::<T>(), T::TABLE);
    sqlx::query(AssertSqlSafe(sql)).bind(id).bind(org).fetch_optional(&s.db).await?.ok_or_else(|| ApiError::not_found(T::WHAT))
}

pub(crate) async fn create<T: Document>(State(s): State<AppState>, caller: Caller, JsonObject(body): JsonObject) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let mut doc: T = typed_strict(Value::Object(body))?;
    doc.check(&s, &caller.org_id).await?;
    let once = doc.generate();
    let now = s.now();
    let id = new_id(T::PREFIX, now);
    let body = seal_for_storage(&s, &doc)?;
    let (cols, vals) = if T::STATEFUL { (", state", ", $7") } else { ("", "") };
    let sql = format!(
        "INSERT INTO {} (id, org_id, name, body, created_at, updated_at{cols}) VALUES ($1, $2, $3, $4, $5, $6{vals})",
        T::TABLE
    );
    let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&id).bind(&caller.org_id).bind(doc.name().trim()).bind(body).bind(now).bind(now);
    if T::STATEFUL {
        q = q.bind(CampaignState::Draft.as_str());
    }
    q.execute(&s.db).await?;
    let mut out = view(&fetch::<T>(&s, &caller.org_id, &id).await?)?;
    if let (Some(Value::Object(once)), Value::Object(out)) = (once, &mut out) {
        out.extend(once);
    }
    Ok((StatusCode::CREATED, Json(out)))
}

pub(crate) async fn get<T: Document>(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(view(&fetch::<T>(&s, &caller.org_id, &id).await?)?))
}

pub(crate) async fn update<T: Document>(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonObject(mut patch): JsonObject,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    let row = fetch::<T>(&s, &caller.org_id, &id).await?;
    if T::STATEFUL {
        let state: String = row.try_get("state")?;
        if state == "COMPLETED" || state == "ARCHIVED" {
            return Err(ApiError::conflict("invalid_state", format!("a {state} campaign cannot be changed")));
        }
    }
    for read_only in ["id", "created_at", "updated_at", "state"] {
        patch.remove(read_only);
    }
    let stored: String = row.try_get("body")?;
    let before: i64 = row.try_get("updated_at")?;
    let mut stored: Value = serde_json::from_str(&stored).map_err(ApiError::internal)?;
    s.secrets.open_document(&mut stored).map_err(ApiError::internal)?;
    let mut doc = stored.clone();
    let patch = Value::Object(patch);
    model::merge_patch(&mut doc, patch.clone());
    let cleared = crate::secrets::bind_to_destinations(&stored, &mut doc, &patch);
    let mut doc: T = typed_strict(doc)?;
    doc.check(&s, &caller.org_id).await?;
    // A document whose secrets were cleared gets new generated ones (a webhook's signing
    // secret), shown once.
    let once = if cleared.is_empty() { None } else { doc.generate() };
    let now = s.now().max(before + 1);
    let body = seal_for_storage(&s, &doc)?;
    let sql = format!("UPDATE {} SET name = $1, body = $2, updated_at = $3 WHERE id = $4 AND org_id = $5 AND updated_at = $6", T::TABLE);
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(doc.name().trim())
        .bind(body)
        .bind(now)
        .bind(&id)
        .bind(&caller.org_id)
        .bind(before)
        .execute(&s.db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::conflict("edit_conflict", format!("the {} changed while this edit was made; fetch it and try again", T::WHAT)));
    }
    let mut out = view(&fetch::<T>(&s, &caller.org_id, &id).await?)?;
    if let Value::Object(out) = &mut out {
        if !cleared.is_empty() {
            // Secrets do not follow a new destination unless they are sent again.
            out.insert("secrets_cleared".into(), json!(cleared));
        }
        if let Some(Value::Object(once)) = once {
            out.extend(once);
        }
    }
    Ok(Json(out))
}

/// A document as stored: every address literal it holds passes the egress policy (422
/// `egress_forbidden` naming the field), and its secrets are sealed.
pub(crate) fn seal_for_storage<T: Serialize>(s: &AppState, doc: &T) -> ApiResult<String> {
    let mut value = serde_json::to_value(doc).map_err(ApiError::internal)?;
    crate::egress::check_document(&value, &s.config.egress)?;
    s.secrets.seal_document(&mut value, false).map_err(ApiError::internal)?;
    Ok(value.to_string())
}

pub(crate) async fn delete<T: Document>(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    if T::STATEFUL {
        let row = fetch::<T>(&s, &caller.org_id, &id).await?;
        let state: String = row.try_get("state")?;
        if state != "DRAFT" && state != "ARCHIVED" {
            return Err(ApiError::conflict("invalid_state", format!("a {state} campaign cannot be deleted; archive it first")));
        }
    }
    delete_owned(&s, T::TABLE, &caller.org_id, &id, T::WHAT).await
}
