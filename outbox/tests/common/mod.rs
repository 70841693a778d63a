//! A real `cxb api` on 127.0.0.1 over SQLite that can be stopped and started again on the
//! same address and database, an organization with a bot and a fleet token in it, and helpers
//! to build outboxes and wait for them (every wait bounded).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use cxb_control_plane::clock::Clock;
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

    /// Stored call ids in the order the API stored them.
    pub(crate) async fn stored_order(&self) -> Vec<String> {
        let db = &self.server.as_ref().unwrap().state().db;
        sqlx::query_scalar("SELECT id FROM calls ORDER BY created_at").fetch_all(db).await.unwrap()
    }
}

/// A clock that moves one millisecond every time it is read, so rows stored one after the
/// other have increasing `created_at` however fast they come.
#[derive(Debug)]
struct Ticking(AtomicI64);

impl Clock for Ticking {
    fn now_ms(&self) -> i64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

async fn serve(addr: SocketAddr, database: &str) -> ApiServer {
    let mut config = ApiConfig::new(addr, database);
    config.clock = Arc::new(Ticking(AtomicI64::new(1_790_000_000_000)));
    config.webhook_interval = None;
    ApiServer::start(config).await.unwrap()
}

/// An outbox in `data/outbox`, recordings in `data/recordings`, quick retries (parked entries
/// wait the default minutes: tests that park set their own).
pub(crate) fn config(data: &Path, api: Option<ApiTarget>) -> OutboxConfig {
    let mut config = OutboxConfig::new(data);
    config.api = api;
    config.retry = RetryPolicy { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    config.request_timeout = Duration::from_secs(10);
    config.write_probe = Duration::from_millis(20);
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

/// One request the fake S3 endpoint received.
#[derive(Debug, Clone)]
pub(crate) struct S3Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl S3Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A fake S3 endpoint on 127.0.0.1 for `PutObject` (path-style, HTTP/1.1): the first
/// `slow_downs` requests get S3's `503 SlowDown` error, later ones `200` with the object's
/// ETag (its MD5 in quotes), as the S3 API reference describes PutObject and its errors
/// (docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html, ErrorResponses.html,
/// RESTCommonResponseHeaders.html). Records every request.
pub(crate) async fn fake_s3(slow_downs: usize) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<S3Request>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(socket);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        conn.read_line(&mut h).await.unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (n, v) = h.split_once(':').unwrap();
                        headers.push((n.trim().to_string(), v.trim().to_string()));
                    }
                    let req = S3Request { method, path, headers, body: Vec::new() };
                    let len: usize = req.header("content-length").map_or(0, |v| v.parse().unwrap());
                    let mut body = vec![0; len];
                    conn.read_exact(&mut body).await.unwrap();
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.push(S3Request { body: body.clone(), ..req });
                        log.len()
                    };
                    let answer = if n <= slow_downs {
                        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>4442587FB7D0A2F9</RequestId><HostId>fake</HostId></Error>";
                        format!("HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nx-amz-request-id: 4442587FB7D0A2F9\r\nContent-Length: {}\r\n\r\n{xml}", xml.len())
                    } else {
                        let etag: String = <md5::Md5 as md5::Digest>::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
                        format!("HTTP/1.1 200 OK\r\nETag: \"{etag}\"\r\nx-amz-request-id: 0A49CE4060975EAC\r\nServer: AmazonS3\r\nContent-Length: 0\r\n\r\n")
                    };
                    conn.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, seen)
}

/// Runs a future to completion on the calling thread with no runtime at all (a waker that
/// unparks the thread): what awaiting a receipt needs is only a waker, as on a compio worker.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// How the fake API answers, and what it saw.
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    /// Call ids whose results get 500.
    pub(crate) failing: std::collections::HashSet<String>,
    /// Call ids whose results get 422 (judged invalid).
    pub(crate) rejecting: std::collections::HashSet<String>,
    /// Everything gets 503, `/health` too.
    pub(crate) down: bool,
    /// Every result gets 500 (its database fails writes); `/health` still answers 200.
    pub(crate) results_down: bool,
    /// Call ids stored, in order (each once).
    pub(crate) stored: Vec<String>,
    /// Results posted again after they were stored (answered 200 duplicate).
    pub(crate) duplicates: Vec<String>,
    /// `GET /health` requests.
    pub(crate) health_checks: usize,
    /// Records posted to `/cdr…` and taken: path with query, whether an `Authorization` header
    /// came with it, body.
    pub(crate) records: Vec<(String, bool, Value)>,
    /// Records whose `id` gets 422.
    pub(crate) rejecting_records: std::collections::HashSet<String>,
}

/// A fake `cxb api` on 127.0.0.1 for deliveries (HTTP/1.1, keep-alive): `POST
/// /v1/runtime/results` stores a result once by `call_id` (201, then 200 `duplicate`), or
/// fails as the state says; `GET /health` answers 200 unless down.
pub(crate) async fn fake_api() -> (ApiTarget, Arc<std::sync::Mutex<FakeState>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(std::sync::Mutex::new(FakeState::default()));
    let shared = state.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let state = shared.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(socket);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                    let mut len = 0usize;
                    let mut authorized = false;
                    loop {
                        let mut h = String::new();
                        if conn.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = h.split_once(':') {
                            if n.trim().eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                            authorized |= n.trim().eq_ignore_ascii_case("authorization");
                        }
                    }
                    let mut body = vec![0; len];
                    conn.read_exact(&mut body).await.unwrap();
                    let (status, answer) = {
                        let mut s = state.lock().unwrap();
                        match (method.as_str(), path.as_str()) {
                            _ if s.down => (503, json!({"error": {"code": "unavailable"}})),
                            ("GET", "/health") => {
                                s.health_checks += 1;
                                (200, json!({"status": "ok"}))
                            }
                            ("POST", "/v1/runtime/results") => {
                                let result: Value = serde_json::from_slice(&body).unwrap();
                                let id = result["call_id"].as_str().unwrap().to_string();
                                if s.results_down || s.failing.contains(&id) {
                                    (500, json!({"error": {"code": "internal"}}))
                                } else if s.rejecting.contains(&id) {
                                    (422, json!({"error": {"code": "invalid", "field": "call_id"}}))
                                } else if s.stored.contains(&id) {
                                    s.duplicates.push(id.clone());
                                    (200, json!({"call_id": id, "duplicate": true}))
                                } else {
                                    s.stored.push(id.clone());
                                    (201, json!({"call_id": id, "duplicate": false}))
                                }
                            }
                            ("POST", p) if p.starts_with("/cdr") => {
                                let record: Value = serde_json::from_slice(&body).unwrap();
                                if s.rejecting_records.contains(record["id"].as_str().unwrap_or_default()) {
                                    (422, json!({"error": {"code": "invalid"}}))
                                } else {
                                    s.records.push((p.to_string(), authorized, record));
                                    (202, json!({}))
                                }
                            }
                            _ => (404, json!({"error": {"code": "not_found"}})),
                        }
                    };
                    let body = answer.to_string();
                    let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                    if conn.get_mut().write_all(format!("{head}{body}").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (ApiTarget { base_url: format!("http://{addr}"), fleet_token: "cxf_test".into() }, state)
}
