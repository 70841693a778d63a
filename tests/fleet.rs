//! The fleet path end to end: `cxb core --api … --fleet-token …` (a separate process)
//! heartbeats into a real API; `POST /v1/fleet/reserve` promises one of its slots; the engine
//! learns of it from the heartbeat answer, holds it, confirms it; and a call presenting the
//! token takes the held slot.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cxb_control_plane::clock::{Clock, SystemClock};
use cxb_control_plane::{ApiConfig, ApiServer, admin};
use serde_json::Value;

mod common;

async fn hosts(http: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
    let r = http.get(format!("{base}/v1/fleet/hosts")).bearer_auth(token).send().await.unwrap();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Polls `/v1/fleet/hosts` until `ok` holds for the single host (the engine heartbeats every
/// 2 s), for at most 20 s.
async fn wait_for(http: &reqwest::Client, base: &str, token: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hs = hosts(http, base, token).await;
        if let Some(h) = hs.first().filter(|h| ok(h)) {
            return h.clone();
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {hs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_heartbeats_holds_a_fleet_reservation_and_a_call_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(ApiConfig::new("127.0.0.1:0".parse().unwrap(), format!("sqlite://{}/cxb.db", dir.path().display()))).await.unwrap();
    let base = format!("http://{}", api.local_addr());
    let token = admin::create_fleet_token(&api.state().db, "test", SystemClock.now_ms()).await.unwrap();

    let (child, port) = common::core(dir.path(), &base, &token, &["--workers", "2", "--slots-per-worker", "3"]);

    let http = reqwest::Client::new();
    let host = wait_for(&http, &base, &token, "the first heartbeat", |h| h["slots_total"] == 6).await;
    assert_eq!(host["address"], format!("ws://127.0.0.1:{port}"));
    assert_eq!((host["workers"].as_i64(), host["slots_free"].as_i64()), (Some(2), Some(6)));

    // Reservations are a dialler's to make: an engine's token may not.
    let refused = http.post(format!("{base}/v1/fleet/reserve")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let dialler = admin::create_scoped_fleet_token(&api.state().db, "dialler", cxb_control_plane::auth::FleetScope::Dialler, None, SystemClock.now_ms()).await.unwrap();
    let r = http.post(format!("{base}/v1/fleet/reserve")).bearer_auth(&dialler).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let reserved: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let reservation = reserved["token"].as_str().unwrap().to_string();
    // Promised at once (pending), then held by the engine and confirmed: 5 free, none pending.
    let host = wait_for(&http, &base, &token, "the engine to hold the reservation", |h| h["slots_free"] == 5 && h["pending_reservations"] == 0).await;
    assert_eq!(host["available"], 5);

    // A call presenting the token takes the held slot: still 5 free, one live call.
    let url = format!("ws://127.0.0.1:{port}/ws/echo?reservation={reservation}");
    let (socket, response) = tokio::task::spawn_blocking(move || tungstenite::connect(url)).await.unwrap().unwrap();
    assert_eq!(response.status().as_u16(), 101);
    let host = wait_for(&http, &base, &token, "the call to use the held slot", |h| h["live_calls"] == 1).await;
    assert_eq!(host["slots_free"], 5);
    drop(socket);
    drop(child);
    api.shutdown().await;
}
