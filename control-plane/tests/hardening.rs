//! What an attacker or a broken peer sends, through HTTP: call results with control
//! characters and oversized fields, password guessing (concurrent, from many addresses, while
//! verification is saturated), and webhook receivers that are slow or redirect.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Api, Reply, product};
use serde_json::{Value, json};

fn result(call_id: &str, bot: &str) -> Value {
    json!({
        "call_id": call_id, "direction": "inbound", "from": "+14155550123", "to": "+14155550100", "bot_id": bot,
        "started_at": "2026-09-21T10:00:00Z", "ended_at": "2026-09-21T10:01:00Z", "outcome": "completed", "end_reason": "caller_hangup",
        "transcript": [{"role": "bot", "text": "Hello", "at_ms": 100}, {"role": "caller", "text": "Hi", "at_ms": 1500}],
        "recording": {"location": "recordings/org/call.wav", "duration_ms": 60000},
        "costs": [{"item": "stt_audio", "quantity": 60, "unit": "second"}],
        "metrics": {"tools": [{"name": "lookup", "error": "none"}], "turn_latency_ms": [900, 700]},
    })
}

/// Sets `pointer` (a JSON pointer) in `v` to `to`, adding the last key if it is missing.
fn with(mut v: Value, pointer: &str, to: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match v.pointer_mut(parent).unwrap() {
        Value::Object(map) => {
            map.insert(key.to_string(), to);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = to,
        other => panic!("{other} has no {key}"),
    }
    v
}

#[tokio::test]
async fn call_results_refuse_control_characters_and_oversized_fields_naming_them() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let fleet = api.fleet_token().await;
    let (bot, _, _, campaign) = product(&api, &token).await;
    let ok = result("CA-ok", &bot);

    let long = |n: usize| Value::String("x".repeat(n));
    let many_turns: Vec<Value> = (0..10_001).map(|i| json!({"role": "bot", "text": "", "at_ms": i})).collect();
    let mut fat_metrics = serde_json::Map::new();
    for i in 0..40 {
        fat_metrics.insert(format!("k{i}"), long(8 * 1024));
    }
    let mut deep = json!(1);
    for _ in 0..20 {
        deep = json!([deep]);
    }
    let bad = [
        ("/from", json!("+1415555\u{0}0123"), "from"),
        ("/to", json!("+1415555\u{7}0100"), "to"),
        ("/bot_id", json!("bot\u{0}"), "bot_id"),
        ("/end_reason", json!("caller\nhangup"), "end_reason"),
        ("/started_at", json!("2026-09-21T10:00:00Z\u{0}"), "started_at"),
        ("/transcript/1/text", json!("Hi\u{0}there"), "transcript[1].text"),
        ("/transcript/1/text", json!("\u{1b}[31mred"), "transcript[1].text"),
        ("/transcript/0/role", json!("bot\t"), "transcript[0].role"),
        ("/recording/location", json!("a\u{85}b"), "recording.location"),
        ("/costs/0/unit", json!("sec\rond"), "costs[0].unit"),
        ("/metrics/tools/0/error", json!("bad\u{0}"), "metrics.tools[0].error"),
        ("/metrics/tools/0/error", json!("bad\u{8}"), "metrics.tools[0].error"),
        ("/from", long(257), "from"),
        ("/campaign_id", long(129), "campaign_id"),
        ("/end_reason", long(257), "end_reason"),
        ("/transcript/0/text", long(64 * 1024 + 1), "transcript[0].text"),
        ("/transcript", Value::Array(many_turns), "transcript"),
        ("/metrics", Value::Object(fat_metrics), "metrics"),
        ("/metrics/deep", deep, "metrics.deep"),
    ];
    for (i, (pointer, value, field)) in bad.into_iter().enumerate() {
        let call_id = format!("CA-bad-{i}");
        let body = with(with(ok.clone(), "/call_id", json!(call_id)), pointer, value);
        let r = api.post("/v1/runtime/results", &fleet, body).await;
        assert_eq!((r.status, r.code()), (422, "validation_failed"), "{pointer}: {}", r.body);
        let named = r.body["error"]["field"].as_str().unwrap_or("");
        assert!(named == field || named.starts_with(&format!("{field}.")) || named.starts_with(&format!("{field}[")), "{pointer}: named {named}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls").fetch_one(api.db()).await.unwrap();
    assert_eq!(stored, 0, "nothing refused was stored");

    // Free text keeps its line breaks and tabs; a missing number is an empty one; the largest
    // allowed sizes pass.
    let fine = with(ok.clone(), "/transcript/1/text", json!("Line one\r\nline two\twith a tab"));
    let fine = with(fine, "/from", json!(""));
    let fine = with(fine, "/to", Value::String("9".repeat(256)));
    let fine = with(fine, "/transcript/0/text", long(64 * 1024));
    let r = api.post("/v1/runtime/results", &fleet, fine).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let call = api.get("/v1/calls/CA-ok", &token).await;
    assert_eq!(call.body["transcript"][1]["text"], "Line one\r\nline two\twith a tab");

    // NUL anywhere in any JSON body is refused by name, never a database error.
    let r = api.post("/v1/bots", &token, json!({"name": "Sup\u{0}port"})).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("name")), "{}", r.body);
    let r = api.post("/v1/dnc", &token, json!({"phone": "+1415\u{0}5550199"})).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let csv = b"phone,name\n+14155550111,An\0n\n".to_vec();
    let r = api.raw(reqwest::Method::POST, &format!("/v1/campaigns/{campaign}/contacts/import"), Some(&token), Some(("text/csv", csv))).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("file")), "{}", r.body);
}

/// A sign-in request from `from` (a loopback address other than 127.0.0.1 stands for another client).
async fn sign_in(api: &Api, from: &str, email: &str, password: &str) -> Reply {
    let ip: IpAddr = from.parse().unwrap();
    let http = reqwest::Client::builder().local_address(ip).timeout(Duration::from_secs(60)).build().unwrap();
    let body = serde_json::to_vec(&json!({"email": email, "password": password})).unwrap();
    let resp = http.post(format!("{}/v1/auth/login", api.base)).header("content-type", "application/json").body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
    Reply { status, body, headers }
}

const EMAIL: &str = "admin@acme.example";
const PASSWORD: &str = "a long enough password";

/// Ten wrong guesses at once from one address: exactly five are checked (401), the rest are
/// refused before their check (429), because each attempt counts from its start.
#[tokio::test]
async fn concurrent_guesses_count_before_the_password_check() {
    let api = Arc::new(Api::start_with(|c| c.login_verify_wait = Duration::from_secs(30)).await);
    api.org("Acme").await;
    let guesses: Vec<_> = (0..10)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move { sign_in(&api, "127.0.0.9", EMAIL, &format!("guess number {i}")).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429, 429, 429]);
    assert_eq!(sign_in(&api, "127.0.0.9", EMAIL, PASSWORD).await.status, 429, "locked for this address");
}

/// An attacker's failures lock the account for the attacker's address only; many attackers
/// together reach the account's ceiling, which then admits only addresses that signed in to
/// the account before; every lock ends with the window (moved on the manual clock).
#[tokio::test]
async fn guessing_from_other_addresses_cannot_lock_the_user_out() {
    let api = Api::start_with(|c| {
        c.login_failures_per_account_address = 3;
        c.login_failures_per_address = 5;
        c.login_failures_per_account = 9;
    })
    .await;
    api.org("Acme").await;
    let user = "127.0.0.1";
    assert_eq!(sign_in(&api, user, EMAIL, PASSWORD).await.status, 200);

    // One attacker: locked out of this account after three failures, even with the password.
    for _ in 0..3 {
        assert_eq!(sign_in(&api, "127.0.0.2", EMAIL, "wrong password!").await.status, 401);
    }
    let locked = sign_in(&api, "127.0.0.2", EMAIL, PASSWORD).await;
    assert_eq!((locked.status, locked.code()), (429, "rate_limited"));
    assert!(locked.headers.get("retry-after").is_some());
    // The user, and anyone else who has not failed, still signs in.
    assert_eq!(sign_in(&api, user, EMAIL, PASSWORD).await.status, 200);
    assert_eq!(sign_in(&api, "127.0.0.5", EMAIL, PASSWORD).await.status, 200);

    // Two more attackers bring the account to its ceiling of nine failures in the window.
    for attacker in ["127.0.0.3", "127.0.0.4"] {
        for _ in 0..3 {
            assert_eq!(sign_in(&api, attacker, EMAIL, "wrong password!").await.status, 401);
        }
    }
    // A new address cannot even try now (guessing from many addresses stops here) ...
    assert_eq!(sign_in(&api, "127.0.0.6", EMAIL, PASSWORD).await.status, 429);
    assert_eq!(sign_in(&api, "127.0.0.7", EMAIL, "wrong password!").await.status, 429);
    // ... but addresses the account knows still sign in.
    assert_eq!(sign_in(&api, user, EMAIL, PASSWORD).await.status, 200);
    assert_eq!(sign_in(&api, "127.0.0.5", EMAIL, PASSWORD).await.status, 200);

    // The ceiling and the attackers' locks end with the window.
    api.clock.advance_ms(15 * 60 * 1000 + 1000);
    assert_eq!(sign_in(&api, "127.0.0.6", EMAIL, PASSWORD).await.status, 200);
    assert_eq!(sign_in(&api, "127.0.0.2", EMAIL, PASSWORD).await.status, 200);
}

/// With every verification slot busy, a sign-in waits its bounded time and answers 503 `busy`
/// with `Retry-After`; such refusals are not failures, and sign-in works once a slot frees.
#[tokio::test]
async fn password_checks_at_once_are_bounded() {
    let api = Api::start_with(|c| {
        c.login_verifications = 2;
        c.login_verify_wait = Duration::from_millis(200);
    })
    .await;
    api.org("Acme").await;
    let slots = api.server.state().logins.verifications().clone();
    let all = slots.clone().acquire_many_owned(2).await.unwrap();
    for _ in 0..8 {
        let busy = sign_in(&api, "127.0.0.1", EMAIL, "wrong password!").await;
        assert_eq!((busy.status, busy.code()), (503, "busy"), "{}", busy.body);
        assert_eq!(busy.headers.get("retry-after").unwrap(), "1");
    }
    drop(all);
    assert_eq!(sign_in(&api, "127.0.0.1", EMAIL, PASSWORD).await.status, 200, "the refusals did not count as failures");
    assert_eq!(slots.available_permits(), 2);
}

/// A webhook receiver: counts requests (and the most at once), holds each until the gate
/// opens, then answers `status` with `location`.
#[derive(Clone)]
struct Receiver {
    seen: Arc<AtomicUsize>,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    arrived: tokio::sync::watch::Sender<usize>,
}

impl Receiver {
    async fn start(held: bool, status: u16, location: Option<&'static str>) -> (Receiver, String) {
        let r = Receiver {
            seen: Arc::default(),
            now: Arc::default(),
            most: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(if held { 0 } else { 1 })),
            arrived: tokio::sync::watch::channel(0).0,
        };
        let state = r.clone();
        let app = axum::Router::new().fallback(move || {
            let r = state.clone();
            async move {
                r.seen.fetch_add(1, Ordering::SeqCst);
                let now = r.now.fetch_add(1, Ordering::SeqCst) + 1;
                r.most.fetch_max(now, Ordering::SeqCst);
                r.arrived.send_modify(|n| *n += 1);
                let _pass = r.gate.acquire().await;
                r.now.fetch_sub(1, Ordering::SeqCst);
                let mut resp = axum::http::Response::builder().status(status);
                if let Some(to) = location {
                    resp = resp.header("location", to);
                }
                resp.body(axum::body::Body::empty()).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    async fn arrived(&self, n: usize) {
        let mut rx = self.arrived.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&seen| seen >= n)).await.expect("requests arrived while the other receiver held its own").unwrap();
    }

    fn open(&self) {
        self.gate.add_permits(1);
    }
}

/// An organization with a bot and a webhook to `url`; `results` call results posted.
async fn org_with_hook(api: &Api, fleet: &str, name: &str, url: &str, results: usize) -> (String, String) {
    let token = api.org(name).await;
    let bot = api.post("/v1/bots", &token, json!({"name": "b"})).await.body["id"].as_str().unwrap().to_string();
    let hook = api.post("/v1/webhooks", &token, json!({"name": "crm", "url": url})).await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    for i in 0..results {
        let r = api.post("/v1/runtime/results", fleet, result(&format!("CA-{name}-{i}"), &bot)).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    (token, hook.body["id"].as_str().unwrap().to_string())
}

async fn deliveries(api: &Api, token: &str, hook: &str) -> Vec<Value> {
    api.get(&format!("/v1/webhooks/{hook}/deliveries"), token).await.body["items"].as_array().unwrap().clone()
}

/// One organization's receiver hangs; another organization's deliveries go out meanwhile,
/// and the hanging one gets at most `webhook_per_org` requests at once.
#[tokio::test]
async fn a_slow_receiver_delays_only_its_own_organization() {
    let api = Api::start_with(|c| c.webhook_per_org = 2).await;
    let fleet = api.fleet_token().await;
    let (slow, slow_url) = Receiver::start(true, 204, None).await;
    let (fast, fast_url) = Receiver::start(false, 204, None).await;
    let (slow_token, slow_hook) = org_with_hook(&api, &fleet, "Slow", &slow_url, 3).await;
    let (fast_token, fast_hook) = org_with_hook(&api, &fleet, "Fast", &fast_url, 2).await;

    // The slow organization's oldest deliveries are due first; the fast one's go out anyway.
    let (attempted, ()) = tokio::join!(api.server.deliver_webhooks(), async {
        slow.arrived(2).await;
        fast.arrived(2).await;
        slow.open();
    });
    assert_eq!(attempted, 4, "two per organization at most");
    assert_eq!(slow.most.load(Ordering::SeqCst), 2);
    assert_eq!(fast.seen.load(Ordering::SeqCst), 2);
    assert!(deliveries(&api, &fast_token, &fast_hook).await.iter().all(|d| d["status"] == "delivered"));
    let states: Vec<Value> = deliveries(&api, &slow_token, &slow_hook).await.iter().map(|d| d["status"].clone()).collect();
    assert_eq!(states.iter().filter(|s| *s == "delivered").count(), 2, "{states:?}");

    // The third waited for room, not for a back-off.
    assert_eq!(api.server.deliver_webhooks().await, 1);
    assert!(deliveries(&api, &slow_token, &slow_hook).await.iter().all(|d| d["status"] == "delivered"));
    assert_eq!(slow.seen.load(Ordering::SeqCst), 3);
}

/// A receiver that redirects gets a failed attempt (its 3xx logged), and the redirect's target
/// gets nothing.
#[tokio::test]
async fn webhook_redirects_are_not_followed() {
    let api = Api::start().await;
    let fleet = api.fleet_token().await;
    let (target, target_url) = Receiver::start(false, 204, None).await;
    let location: &'static str = Box::leak(target_url.into_boxed_str());
    let (redirecting, url) = Receiver::start(false, 307, Some(location)).await;
    let (token, hook) = org_with_hook(&api, &fleet, "Acme", &url, 1).await;
    assert_eq!(api.server.deliver_webhooks().await, 1);
    assert_eq!(redirecting.seen.load(Ordering::SeqCst), 1);
    assert_eq!(target.seen.load(Ordering::SeqCst), 0, "the redirect was followed");
    let log = deliveries(&api, &token, &hook).await;
    let d = &log[0];
    assert_eq!((d["status"].as_str(), d["last_status"].as_i64()), (Some("pending"), Some(307)), "{d}");
    assert!(d["last_error"].as_str().unwrap().contains("redirects are not followed"), "{d}");
}
