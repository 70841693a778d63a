//! Campaign state changes, contact lists (one at a time or CSV import, merged by number), and
//! the organization's do-not-call list.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use cxb_contacts::{Contact, E164, import_csv};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::clock::rfc3339;
use crate::db::new_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Arg, Body, Filter, Query, body_bytes, limit, page_of_ids};
use crate::model::{Campaign, CampaignState};

/// `POST /v1/campaigns/{id}/{action}`: one state change, made atomically so two racing
/// requests cannot both succeed from the same state.
pub(crate) async fn transition(s: AppState, caller: Caller, id: String, action: &'static str) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    let Some((to, from)) = CampaignState::action(action) else { return Err(ApiError::not_found("action")) };
    let allowed: Vec<String> = from.iter().map(|f| format!("'{}'", f.as_str())).collect();
    let sql = format!("UPDATE campaigns SET state = $1, updated_at = $2 WHERE id = $3 AND org_id = $4 AND state IN ({})", allowed.join(", "));
    let done = sqlx::query(AssertSqlSafe(sql)).bind(to.as_str()).bind(s.now()).bind(&id).bind(&caller.org_id).execute(&s.db).await?;
    if done.rows_affected() == 0 {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM campaigns WHERE id = $1 AND org_id = $2")
            .bind(&id)
            .bind(&caller.org_id)
            .fetch_optional(&s.db)
            .await?;
        let Some(state) = state else { return Err(ApiError::not_found("campaign")) };
        return Err(ApiError::conflict("invalid_transition", format!("cannot {action} a {state} campaign")));
    }
    crate::resources::get::<Campaign>(State(s), caller, Path(id)).await
}

/// The campaign's state and default country code, 404 when it is not the caller's, 409 when
/// it no longer takes contacts.
async fn open_campaign(s: &AppState, org: &str, id: &str) -> ApiResult<Option<String>> {
    let row = sqlx::query("SELECT state, body FROM campaigns WHERE id = $1 AND org_id = $2")
        .bind(id)
        .bind(org)
        .fetch_optional(&s.db)
        .await?
        .ok_or_else(|| ApiError::not_found("campaign"))?;
    let state: String = row.try_get(0)?;
    if state == "COMPLETED" || state == "ARCHIVED" {
        return Err(ApiError::conflict("invalid_state", format!("a {state} campaign takes no contacts")));
    }
    let body: String = row.try_get(1)?;
    let campaign: Campaign = serde_json::from_str(&body).map_err(ApiError::internal)?;
    match campaign.default_country_code {
        Some(cc) => Ok(Some(cc)),
        None => org_country_code(s, org).await,
    }
}

/// The organization's default calling code from its settings.
pub(crate) async fn org_country_code(s: &AppState, org: &str) -> ApiResult<Option<String>> {
    let body: Option<String> = sqlx::query_scalar("SELECT body FROM settings WHERE org_id = $1").bind(org).fetch_optional(&s.db).await?;
    Ok(body.and_then(|b| serde_json::from_str::<Value>(&b).ok()).and_then(|v| v["default_country_code"].as_str().map(String::from)))
}

/// One contact to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewContact {
    /// E.164, or national with the campaign's default country code.
    pub(crate) phone: String,
    /// At most 1,000 bytes.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub(crate) name: String,
    /// An IANA time zone such as `America/New_York`.
    #[serde(default)]
    pub(crate) time_zone: Option<String>,
    /// At most 64.
    #[serde(default)]
    pub(crate) fields: std::collections::BTreeMap<String, String>,
}

enum Saved {
    Inserted,
    Merged,
}

/// Inserts a contact or merges it into the campaign's contact with the same number.
async fn save_contact(tx: &mut sqlx::AnyConnection, org: &str, campaign: &str, c: Contact, now: i64) -> ApiResult<(String, Saved)> {
    let existing = sqlx::query("SELECT id, name, time_zone, fields FROM contacts WHERE campaign_id = $1 AND phone = $2")
        .bind(campaign)
        .bind(c.phone.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = existing {
        let id: String = row.try_get(0)?;
        let fields: String = row.try_get(3)?;
        let mut merged = Contact {
            phone: c.phone.clone(),
            name: row.try_get(1)?,
            time_zone: row.try_get(2)?,
            fields: serde_json::from_str(&fields).unwrap_or_default(),
        };
        merged.merge(c);
        sqlx::query("UPDATE contacts SET name = $1, time_zone = $2, fields = $3, updated_at = $4 WHERE id = $5")
            .bind(merged.name)
            .bind(merged.time_zone)
            .bind(serde_json::to_string(&merged.fields).map_err(ApiError::internal)?)
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        return Ok((id, Saved::Merged));
    }
    let id = new_id("ctc", now);
    sqlx::query(
        "INSERT INTO contacts (id, org_id, campaign_id, phone, name, time_zone, fields, status, attempts, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9)",
    )
    .bind(&id)
    .bind(org)
    .bind(campaign)
    .bind(c.phone.as_str())
    .bind(c.name)
    .bind(c.time_zone)
    .bind(serde_json::to_string(&c.fields).map_err(ApiError::internal)?)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok((id, Saved::Inserted))
}

fn contact_view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    let fields: String = row.try_get("fields")?;
    let next: Option<i64> = row.try_get("next_attempt_at")?;
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "campaign_id": row.try_get::<String, _>("campaign_id")?,
        "phone": row.try_get::<String, _>("phone")?,
        "name": row.try_get::<String, _>("name")?,
        "time_zone": row.try_get::<Option<String>, _>("time_zone")?,
        "fields": serde_json::from_str::<Value>(&fields).unwrap_or(Value::Null),
        "status": row.try_get::<String, _>("status")?,
        "disposition": row.try_get::<Option<String>, _>("disposition")?,
        "attempts": row.try_get::<i64, _>("attempts")?,
        "next_attempt_at": next.map(rfc3339),
        "created_at": rfc3339(row.try_get("created_at")?),
        "updated_at": rfc3339(row.try_get("updated_at")?),
    }))
}

const CONTACT_COLUMNS: &str = "id, campaign_id, phone, name, time_zone, fields, status, disposition, attempts, next_attempt_at, created_at, updated_at";

async fn fetch_contact(s: &AppState, org: &str, campaign: &str, id: &str) -> ApiResult<Value> {
    let sql = format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE id = $1 AND campaign_id = $2 AND org_id = $3");
    let row = sqlx::query(AssertSqlSafe(sql)).bind(id).bind(campaign).bind(org).fetch_optional(&s.db).await?;
    contact_view(&row.ok_or_else(|| ApiError::not_found("contact"))?)
}

pub(crate) async fn add_contact(
    State(s): State<AppState>,
    caller: Caller,
    Path(campaign): Path<String>,
    Body(c): Body<NewContact>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let cc = open_campaign(&s, &caller.org_id, &campaign).await?;
    let phone = E164::parse(&c.phone, cc.as_deref()).map_err(|e| ApiError::invalid("phone", e.to_string()))?;
    let time_zone = match c.time_zone.as_deref().filter(|t| !t.is_empty()) {
        Some(tz) => Some(cxb_contacts::time_zone(tz).ok_or_else(|| ApiError::invalid("time_zone", "an IANA time zone"))?.name().to_string()),
        None => None,
    };
    if c.name.len() > 1_000 || c.fields.len() > 64 {
        return Err(ApiError::invalid("fields", "at most 64 fields and 1000-byte names"));
    }
    let contact = Contact { phone, name: c.name, time_zone, fields: c.fields };
    let mut tx = s.db.begin().await?;
    let (id, saved) = save_contact(&mut tx, &caller.org_id, &campaign, contact, s.now()).await?;
    tx.commit().await?;
    let status = match saved {
        Saved::Inserted => StatusCode::CREATED,
        Saved::Merged => StatusCode::OK,
    };
    Ok((status, Json(fetch_contact(&s, &caller.org_id, &campaign, &id).await?)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ImportQuery {
    /// Overrides the campaign's default calling code for this file.
    default_country_code: Option<String>,
}

/// `POST /v1/campaigns/{id}/contacts/import` with a `text/csv` body.
pub(crate) async fn import(State(s): State<AppState>, caller: Caller, Path(campaign): Path<String>, Query(q): Query<ImportQuery>, req: Request) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    open_campaign(&s, &caller.org_id, &campaign).await?;
    let bytes = body_bytes(req, &s, "text/csv").await?;
    import_file(&s, &caller, &campaign, q.default_country_code, &bytes).await.map(Json)
}

/// Imports a CSV file's contacts into a campaign (the import route's work, also the console's
/// upload): the report of what was imported, merged and refused, row by row.
pub(crate) async fn import_file(s: &AppState, caller: &Caller, campaign: &str, country_code: Option<String>, bytes: &[u8]) -> ApiResult<Value> {
    caller.require(Role::Operator)?;
    let cc = open_campaign(s, &caller.org_id, campaign).await?;
    let cc = country_code.filter(|c| !c.is_empty()).or(cc);
    // A NUL would reach a text column, which PostgreSQL refuses (500): refuse the file instead.
    if bytes.contains(&0) {
        return Err(ApiError::invalid("file", "the file holds NUL bytes; is it a spreadsheet rather than CSV?"));
    }
    let report = import_csv(bytes, cc.as_deref()).map_err(|e| ApiError::invalid("file", e.to_string()))?;
    let (mut inserted, mut updated) = (0u64, 0u64);
    let now = s.now();
    let mut tx = s.db.begin().await?;
    for contact in report.contacts {
        match save_contact(&mut tx, &caller.org_id, campaign, contact, now).await?.1 {
            Saved::Inserted => inserted += 1,
            Saved::Merged => updated += 1,
        }
    }
    tx.commit().await?;
    Ok(json!({
        "imported": inserted,
        "updated": updated,
        "merged_in_file": report.merged,
        "rejected": report.rejected,
        "truncated": report.truncated,
    }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContactQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    status: Option<String>,
}

pub(crate) async fn list_contacts(
    State(s): State<AppState>,
    caller: Caller,
    Path(campaign): Path<String>,
    Query(q): Query<ContactQuery>,
) -> ApiResult<Json<Value>> {
    let limit = limit(q.limit)?;
    if !crate::resources::exists(&s, "campaigns", &caller.org_id, &campaign).await? {
        return Err(ApiError::not_found("campaign"));
    }
    let mut sql = format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE campaign_id = $1 AND org_id = $2 AND id > $3");
    if q.status.is_some() {
        sql.push_str(" AND status = $4");
    }
    sql.push_str(&format!(" ORDER BY id LIMIT {}", limit + 1));
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(&campaign).bind(&caller.org_id).bind(q.cursor.unwrap_or_default());
    if let Some(status) = q.status {
        query = query.bind(status);
    }
    let rows = query.fetch_all(&s.db).await?;
    let items = rows.iter().map(contact_view).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page_of_ids(items, limit)))
}

pub(crate) async fn get_contact(State(s): State<AppState>, caller: Caller, Path((campaign, id)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    Ok(Json(fetch_contact(&s, &caller.org_id, &campaign, &id).await?))
}

pub(crate) async fn delete_contact(State(s): State<AppState>, caller: Caller, Path((campaign, id)): Path<(String, String)>) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    let done = sqlx::query("DELETE FROM contacts WHERE id = $1 AND campaign_id = $2 AND org_id = $3")
        .bind(&id)
        .bind(&campaign)
        .bind(&caller.org_id)
        .execute(&s.db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("contact"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A number not to call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDnc {
    /// E.164, or national with the organization's default country code.
    pub(crate) phone: String,
    /// At most 1,000 bytes.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub(crate) note: String,
}

fn dnc_view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "phone": row.try_get::<String, _>("phone")?,
        "note": row.try_get::<String, _>("note")?,
        "created_at": rfc3339(row.try_get("created_at")?),
    }))
}

async fn parse_org_phone(s: &AppState, org: &str, phone: &str) -> ApiResult<E164> {
    let cc = org_country_code(s, org).await?;
    E164::parse(phone, cc.as_deref()).map_err(|e| ApiError::invalid("phone", e.to_string()))
}

/// Adds a number; adding it again answers the existing entry with 200.
pub(crate) async fn add_dnc(State(s): State<AppState>, caller: Caller, Body(d): Body<NewDnc>) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let phone = parse_org_phone(&s, &caller.org_id, &d.phone).await?;
    if d.note.len() > 1_000 {
        return Err(ApiError::invalid("note", "at most 1000 bytes"));
    }
    let now = s.now();
    let done = sqlx::query("INSERT INTO dnc (id, org_id, phone, note, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, phone) DO NOTHING")
        .bind(new_id("dnc", now))
        .bind(&caller.org_id)
        .bind(phone.as_str())
        .bind(d.note)
        .bind(now)
        .execute(&s.db)
        .await?;
    let row = sqlx::query("SELECT id, phone, note, created_at FROM dnc WHERE org_id = $1 AND phone = $2")
        .bind(&caller.org_id)
        .bind(phone.as_str())
        .fetch_one(&s.db)
        .await?;
    let status = if done.rows_affected() == 1 { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(dnc_view(&row)?)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DncQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    phone: Option<String>,
}

pub(crate) async fn list_dnc(State(s): State<AppState>, caller: Caller, Query(q): Query<DncQuery>) -> ApiResult<Json<Value>> {
    let limit = limit(q.limit)?;
    let phone = match &q.phone {
        Some(p) => Some(parse_org_phone(&s, &caller.org_id, p).await?),
        None => None,
    };
    let mut f = Filter::new("SELECT id, phone, note, created_at FROM dnc WHERE org_id = ");
    f.and("?", [Arg::Text(caller.org_id)]);
    if let Some(p) = phone {
        f.and(" AND phone = ?", [Arg::Text(p.as_str().to_string())]);
    }
    f.newest_first(q.cursor, limit);
    Ok(Json(f.page_by_id(&s.db, limit, dnc_view).await?))
}

pub(crate) async fn delete_dnc(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    crate::resources::delete_owned(&s, "dnc", &caller.org_id, &id, "do-not-call entry").await
}
