//! Who is calling: session tokens (`cxs_…`) and API keys (`cxk_…`) act for an organization
//! with a role; fleet tokens (`cxf_…`) act for engines and diallers and reach only the runtime
//! endpoints. Passwords are argon2id; tokens are stored as SHA-256 hashes.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::OsRng;
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::header;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::db::token_hash;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// What a user or key may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything in the organization.
    Viewer,
    /// Also changes bots, campaigns, contacts, routing targets, DNC and webhooks.
    Operator,
    /// Also manages users, API keys and settings.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A signed-in user or an API key, acting inside one organization.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org_id: String,
    /// The user, for sessions.
    pub user_id: Option<String>,
    pub role: Role,
}

impl Caller {
    /// 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> ApiResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this needs the {} role", role.as_str())))
        }
    }
}

/// An engine or dialler presenting a fleet token.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub token_id: String,
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> ApiResult<&str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <session token or API key>`"))?;
    let value = value.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Caller> {
        let token = bearer(&parts.headers)?;
        let now = state.now();
        let hash = token_hash(token);
        if token.starts_with("cxs_") {
            let row = sqlx::query(
                "SELECT s.org_id, s.user_id, u.role FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND s.expires_at > $2",
            )
            .bind(&hash)
            .bind(now)
            .fetch_optional(&state.db)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the session has expired or was signed out"))?;
            let role: String = row.try_get(2)?;
            return Ok(Caller {
                org_id: row.try_get(0)?,
                user_id: Some(row.try_get(1)?),
                role: Role::parse(&role).unwrap_or(Role::Viewer),
            });
        }
        if token.starts_with("cxk_") {
            let row = sqlx::query(
                "SELECT id, org_id, role FROM api_keys WHERE token_hash = $1 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(&hash)
            .bind(now)
            .fetch_optional(&state.db)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the API key is unknown, revoked or expired"))?;
            let id: String = row.try_get(0)?;
            // Last use is kept to the minute, so reads do not all turn into writes.
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)")
                .bind(now)
                .bind(&id)
                .bind(now - 60_000)
                .execute(&state.db)
                .await?;
            let role: String = row.try_get(2)?;
            return Ok(Caller { org_id: row.try_get(1)?, user_id: None, role: Role::parse(&role).unwrap_or(Role::Viewer) });
        }
        if token.starts_with("cxf_") {
            return Err(ApiError::forbidden("fleet tokens reach only /v1/runtime and /v1/fleet"));
        }
        Err(ApiError::unauthorized("unknown token"))
    }
}

impl FromRequestParts<AppState> for Fleet {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Fleet> {
        let token = bearer(&parts.headers)?;
        if !token.starts_with("cxf_") {
            return Err(ApiError::forbidden("runtime endpoints need a fleet token (cxb admin create-fleet-token)"));
        }
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM fleet_tokens WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(&state.db)
            .await?;
        id.map(|token_id| Fleet { token_id }).ok_or_else(|| ApiError::unauthorized("unknown fleet token"))
    }
}

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes). Blocking: call
/// it off the async threads.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Checks a password against a stored hash. Blocking.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Checks what a new password must be.
pub fn check_password(password: &str) -> ApiResult<()> {
    if password.chars().count() < 10 {
        return Err(ApiError::invalid("password", "use at least 10 characters"));
    }
    if password.len() > 1024 {
        return Err(ApiError::invalid("password", "at most 1024 bytes"));
    }
    Ok(())
}

/// Failed sign-ins per account and per client address in a sliding window; past the limit,
/// sign-in answers 429 until the oldest failure leaves the window.
#[derive(Debug)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<i64>>>,
    window_ms: i64,
    per_account: usize,
    per_address: usize,
}

impl LoginLimiter {
    pub fn new(window_ms: i64, per_account: usize, per_address: usize) -> LoginLimiter {
        LoginLimiter { failures: Mutex::new(HashMap::new()), window_ms, per_account, per_address }
    }

    fn keys(email: &str, address: &str) -> [String; 2] {
        [format!("account:{}", email.to_lowercase()), format!("address:{address}")]
    }

    /// `Err(seconds to wait)` when either key is over its limit.
    pub fn check(&self, email: &str, address: &str, now: i64) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut wait = 0i64;
        for (key, limit) in Self::keys(email, address).iter().zip([self.per_account, self.per_address]) {
            if let Some(times) = map.get_mut(key) {
                times.retain(|&t| t > now - self.window_ms);
                if times.len() >= limit {
                    wait = wait.max(times[times.len() - limit] + self.window_ms - now);
                }
            }
        }
        if wait > 0 { Err((wait as u64).div_ceil(1000)) } else { Ok(()) }
    }

    pub fn failed(&self, email: &str, address: &str, now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > 100_000 {
            let cutoff = now - self.window_ms;
            map.retain(|_, times| times.iter().any(|&t| t > cutoff));
        }
        for key in Self::keys(email, address) {
            map.entry(key).or_default().push(now);
        }
    }

    pub fn succeeded(&self, email: &str) {
        let mut map = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&format!("account:{}", email.to_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_locks_an_account_then_lets_it_go() {
        let l = LoginLimiter::new(60_000, 3, 10);
        for t in 0..3 {
            assert_eq!(l.check("a@x", "1.1.1.1", t), Ok(()));
            l.failed("A@x", "1.1.1.1", t);
        }
        assert_eq!(l.check("a@x", "2.2.2.2", 10), Err(60));
        assert_eq!(l.check("b@x", "1.1.1.1", 10), Ok(()));
        assert_eq!(l.check("a@x", "1.1.1.1", 60_001), Ok(()));
    }

    #[test]
    fn limiter_locks_an_address_across_accounts() {
        let l = LoginLimiter::new(60_000, 3, 4);
        for (t, who) in ["a", "b", "c", "d"].iter().enumerate() {
            l.failed(who, "9.9.9.9", t as i64);
        }
        assert!(l.check("e", "9.9.9.9", 5).is_err());
        assert_eq!(l.check("e", "8.8.8.8", 5), Ok(()));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").map_err(|e| e.to_string());
        let Ok(h) = h else { panic!("{h:?}") };
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
