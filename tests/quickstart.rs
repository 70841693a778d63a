//! The README's quickstart against `cxb up` (API, engine, dialler and carrier simulator in one
//! process, nothing outside): an offline bot, an assistant, a campaign of 50 contacts from a
//! CSV, started, watched to completion; its statistics add up and the bot was heard.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::Kill;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_campaign_completes_with_cxb_up_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxb"))
        .args(["up", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--sip", "127.0.0.1:0", "--sim-time-scale", "0.3"])
        .args(["--sim-mix", "answer=8,busy=1,no_answer=1", "--sim-seed", "3"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _up = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let line = line.trim().to_string();
            for key in ["API", "password"] {
                if let Some(v) = line.strip_prefix(key).filter(|v| v.starts_with(' ')) {
                    let v = v.split_whitespace().next().unwrap_or_default().to_string();
                    let _ = tx.send((key, v));
                }
            }
        }
    });
    let (mut api, mut password) = (String::new(), String::new());
    while api.is_empty() || password.is_empty() {
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            ("API", v) => api = v,
            (_, v) => password = v,
        }
    }

    let http = cxb_control_plane::http_client(Duration::from_secs(30)).unwrap();
    let login = http.post(format!("{api}/v1/auth/login")).json(&json!({"email": "admin@cxb.local", "password": password})).send().await.unwrap();
    let token = serde_json::from_slice::<Value>(&login.bytes().await.unwrap()).unwrap()["token"].as_str().unwrap().to_string();
    let post = async |path: &str, body: Value| -> Value {
        let r = http.post(format!("{api}{path}")).bearer_auth(&token).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(status < 300, "POST {path}: {status} {v}");
        v
    };
    let get = async |path: &str| -> Value {
        let r = http.get(format!("{api}{path}")).bearer_auth(&token).send().await.unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    };

    // The README's bot, assistant and campaign.
    let bot = post(
        "/v1/bots",
        json!({"name": "Demo", "greeting": "Hello! This is a test call from CX Bridge.", "outbound_greeting": "after_hello",
            "stt": {"provider": "none", "options": {"placeholder": "bye"}}, "tts": {"provider": "espeak"},
            "llm": {"provider": "script", "options": {"script": {"fallback": "Sorry?", "intents": [{"keywords": ["bye"],
                "reply": "Thanks for your time. Goodbye!", "tool": {"name": "end_call", "arguments": {}}}]}}},
            "tools": [{"kind": "end_call"}]}),
    )
    .await;
    let assistant = post("/v1/ai-assistants", json!({"name": "Demo on this host", "kind": "websocket", "bot_id": bot["id"]})).await;
    let campaign = post(
        "/v1/campaigns",
        json!({"name": "First campaign", "routing": {"type": "ai_assistant", "target_id": assistant["id"]},
            "caller_ids": ["+15550100000"], "cac": 10, "cps": 5, "retry": {"max_attempts": 2, "backoff_seconds": 1}}),
    )
    .await;
    let id = campaign["id"].as_str().unwrap().to_string();
    let csv: String = std::iter::once("phone,name\n".to_string()).chain((1..=50).map(|i| format!("+155501200{i:02},Contact {i}\n"))).collect();
    let r = http
        .post(format!("{api}/v1/campaigns/{id}/contacts/import"))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let imported: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(imported["imported"], 50, "{imported}");
    assert_eq!(post(&format!("/v1/campaigns/{id}/start"), json!({})).await["state"], "ACTIVE");

    let start = Instant::now();
    let stats = loop {
        let stats = get(&format!("/v1/campaigns/{id}/stats")).await;
        assert!(stats["live_now"].as_i64().unwrap() <= 10, "CAC exceeded: {stats}");
        if stats["state"] == "COMPLETED" {
            break stats;
        }
        assert!(start.elapsed() < Duration::from_secs(150), "the campaign did not complete: {stats}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("{stats:#}");
    assert_eq!(stats["contacts"]["done"], 50);
    let attempts = stats["attempts"].as_i64().unwrap();
    assert!(attempts >= 50);
    let sum: i64 = ["answered", "busy", "no_answer", "voicemail", "failed", "canceled", "in_progress"].iter().map(|k| stats[k].as_i64().unwrap()).sum();
    assert_eq!(sum, attempts);
    assert!(stats["answered"].as_i64().unwrap() >= 30, "{stats}");
    // The bot's first audio reached the callers, and the engine's results were merged.
    assert!(stats["answer_to_first_audio_ms"]["calls"].as_i64().unwrap() >= 30, "{stats}");
    assert!(stats["answer_to_first_audio_ms"]["p50"].as_i64().is_some());
    let calls = get(&format!("/v1/calls?campaign_id={id}&outcome=completed&limit=5")).await;
    let first = &calls["items"][0];
    assert_eq!(first["bot_id"], bot["id"], "{first}");
    assert!(first["metrics"]["answer_to_first_audio_ms"].as_i64().is_some(), "{first}");
    assert_eq!(first["recording"]["channels"], 2, "{first}");
    assert_eq!(first["metrics"]["providers"]["tts"], "espeak");
    // The greeting waited for the callee's "Hello?" and was not cut off by it (callees who
    // hang up early hear only part); any reply of theirs (the offline STT's "bye") came after.
    let calls = get(&format!("/v1/calls?campaign_id={id}&outcome=completed&limit=100")).await;
    let calls = calls["items"].as_array().unwrap();
    let greeted = calls
        .iter()
        .filter(|c| c["transcript"][0]["role"] == "bot" && c["transcript"][0]["text"].as_str().is_some_and(|t| t.starts_with("Hello!")))
        .filter(|c| c["metrics"]["barge_ins"] == 0)
        .count();
    assert!(greeted * 10 >= calls.len() * 9, "{greeted} of {} calls heard the greeting first, uncut", calls.len());
    assert!(calls.iter().all(|c| c["metrics"]["greeting_wait_ms"].as_i64().is_some_and(|ms| (500..=2_000).contains(&ms))));
    let stt_audio = first["costs"].as_array().unwrap().iter().find(|c| c["item"] == "stt_audio").unwrap();
    assert_eq!(stt_audio["quantity"], 0.0, "the offline `none` STT is not billed: {first}");
}
