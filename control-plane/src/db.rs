//! The database: one pool over SQLite (embedded default) or PostgreSQL through sqlx's `Any`
//! driver, one set of migrations for both, and the ids every row carries.
//!
//! Portable SQL only: `TEXT`, `BIGINT`, `DOUBLE PRECISION`; `$1`-style parameters numbered in
//! order of first use (SQLite binds them by number too); times as Unix ms; JSON documents as
//! `TEXT`; `INSERT … ON CONFLICT … DO NOTHING`. No autoincrement: ids are made here.

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, SqlSafeStr};


const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "accounts", include_str!("../migrations/0001_accounts.sql")),
    (2, "product", include_str!("../migrations/0002_product.sql")),
    (3, "runtime", include_str!("../migrations/0003_runtime.sql")),
    (4, "knowledge", include_str!("../migrations/0004_knowledge.sql")),
    (5, "dialler", include_str!("../migrations/0005_dialler.sql")),
    (6, "late_results", include_str!("../migrations/0006_late_results.sql")),
    (7, "call_tokens", include_str!("../migrations/0007_call_tokens.sql")),
    (8, "call_slots", include_str!("../migrations/0008_call_slots.sql")),
    (9, "fleet_scopes", include_str!("../migrations/0009_fleet_scopes.sql")),
    (10, "phone_numbers", include_str!("../migrations/0010_phone_numbers.sql")),
    (11, "analytics", include_str!("../migrations/0011_analytics.sql")),
    (12, "handoffs", include_str!("../migrations/0012_handoffs.sql")),
    (13, "call_pages", include_str!("../migrations/0013_call_pages.sql")),
    (14, "handoff_takeover", include_str!("../migrations/0014_handoff_takeover.sql")),
    (15, "knowledge_vectors", include_str!("../migrations/0015_knowledge_vectors.sql")),
];

/// Opens (creating if needed) the database at `url` and brings its schema up to date.
/// `sqlite://PATH` or `postgres://…`.
pub async fn connect(url: &str) -> anyhow::Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let url = if sqlite {
        let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        format!("sqlite://{path}?mode=rwc")
    } else {
        url.to_string()
    };
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite { 8 } else { 16 })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    conn.execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL").await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .with_context(|| format!("opening the database {}", redact_url(&url)))?;
    if sqlite {
        pool.execute("PRAGMA journal_mode = WAL").await.context("switching SQLite to WAL")?;
    }
    let migrations = MIGRATIONS
        .iter()
        .map(|&(v, name, sql)| Migration::new(v, name.into(), MigrationType::Simple, sql.into_sql_str(), false))
        .collect();
    Migrator::with_migrations(migrations).run(&pool).await.context("migrating the database")?;
    Ok(pool)
}

/// A database URL with any password hidden.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new id: `prefix_` and 26 characters that sort by creation time (48 bits of Unix ms, then
/// 80 random bits, base32), so the newest-first order and cursors need no extra column. Ids
/// made by one process strictly increase, even within one millisecond or when the clock
/// steps back (an id not above the last one is the last one plus one), so creation order is
/// list order.
pub fn new_id(prefix: &str, now_ms: i64) -> String {
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    let mut random = [0u8; 10];
    OsRng.fill_bytes(&mut random);
    let mut value: u128 = (u128::from(now_ms as u64 & 0xffff_ffff_ffff)) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (8 * (9 - i));
    }
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if value <= *last {
            value = *last + 1;
        }
        *last = value;
    }
    let mut id = String::with_capacity(prefix.len() + 27);
    id.push_str(prefix);
    id.push('_');
    for i in (0..26).rev() {
        id.push(CROCKFORD[((value >> (5 * i)) & 31) as usize] as char);
    }
    id
}

/// A new secret: `prefix_` and 32 random bytes, base64url. Only its hash is stored.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{prefix}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of a token, hex: how sessions, API keys and fleet tokens are stored. Tokens are
/// 256 random bits, so a fast hash is enough; passwords use argon2id instead.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(token.as_bytes()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_differ() {
        let a = new_id("bot", 1_700_000_000_000);
        let b = new_id("bot", 1_700_000_000_001);
        let c = new_id("bot", 1_700_000_000_001);
        assert!(a < b && b < c, "{a} {b} {c}");
        let same_ms: Vec<String> = (0..1000).map(|_| new_id("bot", 1_700_000_000_002)).collect();
        assert!(same_ms.windows(2).all(|w| w[0] < w[1]), "ids made in one millisecond keep creation order");
        assert_eq!(a.len(), 30);
        assert!(a.starts_with("bot_"));
    }

    #[test]
    fn secrets_are_long_and_hashes_stable() {
        let s = new_secret("cxk");
        assert_eq!(s.len(), 4 + 43);
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://…@h/db");
    }
}
