//! Call tokens as the platform issues them: the keys (in the database, shared by every API and
//! dialler process, sealed with the secret key like every stored secret), their rotation, and
//! signing the claims of a call the platform places.
//!
//! Signing uses the newest key that is at least [`KEY_PROPAGATION_MS`] old, so every engine
//! has learnt it from a heartbeat before a token signed with it arrives; a fresh install signs
//! with its first key at once. Every key not retired verifies: engines receive them all.

use base64::Engine as _;
use cxb_contract::call_token::{CallClaims, CallKey, KeyRing};
use rand_core::{OsRng, RngCore};
use sqlx::AnyPool;

use crate::db::new_id;
use crate::error::{ApiError, ApiResult};
use crate::secrets::SecretBox;

/// How long a new key waits before it signs: engines heartbeat every 2 s and drop out of the
/// fleet after 10 s, so a live engine holds it by then.
pub const KEY_PROPAGATION_MS: i64 = 12_000;
/// How long the previous keys stay valid after a rotation: longer than any token lives.
pub const KEY_OVERLAP_MS: i64 = 3_600_000;

async fn create_key(db: &AnyPool, secrets: &SecretBox, now: i64) -> ApiResult<()> {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let sealed = secrets.seal(&base64::engine::general_purpose::STANDARD.encode(secret)).map_err(ApiError::internal)?;
    sqlx::query("INSERT INTO call_token_keys (id, secret, created_at) VALUES ($1, $2, $3)")
        .bind(new_id("ctk", now))
        .bind(sealed)
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}

/// The keys not retired at `now`, newest first; the first key is made here when there is none.
pub async fn live_keys(db: &AnyPool, secrets: &SecretBox, now: i64) -> ApiResult<Vec<(CallKey, i64)>> {
    for attempt in 0..2 {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, secret, created_at FROM call_token_keys WHERE retire_at IS NULL OR retire_at > $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(now)
        .fetch_all(db)
        .await?;
        if rows.is_empty() && attempt == 0 {
            create_key(db, secrets, now).await?;
            continue;
        }
        return rows
            .into_iter()
            .map(|(id, secret, created)| {
                let secret = secrets.open(&secret).map_err(ApiError::internal)?;
                CallKey::from_base64(&id, &secret).map(|k| (k, created)).map_err(ApiError::internal)
            })
            .collect();
    }
    Err(ApiError::internal("no call-token key could be made"))
}

/// The ring engines verify with: every live key.
pub async fn verifying_ring(db: &AnyPool, secrets: &SecretBox, now: i64) -> ApiResult<KeyRing> {
    Ok(KeyRing::new(live_keys(db, secrets, now).await?.into_iter().map(|(k, _)| k).collect()))
}

/// Signs `claims` (a fresh `jti` is set here) with the newest key engines have had time to
/// learn.
pub async fn issue(db: &AnyPool, secrets: &SecretBox, now: i64, mut claims: CallClaims) -> ApiResult<String> {
    let keys = live_keys(db, secrets, now).await?;
    let settled = keys.iter().find(|(_, created)| now - created >= KEY_PROPAGATION_MS).or(keys.last());
    let ring = KeyRing::new(settled.map(|(k, _)| k.clone()).into_iter().collect());
    let mut jti = [0u8; 16];
    OsRng.fill_bytes(&mut jti);
    claims.jti = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti);
    ring.sign(&claims).ok_or_else(|| ApiError::internal("no call-token key"))
}

/// Adds a new key and retires the older ones [`KEY_OVERLAP_MS`] from now. Returns the new
/// key's id.
pub async fn rotate(db: &AnyPool, secrets: &SecretBox, now: i64) -> ApiResult<String> {
    live_keys(db, secrets, now).await?;
    sqlx::query("UPDATE call_token_keys SET retire_at = $1 WHERE retire_at IS NULL OR retire_at > $1")
        .bind(now + KEY_OVERLAP_MS)
        .execute(db)
        .await?;
    create_key(db, secrets, now).await?;
    let newest: String = sqlx::query_scalar("SELECT id FROM call_token_keys ORDER BY created_at DESC, id DESC LIMIT 1").fetch_one(db).await?;
    Ok(newest)
}
