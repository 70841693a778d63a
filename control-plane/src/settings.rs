//! The organization's settings: one document per organization, merge-patched by admins.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonObject, typed};
use crate::model::{self, Settings};

pub(crate) async fn load(s: &AppState, org: &str) -> ApiResult<(Value, i64)> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT body, updated_at FROM settings WHERE org_id = $1").bind(org).fetch_optional(&s.db).await?;
    match row {
        Some((body, at)) => Ok((serde_json::from_str(&body).map_err(ApiError::internal)?, at)),
        None => Ok((serde_json::to_value(Settings::default()).map_err(ApiError::internal)?, 0)),
    }
}

fn view(mut doc: Value, at: i64) -> Value {
    model::redact(&mut doc);
    if let Value::Object(map) = &mut doc {
        // Settings stored before prices existed show an empty price list.
        map.entry("prices").or_insert_with(|| json!({}));
        map.insert("updated_at".into(), if at == 0 { Value::Null } else { json!(rfc3339(at)) });
    }
    doc
}

pub(crate) async fn get(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let (doc, at) = load(&s, &caller.org_id).await?;
    Ok(Json(view(doc, at)))
}

pub(crate) async fn update(State(s): State<AppState>, caller: Caller, JsonObject(mut patch): JsonObject) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    patch.remove("updated_at");
    let (mut stored, _) = load(&s, &caller.org_id).await?;
    s.secrets.open_document(&mut stored).map_err(ApiError::internal)?;
    let mut doc = stored.clone();
    let patch = Value::Object(patch);
    model::merge_patch(&mut doc, patch.clone());
    let cleared = crate::secrets::bind_to_destinations(&stored, &mut doc, &patch);
    let mut settings: Settings = typed(doc)?;
    settings.check()?;
    let body = crate::resources::seal_for_storage(&s, &settings)?;
    let now = s.now();
    sqlx::query(
        "INSERT INTO settings (org_id, body, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
    )
    .bind(&caller.org_id)
    .bind(&body)
    .bind(now)
    .execute(&s.db)
    .await?;
    let mut out = view(serde_json::from_str(&body).map_err(ApiError::internal)?, now);
    if let (false, Value::Object(map)) = (cleared.is_empty(), &mut out) {
        map.insert("secrets_cleared".into(), json!(cleared));
    }
    Ok(Json(out))
}
