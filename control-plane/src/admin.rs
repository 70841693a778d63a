//! Operations for the command line (`cxb admin …`, `cxb up`): they work on the database
//! directly, because on a fresh install there is no one yet who could sign in.

use anyhow::{Context, bail};
use sqlx::AnyPool;

use crate::auth::{FleetScope, Role};
use crate::db::{new_id, new_secret, token_hash};
use crate::users::insert_user;

/// An organization and its first admin.
#[derive(Debug, Clone)]
pub struct NewOrg {
    pub org_id: String,
    pub user_id: String,
    pub email: String,
}

/// Creates an organization with its first admin user.
pub async fn create_org(db: &AnyPool, name: &str, email: &str, password: String, now: i64) -> anyhow::Result<NewOrg> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        bail!("the organization name must have 1 to 200 characters");
    }
    let org_id = new_id("org", now);
    sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)").bind(&org_id).bind(name).bind(now).execute(db).await?;
    match insert_user(db, &org_id, email, "Admin", Role::Admin, password, now).await {
        Ok(user_id) => Ok(NewOrg { org_id, user_id, email: email.trim().to_lowercase() }),
        Err(e) => {
            // No organization without an admin.
            sqlx::query("DELETE FROM orgs WHERE id = $1").bind(&org_id).execute(db).await?;
            bail!("{}", e.message)
        }
    }
}

/// How many organizations exist.
pub async fn org_count(db: &AnyPool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM orgs").fetch_one(db).await.context("counting organizations")
}

/// Creates an engine fleet token named `name`, not bound to a host yet: it binds to the first
/// host id it heartbeats as. Returns its value, which is stored only as a hash.
pub async fn create_fleet_token(db: &AnyPool, name: &str, now: i64) -> anyhow::Result<String> {
    create_scoped_fleet_token(db, name, FleetScope::Engine, None, now).await
}

/// Creates a fleet token named `name` of `scope`. An engine token given `host_id` (what the
/// engine heartbeats as, `hostname:port` for `cxb core`) may heartbeat as that host only;
/// without one it binds to the first host id it heartbeats as. Dialler tokens have no host.
/// Returns the token's value, which is stored only as a hash.
pub async fn create_scoped_fleet_token(db: &AnyPool, name: &str, scope: FleetScope, host_id: Option<&str>, now: i64) -> anyhow::Result<String> {
    if let Some(host) = host_id {
        if scope != FleetScope::Engine {
            bail!("only engine tokens are bound to a host; a {scope} token takes no host id");
        }
        if host.is_empty() || host.len() > 200 {
            bail!("a host id has 1 to 200 characters");
        }
    }
    let token = new_secret("cxf");
    sqlx::query("INSERT INTO fleet_tokens (id, name, token_hash, created_at, scope, host_id, bound_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(new_id("flt", now))
        .bind(name)
        .bind(token_hash(&token))
        .bind(now)
        .bind(scope.as_str())
        .bind(host_id)
        .bind(host_id.map(|_| now))
        .execute(db)
        .await
        .context("storing the fleet token")?;
    Ok(token)
}

/// Removes every fleet token named `name` (`cxb up` replaces its own at each start).
pub async fn revoke_fleet_tokens(db: &AnyPool, name: &str) -> anyhow::Result<u64> {
    Ok(sqlx::query("DELETE FROM fleet_tokens WHERE name = $1").bind(name).execute(db).await?.rows_affected())
}

/// A fleet token as an operator sees it: never its value (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTokenInfo {
    pub id: String,
    pub name: String,
    pub scope: String,
    /// The host an engine token is bound to, once bound.
    pub host_id: Option<String>,
    pub created_at: i64,
}

/// Every fleet token, oldest first.
pub async fn list_fleet_tokens(db: &AnyPool) -> anyhow::Result<Vec<FleetTokenInfo>> {
    let rows: Vec<(String, String, String, Option<String>, i64)> =
        sqlx::query_as("SELECT id, name, scope, host_id, created_at FROM fleet_tokens ORDER BY created_at, id").fetch_all(db).await?;
    Ok(rows.into_iter().map(|(id, name, scope, host_id, created_at)| FleetTokenInfo { id, name, scope, host_id, created_at }).collect())
}

/// Removes the fleet token with id `id` (from [`list_fleet_tokens`]); false if there is none.
/// Its engine or dialler is refused (401) from its next request.
pub async fn revoke_fleet_token(db: &AnyPool, id: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query("DELETE FROM fleet_tokens WHERE id = $1").bind(id).execute(db).await?.rows_affected() > 0)
}

/// A password for a generated account: 20 characters from base64url.
pub fn generate_password() -> String {
    new_secret("p")[2..22].to_string()
}
