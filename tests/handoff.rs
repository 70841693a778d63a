//! A bot hands a caller to people: `cxb core --api` (its own process) runs the call, the
//! bot's `handoff` tool puts the handoff in the engine's handoff outbox while the API is down,
//! and when the API is back the handoff arrives once, waiting on the Agent Desk with the
//! transcript up to it, and a `handoff.created` webhook is queued.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cxb_pipeline::testkit::deepgram::{DeepgramConfig, DeepgramServer, Reply, Step};
use cxb_pipeline::testkit::elevenlabs::{ElevenLabsConfig, ElevenLabsServer};
use serde_json::{Value, json};
use tungstenite::Message;

mod common;

use common::{caller_turn, hear};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_made_while_the_api_is_down_arrives_once_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let stt = DeepgramServer::start(DeepgramConfig {
        script: vec![Step::on_finalize(Reply::Final { text: "I want to talk to a person".into(), speech_final: true })],
        ..DeepgramConfig::default()
    })
    .unwrap();
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: 160, ..ElevenLabsConfig::default() }).unwrap();
    let bot = json!({
        "name": "Front desk",
        "greeting": "Hello!",
        "stt": { "provider": "deepgram", "base_url": stt.url(), "secrets": { "api_key": "dg-secret" } },
        "llm": { "provider": "script", "options": { "script": { "intents": [{
            "name": "person", "keywords": ["person"], "reply": "Let me pass you on.",
            "tool": { "name": "handoff", "arguments": { "reason": "asked for a person", "summary": "The caller wants to talk to someone." } },
            "after_tool": "Someone will call you back."
        }] } } },
        "tts": { "provider": "elevenlabs", "base_url": tts.url(), "secrets": { "api_key": "xi-secret" } },
        "voice": "v1",
        "tools": [{ "kind": "handoff" }],
        "idle": { "reprompt_after_seconds": 30 },
        "inbound": { "secrets": { "twilio_auth_token": "twilio-auth-token" } },
    });
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let hook = http.post(format!("{base}/v1/webhooks")).bearer_auth(&token).json(&json!({"name": "crm", "url": "http://127.0.0.1:9/h", "events": ["handoff.created"]})).send().await.unwrap();
    let hook: Value = serde_json::from_slice(&hook.bytes().await.unwrap()).unwrap();
    let bot_id = {
        let r = http.get(format!("{base}/v1/bots")).bearer_auth(&token).send().await.unwrap();
        serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["items"][0]["id"].as_str().unwrap().to_string()
    };
    let (_child, port) = common::core(dir.path(), &base, &fleet, &["--workers", "1"]);
    let listen = api.local_addr();

    // The call starts (the engine reads the bot from the API), then the API goes away.
    let url = format!("ws://127.0.0.1:{port}/ws/{bot_id}");
    let (mut ws, greeting) = tokio::task::spawn_blocking(move || {
        use tungstenite::client::IntoClientRequest;
        let mut request = url.as_str().into_client_request().unwrap();
        request.headers_mut().insert("X-Twilio-Signature", cxb_contract::carrier::twilio_signature("twilio-auth-token", &url, &[]).parse().unwrap());
        let (mut ws, _) = tungstenite::client(request, TcpStream::connect(("127.0.0.1", port)).unwrap()).unwrap();
        ws.send(Message::text(json!({"event":"connected","protocol":"Call","version":"1.0.0"}).to_string())).unwrap();
        let start = json!({"event":"start","sequenceNumber":"1","streamSid":"MZ7","start":{"accountSid":"AC7","streamSid":"MZ7","callSid":"CA7","tracks":["inbound"],"customParameters":{"from":"+15550001111","to":"+15550002222"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}});
        ws.send(Message::text(start.to_string())).unwrap();
        let greeting = hear(&mut ws, Duration::from_millis(400), Duration::from_secs(10));
        (ws, greeting)
    })
    .await
    .unwrap();
    assert!(greeting > 0, "the greeting");
    api.shutdown().await;

    let answer = tokio::task::spawn_blocking(move || {
        for (i, f) in caller_turn().iter().enumerate() {
            let media = json!({"event":"media","sequenceNumber":(i + 2).to_string(),"streamSid":"MZ7","media":{"track":"inbound","chunk":(i + 1).to_string(),"timestamp":(i * 20).to_string(),"payload":STANDARD.encode(f)}});
            ws.send(Message::text(media.to_string())).unwrap();
        }
        let answer = hear(&mut ws, Duration::from_millis(600), Duration::from_secs(10));
        ws.send(Message::text(json!({"event":"stop","sequenceNumber":"99","streamSid":"MZ7","stop":{"accountSid":"AC7","callSid":"CA7"}}).to_string())).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(answer >= "Let me pass you on.".len() * 160, "the bot told the caller ({answer} bytes)");
    let queued = std::fs::read_dir(dir.path().join("handoffs")).unwrap().count();
    assert!(queued > 0, "the handoff waits in its own outbox folder");

    // The API comes back on the same address; the outbox delivers.
    let mut config = cxb_control_plane::ApiConfig::new(listen, format!("sqlite://{}/cxb.db", dir.path().display()));
    config.egress = cxb_contract::egress::EgressPolicy::with_loopback();
    let api = cxb_control_plane::ApiServer::start(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let handoff = loop {
        let r = http.get(format!("{base}/v1/handoffs")).bearer_auth(&token).send().await.unwrap();
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        if let Some(h) = body["items"].as_array().and_then(|a| a.first()).cloned() {
            break h;
        }
        assert!(Instant::now() < deadline, "the handoff never reached the API: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((handoff["id"].as_str(), handoff["call_id"].as_str()), (Some("CA7-h1"), Some("CA7")));
    assert_eq!((handoff["caller"].as_str(), handoff["status"].as_str()), (Some("+15550001111"), Some("waiting")));
    assert_eq!(handoff["reason"], "asked for a person");
    assert_eq!(handoff["summary"], "The caller wants to talk to someone.");
    let said: Vec<&str> = handoff["transcript"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert!(said.contains(&"I want to talk to a person"), "the transcript so far: {said:?}");

    // Once: the result comes too, and still one handoff and one webhook delivery.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(format!("{base}/v1/calls/CA7")).bearer_auth(&token).send().await.unwrap();
        if r.status() == 200 {
            let call: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            assert_eq!(call["metrics"]["handoffs"], json!([{"reason": "asked for a person", "queued": true}]));
            break;
        }
        assert!(Instant::now() < deadline, "the result never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all: Value = serde_json::from_slice(&http.get(format!("{base}/v1/handoffs?status=waiting")).bearer_auth(&token).send().await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    let id = hook["id"].as_str().unwrap();
    let deliveries: Value = serde_json::from_slice(&http.get(format!("{base}/v1/webhooks/{id}/deliveries")).bearer_auth(&token).send().await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(deliveries["items"].as_array().unwrap().len(), 1, "one handoff.created");
    api.shutdown().await;
}
