//! The fleet registry: engine hosts heartbeat their free capacity; `reserve` promises a slot
//! on the host with the most free capacity, atomically; the promise reaches the host in its
//! next heartbeat answer and stops counting here once the host confirms it holds it.
//!
//! Free capacity of a host = `slots_free` (its own count, which includes reservations it
//! already holds) − `pending` (reservations made here that it has not confirmed). A reserve is
//! one conditional `UPDATE … SET pending = pending + 1 WHERE slots_free - pending > 0`, so two
//! concurrent reservations can never both take the last slot, on SQLite or PostgreSQL.
//!
//! A reservation whose call will not come (the carrier ended it unanswered, refused it, or the
//! dialler could not claim its contact) is given back at once with [`release_in`]: a promise the
//! host has not confirmed stops counting here, and one it may hold goes to it in the
//! `release` list of its heartbeat answers until it confirms it as `released` (or the
//! reservation lapses on its own), so the engine frees the slot within a heartbeat.
//!
//! Who may do what: engines heartbeat with `engine` fleet tokens, each as one host only (the
//! host its token was made for, or else the first one it heartbeats as, recorded in the
//! heartbeat's transaction), so no engine learns another host's reservations or releases;
//! diallers reserve with `dialler` tokens; any fleet token (or an admin) reads the live hosts.
//! Hosts advertise `wss://` addresses; `ws://` only to a loopback host, unless the operator
//! allows it ([`check_address`]).

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};
use sqlx::Row;

use crate::AppState;
use crate::auth::{Caller, Dialler, Fleet, FleetToken, Role, bearer};
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;

/// The messages of the fleet channel, defined in the contract the engine shares.
pub use cxb_contract::fleet::{CallTokenKey, Heartbeat, HeartbeatAnswer, Reservation, Reserved};

/// Checks the address a host advertises: a `wss://` base URL (a host, an optional port and path;
/// no credentials, query or fragment), or a `ws://` one to a loopback host (127.0.0.0/8, ::1,
/// `localhost`). `allow_ws` (the operator's switch) also lets `ws://` reach any other host.
/// A refusal is 422 naming `address`.
pub fn check_address(address: &str, allow_ws: bool) -> ApiResult<()> {
    if address.len() > 500 {
        return Err(ApiError::invalid("address", "at most 500 bytes"));
    }
    let url = reqwest::Url::parse(address).map_err(|_| ApiError::invalid("address", "a wss:// base URL"))?;
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() || !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(ApiError::invalid("address", "a base URL: a host, an optional port and path; no credentials, query or fragment"));
    }
    match url.scheme() {
        "wss" => Ok(()),
        "ws" if allow_ws || loopback_host(host) => Ok(()),
        "ws" => Err(ApiError::invalid(
            "address",
            "ws:// is accepted only to a loopback host (127.0.0.0/8, ::1, localhost): serve TLS (cxb core --tls-cert/--tls-key) and advertise wss://",
        )),
        _ => Err(ApiError::invalid("address", "a wss:// base URL")),
    }
}

/// A URL's host (as the URL parser normalised it: IPv4 in dotted decimal, IPv6 in brackets,
/// names in lowercase) that is a loopback address or `localhost`.
fn loopback_host(host: &str) -> bool {
    if host == "localhost" || host == "localhost." {
        return true;
    }
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match literal.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(std::net::IpAddr::V6(v6)) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

/// Whether hosts may advertise plain `ws://` to hosts that are not loopback: the operator's
/// switch, off until `ApiConfig` carries it (`allow_ws_hosts`).
fn allow_ws_hosts(s: &AppState) -> bool {
    s.config.allow_ws_hosts
}

/// 403 `wrong_host`: an engine token heartbeating as a host it is not bound to.
fn wrong_host(message: String) -> ApiError {
    metrics::counter!("cxb_api_heartbeats_refused_total", "reason" => "wrong_host").increment(1);
    ApiError::new(StatusCode::FORBIDDEN, "wrong_host", message)
}

/// Binds an engine token that is not bound yet to `host_id`, its first heartbeat's host (trust
/// on first use), in that heartbeat's transaction `tx`, after the host's row is written: first
/// heartbeats as one host from different tokens wait on that row, so one of them binds and the
/// others then see the binding. A host another token is bound to is refused.
async fn bind_on_first_use(tx: &mut sqlx::AnyConnection, token_id: &str, host_id: &str, now: i64) -> ApiResult<()> {
    let bound = sqlx::query(
        "UPDATE fleet_tokens SET host_id = $1, bound_at = $2 WHERE id = $3 AND host_id IS NULL \
         AND NOT EXISTS (SELECT 1 FROM fleet_tokens WHERE host_id = $1)",
    )
    .bind(host_id)
    .bind(now)
    .bind(token_id)
    .execute(&mut *tx)
    .await?;
    if bound.rows_affected() > 0 {
        return Ok(());
    }
    // Bound meanwhile by a concurrent heartbeat, or the host is another token's.
    let current: Option<Option<String>> =
        sqlx::query_scalar("SELECT host_id FROM fleet_tokens WHERE id = $1").bind(token_id).fetch_optional(&mut *tx).await?;
    match current {
        None => Err(ApiError::unauthorized("unknown fleet token")),
        Some(Some(bound)) if bound == host_id => Ok(()),
        Some(Some(bound)) => Err(wrong_host(format!("this fleet token is bound to host `{bound}`"))),
        Some(None) => Err(wrong_host(format!("host `{host_id}` is bound to another fleet token"))),
    }
}

pub(crate) async fn heartbeat(State(s): State<AppState>, fleet: Fleet, Body(h): Body<Heartbeat>) -> ApiResult<Json<HeartbeatAnswer>> {
    if h.host_id.is_empty() || h.host_id.len() > 200 {
        return Err(ApiError::invalid("host_id", "1 to 200 characters"));
    }
    if let Err(e) = check_address(&h.address, allow_ws_hosts(&s)) {
        metrics::counter!("cxb_api_heartbeats_refused_total", "reason" => "address").increment(1);
        return Err(e);
    }
    if h.slots_free > h.slots_total {
        return Err(ApiError::invalid("slots_free", "at most slots_total"));
    }
    if h.applied.len() > 10_000 || h.released.len() > 10_000 {
        return Err(ApiError::invalid("applied", "at most 10,000 tokens per list"));
    }
    // A binding never changes once made, so a bound token is checked before anything is written.
    if let Some(bound) = fleet.host_id.as_deref()
        && bound != h.host_id
    {
        return Err(wrong_host(format!("this fleet token is bound to host `{bound}`")));
    }
    let now = s.now();
    let mut tx = s.db.begin().await?;
    sqlx::query(
        "INSERT INTO hosts (id, address, version, workers, slots_total, slots_free, live_calls, pending, first_seen, last_seen) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9) ON CONFLICT (id) DO UPDATE SET address = excluded.address, \
         version = excluded.version, workers = excluded.workers, slots_total = excluded.slots_total, \
         slots_free = excluded.slots_free, live_calls = excluded.live_calls, last_seen = excluded.last_seen",
    )
    .bind(&h.host_id)
    .bind(&h.address)
    .bind(&h.version)
    .bind(i64::from(h.workers))
    .bind(h.slots_total as i64)
    .bind(h.slots_free as i64)
    .bind(h.live_calls as i64)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if fleet.host_id.is_none()
        && let Err(refused) = bind_on_first_use(&mut tx, &fleet.token_id, &h.host_id, now).await
    {
        // Nothing of this heartbeat is kept: the host's row stays as its own engine left it.
        tx.rollback().await?;
        return Err(refused);
    }
    for token in &h.applied {
        sqlx::query("DELETE FROM reservations WHERE host_id = $1 AND token = $2").bind(&h.host_id).bind(token).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM reservations WHERE host_id = $1 AND expires_at <= $2").bind(&h.host_id).bind(now).execute(&mut *tx).await?;
    for token in &h.released {
        sqlx::query("DELETE FROM reservation_releases WHERE host_id = $1 AND token = $2").bind(&h.host_id).bind(token).execute(&mut *tx).await?;
    }
    // Lapsed reservations are free on their hosts already, whoever they were for.
    sqlx::query("DELETE FROM reservation_releases WHERE expires_at <= $1").bind(now).execute(&mut *tx).await?;
    sqlx::query("UPDATE hosts SET pending = (SELECT COUNT(*) FROM reservations WHERE host_id = $1) WHERE id = $1")
        .bind(&h.host_id)
        .execute(&mut *tx)
        .await?;
    let pending: Vec<(String, i64)> = sqlx::query_as("SELECT token, expires_at FROM reservations WHERE host_id = $1 ORDER BY created_at")
        .bind(&h.host_id)
        .fetch_all(&mut *tx)
        .await?;
    let release: Vec<String> =
        sqlx::query_scalar("SELECT token FROM reservation_releases WHERE host_id = $1 ORDER BY token").bind(&h.host_id).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let keys = crate::call_tokens::live_keys(&s.db, &s.secrets, now).await?;
    metrics::counter!("cxb_api_heartbeats_total").increment(1);
    Ok(Json(HeartbeatAnswer {
        ttl_seconds: s.config.host_ttl.as_secs().max(1),
        reservations: pending.into_iter().map(|(token, at)| Reservation { token, ttl_ms: (at - now).max(0) as u64 }).collect(),
        call_token_keys: keys.into_iter().map(|(k, _)| CallTokenKey { id: k.id().to_string(), secret: k.secret_base64() }).collect(),
        release,
    }))
}

/// A fleet token of any scope, or a signed-in admin.
#[derive(Debug)]
pub(crate) struct FleetOrAdmin;

impl FromRequestParts<AppState> for FleetOrAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<FleetOrAdmin> {
        if bearer(&parts.headers)?.starts_with("cxf_") {
            FleetToken::from_request_parts(parts, state).await?;
        } else {
            Caller::from_request_parts(parts, state).await?.require(Role::Admin)?;
        }
        Ok(FleetOrAdmin)
    }
}

fn host_view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    let free: i64 = row.try_get("slots_free")?;
    let pending: i64 = row.try_get("pending")?;
    Ok(json!({
        "host_id": row.try_get::<String, _>("id")?,
        "address": row.try_get::<String, _>("address")?,
        "version": row.try_get::<String, _>("version")?,
        "workers": row.try_get::<i64, _>("workers")?,
        "slots_total": row.try_get::<i64, _>("slots_total")?,
        "slots_free": free,
        "live_calls": row.try_get::<i64, _>("live_calls")?,
        "pending_reservations": pending,
        "available": (free - pending).max(0),
        "first_seen": rfc3339(row.try_get("first_seen")?),
        "last_seen": rfc3339(row.try_get("last_seen")?),
    }))
}

/// Live hosts, the most available capacity first (any fleet token, or an admin: these are the
/// addresses hosts advertise to carriers anyway).
pub(crate) async fn hosts(State(s): State<AppState>, _who: FleetOrAdmin) -> ApiResult<Json<Value>> {
    let cutoff = s.now() - s.config.host_ttl.as_millis() as i64;
    let rows = sqlx::query(
        "SELECT id, address, version, workers, slots_total, slots_free, live_calls, pending, first_seen, last_seen \
         FROM hosts WHERE last_seen >= $1 ORDER BY slots_free - pending DESC, id",
    )
    .bind(cutoff)
    .fetch_all(&s.db)
    .await?;
    let items = rows.iter().map(host_view).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({ "items": items })))
}

/// A reservation token: 64 bits, hex, top byte `ff` (engine tokens carry their worker there;
/// `ff` says "issued by the fleet, any worker may hold it").
fn new_token() -> String {
    format!("{:016x}", 0xff00_0000_0000_0000u64 | (OsRng.next_u64() & 0x00ff_ffff_ffff_ffff))
}

/// `POST /v1/fleet/reserve` (a `dialler` token).
pub(crate) async fn reserve(State(s): State<AppState>, _dialler: Dialler) -> ApiResult<(StatusCode, Json<Reserved>)> {
    let reserved = reserve_slot(&s.db, s.now(), s.config.host_ttl.as_millis() as i64, s.config.reservation_ttl.as_millis() as i64).await?;
    let Some(reserved) = reserved else {
        return Err(ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", "no engine host has a free slot") });
    };
    Ok((StatusCode::CREATED, Json(reserved)))
}

/// Reserves a slot on the live host with the most free capacity: one conditional `UPDATE` per
/// candidate, so concurrent reservations never oversell. `None`: no host has a free slot.
pub async fn reserve_slot(db: &sqlx::AnyPool, now: i64, host_ttl_ms: i64, reservation_ttl_ms: i64) -> ApiResult<Option<Reserved>> {
    let cutoff = now - host_ttl_ms;
    let candidates: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, address FROM hosts WHERE last_seen >= $1 AND slots_free - pending > 0 ORDER BY slots_free - pending DESC, id LIMIT 8",
    )
    .bind(cutoff)
    .fetch_all(db)
    .await?;
    for (host, address) in candidates {
        let mut tx = db.begin().await?;
        let took = sqlx::query("UPDATE hosts SET pending = pending + 1 WHERE id = $1 AND slots_free - pending > 0 AND last_seen >= $2")
            .bind(&host)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        if took.rows_affected() == 0 {
            tx.rollback().await?;
            continue; // taken meanwhile; try the next host
        }
        let token = new_token();
        let expires = now + reservation_ttl_ms;
        sqlx::query("INSERT INTO reservations (token, host_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(&token)
            .bind(&host)
            .bind(now)
            .bind(expires)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("cxb_api_reservations_total", "result" => "reserved").increment(1);
        return Ok(Some(Reserved { host_id: host, address, token, expires_at: rfc3339(expires) }));
    }
    metrics::counter!("cxb_api_reservations_total", "result" => "no_capacity").increment(1);
    Ok(None)
}

/// A slot reserved for one placed call: where, the reservation's token, and when it lapses on
/// its own (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHold {
    pub host_id: String,
    pub token: String,
    pub until: i64,
}

/// Gives back a reservation whose call will not come, in `tx` (which must already have written,
/// or be about to: this starts with a write). Not yet confirmed by its host, it stops counting
/// at once; the host may hold it all the same (an answer carrying it may be on its way), so
/// until it lapses it is also listed in the host's heartbeat answers for release.
pub async fn release_in(tx: &mut sqlx::AnyConnection, hold: &SlotHold, now: i64) -> ApiResult<()> {
    // The host's row first, then its reservations: the order heartbeats and `reserve_slot` take
    // them in, so no two transactions wait on each other (PostgreSQL would abort one).
    sqlx::query("UPDATE hosts SET pending = pending WHERE id = $1").bind(&hold.host_id).execute(&mut *tx).await?;
    let pending = sqlx::query("DELETE FROM reservations WHERE token = $1 AND host_id = $2").bind(&hold.token).bind(&hold.host_id).execute(&mut *tx).await?;
    if pending.rows_affected() > 0 {
        sqlx::query("UPDATE hosts SET pending = (SELECT COUNT(*) FROM reservations WHERE host_id = $1) WHERE id = $1")
            .bind(&hold.host_id)
            .execute(&mut *tx)
            .await?;
    }
    if hold.until > now {
        sqlx::query("INSERT INTO reservation_releases (token, host_id, expires_at) VALUES ($1, $2, $3) ON CONFLICT (token) DO NOTHING")
            .bind(&hold.token)
            .bind(&hold.host_id)
            .bind(hold.until)
            .execute(&mut *tx)
            .await?;
    }
    metrics::counter!("cxb_api_reservations_total", "result" => "released").increment(1);
    Ok(())
}

/// [`release_in`] in a transaction of its own.
pub async fn release(db: &sqlx::AnyPool, hold: &SlotHold, now: i64) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    release_in(&mut tx, hold, now).await?;
    tx.commit().await?;
    Ok(())
}

/// `GET /v1/runtime/bots/{id}` (an `engine` token, bound or not): everything the engine needs
/// at call start, secrets included.
pub(crate) async fn runtime_bot(State(s): State<AppState>, _fleet: Fleet, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let row = sqlx::query("SELECT org_id, body, updated_at FROM bots WHERE id = $1")
        .bind(&id)
        .fetch_optional(&s.db)
        .await?
        .ok_or_else(|| ApiError::not_found("bot"))?;
    let body: String = row.try_get(1)?;
    let mut bot: Value = serde_json::from_str(&body).map_err(ApiError::internal)?;
    // The engine needs the bot's secrets open; they stay sealed at rest.
    s.secrets.open_document(&mut bot).map_err(ApiError::internal)?;
    bot["id"] = Value::String(id);
    bot["org_id"] = Value::String(row.try_get(0)?);
    bot["updated_at"] = rfc3339(row.try_get(2)?).into();
    Ok(Json(bot))
}

/// `GET /v1/runtime/phone-numbers/{number}` (an `engine` token): the number's bot, its
/// organization and the trunk's credentials, secrets open. A disabled number is not found.
pub(crate) async fn runtime_number(State(s): State<AppState>, _fleet: Fleet, Path(number): Path<String>) -> ApiResult<Json<Value>> {
    let row = sqlx::query("SELECT id, org_id, body FROM phone_numbers WHERE name = $1")
        .bind(&number)
        .fetch_optional(&s.db)
        .await?
        .ok_or_else(|| ApiError::not_found("phone number"))?;
    let body: String = row.try_get(2)?;
    let mut doc: Value = serde_json::from_str(&body).map_err(ApiError::internal)?;
    if doc["enabled"] == false {
        return Err(ApiError::not_found("phone number"));
    }
    s.secrets.open_document(&mut doc).map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({
        "id": row.try_get::<String, _>(0)?,
        "org_id": row.try_get::<String, _>(1)?,
        "number": doc["number"],
        "bot_id": doc["bot_id"],
        "allowed_sources": doc.get("allowed_sources").cloned().unwrap_or_else(|| serde_json::json!([])),
        "digest_username": doc["digest_username"],
        "digest_password": doc["secrets"]["digest_password"],
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: ApiResult<()>) -> Option<String> {
        r.err().and_then(|e| e.field)
    }

    #[test]
    fn addresses_are_wss_or_ws_to_loopback() {
        for ok in [
            "wss://engine.example",
            "wss://10.0.0.1:8443",
            "wss://edge.example/engine-1",
            "ws://127.0.0.1:8080",
            "ws://127.9.9.9",
            "ws://[::1]:8080",
            "ws://[::ffff:127.0.0.1]:8080",
            "ws://localhost:8080",
            "ws://LOCALHOST:8080",
            "ws://2130706433:80",
        ] {
            assert!(check_address(ok, false).is_ok(), "{ok}");
        }
        for refused in [
            "ws://10.0.0.1:8080",
            "ws://0.0.0.0:8080",
            "ws://engine.example",
            "ws://localhost.example",
            "ws://127.0.0.1.nip.io",
            "ws://[::2]:8080",
            "http://127.0.0.1:8080",
            "https://engine.example",
            "wss://",
            "wss://user:pw@engine.example",
            "wss://engine.example/?x=1",
            "wss://engine.example/#x",
            "engine.example:8080",
            "",
        ] {
            assert_eq!(field(check_address(refused, false)).as_deref(), Some("address"), "{refused}");
        }
        assert!(check_address(&format!("wss://{}", "a".repeat(500)), false).is_err());
    }

    #[test]
    fn the_operators_switch_allows_plain_ws_anywhere() {
        assert!(check_address("ws://10.0.0.1:8080", true).is_ok());
        assert!(check_address("ws://engine.example", true).is_ok());
        assert!(check_address("http://10.0.0.1:8080", true).is_err(), "still a WebSocket URL");
        assert!(check_address("ws://u@10.0.0.1", true).is_err(), "still a base URL");
    }
}
