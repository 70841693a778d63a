//! Sign-in and sign-out, the organization's users, and its API keys.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Role, bearer, check_password, hash_password, verify_password};
use crate::clock::{parse_time, rfc3339};
use crate::db::{new_id, new_secret, token_hash};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Arg, Body, Filter, Query, limit};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    /// At most 254 bytes, no control characters.
    #[schema(max_length = 254, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub(crate) email: String,
    /// At most 1,024 bytes.
    #[schema(max_length = 1024)]
    pub(crate) password: String,
}

/// A hash that never matches, checked for unknown emails so that they take as long as known ones.
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$W3hF2pDGAo/I3XSSpHOUbqiF9hKmXylJ9WDCVSz0mMQ";

/// Verifies on a blocking thread that holds `slot` until the hash is computed, even when the
/// request is dropped (a client that hangs up cannot start more verifications than there are slots).
async fn verify_blocking(password: String, hash: String, slot: tokio::sync::OwnedSemaphorePermit) -> bool {
    tokio::task::spawn_blocking(move || {
        let ok = verify_password(&password, &hash);
        drop(slot);
        ok
    })
    .await
    .unwrap_or(false)
}

/// Signs in. The attempt is counted as a failure before the password is checked (and taken
/// back if it checks out), and the check waits for one of a few verification slots: argon2id
/// costs 19 MiB and tens of milliseconds of a core, so a flood of sign-ins answers 503 `busy`
/// instead of exhausting memory and threads.
pub(crate) async fn login(State(s): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, Body(l): Body<Login>) -> ApiResult<Json<Value>> {
    let now = s.now();
    if l.email.len() > 254 || l.email.chars().any(char::is_control) {
        return Err(ApiError::invalid("email", "an email address"));
    }
    if l.password.len() > 1024 {
        return Err(ApiError::invalid("password", "at most 1024 bytes"));
    }
    let email = l.email.trim().to_lowercase();
    let attempt = s.logins.begin(&email, peer.ip(), now).map_err(|wait| ApiError::too_many(wait, "too many failed sign-ins; try again later"))?;
    let Some(verifying) = s.logins.verification().await else {
        s.logins.cancel(attempt);
        return Err(ApiError::unavailable("busy", 1, "too many sign-ins at once; try again shortly"));
    };
    let checked = async {
        let row = sqlx::query("SELECT id, org_id, password_hash, role, name FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&s.db)
            .await?;
        let hash = match &row {
            Some(r) => r.try_get::<String, _>(2)?,
            None => DECOY.to_string(),
        };
        let ok = verify_blocking(l.password, hash, verifying).await && row.is_some();
        ApiResult::Ok(row.filter(|_| ok))
    }
    .await;
    let row = match checked {
        Ok(Some(row)) => {
            s.logins.succeeded(attempt, now);
            row
        }
        Ok(None) => {
            s.logins.failed(attempt);
            return Err(ApiError::unauthorized("wrong email or password"));
        }
        // The password was not checked: not the caller's failure.
        Err(e) => {
            s.logins.cancel(attempt);
            return Err(e);
        }
    };
    let token = new_secret("cxs");
    let expires = now + s.config.session_ttl.as_millis() as i64;
    let user_id: String = row.try_get(0)?;
    let org_id: String = row.try_get(1)?;
    sqlx::query("INSERT INTO sessions (token_hash, org_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(token_hash(&token))
        .bind(&org_id)
        .bind(&user_id)
        .bind(now)
        .bind(expires)
        .execute(&s.db)
        .await?;
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND expires_at <= $2").bind(&user_id).bind(now).execute(&s.db).await?;
    Ok(Json(json!({
        "token": token,
        "expires_at": rfc3339(expires),
        "user": { "id": user_id, "org_id": org_id, "email": email, "role": row.try_get::<String, _>(3)?, "name": row.try_get::<String, _>(4)? },
    })))
}

pub(crate) async fn logout(State(s): State<AppState>, caller: Caller, headers: axum::http::HeaderMap) -> ApiResult<StatusCode> {
    if caller.user_id.is_none() {
        return Err(ApiError::bad_request("API keys are revoked with DELETE /v1/api-keys/{id}, not signed out"));
    }
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash(bearer(&headers)?)).execute(&s.db).await?;
    Ok(StatusCode::NO_CONTENT)
}

const USER_COLUMNS: &str = "id, org_id, email, name, role, created_at, updated_at";

fn user_view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "org_id": row.try_get::<String, _>("org_id")?,
        "email": row.try_get::<String, _>("email")?,
        "name": row.try_get::<String, _>("name")?,
        "role": row.try_get::<String, _>("role")?,
        "created_at": rfc3339(row.try_get("created_at")?),
        "updated_at": rfc3339(row.try_get("updated_at")?),
    }))
}

async fn fetch_user(s: &AppState, org: &str, id: &str) -> ApiResult<Value> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND org_id = $2");
    let row = sqlx::query(AssertSqlSafe(sql)).bind(id).bind(org).fetch_optional(&s.db).await?;
    user_view(&row.ok_or_else(|| ApiError::not_found("user"))?)
}

/// Who is calling: the user (for sessions) or the key's role, and the organization.
pub(crate) async fn me(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let org: String = sqlx::query_scalar("SELECT name FROM orgs WHERE id = $1").bind(&caller.org_id).fetch_one(&s.db).await?;
    let user = match &caller.user_id {
        Some(id) => fetch_user(&s, &caller.org_id, id).await?,
        None => Value::Null,
    };
    Ok(Json(json!({ "org": { "id": caller.org_id, "name": org }, "role": caller.role, "user": user })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    /// An email address (at most 254 bytes); unique across the service.
    #[schema(max_length = 254)]
    pub(crate) email: String,
    #[serde(default)]
    pub(crate) name: String,
    pub(crate) role: Role,
    /// At least 10 characters, at most 1,024 bytes.
    #[schema(min_length = 10, max_length = 1024)]
    pub(crate) password: String,
}

pub(crate) fn check_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let ok = email.len() <= 254 && email.split_once('@').is_some_and(|(a, d)| !a.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'));
    if !ok || email.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid("email", "an email address"));
    }
    Ok(email)
}

/// Creates a user in organization `org` (used by the API and by `cxb admin create-org`).
pub(crate) async fn insert_user(db: &sqlx::AnyPool, org: &str, email: &str, name: &str, role: Role, password: String, now: i64) -> ApiResult<String> {
    check_password(&password)?;
    let email = check_email(email)?;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(ApiError::internal)?.map_err(ApiError::internal)?;
    let id = new_id("usr", now);
    let done = sqlx::query(
        "INSERT INTO users (id, org_id, email, name, role, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(&id)
    .bind(org)
    .bind(&email)
    .bind(name.trim())
    .bind(role.as_str())
    .bind(hash)
    .bind(now)
    .bind(now)
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::conflict("email_taken", "a user with this email already exists"));
    }
    Ok(id)
}

pub(crate) async fn create_user(State(s): State<AppState>, caller: Caller, Body(u): Body<NewUser>) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let id = insert_user(&s.db, &caller.org_id, &u.email, &u.name, u.role, u.password, s.now()).await?;
    Ok((StatusCode::CREATED, Json(fetch_user(&s, &caller.org_id, &id).await?)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

pub(crate) async fn list_users(State(s): State<AppState>, caller: Caller, Query(q): Query<PageQuery>) -> ApiResult<Json<Value>> {
    let limit = limit(q.limit)?;
    let mut f = Filter::new(&format!("SELECT {USER_COLUMNS} FROM users WHERE org_id = "));
    f.and("? AND id > ?", [Arg::Text(caller.org_id), Arg::Text(q.cursor.unwrap_or_default())]);
    f.push(&format!(" ORDER BY id LIMIT {}", limit + 1));
    Ok(Json(f.page_by_id(&s.db, limit, user_view).await?))
}

pub(crate) async fn get_user(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(fetch_user(&s, &caller.org_id, &id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserPatch {
    pub(crate) name: Option<String>,
    pub(crate) role: Option<Role>,
    /// Users may change their own password; admins anyone's. At least 10 characters, at
    /// most 1,024 bytes.
    #[schema(min_length = 10, max_length = 1024)]
    pub(crate) password: Option<String>,
}

pub(crate) async fn update_user(State(s): State<AppState>, caller: Caller, Path(id): Path<String>, Body(p): Body<UserPatch>) -> ApiResult<Json<Value>> {
    let own = caller.user_id.as_deref() == Some(id.as_str());
    if !own || p.role.is_some() {
        caller.require(Role::Admin)?;
    }
    fetch_user(&s, &caller.org_id, &id).await?;
    let now = s.now();
    if let Some(role) = p.role {
        if own && role != Role::Admin {
            return Err(ApiError::conflict("last_admin", "admins cannot lower their own role; ask another admin"));
        }
        sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE id = $3 AND org_id = $4")
            .bind(role.as_str())
            .bind(now)
            .bind(&id)
            .bind(&caller.org_id)
            .execute(&s.db)
            .await?;
    }
    if let Some(name) = p.name {
        sqlx::query("UPDATE users SET name = $1, updated_at = $2 WHERE id = $3 AND org_id = $4")
            .bind(name.trim())
            .bind(now)
            .bind(&id)
            .bind(&caller.org_id)
            .execute(&s.db)
            .await?;
    }
    if let Some(password) = p.password {
        check_password(&password)?;
        let hash = tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(ApiError::internal)?.map_err(ApiError::internal)?;
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3 AND org_id = $4")
            .bind(hash)
            .bind(now)
            .bind(&id)
            .bind(&caller.org_id)
            .execute(&s.db)
            .await?;
        // Every other session of that user ends.
        sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(&id).execute(&s.db).await?;
    }
    Ok(Json(fetch_user(&s, &caller.org_id, &id).await?))
}

pub(crate) async fn delete_user(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    if caller.user_id.as_deref() == Some(id.as_str()) {
        return Err(ApiError::conflict("last_admin", "you cannot delete yourself"));
    }
    crate::resources::delete_owned(&s, "users", &caller.org_id, &id, "user").await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApiKey {
    /// 1 to 200 bytes, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub(crate) name: String,
    pub(crate) role: Role,
    /// RFC 3339; none: no expiry.
    #[serde(default)]
    pub(crate) expires_at: Option<String>,
}

fn key_view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    let expires: Option<i64> = row.try_get("expires_at")?;
    let used: Option<i64> = row.try_get("last_used_at")?;
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "name": row.try_get::<String, _>("name")?,
        "role": row.try_get::<String, _>("role")?,
        "hint": row.try_get::<String, _>("hint")?,
        "created_at": rfc3339(row.try_get("created_at")?),
        "expires_at": expires.map(rfc3339),
        "last_used_at": used.map(rfc3339),
    }))
}

const KEY_COLUMNS: &str = "id, name, role, hint, created_at, expires_at, last_used_at";

/// Makes a key; the response is the only place its value ever appears.
pub(crate) async fn create_key(State(s): State<AppState>, caller: Caller, Body(k): Body<NewApiKey>) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let now = s.now();
    if k.name.trim().is_empty() || k.name.len() > 200 {
        return Err(ApiError::invalid("name", "between 1 and 200 characters"));
    }
    let expires = match &k.expires_at {
        Some(t) => {
            let at = parse_time(t).ok_or_else(|| ApiError::invalid("expires_at", "an RFC 3339 time"))?;
            if at <= now {
                return Err(ApiError::invalid("expires_at", "in the future"));
            }
            Some(at)
        }
        None => None,
    };
    let key = new_secret("cxk");
    let id = new_id("key", now);
    sqlx::query(
        "INSERT INTO api_keys (id, org_id, name, role, token_hash, hint, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(&caller.org_id)
    .bind(k.name.trim())
    .bind(k.role.as_str())
    .bind(token_hash(&key))
    .bind(format!("{}…", &key[..8]))
    .bind(caller.user_id.clone())
    .bind(now)
    .bind(expires)
    .execute(&s.db)
    .await?;
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
    let mut out = key_view(&sqlx::query(AssertSqlSafe(sql)).bind(&id).fetch_one(&s.db).await?)?;
    out["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(out)))
}

pub(crate) async fn list_keys(State(s): State<AppState>, caller: Caller, Query(q): Query<PageQuery>) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let limit = limit(q.limit)?;
    let mut f = Filter::new(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = "));
    f.and("?", [Arg::Text(caller.org_id)]);
    f.newest_first(q.cursor, limit);
    Ok(Json(f.page_by_id(&s.db, limit, key_view).await?))
}

pub(crate) async fn delete_key(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    crate::resources::delete_owned(&s, "api_keys", &caller.org_id, &id, "API key").await
}
