//! `cxb api`: the control plane. It will own product state (organizations, users and API
//! keys, bots, campaigns, runtime config, call records, recordings, fleet registry) on axum
//! and sqlx, with SQLite embedded by default and PostgreSQL for fleets.
//!
//! Nothing is implemented yet; the control-plane issue fills this crate.
