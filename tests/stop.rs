//! A graceful stop of `cxb core`: SIGTERM with 50 live AI calls. The engine stops taking calls,
//! lets the live ones run for `--drain-seconds`, then ends them; every call's result reaches
//! the API and the registry and control socket files are gone.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_ai_calls_and_delivers_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    // No greeting and no transcription: the calls only listen, so 50 of them cost little.
    let bot = json!({
        "name": "Listener",
        "stt": { "provider": "none" },
        "llm": { "provider": "script", "options": { "script": { "fallback": "Yes?" } } },
        "tts": { "provider": "espeak" },
        "recording": false,
        "inbound": { "allow_unsigned": true },
    });
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let bot_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();

    let (mut core, port) = common::core(dir.path(), &base, &fleet, &["--workers", "1", "--drain-seconds", "2"]);
    let pid = core.0.id();
    let calls = tokio::task::spawn_blocking(move || {
        (0..50)
            .map(|i| {
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws/{bot_id}"), stream).unwrap();
                let start = json!({"event":"start","sequenceNumber":"1","streamSid":format!("MZ{i}"),"start":{"accountSid":"AC1","streamSid":format!("MZ{i}"),"callSid":format!("CA-stop-{i}"),"tracks":["inbound"],"customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}});
                ws.send(Message::text(json!({"event":"connected","protocol":"Call","version":"1.0.0"}).to_string())).unwrap();
                ws.send(Message::text(start.to_string())).unwrap();
                ws
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let health = |port: u16| async move {
        let body = reqwest::get(format!("http://127.0.0.1:{port}/health")).await.ok()?.bytes().await.ok()?;
        serde_json::from_slice::<Value>(&body).ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(port).await.is_none_or(|h| h["live_calls"] != 50) {
        assert!(Instant::now() < deadline, "50 calls live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stopped_at = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    // Draining: no new call is taken, the live ones go on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(health(port).await.unwrap()["status"], "draining");
    let refused = tokio::task::spawn_blocking(move || tungstenite::client(format!("ws://127.0.0.1:{port}/ws/echo"), TcpStream::connect(("127.0.0.1", port)).unwrap()).is_err());
    assert!(refused.await.unwrap(), "no new call while draining");

    // After the drain the engine ends the calls (1001) and exits cleanly.
    let closes = tokio::task::spawn_blocking(move || {
        calls
            .into_iter()
            .map(|mut ws| loop {
                match ws.read() {
                    Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
                    Ok(_) => continue,
                    Err(_) => break None,
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(closes.iter().all(|c| *c == Some(1001)), "{closes:?}");
    let status = loop {
        if let Some(status) = core.0.try_wait().unwrap() {
            break status;
        }
        assert!(stopped_at.elapsed() < Duration::from_secs(30), "the engine exits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(stopped_at.elapsed() >= Duration::from_secs(2), "the calls had their drain time");
    assert!(!dir.path().join("slots").exists() && !dir.path().join("ctl.sock").exists(), "shared-memory files removed");

    // Every call's result reached the API before the process ended.
    let r = http.get(format!("{base}/v1/calls?limit=100")).bearer_auth(&token).send().await.unwrap();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 50, "{body}");
    assert!(items.iter().all(|c| c["end_reason"] == "shutdown"), "{body}");
    api.shutdown().await;
}
