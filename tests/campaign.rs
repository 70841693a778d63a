//! Campaigns end to end: the API and the dialler with the built-in carrier simulator, the media
//! engine as its own process (`cxb core --api`), answered calls streamed to it for real; and two
//! `cxb dialler` processes splitting campaigns over one database, one taking over when the
//! other dies.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cxb_control_plane::clock::{Clock, SystemClock};
use cxb_control_plane::{ApiConfig, ApiServer, admin};
use cxb_dialler::carriers::Carriers;
use cxb_dialler::simulator::{Outcome, OutcomeMix, Rule, Simulator, SimulatorConfig, Span};
use cxb_dialler::{Dialler, DiallerConfig, DiallerTelephony, Shared};
use serde_json::{Value, json};

mod common;

use common::Kill;

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.send(reqwest::Method::POST, path, Some(body)).await;
        assert!(status < 300, "POST {path}: {status} {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn import(&self, campaign: &str, csv: String) -> Value {
        let r = self
            .http
            .post(format!("{}/v1/campaigns/{campaign}/contacts/import", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    /// Every call record of a campaign.
    async fn calls(&self, campaign: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.get(&format!("/v1/calls?campaign_id={campaign}&limit=500{cursor}")).await;
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => return out,
            }
        }
    }
}

async fn api(dir: &std::path::Path) -> (ApiServer, Client) {
    let mut config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), format!("sqlite://{}/cxb.db", dir.display()));
    // The assistants' stream URLs (probed by the dialler) are on loopback.
    config.egress = cxb_contract::egress::EgressPolicy::with_loopback();
    let api = ApiServer::start(config).await.unwrap();
    let base = format!("http://{}", api.local_addr());
    admin::create_org(&api.state().db, "Acme", "a@acme.test", "correct horse battery".into(), SystemClock.now_ms()).await.unwrap();
    let http = reqwest::Client::new();
    let login = http.post(format!("{base}/v1/auth/login")).json(&json!({"email": "a@acme.test", "password": "correct horse battery"})).send().await.unwrap();
    let token = serde_json::from_slice::<Value>(&login.bytes().await.unwrap()).unwrap()["token"].as_str().unwrap().to_string();
    (api, Client { http, base, token })
}

/// A dialler in this process over the API's database, its carrier the simulator `sim`,
/// attached to the API as its telephony (a 50 ms tick, a 30 s ring timeout).
fn start_dialler(api: &ApiServer, client: &Client, sim: SimulatorConfig) -> (Dialler, Arc<Simulator>) {
    let http = cxb_control_plane::http_client(Duration::from_secs(10)).unwrap();
    let simulator = Simulator::start(sim, http);
    let mut config = DiallerConfig::new(client.base.clone());
    config.tick = Duration::from_millis(50);
    config.ring_timeout = Duration::from_secs(30);
    let shared = Shared::new(api.state().db.clone(), Carriers::new(Some(simulator.clone()), egress(), api.state().secrets.clone()), config);
    api.attach_telephony(Arc::new(DiallerTelephony(shared.clone())));
    (Dialler::start(shared), simulator)
}

async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut done: F) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No one-second window holds more than `cps` of `times` (sorted).
fn assert_cps(times: &[Instant], cps: usize) {
    for (i, t) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|u| u.duration_since(*t) < Duration::from_secs(1)).count();
        assert!(within <= cps, "{within} attempts within one second from attempt {i}; CPS is {cps}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_of_200_contacts_keeps_cac_and_cps_and_every_contact_ends_or_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (api, client) = api(dir.path()).await;
    let fleet = admin::create_fleet_token(&api.state().db, "test", SystemClock.now_ms()).await.unwrap();
    let (_engine, port) = common::core(dir.path(), &client.base, &fleet, &["--workers", "1", "--slots-per-worker", "64"]);

    // The simulator, 50 times faster than life (audio stays real time): rings of 60-240 ms,
    // people on the line for 0.4-1 s. Numbers ending in 1 are busy, 2 never answer, 3 fail,
    // 4 reach a voicemail; the rest answer.
    let sim = SimulatorConfig {
        mix: OutcomeMix::only(Outcome::Answer),
        time_scale: 0.02,
        talk: Span::ms(20_000, 50_000),
        seed: Some(7),
        rules: vec![Rule::new("1", Outcome::Busy), Rule::new("2", Outcome::NoAnswer), Rule::new("3", Outcome::Failed), Rule::new("4", Outcome::Voicemail)],
        ..SimulatorConfig::default()
    };
    let (dialler, simulator) = start_dialler(&api, &client, sim);

    // Wait for the engine's first heartbeat, so bots on it can be reached.
    wait_until("the engine's heartbeat", Duration::from_secs(20), async || {
        client.get("/v1/fleet/hosts").await["items"].as_array().is_some_and(|h| !h.is_empty())
    })
    .await;

    // A balancer over a CX Bridge bot (reserved slot on the engine) and a WebSocket assistant
    // whose URL template points at the engine directly.
    let a = client.post("/v1/ai-assistants", json!({"name": "bot on the fleet", "kind": "websocket", "bot_id": "echo"})).await;
    let template = format!("ws://127.0.0.1:{port}/ws/echo?session={{session}}&to={{to}}");
    let b = client.post("/v1/ai-assistants", json!({"name": "by URL", "kind": "websocket", "url_template": template})).await;
    let lb = client
        .post("/v1/load-balancers", json!({"name": "pair", "strategy": "round_robin", "members": [{"assistant_id": a["id"]}, {"assistant_id": b["id"]}]}))
        .await;
    let campaign = client
        .post(
            "/v1/campaigns",
            json!({
                "name": "Two hundred",
                "routing": {"type": "ai_load_balancer", "target_id": lb["id"]},
                "caller_ids": ["+15550009001", "+15550009002", "+15550009003"],
                "cac": 20, "cps": 25,
                "retry": {"max_attempts": 2, "backoff_seconds": 1, "retry_on": ["busy", "no_answer", "failed"]},
            }),
        )
        .await;
    let id = campaign["id"].as_str().unwrap().to_string();
    let csv: String = std::iter::once("phone,name,plan\n".to_string()).chain((0..200).map(|i| format!("+1555020{i:04},Contact {i},gold\n"))).collect();
    let imported = client.import(&id, csv).await;
    assert_eq!(imported["imported"], 200, "{imported}");
    client.post("/v1/dnc", json!({"phone": "+15550200000"})).await;
    client.post(&format!("/v1/campaigns/{id}/start"), json!({})).await;

    // Sample the campaign's live calls while it runs.
    let mut peak_live = 0;
    wait_until("the campaign to complete", Duration::from_secs(120), async || {
        let stats = client.get(&format!("/v1/campaigns/{id}/stats")).await;
        peak_live = peak_live.max(stats["live_now"].as_i64().unwrap());
        stats["state"] == "COMPLETED"
    })
    .await;
    let stats = client.get(&format!("/v1/campaigns/{id}/stats")).await;
    eprintln!("{stats:#}");
    let sim_stats = simulator.stats();
    eprintln!("{sim_stats:#?}");
    let mut causes: HashMap<String, usize> = HashMap::new();
    for c in simulator.calls() {
        *causes.entry(format!("{:?} {:?} {:?}", c.outcome, c.cause, c.detail)).or_default() += 1;
    }
    eprintln!("{causes:#?}");
    assert!(peak_live <= 20, "CAC exceeded in the API's sample: {peak_live}");
    assert!(sim_stats.peak_live <= 20, "CAC exceeded at the carrier: {}", sim_stats.peak_live);
    assert!(peak_live >= 10, "the campaign never ran wide: peak {peak_live}");

    // CPS, at the carrier.
    let mut log = simulator.calls();
    log.sort_by_key(|c| c.created);
    assert_cps(&log.iter().map(|c| c.created.into_std()).collect::<Vec<_>>(), 25);

    // 199 contacts dialled (one is on the DNC list); endings 1, 2 and 3 are retried once.
    let retried = (1..200).filter(|i| matches!(i % 10, 1..=3)).count();
    assert_eq!(stats["attempts"].as_i64().unwrap() as usize, 199 + retried);
    assert_eq!(log.len(), 199 + retried, "the carrier saw every attempt once");
    let sum: i64 = ["answered", "busy", "no_answer", "voicemail", "failed", "canceled", "in_progress"].iter().map(|k| stats[k].as_i64().unwrap()).sum();
    assert_eq!(sum, stats["attempts"].as_i64().unwrap(), "outcomes add up");
    assert_eq!(stats["in_progress"], 0);
    assert_eq!(stats["live_now"], 0);
    assert_eq!(stats["dnc_skipped"], 1);
    assert_eq!(stats["busy"].as_i64().unwrap() as usize, 2 * 20);
    // Machines answer too: without answering-machine detection they count as answered.
    assert_eq!(stats["answered"].as_i64().unwrap() as usize + stats["voicemail"].as_i64().unwrap() as usize, 199 - 3 * 20);
    assert_eq!(stats["contacts"]["done"], 200, "every contact reached a disposition");
    assert_eq!(stats["contacts"]["dispositions"]["max_attempts"].as_i64().unwrap() as usize, retried);

    // Nothing double-dialled: one call per attempt, never two at once for a contact.
    let calls = client.calls(&id).await;
    assert_eq!(calls.len(), log.len());
    let mut by_contact: HashMap<String, Vec<&Value>> = HashMap::new();
    for c in &calls {
        by_contact.entry(c["contact_id"].as_str().unwrap().to_string()).or_default().push(c);
    }
    for (contact, mut attempts) in by_contact {
        attempts.sort_by_key(|c| c["started_at"].as_str().unwrap().to_string());
        for pair in attempts.windows(2) {
            assert!(pair[0]["ended_at"].as_str().unwrap() <= pair[1]["started_at"].as_str().unwrap(), "{contact} dialled twice at once");
        }
    }
    // Answered calls were streamed to the engine for real and heard the bot.
    let answered: Vec<_> = log.iter().filter(|c| c.outcome == Outcome::Answer).collect();
    assert!(answered.iter().all(|c| c.media_sent > 0), "every answered call streamed audio");
    assert!(answered.iter().filter(|c| c.media_received > 0).count() * 10 >= answered.len() * 9, "the engine answered");
    // Caller IDs rotate through the pool.
    let froms: std::collections::HashSet<&str> = calls.iter().filter_map(|c| c["from"].as_str()).collect();
    assert_eq!(froms.len(), 3);

    dialler.shutdown().await;
    api.shutdown().await;
}

fn dialler_process(database: &str, base: &str, id: &str) -> Kill {
    let child = Command::new(env!("CARGO_BIN_EXE_cxb"))
        .args(["dialler", "--database", database, "--public-url", base, "--id", id, "--lease-seconds", "2", "--call-lease-seconds", "4", "--sim-time-scale", "0.01"])
        .args(["--sim-mix", "answer=1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Kill(child)
}

/// A dialler process serving its metrics on a port it picks; the process and where they are.
fn dialler_process_with_metrics(database: &str, base: &str, id: &str) -> (Kill, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxb"))
        .args(["dialler", "--database", database, "--public-url", base, "--id", id, "--lease-seconds", "2", "--call-lease-seconds", "4", "--sim-time-scale", "0.01"])
        .args(["--sim-mix", "answer=1", "--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let url = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.trim().strip_prefix("metrics").map(|u| u.trim().to_string()))
        .expect("the dialler prints where its metrics are");
    (Kill(child), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_diallers_split_the_campaigns_and_one_takes_over_when_the_other_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (api, client) = api(dir.path()).await;
    // The API takes the simulator's call-end records.
    let http = cxb_control_plane::http_client(Duration::from_secs(10)).unwrap();
    let parser = Simulator::start(SimulatorConfig::default(), http.clone());
    let shared = Shared::new(api.state().db.clone(), Carriers::new(Some(parser), egress(), api.state().secrets.clone()), DiallerConfig::new(client.base.clone()));
    api.attach_telephony(Arc::new(DiallerTelephony(shared)));
    let db = api.state().db.clone();
    let database = format!("sqlite://{}/cxb.db", dir.path().display());

    let mut ids = Vec::new();
    for n in 0..4 {
        let c = client
            .post(
                "/v1/campaigns",
                json!({
                    "name": format!("Slow {n}"), "routing": {"type": "hangup"}, "caller_ids": ["+15550009001"], "cac": 2, "cps": 2,
                    "retry": {"max_attempts": 2, "backoff_seconds": 0},
                }),
            )
            .await;
        let id = c["id"].as_str().unwrap().to_string();
        let csv: String = std::iter::once("phone\n".to_string()).chain((0..40).map(|i| format!("+15550{n}{i:05}\n"))).collect();
        client.import(&id, csv).await;
        ids.push(id);
    }
    let first = dialler_process(&database, &client.base, "d1");
    let (_second, metrics_url) = dialler_process_with_metrics(&database, &client.base, "d2");
    for id in &ids {
        client.post(&format!("/v1/campaigns/{id}/start"), json!({})).await;
    }
    let holders = async || -> Vec<(String, String)> {
        sqlx::query_as("SELECT campaign_id, holder FROM campaign_leases ORDER BY campaign_id").fetch_all(&db).await.unwrap()
    };
    wait_until("each dialler to hold two campaigns", Duration::from_secs(20), async || {
        let h = holders().await;
        h.len() == 4 && h.iter().filter(|(_, d)| d == "d1").count() == 2
    })
    .await;

    // d1 dies without giving its leases back; d2 takes its campaigns once the leases lapse.
    drop(first);
    let died = Instant::now();
    wait_until("d2 to hold every campaign", Duration::from_secs(20), async || {
        let h = holders().await;
        h.len() == 4 && h.iter().all(|(_, d)| d == "d2")
    })
    .await;
    assert!(died.elapsed() >= Duration::from_secs(1), "leases are not taken over before they lapse");

    // Every campaign completes; calls d1 had in flight end by their CDR or their lease.
    let start = Instant::now();
    loop {
        let mut done = true;
        for id in &ids {
            done &= client.get(&format!("/v1/campaigns/{id}")).await["state"] == "COMPLETED";
        }
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            for id in &ids {
                eprintln!("{}", client.get(&format!("/v1/campaigns/{id}/stats")).await);
            }
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as("SELECT id, status, carrier_call_id FROM calls WHERE status <> 'final'").fetch_all(&db).await.unwrap();
            eprintln!("{rows:?}");
            let leases: Vec<(String, i64)> = sqlx::query_as("SELECT call_id, expires_at FROM call_leases").fetch_all(&db).await.unwrap();
            eprintln!("{leases:?} now {}", SystemClock.now_ms());
            panic!("the campaigns did not complete");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &ids {
        let stats = client.get(&format!("/v1/campaigns/{id}/stats")).await;
        assert_eq!(stats["contacts"]["done"], 40, "{stats}");
        let calls = client.calls(id).await;
        let mut per_contact: HashMap<&str, usize> = HashMap::new();
        for c in &calls {
            *per_contact.entry(c["contact_id"].as_str().unwrap()).or_default() += 1;
        }
        assert_eq!(per_contact.len(), 40);
        // A call lost with d1 may be retried once (its lease lapsed with no CDR); none twice.
        assert!(per_contact.values().all(|&n| n <= 2), "{per_contact:?}");
    }
    // d2's own /metrics: what it claimed, waited for and asked the carrier, and what it holds.
    let metrics = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in:\n{metrics}"))
    };
    assert!(value("cxb_dialler_claims_total{result=\"claimed\"}") >= 80.0, "d2 placed at least its two campaigns' calls");
    assert!(value("cxb_dialler_carrier_requests_total{carrier=\"simulator\",op=\"create_call\",result=\"ok\"}") >= 80.0);
    assert!(value("cxb_dialler_pacing_wait_seconds_count") > 0.0);
    assert!(value("cxb_dialler_leases_held{kind=\"campaign\"}") <= 4.0);
    assert!(value("cxb_dialler_campaign_tasks") <= 4.0);
    api.shutdown().await;
}

/// The tenant-request guard as these tests need it: the carrier doubles listen on loopback.
fn egress() -> cxb_control_plane::egress::Egress {
    cxb_control_plane::egress::Egress::new(cxb_contract::egress::EgressPolicy::with_loopback(), std::time::Duration::from_secs(10)).unwrap()
}

/// The fault suite's dead engine: two engines take a campaign's AI calls; one is killed (-9)
/// with calls live on it. The fleet routes around it, its calls are decided as failed and
/// retried by the campaign's policy, no contact is dialled twice at once, and the campaign
/// completes on the engine that lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_routes_around_an_engine_killed_with_live_calls_and_retries_its_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let (api, client) = api(dir.path()).await;
    let fleet = |name: &'static str| {
        let db = api.state().db.clone();
        async move { admin::create_fleet_token(&db, name, SystemClock.now_ms()).await.unwrap() }
    };
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let (mut engine_a, port_a) = common::core(&dir_a, &client.base, &fleet("a").await, &["--workers", "1", "--slots-per-worker", "16"]);
    let (_engine_b, port_b) = common::core(&dir_b, &client.base, &fleet("b").await, &["--workers", "1", "--slots-per-worker", "16"]);
    wait_until("both engines' heartbeats", Duration::from_secs(20), async || {
        client.get("/v1/fleet/hosts").await["items"].as_array().is_some_and(|h| h.len() == 2)
    })
    .await;

    // Everyone answers and stays 2-5 s on the line (a tenth of life's pace).
    let sim = SimulatorConfig {
        mix: OutcomeMix::only(Outcome::Answer),
        time_scale: 0.1,
        talk: Span::ms(20_000, 50_000),
        seed: Some(11),
        ..SimulatorConfig::default()
    };
    let (dialler, _simulator) = start_dialler(&api, &client, sim);

    let bot = client
        .post("/v1/bots", json!({"name": "Listener", "stt": {"provider": "none"}, "tts": {"provider": "espeak"}, "recording": false,
            "llm": {"provider": "script", "options": {"script": {"fallback": "Yes?"}}}}))
        .await;
    let assistant = client.post("/v1/ai-assistants", json!({"name": "fleet bot", "kind": "websocket", "bot_id": bot["id"]})).await;
    let campaign = client
        .post(
            "/v1/campaigns",
            json!({
                "name": "Forty", "routing": {"type": "ai_assistant", "target_id": assistant["id"]},
                "caller_ids": ["+15550009001"], "cac": 8, "cps": 20,
                "retry": {"max_attempts": 3, "backoff_seconds": 1, "retry_on": ["busy", "no_answer", "failed"]},
            }),
        )
        .await;
    let id = campaign["id"].as_str().unwrap().to_string();
    let csv: String = std::iter::once("phone\n".to_string()).chain((0..40).map(|i| format!("+1555030{i:04}\n"))).collect();
    assert_eq!(client.import(&id, csv).await["imported"], 40);
    client.post(&format!("/v1/campaigns/{id}/start"), json!({})).await;

    // Kill engine A once it carries calls.
    let health = |port: u16| {
        let http = client.http.clone();
        async move {
            let r = http.get(format!("http://127.0.0.1:{port}/health")).send().await.ok()?;
            serde_json::from_slice::<Value>(&r.bytes().await.ok()?).ok()
        }
    };
    wait_until("calls on engine A", Duration::from_secs(30), async || health(port_a).await.is_some_and(|h| h["live_calls"].as_u64().unwrap_or(0) >= 2)).await;
    engine_a.0.kill().unwrap();
    engine_a.0.wait().unwrap();
    let killed_at = SystemClock.now_ms();

    wait_until("the campaign to complete", Duration::from_secs(120), async || {
        client.get(&format!("/v1/campaigns/{id}/stats")).await["state"] == "COMPLETED"
    })
    .await;
    let stats = client.get(&format!("/v1/campaigns/{id}/stats")).await;
    assert_eq!(stats["contacts"]["done"], 40, "{stats:#}");
    assert!(health(port_b).await.is_some(), "engine B lives");

    // The calls engine A carried were decided as failed and their contacts called again.
    let rows: Vec<(Option<String>, String, i64, String)> =
        sqlx::query_as("SELECT engine_host, body, created_at, contact_id FROM calls WHERE campaign_id = $1").bind(&id).fetch_all(&api.state().db).await.unwrap();
    let rows: Vec<(Option<String>, Option<String>, i64, String)> = rows
        .into_iter()
        .map(|(host, body, at, contact)| {
            let reason = serde_json::from_str::<Value>(&body).ok().and_then(|b| b["end_reason"].as_str().map(str::to_string));
            (host, reason, at, contact)
        })
        .collect();
    let host_a = format!("{}:{port_a}", common::hostname());
    let lost: Vec<&String> = rows.iter().filter(|r| r.0.as_deref() == Some(host_a.as_str()) && r.2 < killed_at && r.1.as_deref() == Some("engine_host_lost")).map(|r| &r.3).collect();
    assert!(!lost.is_empty(), "calls live on the killed engine are decided as lost: {rows:?}");
    for contact in &lost {
        assert!(rows.iter().filter(|r| &&r.3 == contact).count() >= 2, "contact {contact} was called again");
    }
    // Once the fleet knew A was gone (its heartbeat TTL), no call went there.
    let late_on_a = rows.iter().filter(|r| r.0.as_deref() == Some(host_a.as_str()) && r.2 > killed_at + 11_000).count();
    assert_eq!(late_on_a, 0, "routed around the dead host");
    // Never two attempts at once for one contact.
    let calls = client.calls(&id).await;
    let mut by_contact: HashMap<String, Vec<&Value>> = HashMap::new();
    for c in &calls {
        by_contact.entry(c["contact_id"].as_str().unwrap().to_string()).or_default().push(c);
    }
    for (contact, mut attempts) in by_contact {
        attempts.sort_by_key(|c| c["started_at"].as_str().unwrap().to_string());
        for pair in attempts.windows(2) {
            assert!(pair[0]["ended_at"].as_str().unwrap() <= pair[1]["started_at"].as_str().unwrap(), "{contact} dialled twice at once");
        }
    }
    dialler.shutdown().await;
    api.shutdown().await;
}
