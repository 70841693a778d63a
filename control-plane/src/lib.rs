//! `cxb api`: the control plane and the source of truth for product state: organizations,
//! users, sessions and API keys, bots, campaigns and their contacts, routing targets, the
//! do-not-call list, call records, settings, CRM webhooks, and the fleet registry that engines
//! heartbeat into. axum on tokio; sqlx over SQLite (embedded default) or PostgreSQL.
//!
//! Every product row carries its organization and every query filters by the caller's; an id
//! from another organization answers 404 exactly as an unknown id does.

pub mod admin;
mod analytics;
pub mod attempts;
pub mod auth;
pub mod call_tokens;
pub mod calls;
mod campaigns;
pub mod client;
pub mod clock;
mod console;
pub mod db;
pub mod egress;
pub mod secrets;
pub mod error;
mod extract;
pub mod fleet;
mod handoffs;
mod knowledge;
/// The file that marks a directory holding the built-in embedding model.
pub use cxb_knowledge::model::WEIGHTS_FILE as EMBED_WEIGHTS_FILE;
pub mod metrics;
pub mod model;
mod overview;
pub mod recordings;
mod resources;
mod routes;
mod server;
mod settings;
pub mod telephony;
mod users;
mod webhooks;
mod widget;

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
    /// Webhook deliveries in flight at once, in all (`webhook_concurrency`) and per
    /// organization (`webhook_per_org`), so one slow receiver delays only its own organization.
    pub webhook_concurrency: usize,
    pub webhook_per_org: usize,
    /// The sliding window of the sign-in limits below.
    pub login_window: Duration,
    /// Failed sign-ins to one account from one client address (an IPv6 /64) in the window;
    /// past it that address may not try that account until its oldest failure leaves the window.
    pub login_failures_per_account_address: usize,
    /// Failed sign-ins from one address to any accounts in the window.
    pub login_failures_per_address: usize,
    /// Failed sign-ins to one account from all addresses in the window. Past it the account
    /// takes sign-ins only from addresses that signed in to it successfully before (within 30
    /// days), so that many attackers can neither keep guessing nor lock its users out. Keep it
    /// above `login_failures_per_address`: one address alone cannot reach it.
    pub login_failures_per_account: usize,
    /// Password verifications (argon2id: 19 MiB and tens of milliseconds of a core each) run at once.
    pub login_verifications: usize,
    /// How long a sign-in waits for a verification slot before it answers 503 `busy`.
    pub login_verify_wait: Duration,
    /// A connection that has not sent a whole request head this long after it opened (or
    /// after its previous response: the keep-alive idle time) is closed.
    pub header_read_timeout: Duration,
    /// How long a request may take, from its head to its response (its body read included);
    /// past it the answer is 503 `timeout`. No route streams; uploads have their own.
    pub request_timeout: Duration,
    /// The deadline of routes that take uploads (CSV contact imports, up to 32 MiB).
    pub upload_timeout: Duration,
    /// Requests handled at once (`/health` and `/metrics` aside); past it a request answers
    /// 503 `overloaded` with `Retry-After` instead of waiting.
    pub max_in_flight: usize,
    /// Which addresses requests made for tenants (webhooks) may reach, and which address
    /// literals documents may hold (public only by default).
    pub egress: cxb_contract::egress::EgressPolicy,
    /// The key file secrets are sealed with (`CXB_SECRET_KEY` wins): by default beside the
    /// SQLite database, else `secret.key` in the working directory.
    pub secret_key_file: std::path::PathBuf,
    /// Web calls (`POST /v1/widget/sessions`) one client address may start a minute.
    pub widget_sessions_per_minute: usize,
    /// Let engine hosts advertise plain `ws://` to hosts that are not loopback.
    pub allow_ws_hosts: bool,
    /// Where call recordings are read from (`GET /v1/calls/{id}/recording`).
    pub recordings: recordings::RecordingsConfig,
    /// Mark the console's session cookie `Secure` (the API is reached over HTTPS, usually
    /// through a proxy that terminates TLS).
    pub secure_cookies: bool,
    /// The built-in embedding model's directory (`cargo xtask embed-model` fills it); without
    /// one, knowledge bases are searched by keywords alone.
    pub embed_model: Option<std::path::PathBuf>,
    pub clock: Arc<dyn Clock>,
}

impl ApiConfig {
    pub fn new(listen: SocketAddr, database: impl Into<String>) -> ApiConfig {
        let database: String = database.into();
        ApiConfig {
            listen,
            session_ttl: Duration::from_secs(12 * 3600),
            host_ttl: Duration::from_secs(10),
            reservation_ttl: Duration::from_secs(60),
            webhook_interval: Some(Duration::from_secs(1)),
            webhook_concurrency: 64,
            webhook_per_org: 4,
            login_window: Duration::from_secs(15 * 60),
            login_failures_per_account_address: 5,
            login_failures_per_address: 20,
            login_failures_per_account: 50,
            login_verifications: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            login_verify_wait: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(120),
            embed_model: None,
            max_in_flight: 1024,
            egress: cxb_contract::egress::EgressPolicy::public_only(),
            secret_key_file: secrets::key_file(&database, std::path::Path::new(".")),
            widget_sessions_per_minute: 10,
            allow_ws_hosts: false,
            recordings: recordings::RecordingsConfig::default(),
            secure_cookies: false,
            database,
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
    /// Web-call sessions per client address (`POST /v1/widget/sessions`).
    pub widget_sessions: widget::SessionLimiter,
    pub http: reqwest::Client,
    /// The guarded client for requests made for tenants (webhooks).
    pub egress: egress::Egress,
    /// Seals and opens the secrets in stored documents.
    pub secrets: Arc<secrets::SecretBox>,
    /// Room for webhook deliveries in flight, overall and per organization.
    pub(crate) webhook_slots: webhooks::Slots,
    /// The dialler's side of `POST /v1/calls` and the carriers' webhooks, attached after start
    /// ([`ApiServer::attach_telephony`]); unset, those routes answer 503.
    pub telephony: std::sync::OnceLock<Arc<dyn telephony::Telephony>>,
    /// Where recordings are read from.
    pub(crate) recordings: recordings::Stores,
    /// Knowledge bases' search: the embedding model and the indexes in memory.
    pub(crate) knowledge: knowledge::Searcher,
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
        // A redirect could take a request (and its headers) somewhere nobody checked.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")
}

impl ApiServer {
    /// Opens and migrates the database, binds, and serves until [`ApiServer::shutdown`].
    pub async fn start(config: ApiConfig) -> anyhow::Result<ApiServer> {
        let db = db::connect(&config.database).await?;
        let secrets = secrets::SecretBox::load(&config.secret_key_file)?;
        let sealed = secrets::seal_stored_rows(&db, &secrets, false).await?;
        if sealed > 0 {
            tracing::info!(documents = sealed, "sealed the secrets of documents stored before secrets were encrypted");
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let state = AppState(Arc::new(Inner {
            db,
            logins: LoginLimiter::new(&config),
            widget_sessions: widget::SessionLimiter::new(config.widget_sessions_per_minute, Duration::from_secs(60)),
            http: http_client(Duration::from_secs(10))?,
            egress: egress::Egress::new(config.egress.clone(), Duration::from_secs(10))?,
            secrets: Arc::new(secrets),
            webhook_slots: webhooks::Slots::new(config.webhook_concurrency, config.webhook_per_org),
            telephony: std::sync::OnceLock::new(),
            recordings: recordings::Stores::open(&config.recordings).context("opening the recording stores")?,
            knowledge: knowledge::Searcher::new(config.embed_model.as_deref()).map_err(anyhow::Error::msg)?,
            config,
        }));
        let app = server::app(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        // Requests in flight at a stop end by their deadline; a second more lets them answer.
        let drain = state.config.request_timeout.max(state.config.upload_timeout) + Duration::from_secs(1);
        let mut tasks = vec![tokio::spawn(server::serve(listener, app, state.config.header_read_timeout, drain, stopped))];
        if let Some(every) = state.config.webhook_interval {
            let s = state.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    // Started, not awaited: a slow receiver holds only its own slots.
                    webhooks::start_due(&s).await;
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

    /// Sends every webhook delivery that is due now and has room (overall and in its
    /// organization), waiting for their answers; returns how many were attempted.
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
