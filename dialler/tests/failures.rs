//! Placed calls when something fails, on the API's manual clock: a carrier whose API cannot
//! answer keeps its calls and their contacts (up to a grace) instead of closing them; an engine
//! slot reserved for a call is given back as soon as the call ends without reaching it, and the
//! engine holding it hears so in its heartbeat; an answered call that never reached the engine,
//! or whose stream broke before anyone spoke, is failed and retried. Sweeps are run by the test
//! (`Shared::sweep`), after moving the clock; nothing waits for time to pass.

#![cfg(feature = "runtime")]
#![allow(clippy::unwrap_used)]

#[path = "../../control-plane/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Api;
use cxb_control_plane::client::{Capacity, HeartbeatConfig, Host, heartbeat_loop};
use cxb_control_plane::clock::Clock;
use cxb_dialler::carrier::{Answer, BoxFuture, CallRequest, CallState, Carrier, CarrierError, Cdr, CdrError, Disposition, Placed};
use cxb_dialler::carriers::Carriers;
use cxb_dialler::{Dialler, DiallerConfig, DiallerTelephony, Shared};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Whatever happens, each wait ends within this.
const LIMIT: Duration = Duration::from_secs(20);

/// What the carrier double says when asked about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Says {
    Live,
    Ended,
    /// Its API fails (an outage).
    Down,
}

/// A carrier double: accepts calls (or refuses them), answers `call_state` as told, and posts
/// nothing by itself; the test posts call-end records to each call's URL, as a carrier would.
#[derive(Debug)]
struct Scripted {
    says: Mutex<Says>,
    refuse: AtomicBool,
    asked: AtomicUsize,
    requests: Mutex<Vec<CallRequest>>,
    placed: UnboundedSender<CallRequest>,
}

impl Scripted {
    fn says(&self, says: Says) {
        *self.says.lock().unwrap() = says;
    }

    fn placed(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Carrier for Scripted {
    fn name(&self) -> &'static str {
        "simulator"
    }

    fn create_call<'a>(&'a self, call: &'a CallRequest) -> BoxFuture<'a, Result<Placed, CarrierError>> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(call.clone());
            let _ = self.placed.send(call.clone());
            if self.refuse.load(Ordering::SeqCst) {
                return Err(CarrierError::Rejected { status: 403, message: "not allowed".into() });
            }
            Ok(Placed { carrier_call_id: format!("s-{}", call.session) })
        })
    }

    fn hang_up<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), CarrierError>> {
        Box::pin(async { Ok(()) })
    }

    fn call_state<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<CallState, CarrierError>> {
        Box::pin(async move {
            self.asked.fetch_add(1, Ordering::SeqCst);
            match *self.says.lock().unwrap() {
                Says::Live => Ok(CallState::Live),
                Says::Ended => Ok(CallState::Ended),
                Says::Down => Err(CarrierError::Unavailable("503 Service Unavailable".into())),
            }
        })
    }

    fn parse_cdr(&self, _: &[(String, String)], body: &[u8]) -> Result<Cdr, CdrError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| CdrError::Malformed(e.to_string()))?;
        let session = v["session"].as_str().ok_or_else(|| CdrError::Malformed("no session".into()))?;
        let disposition = match v["disposition"].as_str() {
            Some("answered") => Disposition::Answered,
            Some("busy") => Disposition::Busy,
            Some("no_answer") => Disposition::NoAnswer,
            _ => Disposition::Failed,
        };
        Ok(Cdr {
            carrier_call_id: format!("s-{session}"),
            session: Some(session.to_string()),
            disposition,
            cause: None,
            started_at_ms: v["started"].as_i64().unwrap_or(0),
            answered_at_ms: v["answered"].as_i64(),
            ended_at_ms: v["ended"].as_i64().unwrap_or(0),
            authenticated: false,
        })
    }
}

struct Rig {
    api: Api,
    token: String,
    carrier: Arc<Scripted>,
    placed: UnboundedReceiver<CallRequest>,
    shared: Arc<Shared>,
}

async fn rig() -> Rig {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let (tx, placed) = unbounded_channel();
    let carrier = Arc::new(Scripted { says: Mutex::new(Says::Live), refuse: AtomicBool::new(false), asked: AtomicUsize::new(0), requests: Mutex::default(), placed: tx });
    let carriers = Carriers::new(Some(carrier.clone()), cxb_control_plane::egress::Egress::new(cxb_contract::egress::EgressPolicy::with_loopback(), std::time::Duration::from_secs(10)).unwrap(), api.secrets());
    let mut config = DiallerConfig::new(api.base.clone());
    config.tick = Duration::from_millis(20);
    config.clock = api.clock.clone();
    let shared = Shared::new(api.db().clone(), carriers, config);
    api.server.attach_telephony(Arc::new(DiallerTelephony(shared.clone())));
    Rig { api, token, carrier, placed, shared }
}

impl Rig {
    fn now(&self) -> i64 {
        self.api.clock.now_ms()
    }

    /// Starts a campaign of `phones` with `routing` and a retry policy that retries failures,
    /// lets a dialler place one call per contact, and stops the dialler (the test sweeps from
    /// then on). Returns the campaign and the carrier requests in the order placed.
    async fn campaign(&mut self, routing: Value, phones: &[&str]) -> (String, Vec<CallRequest>) {
        let body = json!({
            "name": "Failures", "routing": routing, "caller_ids": ["+15550000001"], "cac": 5, "cps": 50,
            "retry": {"max_attempts": 3, "backoff_seconds": 60, "retry_on": ["failed"]},
        });
        let created = self.api.post("/v1/campaigns", &self.token, body).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_str().unwrap().to_string();
        let csv: String = std::iter::once("phone\n".to_string()).chain(phones.iter().map(|p| format!("{p}\n"))).collect();
        let imported = self.api.raw(reqwest::Method::POST, &format!("/v1/campaigns/{id}/contacts/import"), Some(&self.token), Some(("text/csv", csv.into_bytes()))).await;
        assert_eq!(imported.body["imported"], phones.len(), "{}", imported.body);
        assert_eq!(self.api.post(&format!("/v1/campaigns/{id}/start"), &self.token, json!({})).await.status, 200);
        let dialler = Dialler::start(self.shared.clone());
        let mut requests = Vec::new();
        while requests.len() < phones.len() {
            requests.push(tokio::time::timeout(LIMIT, self.placed.recv()).await.expect("the dialler places the calls").unwrap());
        }
        dialler.shutdown().await;
        for r in &requests {
            // The carrier's id is noted once its request returns.
            wait_for("the carrier's id", async || self.column(&r.session, "carrier_call_id").await.is_some()).await;
        }
        (id, requests)
    }

    async fn column(&self, call: &str, column: &str) -> Option<String> {
        let sql = format!("SELECT {column} FROM calls WHERE id = $1");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(call).fetch_one(self.api.db()).await.unwrap()
    }

    /// The call's lease: expiry and the start of an outage streak; `None` once released.
    async fn lease(&self, call: &str) -> Option<(i64, Option<i64>)> {
        sqlx::query_as("SELECT expires_at, unknown_since FROM call_leases WHERE call_id = $1").bind(call).fetch_optional(self.api.db()).await.unwrap()
    }

    async fn call(&self, call: &str) -> Value {
        let r = self.api.get(&format!("/v1/calls/{call}"), &self.token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    async fn contact(&self, campaign: &str, call: &str) -> Value {
        let contact = self.call(call).await["contact_id"].as_str().unwrap().to_string();
        self.api.get(&format!("/v1/campaigns/{campaign}/contacts/{contact}"), &self.token).await.body
    }

    async fn sweep(&self, campaign: Option<&str>) {
        self.shared.sweep(campaign).await.unwrap();
    }

    /// Posts a call-end record to the call's URL, as the carrier does.
    async fn cdr(&self, request: &CallRequest, disposition: &str) -> Value {
        let now = self.now();
        let answered = (disposition == "answered").then_some(now - 20_000);
        let body = json!({"session": request.session, "disposition": disposition, "started": now - 30_000, "answered": answered, "ended": now});
        let path = request.cdr_url.trim_start_matches(&self.api.base);
        let r = self.api.raw(reqwest::Method::POST, path, None, Some(("application/json", body.to_string().into_bytes()))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Registers an engine host the way an engine does: one heartbeat.
    async fn host(&self, fleet: &str, id: &str) {
        let beat = json!({"host_id": id, "address": "ws://127.0.0.1:9", "workers": 1, "slots_total": 8, "slots_free": 8, "live_calls": 0});
        assert_eq!(self.api.post("/v1/runtime/hosts/heartbeat", fleet, beat).await.status, 200);
    }

    /// An AI bot and an assistant that runs it on the fleet.
    async fn assistant(&self) -> (String, String) {
        let bot = self.api.post("/v1/bots", &self.token, json!({"name": "Agent", "llm": {"provider": "script"}})).await.body["id"].as_str().unwrap().to_string();
        let a = self.api.post("/v1/ai-assistants", &self.token, json!({"name": "On the fleet", "kind": "websocket", "bot_id": bot})).await;
        assert_eq!(a.status, 201, "{}", a.body);
        (bot, a.body["id"].as_str().unwrap().to_string())
    }

    /// The engine's result for a call, as its outbox posts it.
    async fn result(&self, fleet: &str, bot: &str, request: &CallRequest, end_reason: &str, roles: &[&str]) -> Value {
        let transcript: Vec<Value> = roles.iter().enumerate().map(|(i, r)| json!({"role": r, "text": "Hello?", "at_ms": 500 * i})).collect();
        let result = json!({
            "call_id": request.session, "bot_id": bot, "direction": "outbound", "from": request.from, "to": request.to,
            "started_at": "2026-09-21T10:00:00Z", "answered_at": "2026-09-21T10:00:01Z", "ended_at": "2026-09-21T10:00:04Z",
            "outcome": "completed", "end_reason": end_reason, "transcript": transcript,
        });
        let r = self.api.post("/v1/runtime/results", fleet, result).await;
        assert!(r.status == 201 || r.status == 200, "{}", r.body);
        r.body
    }
}

/// Polls `check` (for work other tasks do) until it holds.
async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Rule 1: a carrier API error never closes a live call (nor requeues its contact).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_outage_keeps_the_call_and_its_contact_until_the_grace_then_decides_once() {
    let mut rig = rig().await;
    let (campaign, requests) = rig.campaign(json!({"type": "hangup"}), &["+15550100001"]).await;
    let request = &requests[0];
    let call = request.session.as_str();
    // Sweeps 31 s apart: each finds the lease within half a TTL of its end.
    const STEP: i64 = 31_000;

    // The carrier's API fails for far longer than a lease (60 s): the call keeps its lease, and
    // so its CAC place, and its contact is not dialled again.
    rig.carrier.says(Says::Down);
    rig.api.clock.advance_ms(STEP);
    rig.sweep(Some(&campaign)).await;
    let outage = rig.now();
    assert_eq!(rig.lease(call).await, Some((outage + 60_000, Some(outage))), "renewed, the outage noted");
    while rig.now() - outage < 9 * 60_000 {
        rig.api.clock.advance_ms(STEP);
        rig.sweep(Some(&campaign)).await;
        let (expires, since) = rig.lease(call).await.expect("still leased");
        assert!(expires > rig.now() && since == Some(outage), "{expires} {since:?}");
    }
    assert_eq!(rig.call(call).await["outcome"], "in_progress");
    assert_eq!(rig.contact(&campaign, call).await["status"], "dialing");
    assert_eq!(rig.api.get(&format!("/v1/campaigns/{campaign}/stats"), &rig.token).await.body["live_now"], 1);

    // The carrier answers again: the call lives, the outage streak ends.
    rig.carrier.says(Says::Live);
    rig.api.clock.advance_ms(STEP);
    rig.sweep(Some(&campaign)).await;
    assert_eq!(rig.lease(call).await, Some((rig.now() + 60_000, None)));

    // A second outage that outlasts the grace (10 minutes from its first failed question):
    // the lease is never renewed past it, and then the call is decided, once.
    rig.carrier.says(Says::Down);
    rig.api.clock.advance_ms(STEP);
    rig.sweep(Some(&campaign)).await;
    let outage = rig.now();
    while let Some((expires, since)) = rig.lease(call).await {
        assert!(expires <= outage + 600_000 && since == Some(outage), "renewed past the grace: {expires} {since:?}");
        assert!(rig.now() - outage < 700_000, "never decided");
        rig.api.clock.advance_ms(STEP);
        rig.sweep(Some(&campaign)).await;
    }
    assert!((600_000..600_000 + STEP).contains(&(rig.now() - outage)), "closed at the first sweep after the grace");
    let record = rig.call(call).await;
    assert_eq!((&record["outcome"], &record["end_reason"]), (&json!("failed"), &json!("carrier_unreachable")), "{record}");
    let contact = rig.contact(&campaign, call).await;
    assert_eq!((&contact["status"], &contact["attempts"]), (&json!("pending"), &json!(1)), "retried by the policy: {contact}");

    // The carrier's record comes after all: taken as a duplicate, the decision stands.
    assert_eq!(rig.cdr(request, "answered").await["duplicate"], true);
    assert_eq!(rig.call(call).await["outcome"], "failed");
    assert_eq!(rig.carrier.placed(), 1, "dialled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_carrier_says_ended_closes_as_no_cdr_once_its_lease_runs_out() {
    let mut rig = rig().await;
    let (campaign, requests) = rig.campaign(json!({"type": "hangup"}), &["+15550100002"]).await;
    let call = requests[0].session.as_str();
    let placed_at = rig.now();

    // Live: renewed when the lease nears its end.
    rig.api.clock.advance_ms(40_000);
    rig.sweep(Some(&campaign)).await;
    assert_eq!(rig.lease(call).await, Some((placed_at + 100_000, None)));
    // Ended, with no call-end record yet: the lease runs on, so the record can still come...
    rig.carrier.says(Says::Ended);
    rig.api.clock.advance_ms(35_000);
    rig.sweep(Some(&campaign)).await;
    assert_eq!(rig.lease(call).await, Some((placed_at + 100_000, None)));
    assert_eq!(rig.call(call).await["outcome"], "in_progress");
    // ... and when it has run out, the call closes as `no_cdr` and its contact is retried.
    rig.api.clock.advance_ms(25_000);
    rig.sweep(Some(&campaign)).await;
    assert_eq!(rig.lease(call).await, None);
    let record = rig.call(call).await;
    assert_eq!((&record["outcome"], &record["end_reason"]), (&json!("failed"), &json!("no_cdr")), "{record}");
    assert_eq!(rig.contact(&campaign, call).await["status"], "pending");
    assert_eq!(rig.carrier.asked.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------------------------
// Rule 2: engine slots follow the call.

/// An engine host as the heartbeat sees it: two slots, reservations held in a map.
#[derive(Debug, Clone)]
struct FakeEngine {
    held: Arc<Mutex<HashMap<String, Duration>>>,
    events: UnboundedSender<(&'static str, String, Duration)>,
}

impl Host for FakeEngine {
    fn capacity(&self) -> Capacity {
        let held = self.held.lock().unwrap().len() as u64;
        Capacity { workers: 1, slots_total: 2, slots_free: 2 - held.min(2), live_calls: 0 }
    }

    fn hold(&self, token: &str, ttl: Duration) -> bool {
        let mut held = self.held.lock().unwrap();
        if held.len() >= 2 && !held.contains_key(token) {
            return false;
        }
        held.insert(token.to_string(), ttl);
        let _ = self.events.send(("hold", token.to_string(), ttl));
        true
    }

    fn set_call_keys(&self, _: cxb_contract::call_token::KeyRing) {}

    fn release(&self, token: &str) -> bool {
        let had = self.held.lock().unwrap().remove(token).is_some();
        let _ = self.events.send(("release", token.to_string(), Duration::ZERO));
        had
    }
}

/// The next event about `token`, skipping others.
async fn event(events: &mut UnboundedReceiver<(&'static str, String, Duration)>, token: &str) -> (&'static str, Duration) {
    loop {
        let (kind, t, ttl) = tokio::time::timeout(LIMIT, events.recv()).await.expect("the engine hears of it").unwrap();
        if t == token {
            return (kind, ttl);
        }
    }
}

/// The reservation token inside the call token of a request's stream URL.
async fn reservation_of(api: &Api, request: &CallRequest) -> (String, String) {
    let Answer::Cxml(cxml) = &request.answer else { panic!("inline CXML") };
    let url = cxml.split('"').nth(1).unwrap().replace("&amp;", "&");
    let token = url.split("token=").nth(1).unwrap();
    let ring = cxb_control_plane::call_tokens::verifying_ring(api.db(), &api.secrets(), api.clock.now_ms()).await.unwrap();
    let claims = ring.verify(token, (api.clock.now_ms() / 1000) as u64).expect("a token the API's keys verify");
    (claims.host_id.unwrap(), claims.reservation.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_call_gives_its_engine_slot_back_at_once_and_the_engine_frees_it() {
    let rig = rig().await;
    let (api, token) = (&rig.api, &rig.token);
    let fleet = api.fleet_token().await;
    let (held, (tx, mut events)) = (Arc::new(Mutex::new(HashMap::new())), unbounded_channel());
    let engine = FakeEngine { held: held.clone(), events: tx };
    let config = |every| HeartbeatConfig { api: api.base.clone(), fleet_token: fleet.clone(), host_id: "e1:8080".into(), address: "ws://127.0.0.1:9".into(), every };
    let beating = tokio::spawn(heartbeat_loop(config(Duration::from_millis(20)), engine.clone()));
    let hosts = async || api.get("/v1/fleet/hosts", &fleet).await.body["items"][0].clone();
    wait_for("the engine's first heartbeat", async || hosts().await["slots_free"] == 2).await;
    let bot = api.post("/v1/bots", token, json!({"name": "Direct", "llm": {"provider": "script"}})).await.body["id"].as_str().unwrap().to_string();

    // A call: one slot reserved for it and held by the engine, for the ring timeout (30 s) and
    // the margin (15 s), not a fixed minute.
    let placed = api.post("/v1/calls", token, json!({"bot_id": bot, "to": "+15550300005", "from": "+15550300001"})).await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    let request = rig.carrier.requests.lock().unwrap().last().cloned().unwrap();
    let (host, reservation) = reservation_of(api, &request).await;
    assert_eq!(host, "e1:8080");
    assert_eq!(event(&mut events, &reservation).await, ("hold", Duration::from_secs(45)));
    wait_for("the hold confirmed", async || {
        let h = hosts().await;
        h["slots_free"] == 1 && h["pending_reservations"] == 0
    })
    .await;

    // Busy: the carrier's call-end record gives the slot back, and the engine frees it within
    // a heartbeat, long before the reservation would lapse (the clock does not move at all).
    rig.cdr(&request, "busy").await;
    assert_eq!(rig.call(&request.session).await["outcome"], "busy");
    assert_eq!(event(&mut events, &reservation).await.0, "release");
    wait_for("the slot free again", async || {
        let h = hosts().await;
        h["slots_free"] == 2 && h["available"] == 2
    })
    .await;
    wait_for("the release confirmed", async || {
        sqlx::query_scalar::<_, String>("SELECT token FROM reservation_releases").fetch_all(api.db()).await.unwrap().is_empty()
    })
    .await;

    // A reservation the engine has not confirmed yet (no heartbeat in between) stops counting
    // the moment the carrier refuses its call, and the engine is told all the same.
    beating.abort();
    let _ = beating.await;
    rig.carrier.refuse.store(true, Ordering::SeqCst);
    let refused = api.post("/v1/calls", token, json!({"bot_id": bot, "to": "+15550300006", "from": "+15550300001"})).await;
    assert_eq!((refused.status, refused.code()), (502, "carrier_rejected"), "{}", refused.body);
    let request = rig.carrier.requests.lock().unwrap().last().cloned().unwrap();
    let (_, withdrawn) = reservation_of(api, &request).await;
    let h = hosts().await;
    assert_eq!((&h["pending_reservations"], &h["available"]), (&json!(0), &json!(2)), "{h}");
    assert_eq!(rig.call(&request.session).await["outcome"], "failed");
    let _beating = tokio::spawn(heartbeat_loop(config(Duration::from_millis(20)), engine));
    assert_eq!(event(&mut events, &withdrawn).await.0, "release", "never held, only released");
    assert!(held.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Rule 3: an answered call is `completed` only on the engine's word.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_call_whose_engine_host_died_is_failed_and_retried_without_waiting_for_the_grace() {
    let mut rig = rig().await;
    let fleet = rig.api.fleet_token().await;
    rig.host(&fleet, "e1:8080").await;
    let (bot, assistant) = rig.assistant().await;
    let (campaign, requests) = rig.campaign(json!({"type": "ai_assistant", "target_id": assistant}), &["+15550100003"]).await;
    let request = &requests[0];
    let call = request.session.as_str();
    assert_eq!(rig.column(call, "engine_host").await.as_deref(), Some("e1:8080"));

    // Answered; the engine's result is awaited while its host heartbeats.
    rig.cdr(request, "answered").await;
    rig.sweep(Some(&campaign)).await;
    assert_eq!(rig.call(call).await["outcome"], "in_progress");
    assert_eq!(rig.contact(&campaign, call).await["status"], "dialing");

    // The host stops heartbeating (killed): after its TTL (10 s), not the 60 s grace, the call
    // is failed and its contact retried by the policy.
    rig.api.clock.advance_ms(9_000);
    rig.sweep(Some(&campaign)).await;
    assert_eq!(rig.call(call).await["outcome"], "in_progress", "the host may still report");
    rig.api.clock.advance_ms(2_000);
    rig.sweep(Some(&campaign)).await;
    let record = rig.call(call).await;
    assert_eq!((&record["outcome"], &record["end_reason"]), (&json!("failed"), &json!("engine_host_lost")), "{record}");
    let contact = rig.contact(&campaign, call).await;
    assert_eq!((&contact["status"], &contact["disposition"]), (&json!("pending"), &Value::Null), "{contact}");
    let retry_at = cxb_control_plane::clock::rfc3339(rig.now() + 60_000);
    assert_eq!(contact["next_attempt_at"].as_str(), Some(retry_at.as_str()));
    let stats = rig.api.get(&format!("/v1/campaigns/{campaign}/stats"), &rig.token).await.body;
    assert_eq!((&stats["failed"], &stats["answered"], &stats["in_progress"]), (&json!(1), &json!(0), &json!(0)), "{stats}");

    // Its outbox delivers after all (the engine came back): merged once, the decision stands.
    let late = rig.result(&fleet, &bot, request, "stopped", &["bot", "caller"]).await;
    assert_eq!(late["duplicate"], false);
    let record = rig.call(call).await;
    assert_eq!((&record["outcome"], &record["metrics"]["result_late"]), (&json!("failed"), &json!(true)), "{record}");
    assert_eq!(rig.contact(&campaign, call).await["status"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_call_whose_stream_broke_before_anyone_spoke_is_failed_and_retried() {
    let mut rig = rig().await;
    let fleet = rig.api.fleet_token().await;
    rig.host(&fleet, "e1:8080").await;
    let (bot, assistant) = rig.assistant().await;
    let phones = ["+15550100004", "+15550100005", "+15550100006"];
    let (campaign, requests) = rig.campaign(json!({"type": "ai_assistant", "target_id": assistant}), &phones).await;
    let [broke_first, broke_late, talked] = [&requests[0], &requests[1], &requests[2]];

    // The engine's result before the carrier's record: the stream broke (a protocol error)
    // after the greeting, before the callee said a word.
    rig.result(&fleet, &bot, broke_first, "protocol_error", &["bot"]).await;
    rig.cdr(broke_first, "answered").await;
    // The carrier's record first, then a result whose stream just stopped arriving.
    rig.cdr(broke_late, "answered").await;
    rig.result(&fleet, &bot, broke_late, "idle_timeout", &[]).await;
    // A conversation whose socket dropped at the end is a completed call.
    rig.cdr(talked, "answered").await;
    rig.result(&fleet, &bot, talked, "peer_closed", &["bot", "caller", "bot"]).await;

    for (request, reason) in [(broke_first, "protocol_error"), (broke_late, "idle_timeout")] {
        let record = rig.call(&request.session).await;
        assert_eq!((&record["outcome"], &record["end_reason"]), (&json!("failed"), &json!(reason)), "{record}");
        let contact = rig.contact(&campaign, &request.session).await;
        assert_eq!((&contact["status"], &contact["attempts"]), (&json!("pending"), &json!(1)), "{contact}");
    }
    let record = rig.call(&talked.session).await;
    assert_eq!(record["outcome"], "completed", "{record}");
    let contact = rig.contact(&campaign, &talked.session).await;
    assert_eq!((&contact["status"], &contact["disposition"]), (&json!("done"), &json!("completed")), "{contact}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_call_with_no_engine_result_after_the_grace_is_failed_and_retried() {
    let mut rig = rig().await;
    let fleet = rig.api.fleet_token().await;
    rig.host(&fleet, "e1:8080").await;
    let (_, assistant) = rig.assistant().await;
    let (campaign, requests) = rig.campaign(json!({"type": "ai_assistant", "target_id": assistant}), &["+15550100007"]).await;
    let call = requests[0].session.as_str();
    rig.cdr(&requests[0], "answered").await;
    // The host keeps heartbeating; no result comes within the grace (60 s).
    for _ in 0..6 {
        rig.api.clock.advance_ms(10_000);
        rig.host(&fleet, "e1:8080").await;
        rig.sweep(Some(&campaign)).await;
    }
    assert_eq!(rig.call(call).await["outcome"], "in_progress");
    rig.api.clock.advance_ms(1);
    rig.sweep(Some(&campaign)).await;
    let record = rig.call(call).await;
    assert_eq!((&record["outcome"], &record["end_reason"]), (&json!("failed"), &json!("no_engine_result")), "{record}");
    assert_eq!(rig.contact(&campaign, call).await["status"], "pending");
}
