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

/// Fake Deepgram and ElevenLabs servers and a bot that hands any caller asking for a person to
/// the Agent Desk ("Let me pass you on."), re-prompting after `idle_seconds` of silence.
fn desk_bot(idle_seconds: u32) -> (DeepgramServer, ElevenLabsServer, Value) {
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
        "idle": { "reprompt_after_seconds": idle_seconds, "max_reprompts": 10 },
        "inbound": { "secrets": { "twilio_auth_token": "twilio-auth-token" } },
    });
    (stt, tts, bot)
}

/// A caller over the Twilio protocol to `bot_id` on the engine at `port`, its stream started
/// (call `CA{n}`, stream `MZ{n}`).
fn twilio_caller(port: u16, bot_id: &str, n: u32) -> tungstenite::WebSocket<TcpStream> {
    use tungstenite::client::IntoClientRequest;
    let url = format!("ws://127.0.0.1:{port}/ws/{bot_id}");
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert("X-Twilio-Signature", cxb_contract::carrier::twilio_signature("twilio-auth-token", &url, &[]).parse().unwrap());
    let (mut ws, _) = tungstenite::client(request, TcpStream::connect(("127.0.0.1", port)).unwrap()).unwrap();
    ws.send(Message::text(json!({"event":"connected","protocol":"Call","version":"1.0.0"}).to_string())).unwrap();
    let start = json!({"event":"start","sequenceNumber":"1","streamSid":format!("MZ{n}"),"start":{"accountSid":format!("AC{n}"),"streamSid":format!("MZ{n}"),"callSid":format!("CA{n}"),"tracks":["inbound"],"customParameters":{"from":"+15550001111","to":"+15550002222"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}});
    ws.send(Message::text(start.to_string())).unwrap();
    ws
}

/// The first open handoff, once the engine's outbox has delivered one (at most 30 s).
async fn first_handoff(http: &reqwest::Client, base: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(format!("{base}/v1/handoffs")).bearer_auth(token).send().await.unwrap();
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        if let Some(h) = body["items"].as_array().and_then(|a| a.first()).cloned() {
            return h;
        }
        assert!(Instant::now() < deadline, "the handoff never reached the API: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_made_while_the_api_is_down_arrives_once_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let (_stt, _tts, bot) = desk_bot(30);
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
    let (mut ws, greeting) = tokio::task::spawn_blocking(move || {
        let mut ws = twilio_caller(port, &bot_id, 7);
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
    let handoff = first_handoff(&http, &base, &token).await;
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
            // The engine takes WebRTC, so the call stayed up for the desk; nobody took it.
            assert_eq!(call["metrics"]["handoffs"], json!([{"reason": "asked for a person", "queued": true, "live": true, "talked_ms": 0}]));
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

/// The microphone of the person on the desk: a 440 Hz tone for 1 s, then 1 s of silence,
/// looped by Chromium; 8 kHz mono WAV.
fn desk_microphone(dir: &std::path::Path) -> std::path::PathBuf {
    let mut samples = Vec::new();
    for i in 0..16_000 {
        let s = if i < 8_000 { ((i as f64) * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 8_000.0 } else { 0.0 };
        samples.extend_from_slice(&(s as i16).to_le_bytes());
    }
    let mut wav = Vec::new();
    for part in [&b"RIFF"[..], &(36 + samples.len() as u32).to_le_bytes(), b"WAVEfmt ", &16u32.to_le_bytes(), &1u16.to_le_bytes(), &1u16.to_le_bytes(), &8000u32.to_le_bytes(), &16000u32.to_le_bytes(), &2u16.to_le_bytes(), &16u16.to_le_bytes(), b"data", &(samples.len() as u32).to_le_bytes(), &samples] {
        wav.extend_from_slice(part);
    }
    let path = dir.join("desk.wav");
    std::fs::write(&path, wav).unwrap();
    path
}

/// A bot hands a phone caller to people and keeps the call up; a person on the Agent Desk, in
/// headless Chromium with a fake microphone, presses "Talk to the caller": the caller hears
/// them and the bot is silent; when they hang up, the bot has the caller again, and the call's
/// result says how long they talked and holds their words marked `agent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_on_the_desk_talks_with_a_live_caller_from_chromium() {
    use common::browser::Browser;
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let (_stt, _tts, bot) = desk_bot(2);
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let bot_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();
    let (_child, port) = common::core(dir.path(), &base, &fleet, &["--workers", "1", "--webrtc-ports", "52100-52199"]);

    // The caller, over the Twilio protocol: asks for a person, then stays on the line, sending
    // silence every 20 ms and noting the loudness of each 20 ms it hears (until told to stop).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, f64)>::new()));
    let caller = {
        let (stop, heard, bot_id) = (stop.clone(), heard.clone(), bot_id.clone());
        std::thread::spawn(move || {
            let mut ws = twilio_caller(port, &bot_id, 8);
            ws.get_ref().set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let speech = common::caller_turn();
            let begin = Instant::now();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = begin + Duration::from_millis(20 * i as u64);
                if Instant::now() >= due {
                    // The question after 2 s of the greeting.
                    let frame = i.checked_sub(100).and_then(|j| speech.get(j).cloned()).unwrap_or_else(|| vec![0xFF; 160]);
                    let media = json!({"event":"media","sequenceNumber":(i + 2).to_string(),"streamSid":"MZ8","media":{"track":"inbound","chunk":(i + 1).to_string(),"timestamp":(i * 20).to_string(),"payload":STANDARD.encode(&frame)}});
                    ws.send(Message::text(media.to_string())).unwrap();
                    i += 1;
                }
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v["event"] == "media" {
                            let bytes = STANDARD.decode(v["media"]["payload"].as_str().unwrap()).unwrap();
                            let energy = bytes.iter().map(|&b| f64::from(cxb_codecs::g711::decode_mulaw(b)).powi(2)).sum::<f64>() / bytes.len().max(1) as f64;
                            heard.lock().unwrap().push((Instant::now(), energy.sqrt()));
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => panic!("the call broke: {e}"),
                }
            }
            ws.send(Message::text(json!({"event":"stop","sequenceNumber":"9999","streamSid":"MZ8","stop":{"accountSid":"AC8","callSid":"CA8"}}).to_string())).unwrap();
        })
    };
    let loud_since = |t: Instant| heard.lock().unwrap().iter().filter(|(at, rms)| *at >= t && *rms > 1_000.0).count();

    // The handoff reaches the desk, live.
    let handoff = first_handoff(&http, &base, &token).await;
    assert_eq!(handoff["live"], true, "{handoff}");
    let id = handoff["id"].as_str().unwrap().to_string();

    // The person signs in to the console and takes the call.
    let browser = Browser::start(dir.path(), Some(&desk_microphone(dir.path()))).await;
    browser.go(&format!("{base}/desk/{id}")).await;
    browser.until("the sign-in page", Duration::from_secs(20), "return !!document.querySelector('#email')").await;
    browser.type_into("#email", "a@acme.test").await;
    browser.type_into("#password", "correct horse battery").await;
    browser.run("document.querySelector('button[type=submit]').click(); return true;").await;
    browser.until("the handoff's page", Duration::from_secs(10), "return !!document.querySelector('#take-call')").await;
    // The bot is still talking to the caller now and then (its re-prompts).
    browser.run("document.querySelector('#take-call').click(); return true;").await;
    let state = browser.until("on the call", Duration::from_secs(15), "const s = document.querySelector('#takeover').dataset.state; return (s === 'live' || s === 'error') && s;").await;
    assert_eq!(state, "live", "{}: {}", browser.run("return document.querySelector('#take-state').textContent;").await, browser.diagnostics().await);
    let joined = Instant::now();
    // The page while the person talks, for the README (1280×800, as the console's other pages).
    browser.screenshot(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console/takeover.png")).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The person's tone reached the caller: a second of it in every two.
    let loud = loud_since(joined + Duration::from_secs(1));
    assert!(loud >= 50, "the caller hears the person: {loud} loud frames in 5 s");
    browser.run("document.querySelector('#leave-call').click(); return true;").await;
    let left = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Back with the bot: its re-prompt ("Are you still there?") is voice, not the tone's rhythm.
    assert!(loud_since(left + Duration::from_millis(500)) > 0, "the bot has the caller again and speaks");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    caller.join().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let call = loop {
        let r = http.get(format!("{base}/v1/calls/CA8")).bearer_auth(&token).send().await.unwrap();
        if r.status() == 200 {
            break serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap();
        }
        assert!(Instant::now() < deadline, "the result never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let talked = call["metrics"]["handoffs"][0]["talked_ms"].as_u64().unwrap_or(0);
    assert!((4_000..=12_000).contains(&talked), "the person talked about 6 s: {talked} ms; {call}");
    let agent_lines = call["transcript"].as_array().unwrap().iter().filter(|l| l["role"] == "agent").count();
    assert!(agent_lines >= 1, "the person's words are in the transcript, marked agent: {call}");
    let h: Value = serde_json::from_slice(&http.get(format!("{base}/v1/handoffs/{id}")).bearer_auth(&token).send().await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!((h["live"].as_bool(), h["status"].as_str(), h["claimed_by"].as_str()), (Some(false), Some("claimed"), Some("a@acme.test")));
    drop(browser);
    api.shutdown().await;
}
