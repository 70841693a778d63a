//! `cxb api`: the control plane and the source of truth for product state: organizations,
//! users, sessions and API keys, bots, campaigns and their contacts, routing targets, the
//! do-not-call list, call records, settings, CRM webhooks, and the fleet registry that engines
//! heartbeat into. axum on tokio; sqlx over SQLite (embedded default) or PostgreSQL.
//!
//! Every product row carries its organization and every query filters by the caller's; an id
//! from another organization answers 404 exactly as an unknown id does.

pub mod admin;
pub mod attempts;
pub mod auth;
pub mod call_tokens;
pub mod calls;
mod campaigns;
pub mod client;
pub mod clock;
pub mod db;
pub mod error;
mod extract;
pub mod fleet;
mod knowledge;
mod metrics;
pub mod model;
mod resources;
mod routes;
mod settings;
pub mod telephony;
mod users;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::AnyPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::LoginLimiter;
use crate::clock::{Clock, SystemClock};

/// How to run the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…`.
    pub database: String,
    pub session_ttl: Duration,
    /// Hosts whose last heartbeat is older than this drop out of the fleet.
    pub host_ttl: Duration,
    /// How long a slot reserved through `/v1/fleet/reserve` is held for a call to arrive.
    pub reservation_ttl: Duration,
    /// How often due webhook deliveries are sent; `None` leaves it to [`ApiServer::deliver_webhooks`].
    pub webhook_interval: Option<Duration>,
    /// Failed sign-ins allowed per account and per address within `login_window`.
    pub login_window: Duration,
    pub login_failures_per_account: usize,
    pub login_failures_per_address: usize,
    pub clock: Arc<dyn Clock>,
}

impl ApiConfig {
    pub fn new(listen: SocketAddr, database: impl Into<String>) -> ApiConfig {
        ApiConfig {
            listen,
            database: database.into(),
            session_ttl: Duration::from_secs(12 * 3600),
            host_ttl: Duration::from_secs(10),
            reservation_ttl: Duration::from_secs(60),
            webhook_interval: Some(Duration::from_secs(1)),
            login_window: Duration::from_secs(15 * 60),
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub db: AnyPool,
    pub config: ApiConfig,
    pub logins: LoginLimiter,
    pub http: reqwest::Client,
    /// The dialler's side of `POST /v1/calls` and the carriers' webhooks, attached after start
    /// ([`ApiServer::attach_telephony`]); unset, those routes answer 503.
    pub telephony: std::sync::OnceLock<Arc<dyn telephony::Telephony>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn now(&self) -> i64 {
        self.config.clock.now_ms()
    }
}

/// A running API server.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// An HTTP client for outbound calls (webhooks, the engine's heartbeat), TLS through rustls
/// with the ring provider.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("cxb/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

impl ApiServer {
    /// Opens and migrates the database, binds, and serves until [`ApiServer::shutdown`].
    pub async fn start(config: ApiConfig) -> anyhow::Result<ApiServer> {
        let db = db::connect(&config.database).await?;
        let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let state = AppState(Arc::new(Inner {
            db,
            logins: LoginLimiter::new(
                config.login_window.as_millis() as i64,
                config.login_failures_per_account,
                config.login_failures_per_address,
            ),
            http: http_client(Duration::from_secs(10))?,
            telephony: std::sync::OnceLock::new(),
            config,
        }));
        let app = routes::build().router.with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let mut tasks = vec![tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(listener, service).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                eprintln!("cxb api: server stopped: {e}");
            }
        })];
        if let Some(every) = state.config.webhook_interval {
            let s = state.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    webhooks::deliver_due(&s).await;
                }
            }));
        }
        Ok(ApiServer { addr, state, stop: Some(stop), tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Attaches the dialler's telephony (direct calls, carriers' webhooks). Once per server.
    pub fn attach_telephony(&self, telephony: Arc<dyn telephony::Telephony>) {
        let _ = self.state.telephony.set(telephony);
    }

    /// Sends every webhook delivery that is due now; returns how many were attempted.
    pub async fn deliver_webhooks(&self) -> usize {
        webhooks::deliver_due(&self.state).await
    }

    /// Stops accepting, finishes requests in flight, and closes the database.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let mut tasks = std::mem::take(&mut self.tasks).into_iter();
        if let Some(server) = tasks.next() {
            let _ = server.await;
        }
        for t in tasks {
            t.abort();
        }
        self.state.db.close().await;
    }
}

/// The OpenAPI document of every route, as served at `/v1/openapi.json`.
pub fn openapi() -> serde_json::Value {
    routes::build().openapi()
}
