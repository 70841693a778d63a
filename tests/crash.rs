//! `kill -9` of an engine with live calls: the results of calls that had ended (durable in the
//! outbox before their slots were freed) survive the crash and reach the API exactly once when
//! the engine starts again on the same data directory.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

mod common;

type Ws = tungstenite::WebSocket<TcpStream>;

fn open_call(port: u16, bot: &str, sid: &str) -> Ws {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws/{bot}"), stream).unwrap();
    let start = json!({"event":"start","sequenceNumber":"1","streamSid":sid,"start":{"accountSid":"AC1","streamSid":sid,"callSid":sid,"tracks":["inbound"],"customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}});
    ws.send(Message::text(json!({"event":"connected","protocol":"Call","version":"1.0.0"}).to_string())).unwrap();
    ws.send(Message::text(start.to_string())).unwrap();
    ws
}

async fn live_calls(port: u16) -> Option<u64> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/health")).await.ok()?.bytes().await.ok()?;
    serde_json::from_slice::<Value>(&body).ok()?["live_calls"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_ended_calls_survive_a_kill_9_and_arrive_once() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let bot = json!({"name": "Listener", "stt": {"provider": "none"}, "tts": {"provider": "espeak"},
        "llm": {"provider": "script", "options": {"script": {"fallback": "Yes?"}}}, "recording": false, "inbound": {"allow_unsigned": true}});
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap();
    let bot_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();

    let engine_dir = dir.path().join("engine");
    std::fs::create_dir_all(&engine_dir).unwrap();
    let (mut core, port) = common::core(&engine_dir, &base, &fleet, &["--workers", "1"]);
    let b = bot_id.clone();
    let (ended, live) = tokio::task::spawn_blocking(move || {
        let ended: Vec<Ws> = (0..10).map(|i| open_call(port, &b, &format!("CA-ended-{i}"))).collect();
        let live: Vec<Ws> = (0..3).map(|i| open_call(port, &b, &format!("CA-live-{i}"))).collect();
        (ended, live)
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_calls(port).await != Some(13) {
        assert!(Instant::now() < deadline, "13 calls live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ten calls end; their slots are freed only once their results are durable.
    let ended = tokio::task::spawn_blocking(move || {
        ended
            .into_iter()
            .map(|mut ws| {
                let _ = ws.send(Message::text(json!({"event":"stop","sequenceNumber":"9","stop":{"accountSid":"AC1","callSid":"x"}}).to_string()));
                ws
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    while live_calls(port).await != Some(3) {
        assert!(Instant::now() < deadline, "ten calls ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    core.0.kill().unwrap(); // SIGKILL: no drain, no goodbye
    core.0.wait().unwrap();
    drop((ended, live));

    // The same data directory on a new engine process: whatever was not delivered goes now.
    let (_core, _port) = common::core(&engine_dir, &base, &fleet, &["--workers", "1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let ids = loop {
        let r = http.get(format!("{base}/v1/calls?limit=100")).bearer_auth(&token).send().await.unwrap();
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let ids: Vec<String> = body["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
        if ids.len() >= 10 || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut ended_ids: Vec<&String> = ids.iter().filter(|id| id.starts_with("CA-ended-")).collect();
    ended_ids.sort();
    ended_ids.dedup();
    assert_eq!(ended_ids.len(), 10, "every ended call's result, once: {ids:?}");
    assert_eq!(ids.len(), 10, "nothing twice, and the killed live calls left no result: {ids:?}");
    api.shutdown().await;
}
