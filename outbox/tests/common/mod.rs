//! A real `cxb api` on 127.0.0.1 over SQLite that can be stopped and started again on the
//! same address and database, an organization with a bot and a fleet token in it, and helpers
//! to build outboxes and wait for them (every wait bounded).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cxb_control_plane::{ApiConfig, ApiServer, admin};
use cxb_outbox::{ApiTarget, OutboxConfig, RetryPolicy, Stats};
use serde_json::{Value, json};

pub(crate) struct Api {
    server: Option<ApiServer>,
    addr: SocketAddr,
    database: String,
    http: reqwest::Client,
    pub(crate) fleet_token: String,
    pub(crate) session: String,
    pub(crate) org_id: String,
    pub(crate) bot_id: String,
}

impl Api {
    /// A fresh API with its database in `dir`.
    pub(crate) async fn start(dir: &Path) -> Api {
        std::fs::create_dir_all(dir).unwrap();
        let database = format!("sqlite://{}/cxb.db", dir.display());
        let server = serve("127.0.0.1:0".parse().unwrap(), &database).await;
        let addr = server.local_addr();
        let db = &server.state().db;
        let now = 1_790_000_000_000;
        let org = admin::create_org(db, "Acme", "admin@acme.example", "a long enough password".into(), now).await.unwrap();
        let fleet_token = admin::create_fleet_token(db, "test", now).await.unwrap();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let mut api = Api { server: Some(server), addr, database, http, fleet_token, session: String::new(), org_id: org.org_id, bot_id: String::new() };
        let (status, login) = api.send(reqwest::Method::POST, "/v1/auth/login", Some(json!({"email": "admin@acme.example", "password": "a long enough password"}))).await;
        assert_eq!(status, 200, "{login}");
        api.session = login["token"].as_str().unwrap().to_string();
        let (status, bot) = api.send(reqwest::Method::POST, "/v1/bots", Some(json!({"name": "Support", "greeting": "Hello"}))).await;
        assert_eq!(status, 201, "{bot}");
        api.bot_id = bot["id"].as_str().unwrap().to_string();
        api
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn target(&self) -> ApiTarget {
        ApiTarget { base_url: self.base_url(), fleet_token: self.fleet_token.clone() }
    }

    /// Stops serving; the address refuses connections until [`Api::restart`].
    pub(crate) async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Serves again on the same address and database.
    pub(crate) async fn restart(&mut self) {
        assert!(self.server.is_none());
        self.server = Some(serve(self.addr, &self.database).await);
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base_url())).bearer_auth(&self.session);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null))
    }

    /// `GET path` as the organization's admin; the body, after asserting 200.
    pub(crate) async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The ids of every stored call (one page of up to 500).
    pub(crate) async fn call_ids(&self) -> Vec<String> {
        let page = self.get("/v1/calls?limit=500").await;
        assert!(page["next_cursor"].is_null(), "{page}");
        page["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect()
    }
}

async fn serve(addr: SocketAddr, database: &str) -> ApiServer {
    let mut config = ApiConfig::new(addr, database);
    config.webhook_interval = None;
    ApiServer::start(config).await.unwrap()
}

/// An outbox in `data/outbox`, recordings in `data/recordings`, quick retries.
pub(crate) fn config(data: &Path, api: Option<ApiTarget>) -> OutboxConfig {
    let mut config = OutboxConfig::new(data);
    config.api = api;
    config.retry = RetryPolicy { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    config.request_timeout = Duration::from_secs(10);
    config
}

/// A call result the API accepts.
pub(crate) fn result(call_id: &str, bot_id: &str) -> Value {
    json!({
        "call_id": call_id,
        "bot_id": bot_id,
        "direction": "inbound",
        "from": "+14155550100",
        "to": "+14155550199",
        "started_at": "2026-11-21T10:00:00Z",
        "answered_at": "2026-11-21T10:00:02Z",
        "ended_at": "2026-11-21T10:01:00Z",
        "outcome": "completed",
        "end_reason": "caller_hung_up",
        "transcript": [{"role": "caller", "text": "hello", "at_ms": 2100}],
        "metrics": {"turns": 1}
    })
}

/// Waits (up to 20 s) until `stats()` satisfies `done`.
pub(crate) async fn until(what: &str, stats: impl Fn() -> Stats, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats();
        if done(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The names of the files in `dir` ending in `suffix`, sorted.
pub(crate) fn files(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

pub(crate) fn outbox_dir(data: &Path) -> PathBuf {
    data.join("outbox")
}
