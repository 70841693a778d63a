//! Who is calling: session tokens (`cxs_…`) and API keys (`cxk_…`) act for an organization
//! with a role; fleet tokens (`cxf_…`) act for engines and diallers and reach only the runtime
//! and fleet endpoints, each within its scope: `engine` tokens the routes an engine uses,
//! `dialler` tokens the fleet's hosts and reservations. Passwords are argon2id; tokens are
//! stored as SHA-256 hashes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::OsRng;
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa::ToSchema;

use crate::db::token_hash;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// What a user or key may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Works the Agent Desk only: reads and resolves handoffs, nothing else.
    Agent,
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
            Role::Agent => "agent",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
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

/// What a fleet token may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetScope {
    /// An engine host: heartbeats (as its one host), bots' runtime configs, call results,
    /// knowledge search. Tokens made before scopes existed are engine tokens.
    Engine,
    /// A dialler process: the fleet's live hosts and slot reservations.
    Dialler,
}

impl FleetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetScope::Engine => "engine",
            FleetScope::Dialler => "dialler",
        }
    }

    pub fn parse(s: &str) -> Option<FleetScope> {
        match s {
            "engine" => Some(FleetScope::Engine),
            "dialler" => Some(FleetScope::Dialler),
            _ => None,
        }
    }
}

impl std::fmt::Display for FleetScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FleetScope {
    type Err = String;

    fn from_str(s: &str) -> Result<FleetScope, String> {
        FleetScope::parse(s).ok_or_else(|| format!("`{s}` is not a fleet scope (engine or dialler)"))
    }
}

/// A fleet token that checked out, whatever its scope. Routes take [`Fleet`] or [`Dialler`],
/// which also check the scope; this one only where any fleet member may read.
#[derive(Debug, Clone)]
pub struct FleetToken {
    pub token_id: String,
    pub scope: FleetScope,
    /// The host an engine token heartbeats as: given when it was made, or else the first host
    /// id it heartbeated as. `None`: not bound yet (or a dialler token).
    pub host_id: Option<String>,
}

impl FleetToken {
    /// 403 `wrong_scope` unless the token's scope is `scope`.
    pub fn require(&self, scope: FleetScope) -> ApiResult<()> {
        if self.scope == scope {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_scope",
                format!("this route needs a fleet token of scope `{scope}`; this one is `{}`", self.scope),
            ))
        }
    }
}

/// An engine presenting a fleet token of scope `engine`: what the `/v1/runtime/*` routes take.
/// A token of another scope is refused with 403 `wrong_scope`.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub token_id: String,
    /// The host the token is bound to, if it is yet (see [`FleetToken::host_id`]).
    pub host_id: Option<String>,
}

/// A dialler presenting a fleet token of scope `dialler` (`/v1/fleet/reserve`). A token of
/// another scope is refused with 403 `wrong_scope`.
#[derive(Debug, Clone)]
pub struct Dialler {
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
        let caller = Caller::of_token(bearer(&parts.headers)?, state).await?;
        // Agents work the Agent Desk and nothing else: every other route refuses them.
        let path = parts.uri.path();
        if caller.role == Role::Agent && !(path.starts_with("/v1/handoffs") || path == "/v1/me" || path == "/v1/auth/logout") {
            return Err(ApiError::forbidden("the agent role reaches only the Agent Desk (/v1/handoffs)"));
        }
        Ok(caller)
    }
}

impl Caller {
    /// The caller a session token or API key stands for.
    async fn of_token(token: &str, state: &AppState) -> ApiResult<Caller> {
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

impl FromRequestParts<AppState> for FleetToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<FleetToken> {
        let token = bearer(&parts.headers)?;
        if !token.starts_with("cxf_") {
            return Err(ApiError::forbidden("runtime and fleet endpoints need a fleet token (cxb admin create-fleet-token)"));
        }
        let row: Option<(String, String, Option<String>)> = sqlx::query_as("SELECT id, scope, host_id FROM fleet_tokens WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(&state.db)
            .await?;
        let (token_id, scope, host_id) = row.ok_or_else(|| ApiError::unauthorized("unknown fleet token"))?;
        // The column is checked by the schema; an unknown value reaches nothing.
        let scope = FleetScope::parse(&scope)
            .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "wrong_scope", "this fleet token has no known scope"))?;
        Ok(FleetToken { token_id, scope, host_id })
    }
}

impl FromRequestParts<AppState> for Fleet {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Fleet> {
        let token = FleetToken::from_request_parts(parts, state).await?;
        token.require(FleetScope::Engine)?;
        Ok(Fleet { token_id: token.token_id, host_id: token.host_id })
    }
}

impl FromRequestParts<AppState> for Dialler {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Dialler> {
        let token = FleetToken::from_request_parts(parts, state).await?;
        token.require(FleetScope::Dialler)?;
        Ok(Dialler { token_id: token.token_id })
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

/// How long an address that signed in to an account stays trusted by that account.
const TRUSTED_MS: i64 = 30 * 24 * 3600 * 1000;
/// Past this many keys, expired ones are swept before a new one is added.
const SWEEP_AT: usize = 100_000;

/// The sign-in limiter: failures counted in a sliding window per (account, address), per
/// address and per account, and a bound on password verifications running at once.
///
/// An attempt counts as a failure from the moment it starts ([`LoginLimiter::begin`]) until
/// its password checks out, so concurrent guesses cannot all pass the check before the first
/// failure is recorded. Locking is by (account, address): an attacker's failures lock the
/// account for the attacker's address only, never for its user elsewhere. The per-account
/// ceiling, above what any one address may fail in a window, stops many addresses from
/// guessing together; reaching it locks out only addresses that have never signed in to the
/// account, so even a botnet cannot lock its user out of a trusted address, and the ceiling
/// expires with the window like the other limits. (Letting every address that has not failed
/// try past the ceiling would give a botnet a fresh set of guesses per address; holding
/// trusted addresses to it would let any three addresses lock a user out for as long as they
/// keep at it.) Counts and trust live in this process's memory: a restart forgets them.
#[derive(Debug)]
pub struct LoginLimiter {
    failures: Mutex<Failures>,
    window_ms: i64,
    per_pair: usize,
    per_address: usize,
    per_account: usize,
    verifications: Arc<Semaphore>,
    verify_wait: std::time::Duration,
}

#[derive(Debug, Default)]
struct Failures {
    /// Start times of failed (or still running) attempts by key.
    times: HashMap<String, Vec<i64>>,
    /// (account, address) → last successful sign-in.
    trusted: HashMap<(String, String), i64>,
}

/// A sign-in under way: counted as a failure until [`LoginLimiter::succeeded`] or
/// [`LoginLimiter::cancel`] says otherwise.
#[derive(Debug)]
#[must_use]
pub struct Attempt {
    account: String,
    address: String,
    at: i64,
}

/// The address as the limits see it: IPv4 as is, IPv6 by its /64 (what one subscriber gets).
pub(crate) fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl LoginLimiter {
    pub fn new(config: &crate::ApiConfig) -> LoginLimiter {
        LoginLimiter {
            failures: Mutex::new(Failures::default()),
            window_ms: config.login_window.as_millis() as i64,
            per_pair: config.login_failures_per_account_address,
            per_address: config.login_failures_per_address,
            per_account: config.login_failures_per_account,
            verifications: Arc::new(Semaphore::new(config.login_verifications)),
            verify_wait: config.login_verify_wait,
        }
    }

    fn keys(account: &str, address: &str) -> [String; 3] {
        [format!("pair:{account} {address}"), format!("address:{address}"), format!("account:{account}")]
    }

    /// Starts a sign-in to `email` from `ip` at `now`, counting it as a failure already;
    /// `Err(seconds to wait)` when a limit is reached (nothing is counted then).
    pub fn begin(&self, email: &str, ip: IpAddr, now: i64) -> Result<Attempt, u64> {
        let account = email.trim().to_lowercase();
        let address = address_key(ip);
        let mut f = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.times.len() > SWEEP_AT {
            let cutoff = now - self.window_ms;
            f.times.retain(|_, times| times.iter().any(|&t| t > cutoff));
        }
        if f.trusted.len() > SWEEP_AT {
            f.trusted.retain(|_, &mut at| at > now - TRUSTED_MS);
        }
        let trusted = f.trusted.get(&(account.clone(), address.clone())).is_some_and(|&at| at > now - TRUSTED_MS);
        let keys = Self::keys(&account, &address);
        // A trusted address is not held to the account-wide ceiling.
        let limits = [self.per_pair, self.per_address, if trusted { usize::MAX } else { self.per_account }];
        let mut wait = 0i64;
        for (key, limit) in keys.iter().zip(limits) {
            if let Some(times) = f.times.get_mut(key) {
                times.retain(|&t| t > now - self.window_ms);
                if times.len() >= limit {
                    wait = wait.max(times[times.len() - limit] + self.window_ms - now);
                }
            }
        }
        if wait > 0 {
            return Err((wait as u64).div_ceil(1000).max(1));
        }
        for key in keys {
            f.times.entry(key).or_default().push(now);
        }
        Ok(Attempt { account, address, at: now })
    }

    /// Waits (at most the configured wait) for room to verify a password; holding the permit
    /// is running a verification.
    pub async fn verification(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(self.verify_wait, self.verifications.clone().acquire_owned()).await.ok()?.ok()
    }

    /// The bound on verifications at once, for operators' gauges and for tests that hold it.
    pub fn verifications(&self) -> &Arc<Semaphore> {
        &self.verifications
    }

    /// Takes back the failure `attempt` counted in advance.
    fn uncount(f: &mut Failures, attempt: &Attempt) {
        for key in Self::keys(&attempt.account, &attempt.address) {
            if let Some(times) = f.times.get_mut(&key)
                && let Some(i) = times.iter().position(|&t| t == attempt.at)
            {
                times.swap_remove(i);
            }
        }
    }

    /// The attempt was never checked (no verification slot): it is not a failure.
    pub fn cancel(&self, attempt: Attempt) {
        let mut f = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::uncount(&mut f, &attempt);
    }

    /// The password checked out: the attempt is not a failure, this address's earlier
    /// failures on the account are forgiven, and the address is trusted by the account.
    /// Failures elsewhere stand: they were someone else's.
    pub fn succeeded(&self, attempt: Attempt, now: i64) {
        let mut f = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::uncount(&mut f, &attempt);
        f.times.remove(&Self::keys(&attempt.account, &attempt.address)[0]);
        f.trusted.insert((attempt.account, attempt.address), now);
    }

    /// The attempt failed: it stays counted.
    pub fn failed(&self, attempt: Attempt) {
        drop(attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(pair: usize, address: usize, account: usize) -> LoginLimiter {
        let mut config = crate::ApiConfig::new("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()), "sqlite::memory:");
        config.login_window = std::time::Duration::from_secs(60);
        (config.login_failures_per_account_address, config.login_failures_per_address, config.login_failures_per_account) = (pair, address, account);
        LoginLimiter::new(&config)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| unreachable!("{s} is an address"))
    }

    #[test]
    fn limiter_locks_an_account_from_one_address_then_lets_it_go() {
        let l = limiter(3, 10, 50);
        for t in 0..3 {
            let a = l.begin("A@x", ip("1.1.1.1"), t);
            l.failed(a.unwrap_or_else(|w| panic!("refused, {w} s")));
        }
        assert_eq!(l.begin("a@x", ip("1.1.1.1"), 10).err(), Some(60));
        assert!(l.begin("a@x", ip("2.2.2.2"), 10).is_ok(), "another address is not locked out");
        assert!(l.begin("b@x", ip("1.1.1.1"), 10).is_ok());
        assert!(l.begin("a@x", ip("1.1.1.1"), 60_001).is_ok());
    }

    #[test]
    fn attempts_count_before_they_finish() {
        let l = limiter(3, 10, 50);
        let running: Vec<_> = (0..3).map(|t| l.begin("a@x", ip("1.1.1.1"), t)).collect();
        assert!(running.iter().all(Result::is_ok));
        assert!(l.begin("a@x", ip("1.1.1.1"), 5).is_err(), "a fourth guess while three run");
        let mut running = running.into_iter().flatten();
        l.cancel(running.next().unwrap_or_else(|| unreachable!()));
        let fourth = l.begin("a@x", ip("1.1.1.1"), 6);
        assert!(fourth.is_ok(), "a cancelled attempt is not a failure");
        for a in running.chain(fourth) {
            l.succeeded(a, 7);
        }
        assert!(l.begin("a@x", ip("1.1.1.1"), 8).is_ok(), "success forgives the address");
    }

    #[test]
    fn limiter_locks_an_address_across_accounts() {
        let l = limiter(3, 4, 50);
        for (t, who) in ["a", "b", "c", "d"].iter().enumerate() {
            l.failed(l.begin(who, ip("9.9.9.9"), t as i64).unwrap_or_else(|w| panic!("{w}")));
        }
        assert!(l.begin("e", ip("9.9.9.9"), 5).is_err());
        assert!(l.begin("e", ip("8.8.8.8"), 5).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let l = limiter(2, 10, 50);
        l.failed(l.begin("a", ip("2001:db8:1:2::1"), 0).unwrap_or_else(|w| panic!("{w}")));
        l.failed(l.begin("a", ip("2001:db8:1:2::ffff"), 1).unwrap_or_else(|w| panic!("{w}")));
        assert!(l.begin("a", ip("2001:db8:1:2:aaaa::9"), 2).is_err());
        assert!(l.begin("a", ip("2001:db8:1:3::1"), 2).is_ok());
        assert_eq!(address_key(ip("::ffff:10.1.2.3")), "10.1.2.3");
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
