//! A real API server on 127.0.0.1 over a SQLite file in a temp dir, a manual clock, and a
//! small HTTP client that speaks JSON.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cxb_control_plane::clock::{Clock, ManualClock};
use cxb_control_plane::{ApiConfig, ApiServer, admin};
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) const START_MS: i64 = 1_790_000_000_000;

pub(crate) struct Api {
    pub(crate) server: ApiServer,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A response: status, body as JSON (or Null), and headers.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The error code of an error body.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    pub(crate) async fn start() -> Api {
        Api::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(tweak: impl FnOnce(&mut ApiConfig)) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START_MS);
        let database = match std::env::var("CXB_TEST_POSTGRES") {
            Ok(base) if !base.is_empty() => fresh_postgres(&base).await,
            _ => format!("sqlite://{}/cxb.db", dir.path().display()),
        };
        let mut config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), database);
        config.clock = clock.clone();
        config.webhook_interval = None;
        // Webhook receivers and carrier doubles listen on loopback; a test of the guard itself
        // sets its own policy.
        config.egress = cxb_contract::egress::EgressPolicy::with_loopback();
        config.secret_key_file = dir.path().join("secret.key");
        tweak(&mut config);
        let server = ApiServer::start(config).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Api { server, clock, base, http, _dir: dir }
    }

    pub(crate) fn db(&self) -> &sqlx::AnyPool {
        &self.server.state().db
    }

    /// The API's sealed-secret keys (a dialler in the same test opens stored secrets with them).
    pub(crate) fn secrets(&self) -> std::sync::Arc<cxb_control_plane::secrets::SecretBox> {
        self.server.state().secrets.clone()
    }

    pub(crate) async fn raw(&self, method: Method, path: &str, token: Option<&str>, body: Option<(&str, Vec<u8>)>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body, headers }
    }

    pub(crate) async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
        self.raw(method, path, Some(token), body).await
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, token, None).await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub(crate) async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, token, None).await
    }

    /// A new organization with an admin; returns the admin's session token.
    pub(crate) async fn org(&self, name: &str) -> String {
        let email = format!("admin@{}.example", name.to_lowercase());
        admin::create_org(self.db(), name, &email, "a long enough password".into(), self.clock.now_ms()).await.unwrap();
        self.login(&email, "a long enough password").await
    }

    pub(crate) async fn login(&self, email: &str, password: &str) -> String {
        let r = self.raw(Method::POST, "/v1/auth/login", None, Some(("application/json", serde_json::to_vec(&json!({"email": email, "password": password})).unwrap()))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    }

    pub(crate) async fn fleet_token(&self) -> String {
        admin::create_fleet_token(self.db(), "test", self.clock.now_ms()).await.unwrap()
    }
}

/// With `CXB_TEST_POSTGRES=postgres://user@host:port` (as `.ci/run` sets it), every test gets
/// its own new PostgreSQL database instead of a SQLite file: the same tests, the other engine.
async fn fresh_postgres(base: &str) -> String {
    use std::hash::BuildHasher;
    sqlx::any::install_default_drivers();
    let n = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    let name = format!("cxb_test_{n:016x}");
    let admin = sqlx::AnyPool::connect(&format!("{base}/postgres")).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    admin.close().await;
    format!("{base}/{name}")
}

/// A bot, an assistant, a load balancer and a campaign routed to the assistant; returns ids.
pub(crate) async fn product(api: &Api, token: &str) -> (String, String, String, String) {
    let bot = api.post("/v1/bots", token, json!({"name": "Support", "greeting": "Hello", "stt": {"provider": "deepgram", "secrets": {"api_key": "dg-secret"}}})).await;
    assert_eq!(bot.status, 201, "{}", bot.body);
    let asst = api.post("/v1/ai-assistants", token, json!({"name": "Agent", "kind": "websocket", "url_template": "wss://ai.example/ws/{bot_id}?from={from}"})).await;
    assert_eq!(asst.status, 201, "{}", asst.body);
    let asst_id = asst.body["id"].as_str().unwrap().to_string();
    let lb = api.post("/v1/load-balancers", token, json!({"name": "Pool", "strategy": "weighted", "members": [{"assistant_id": asst_id, "weight": 3}]})).await;
    assert_eq!(lb.status, 201, "{}", lb.body);
    let campaign = api
        .post("/v1/campaigns", token, json!({"name": "Renewals", "routing": {"type": "ai_assistant", "target_id": asst_id}, "caller_ids": ["+1 415 555 0100"], "cac": 5, "cps": 2}))
        .await;
    assert_eq!(campaign.status, 201, "{}", campaign.body);
    let id = |r: &Reply| r.body["id"].as_str().unwrap().to_string();
    (id(&bot), asst_id, id(&lb), id(&campaign))
}

/// A dialler stand-in whose direct calls (`POST /v1/calls`) wait until the test opens
/// [`HeldCalls::open`]: a handler that runs as long as the test wants.
#[derive(Debug, Clone)]
pub(crate) struct HeldCalls(Arc<Held>);

#[derive(Debug)]
pub(crate) struct Held {
    arrived: tokio::sync::watch::Sender<usize>,
    gate: tokio::sync::Semaphore,
}

impl HeldCalls {
    /// Attached to `api`, closed.
    pub(crate) fn attach(api: &Api) -> HeldCalls {
        let held = HeldCalls(Arc::new(Held { arrived: tokio::sync::watch::channel(0).0, gate: tokio::sync::Semaphore::new(0) }));
        api.server.attach_telephony(Arc::new(held.clone()));
        held
    }

    /// Waits until `n` calls are being held.
    pub(crate) async fn arrived(&self, n: usize) {
        let mut rx = self.0.arrived.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&seen| seen >= n)).await.expect("calls arrived in time").unwrap();
    }

    /// Lets every held call (and every later one) finish.
    pub(crate) fn open(&self) {
        self.0.gate.add_permits(1);
    }
}

impl cxb_control_plane::telephony::Telephony for HeldCalls {
    fn place_call(&self, _: cxb_control_plane::AppState, _: String, _: cxb_control_plane::telephony::DirectCall) -> cxb_control_plane::telephony::Reply {
        let held = self.0.clone();
        Box::pin(async move {
            held.arrived.send_modify(|n| *n += 1);
            let _pass = held.gate.acquire().await;
            Ok((reqwest::StatusCode::CREATED, json!({"placed": true})))
        })
    }

    fn carrier_webhook(&self, _: cxb_control_plane::AppState, _: String, _: cxb_control_plane::telephony::CarrierWebhook) -> cxb_control_plane::telephony::Reply {
        Box::pin(async { Ok((reqwest::StatusCode::OK, json!({}))) })
    }
}

/// Sends `raw` (a request head and maybe a body) over a new connection, waits for the whole
/// answer, and returns its status code and text.
pub(crate) async fn raw_http(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}
