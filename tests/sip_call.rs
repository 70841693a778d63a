//! A SIP trunk's call the way a deployment runs it: numbers created through the API
//! (`/v1/phone-numbers`), `cxb core --api --sip` resolving the dialled number at call time,
//! baresip as the caller (from loopback, or answering the engine's digest challenge), the
//! bot's providers speaking Deepgram's and ElevenLabs' protocols on loopback, and the call's
//! result reaching `GET /v1/calls` with transport `sip`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
#[path = "../engine/tests/common/baresip.rs"]
mod baresip;

use baresip::{Baresip, free_port};

/// What the caller says: a second of silence (the greeting plays), the speech fixture, then
/// silence long enough to end the turn and hear the answer. baresip hangs up when it ends.
fn caller_audio() -> Vec<i16> {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/codecs/tests/fixtures/speech-8k.s16")).unwrap();
    let speech: Vec<i16> = pcm.chunks_exact(2).take(9_600).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut audio = vec![0i16; 8_000];
    audio.extend(speech);
    audio.extend(std::iter::repeat_n(0, 8_000 * 4));
    audio
}

async fn calls(http: &reqwest::Client, base: &str, token: &str, bot: &str) -> Vec<Value> {
    let r = http.get(format!("{base}/v1/calls?bot_id={bot}")).bearer_auth(token).send().await.unwrap();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_calls_a_number_its_bot_answers_and_the_result_says_sip() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let (_stt, _tts, bot) = common::front_desk();
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap();
    let bot_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();
    for number in [
        json!({"number": "+15550100", "bot_id": bot_id, "allowed_sources": ["127.0.0.0/8"]}),
        json!({"number": "+15550111", "bot_id": bot_id, "allowed_sources": ["192.0.2.0/24"]}),
        json!({"number": "+15550122", "bot_id": "echo", "digest_username": "phone", "secrets": {"digest_password": "trunk-password-1"}}),
    ] {
        let r = http.post(format!("{base}/v1/phone-numbers")).bearer_auth(&token).json(&number).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    }
    let sip_port = free_port().to_string();
    let sip = format!("127.0.0.1:{sip_port}");
    let (_core, _port) = common::core(dir.path(), &base, &fleet, &["--workers", "1", "--sip", &sip, "--rtp-ports", "41000-41100"]);

    // From loopback to +15550100: the bot greets, hears the caller, answers; baresip hangs up
    // when its audio ends.
    let audio = caller_audio();
    let heard = tokio::task::spawn_blocking({
        let sip = sip.clone();
        move || {
            let mut phone = Baresip::start(&audio, "");
            phone.command("dial", &format!("sip:+15550100@{sip}"));
            assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
            assert!(phone.event("CALL_CLOSED", Duration::from_secs(15)).is_some(), "{}", phone.log());
            phone.heard()
        }
    })
    .await
    .unwrap();
    // The speech doubles' audio is short: "Hello!" and "Nine to five." at 160 bytes a
    // character are about 100 ms of 16 kHz PCM, five 20 ms frames with the resampler's edges.
    let loud = heard.chunks(160).filter(|f| f.iter().any(|s| s.unsigned_abs() > 1_000)).count();
    assert!(loud >= 4, "baresip heard the bot: {loud} loud frames");
    let deadline = Instant::now() + Duration::from_secs(20);
    let call = loop {
        if let Some(call) = calls(&http, &base, &token, &bot_id).await.first().cloned() {
            break call;
        }
        assert!(Instant::now() < deadline, "the result never reached the API: {}", std::fs::read_to_string(dir.path().join("core.log")).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((call["from"].as_str(), call["to"].as_str()), (Some("phone"), Some("+15550100")), "{call}");
    assert_eq!(call["metrics"]["transport"], "sip", "{call}");
    assert_eq!(call["end_reason"], "stopped", "the caller's BYE");
    let lines: Vec<(&str, &str)> = call["transcript"].as_array().unwrap().iter().map(|l| (l["role"].as_str().unwrap(), l["text"].as_str().unwrap())).collect();
    assert_eq!(lines, [("bot", "Hello!"), ("caller", "when are you open"), ("bot", "Nine to five.")]);

    // The trunk's rules: a number whose sources exclude loopback refuses (403), an unknown one
    // is not found (404), and one with digest credentials challenges (401) and lets in a caller
    // that answers with them.
    let refusals = tokio::task::spawn_blocking({
        let sip = sip.clone();
        move || {
            let mut refusals = Vec::new();
            for (number, params) in [("+15550111", ""), ("+15559999", ""), ("+15550122", ""), ("+15550122", ";auth_pass=wrong-password")] {
                let mut phone = Baresip::start(&baresip::tone(5), params);
                phone.command("dial", &format!("sip:{number}@{sip}"));
                let closed = phone.event("CALL_CLOSED", Duration::from_secs(10)).unwrap_or_default();
                refusals.push(closed["param"].as_str().unwrap_or_default().to_string());
            }
            let mut phone = Baresip::start(&baresip::tone(5), ";auth_pass=trunk-password-1");
            phone.command("dial", &format!("sip:+15550122@{sip}"));
            let established = phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some();
            phone.command("hangup", "");
            (refusals, established, phone.log())
        }
    })
    .await
    .unwrap();
    let (refusals, established, log) = refusals;
    for (said, expected) in refusals.iter().zip(["403", "404", "401", "401"]) {
        assert!(said.contains(expected), "{expected} in {refusals:?}");
    }
    assert!(established, "the right password lets the call in: {log}");

    // A bot that transfers: the engine refers the caller (REFER) and records the answer.
    let (_stt2, _tts2, mut desk) = common::front_desk();
    desk["name"] = json!("Transfer desk");
    desk["llm"]["options"]["script"]["intents"] = json!([{ "name": "hours", "keywords": ["open"], "reply": "Connecting you.", "tool": { "name": "transfer_call", "arguments": {} } }]);
    desk["tools"] = json!([{ "kind": "transfer_call", "transfer_to": "+15550177" }]);
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&desk).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let desk_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();
    let number = json!({"number": "+15550133", "bot_id": desk_id, "allowed_sources": ["127.0.0.1"]});
    assert_eq!(http.post(format!("{base}/v1/phone-numbers")).bearer_auth(&token).json(&number).send().await.unwrap().status().as_u16(), 201);
    let audio = caller_audio();
    let sip_for_transfer = sip.clone();
    tokio::task::spawn_blocking(move || {
        let mut phone = Baresip::start(&audio, "");
        phone.command("dial", &format!("sip:+15550133@{sip_for_transfer}"));
        assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
        assert!(phone.event("CALL_CLOSED", Duration::from_secs(15)).is_some(), "{}", phone.log());
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let call = loop {
        if let Some(call) = calls(&http, &base, &token, &desk_id).await.first().cloned() {
            break call;
        }
        assert!(Instant::now() < deadline, "the result never reached the API");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(call["end_reason"], "transferred", "{call}");
    assert_eq!(call["metrics"]["transfer"], json!({"destination": "+15550177", "method": "refer", "status": 202, "accepted": true}), "{call}");

    // A bot that presses keys (an IVR's menu): they reach the phone as RFC 4733 events.
    let (_stt3, _tts3, mut ivr) = common::front_desk();
    ivr["name"] = json!("Menu walker");
    ivr["llm"]["options"]["script"]["intents"] = json!([{ "name": "hours", "keywords": ["open"], "reply": "One moment.", "tool": { "name": "send_dtmf", "arguments": { "digits": "42#" } } }]);
    ivr["tools"] = json!([{ "kind": "send_dtmf" }]);
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&ivr).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let ivr_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();
    let number = json!({"number": "+15550144", "bot_id": ivr_id, "allowed_sources": ["127.0.0.1"]});
    assert_eq!(http.post(format!("{base}/v1/phone-numbers")).bearer_auth(&token).json(&number).send().await.unwrap().status().as_u16(), 201);
    let audio = caller_audio();
    let keys = tokio::task::spawn_blocking(move || {
        let mut phone = Baresip::start(&audio, "");
        phone.command("dial", &format!("sip:+15550144@{sip}"));
        assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
        let mut keys = String::new();
        while let Some(e) = phone.event("CALL_DTMF_START", Duration::from_secs(8)) {
            keys.push_str(e["param"].as_str().unwrap_or("?"));
            if keys.len() == 3 {
                break;
            }
        }
        keys
    })
    .await
    .unwrap();
    assert_eq!(keys, "42#", "the bot's keys, in order");
    api.shutdown().await;
}
