//! An AI call the way a deployment runs it: a bot created through the API, `cxb core --api`
//! (a separate process) fetching it at call start, providers that speak Deepgram's and
//! ElevenLabs' protocols on loopback, and the call's result and recording going through the
//! engine's durable outbox to `POST /v1/runtime/results`, where the API lists it.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tungstenite::Message;

mod common;

use common::{caller_turn, hear};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_from_the_api_answers_a_call_and_its_result_reaches_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();

    let (_stt, _tts, mut bot) = common::front_desk();
    bot["idle"] = json!({ "reprompt_after_seconds": 30 });
    bot["inbound"] = json!({ "secrets": { "twilio_auth_token": "twilio-auth-token" } });
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let bot_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();

    let (_child, port) = common::core(dir.path(), &base, &fleet, &["--workers", "1"]);

    // The bot takes inbound calls that Twilio signed with its auth token, and no others.
    let url = format!("ws://127.0.0.1:{port}/ws/{bot_id}");
    let unsigned = tungstenite::client(url.as_str(), TcpStream::connect(("127.0.0.1", port)).unwrap());
    assert!(matches!(unsigned, Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) if r.status() == 401));
    let heard = tokio::task::spawn_blocking(move || {
        use tungstenite::client::IntoClientRequest;
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut request = url.as_str().into_client_request().unwrap();
        let signature = cxb_contract::carrier::twilio_signature("twilio-auth-token", &url, &[]);
        request.headers_mut().insert("X-Twilio-Signature", signature.parse().unwrap());
        let (mut ws, _) = tungstenite::client(request, stream).unwrap();
        let send = |ws: &mut tungstenite::WebSocket<_>, v: Value| ws.send(Message::text(v.to_string())).unwrap();
        send(&mut ws, json!({"event":"connected","protocol":"Call","version":"1.0.0"}));
        send(&mut ws, json!({"event":"start","sequenceNumber":"1","streamSid":"MZ9","start":{"accountSid":"AC9","streamSid":"MZ9","callSid":"CA9","tracks":["inbound"],"customParameters":{"from":"+15550001111","to":"+15550002222"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}));
        let greeting = hear(&mut ws, Duration::from_millis(400), Duration::from_secs(10));
        for (i, f) in caller_turn().iter().enumerate() {
            send(&mut ws, json!({"event":"media","sequenceNumber":(i + 2).to_string(),"streamSid":"MZ9","media":{"track":"inbound","chunk":(i + 1).to_string(),"timestamp":(i * 20).to_string(),"payload":STANDARD.encode(f)}}));
        }
        let answer = hear(&mut ws, Duration::from_millis(400), Duration::from_secs(10));
        send(&mut ws, json!({"event":"stop","sequenceNumber":"99","streamSid":"MZ9","stop":{"accountSid":"AC9","callSid":"CA9"}}));
        (greeting, answer)
    })
    .await
    .unwrap();
    assert_eq!(heard.0.div_ceil(160), ("Hello!".len() * 160).div_ceil(160), "the greeting");
    assert_eq!(heard.1.div_ceil(160), ("Nine to five.".len() * 160).div_ceil(160), "the answer");

    // The outbox delivers the result; the API lists it for the bot's organization.
    let deadline = Instant::now() + Duration::from_secs(20);
    let call = loop {
        let r = http.get(format!("{base}/v1/calls?bot_id={bot_id}")).bearer_auth(&token).send().await.unwrap();
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        if let Some(call) = body["items"].as_array().and_then(|a| a.first()).cloned() {
            break call;
        }
        assert!(Instant::now() < deadline, "the result never reached the API");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(call["id"], "CA9");
    assert_eq!((call["from"].as_str(), call["to"].as_str()), (Some("+15550001111"), Some("+15550002222")));
    assert_eq!(call["end_reason"], "stopped");
    let lines: Vec<(&str, &str)> = call["transcript"].as_array().unwrap().iter().map(|l| (l["role"].as_str().unwrap(), l["text"].as_str().unwrap())).collect();
    assert_eq!(lines, [("bot", "Hello!"), ("caller", "when are you open"), ("bot", "Nine to five.")]);
    let location = call["recording"]["location"].as_str().unwrap();
    let path = location.strip_prefix("file://").unwrap();
    let wav = std::fs::read(path).unwrap();
    assert_eq!((&wav[..4], u16::from_le_bytes([wav[22], wav[23]])), (&b"RIFF"[..], 2));
    assert!(!call.to_string().contains("dg-secret"), "no provider secret in the stored call");
    // The engine's /metrics shows its outbox: what it holds, whether it can write, what it delivered.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    for line in ["cxb_outbox_writable 1", "cxb_outbox_delivered_total 1", "cxb_outbox_pending 0"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(metrics.lines().any(|l| l.starts_with("cxb_outbox_bytes ")));
    let r = http.get(format!("{base}/v1/bots/{bot_id}")).bearer_auth(&token).send().await.unwrap();
    let shown: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(shown["inbound"], json!({"allow_unsigned": false, "secrets_set": ["twilio_auth_token"]}), "the API says who may call");
    api.shutdown().await;
}
