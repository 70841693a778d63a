//! Whole campaigns through the API, the dialler and a carrier, on a real database.

#![allow(clippy::unwrap_used)]

#[path = "../../control-plane/tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Api;
use cxb_control_plane::clock::SystemClock;
use cxb_dialler::carrier::{BoxFuture, CallRequest, CallState, Carrier, CarrierError, Cdr, CdrError, Disposition, Placed};
use cxb_dialler::carriers::Carriers;
use cxb_dialler::{Dialler, DiallerConfig, DiallerTelephony, Shared};
use serde_json::{Value, json};

/// A carrier double: outcomes by the number's last digit, short rings, CDRs posted over HTTP.
#[derive(Debug)]
struct Quick {
    http: reqwest::Client,
    live: Arc<AtomicI64>,
    peak: Arc<AtomicI64>,
    placed: Mutex<Vec<(Instant, String)>>,
    requests: Mutex<Vec<CallRequest>>,
}

impl Carrier for Quick {
    fn name(&self) -> &'static str {
        "simulator"
    }

    fn create_call<'a>(&'a self, call: &'a CallRequest) -> BoxFuture<'a, Result<Placed, CarrierError>> {
        Box::pin(async move {
            self.placed.lock().unwrap().push((Instant::now(), call.to.clone()));
            self.requests.lock().unwrap().push(call.clone());
            let now = self.live.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let (http, live, url, session, to) = (self.http.clone(), self.live.clone(), call.cdr_url.clone(), call.session.clone(), call.to.clone());
            tokio::spawn(async move {
                let digit = to.chars().last().and_then(|c| c.to_digit(10)).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(20 + u64::from(digit) * 5)).await;
                let disposition = match digit {
                    6 => "busy",
                    7 => "no_answer",
                    8 => "failed",
                    9 => "invalid_number",
                    _ => "answered",
                };
                let started = SystemClock.now_ms_();
                if disposition == "answered" {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                live.fetch_sub(1, Ordering::SeqCst);
                let cdr = json!({"session": session, "disposition": disposition, "started": started, "ended": SystemClock.now_ms_()});
                for _ in 0..3 {
                    if http.post(&url).json(&cdr).send().await.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                }
            });
            Ok(Placed { carrier_call_id: format!("q-{}", call.session) })
        })
    }

    fn hang_up<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), CarrierError>> {
        Box::pin(async { Ok(()) })
    }

    fn call_state<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<CallState, CarrierError>> {
        Box::pin(async { Ok(CallState::Unknown) })
    }

    fn parse_cdr(&self, _: &[(String, String)], body: &[u8]) -> Result<Cdr, CdrError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| CdrError::Malformed(e.to_string()))?;
        let disposition = match v["disposition"].as_str() {
            Some("answered") => Disposition::Answered,
            Some("busy") => Disposition::Busy,
            Some("no_answer") => Disposition::NoAnswer,
            Some("invalid_number") => Disposition::InvalidNumber,
            _ => Disposition::Failed,
        };
        let started = v["started"].as_i64().unwrap_or(0);
        let ended = v["ended"].as_i64().unwrap_or(0);
        Ok(Cdr {
            carrier_call_id: format!("q-{}", v["session"].as_str().unwrap_or("")),
            session: v["session"].as_str().map(str::to_string),
            disposition,
            cause: None,
            started_at_ms: started,
            answered_at_ms: (disposition == Disposition::Answered).then_some(started),
            ended_at_ms: ended,
            authenticated: false,
        })
    }
}

trait NowMs {
    fn now_ms_(&self) -> i64;
}

impl NowMs for SystemClock {
    fn now_ms_(&self) -> i64 {
        use cxb_control_plane::clock::Clock;
        self.now_ms()
    }
}

struct Rig {
    api: Api,
    token: String,
    carrier: Arc<Quick>,
    dialler: Option<Dialler>,
}

async fn rig() -> Rig {
    rig_with(|_| {}).await
}

async fn rig_with(tweak: impl FnOnce(&mut DiallerConfig)) -> Rig {
    let api = Api::start_with(|c| c.clock = Arc::new(SystemClock)).await;
    let token = api.org("Acme").await;
    let http = reqwest::Client::new();
    let carrier = Arc::new(Quick { http: http.clone(), live: Arc::default(), peak: Arc::default(), placed: Mutex::default(), requests: Mutex::default() });
    let carriers = Carriers::new(Some(carrier.clone()), loopback_egress(), api.secrets());
    let mut config = DiallerConfig::new(api.base.clone());
    config.tick = Duration::from_millis(20);
    tweak(&mut config);
    let shared = Shared::new(api.db().clone(), carriers, config);
    api.server.attach_telephony(Arc::new(DiallerTelephony(shared.clone())));
    let dialler = Some(Dialler::start(shared));
    Rig { api, token, carrier, dialler }
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_dials_everyone_within_cac_and_cps_and_retries_by_outcome() {
    let rig = rig().await;
    let (api, token) = (&rig.api, &rig.token);
    let campaign = api
        .post(
            "/v1/campaigns",
            token,
            json!({
                "name": "Quick", "routing": {"type": "hangup"}, "caller_ids": ["+15550000001", "+15550000002"],
                "cac": 5, "cps": 40,
                "retry": {"max_attempts": 2, "backoff_seconds": 0, "retry_on": ["busy", "no_answer", "failed"]},
            }),
        )
        .await;
    assert_eq!(campaign.status, 201, "{}", campaign.body);
    let id = campaign.body["id"].as_str().unwrap().to_string();
    let csv: String = std::iter::once("phone,name\n".to_string()).chain((0..40).map(|i| format!("+1555010{i:04},Contact {i}\n"))).collect();
    let imported = api.raw(reqwest::Method::POST, &format!("/v1/campaigns/{id}/contacts/import"), Some(token), Some(("text/csv", csv.into_bytes()))).await;
    assert_eq!(imported.status, 200, "{}", imported.body);
    assert_eq!(api.post("/v1/dnc", token, json!({"phone": "+15550100003"})).await.status, 201);
    assert_eq!(api.post(&format!("/v1/campaigns/{id}/start"), token, json!({})).await.status, 200);

    wait_for("the campaign to complete", Duration::from_secs(60), async || {
        api.get(&format!("/v1/campaigns/{id}"), token).await.body["state"] == "COMPLETED"
    })
    .await;
    let stats = api.get(&format!("/v1/campaigns/{id}/stats"), token).await.body;
    eprintln!("{stats:#}");
    assert!(rig.carrier.peak.load(Ordering::SeqCst) <= 5, "CAC exceeded: {}", rig.carrier.peak.load(Ordering::SeqCst));
    let placed = rig.carrier.placed.lock().unwrap().clone();
    // 39 contacts (one on the DNC list); digits 6, 7, 8 are retried once: 4 + 4 + 4 of them.
    assert_eq!(placed.len(), 39 + 12, "attempts");
    assert_eq!(stats["attempts"], 51);
    assert_eq!(stats["dnc_skipped"], 1);
    let sum: i64 = ["answered", "busy", "no_answer", "voicemail", "failed", "canceled", "in_progress"].iter().map(|k| stats[k].as_i64().unwrap()).sum();
    assert_eq!(sum, 51, "outcomes add up");
    assert_eq!(stats["contacts"]["done"], 40);
    assert_eq!(stats["contacts"]["dispositions"]["max_attempts"], 12);
    assert_eq!(stats["contacts"]["dispositions"]["invalid_number"], 4);
    assert_eq!(stats["live_now"], 0);
    assert_cps(&placed.iter().map(|p| p.0).collect::<Vec<_>>(), 40);
    rig.dialler.unwrap().shutdown().await;
}

/// No window of one second holds more than `cps` attempts.
fn assert_cps(times: &[Instant], cps: usize) {
    for (i, t) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|u| u.duration_since(*t) < Duration::from_secs(1)).count();
        assert!(within <= cps, "{within} attempts within a second of attempt {i} (CPS {cps})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_call_goes_to_the_freest_engine_and_its_call_end_record_is_checked() {
    let rig = rig().await;
    let (api, token) = (&rig.api, &rig.token);
    let bot = api.post("/v1/bots", token, json!({"name": "Direct", "llm": {"provider": "script"}})).await.body["id"].as_str().unwrap().to_string();
    let call = json!({"bot_id": bot, "to": "+15550300005", "from": "+15550300001", "metadata": {"order": "A-1"}});

    // No engine host yet: 503 no_capacity, nothing placed.
    let busy = api.post("/v1/calls", token, call.clone()).await;
    assert_eq!((busy.status, busy.code()), (503, "no_capacity"), "{}", busy.body);
    let now = cxb_control_plane::clock::Clock::now_ms(&SystemClock);
    for (id, free) in [("small", 1), ("big", 5)] {
        sqlx::query("INSERT INTO hosts (id, address, version, workers, slots_total, slots_free, live_calls, pending, first_seen, last_seen) VALUES ($1, $2, 'test', 1, 8, $3, 0, 0, $4, $4)")
            .bind(id)
            .bind(format!("ws://127.0.0.1:1{free}"))
            .bind(free)
            .bind(now)
            .execute(api.db())
            .await
            .unwrap();
    }
    let placed = api.post("/v1/calls", token, call.clone()).await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    assert_eq!(placed.body["direction"], "outbound");
    assert_eq!(placed.body["to"], "+15550300005");
    assert_eq!(placed.body["outcome"], "in_progress");
    let id = placed.body["id"].as_str().unwrap().to_string();
    let request = rig.carrier.requests.lock().unwrap().last().cloned().unwrap();
    let cxb_dialler::carrier::Answer::Cxml(cxml) = &request.answer else { panic!("inline CXML") };
    let prefix = format!("<Response><Connect><Stream url=\"ws://127.0.0.1:15/ws/{bot}?token=ct1.");
    assert!(cxml.starts_with(&prefix), "{cxml}");
    // The token names the bot, the call, the organization and the reserved slot's host.
    let url = cxml.split('"').nth(1).unwrap().replace("&amp;", "&");
    let call_token = url.split("token=").nth(1).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ring = cxb_control_plane::call_tokens::verifying_ring(api.db(), &api.secrets(), (now * 1000) as i64).await.unwrap();
    let claims = ring.verify(call_token, now).expect("a token the API's keys verify");
    assert_eq!((claims.bot_id.as_str(), claims.call_id.as_str(), claims.host_id.as_deref()), (bot.as_str(), id.as_str(), Some("big")));
    assert!(claims.reservation.is_some() && claims.org_id.as_str().starts_with("org_"), "{claims:?}");
    assert!(claims.exp > now && claims.exp <= now + 120, "it expires after the ring timeout: {}", claims.exp - now);
    assert!(cxml.contains(&format!("<Parameter name=\"call_id\" value=\"{id}\"/>")), "{cxml}");
    assert!(cxml.contains("<Parameter name=\"order\" value=\"A-1\"/>"), "{cxml}");

    // The DNC list, unknown bots and bad numbers are refused.
    assert_eq!(api.post("/v1/dnc", token, json!({"phone": "+15550300006"})).await.status, 201);
    let dnc = api.post("/v1/calls", token, json!({"bot_id": bot, "to": "+15550300006", "from": "+15550300001"})).await;
    assert_eq!((dnc.status, dnc.code()), (409, "do_not_call"));
    let unknown = api.post("/v1/calls", token, json!({"bot_id": "bot_nope", "to": "+15550300007", "from": "+15550300001"})).await;
    assert_eq!(unknown.status, 422);
    let bad = api.post("/v1/calls", token, json!({"bot_id": bot, "to": "call me", "from": "+15550300001"})).await;
    assert_eq!((bad.status, bad.body["error"]["field"].as_str()), (422, Some("to")));

    // The carrier's call-end record: a wrong token and garbage are refused, the real one is taken
    // once, and the call is final after the engine's result is given up on or merged.
    wait_for("the call-end record", Duration::from_secs(10), async || {
        api.get(&format!("/v1/calls/{id}"), token).await.body["ended_at"].is_string()
    })
    .await;
    let org_path = request.cdr_url.split("?token=").next().unwrap().trim_start_matches(&api.base).to_string();
    let forged = api.raw(reqwest::Method::POST, &format!("{org_path}?token=wrong"), None, Some(("application/json", json!({"session": id, "disposition": "busy"}).to_string().into_bytes()))).await;
    assert_eq!(forged.status, 401, "{}", forged.body);
    let garbage = api.raw(reqwest::Method::POST, request.cdr_url.trim_start_matches(&api.base), None, Some(("application/json", b"{not json".to_vec()))).await;
    assert_eq!((garbage.status, garbage.code()), (400, "malformed_cdr"));
    let again = api.raw(reqwest::Method::POST, request.cdr_url.trim_start_matches(&api.base), None, Some(("application/json", json!({"session": id, "disposition": "busy", "started": 1, "ended": 2}).to_string().into_bytes()))).await;
    assert_eq!((again.status, again.body["duplicate"].as_bool()), (200, Some(true)), "{}", again.body);
    let record = api.get(&format!("/v1/calls/{id}"), token).await.body;
    assert_eq!(record["outcome"], "in_progress", "answered, the engine's result awaited: {record}");
    assert!(record["answered_at"].is_string() && record["ended_at"].is_string(), "{record}");
    rig.dialler.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_result_after_the_grace_is_merged_once_without_changing_the_decision() {
    let rig = rig_with(|c| c.result_grace = Duration::from_millis(300)).await;
    let (api, token) = (&rig.api, &rig.token);
    let bot = api.post("/v1/bots", token, json!({"name": "Late", "llm": {"provider": "script"}})).await.body["id"].as_str().unwrap().to_string();
    let now = cxb_control_plane::clock::Clock::now_ms(&SystemClock);
    sqlx::query("INSERT INTO hosts (id, address, version, workers, slots_total, slots_free, live_calls, pending, first_seen, last_seen) VALUES ('h', 'ws://127.0.0.1:19', 'test', 1, 8, 8, 0, 0, $1, $1)")
        .bind(now)
        .execute(api.db())
        .await
        .unwrap();
    let placed = api.post("/v1/calls", token, json!({"bot_id": bot, "to": "+15550300005", "from": "+15550300001"})).await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    let id = placed.body["id"].as_str().unwrap().to_string();

    // Answered, and no engine result within the grace: as far as anyone can tell the call never
    // reached the bot, so it is decided as failed.
    wait_for("the decision without a result", Duration::from_secs(10), async || {
        api.get(&format!("/v1/calls/{id}"), token).await.body["outcome"] == "failed"
    })
    .await;
    let decided = api.get(&format!("/v1/calls/{id}"), token).await.body;
    assert_eq!(decided["transcript"], Value::Null, "{decided}");
    assert_eq!(decided["end_reason"], "no_engine_result", "{decided}");

    // The result comes late (an engine's outbox that was cut off from the API): merged once.
    let fleet = api.fleet_token().await;
    let result = json!({
        "call_id": id, "bot_id": bot, "direction": "outbound", "from": "+15550300001", "to": "+15550300005",
        "started_at": "2026-11-22T10:00:00Z", "answered_at": "2026-11-22T10:00:01Z", "ended_at": "2026-11-22T10:00:09Z",
        "outcome": "voicemail", "end_reason": "machine_detected",
        "transcript": [{"role": "bot", "text": "Hello!", "at_ms": 40, "interrupted": false}],
        "costs": [{"item": "tts_characters", "quantity": 6.0, "unit": "character"}],
        "metrics": {"answer_to_first_audio_ms": 40},
    });
    let first = api.post("/v1/runtime/results", &fleet, result.clone()).await;
    assert_eq!((first.status, &first.body["duplicate"]), (201, &json!(false)), "{}", first.body);
    let again = api.post("/v1/runtime/results", &fleet, result).await;
    assert_eq!((again.status, &again.body["duplicate"]), (200, &json!(true)), "{}", again.body);
    let merged = api.get(&format!("/v1/calls/{id}"), token).await.body;
    assert_eq!(merged["transcript"][0]["text"], "Hello!", "{merged}");
    assert_eq!(merged["metrics"]["answer_to_first_audio_ms"], 40);
    assert_eq!(merged["metrics"]["result_late"], true);
    assert!(merged["metrics"]["routing"].is_object(), "the dialler's routing record is kept: {merged}");
    // The decision stands: the outcome and the end reason the carrier gave.
    assert_eq!((&merged["outcome"], &merged["end_reason"]), (&decided["outcome"], &decided["end_reason"]), "{merged}");
    rig.dialler.unwrap().shutdown().await;
}

/// The tenant-request guard as these tests need it: the carrier doubles listen on loopback.
fn loopback_egress() -> cxb_control_plane::egress::Egress {
    cxb_control_plane::egress::Egress::new(cxb_contract::egress::EgressPolicy::with_loopback(), Duration::from_secs(10)).unwrap()
}
