//! The web call widget in a real browser: headless Chromium (Debian's, driven by chromedriver
//! over WebDriver) opens a page on another origin that embeds `/widget.js` with one script
//! tag, and presses the call button. Its microphone is a WAV file of recorded speech
//! (`--use-file-for-fake-audio-capture`); the bot comes from the API, runs in `cxb core` (a
//! separate process) and speaks through local servers that speak Deepgram's and ElevenLabs'
//! protocols. The page records the bot's remote track through WebAudio; the test checks the
//! greeting's energy and length, a turn and its answer in the widget's live transcript, the
//! caller speaking over a long answer (barge-in), the hang-up, and the call's record in
//! `GET /v1/calls`. Refusals: a page on an origin the bot does not allow, a wrong key, too
//! many sessions from one address, and a call token used twice.

#![allow(clippy::unwrap_used)]

mod common;

use common::browser::{Browser, website};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cxb_pipeline::testkit::deepgram::{DeepgramConfig, DeepgramServer, Reply, Step};
use cxb_pipeline::testkit::elevenlabs::{ElevenLabsConfig, ElevenLabsServer};
use serde_json::{Value, json};

fn page(api: &str, bot: &str, key: &str) -> String {
    format!("<!doctype html><html><head><title>Shop</title></head><body><h1>Shop</h1><script src=\"{api}/widget.js\" data-bot=\"{bot}\" data-key=\"{key}\"></script></body></html>")
}

/// The microphone: 3 s of silence, then the recorded question (1.2 s) and silence, looped by
/// Chromium every 5 s; 8 kHz mono WAV.
fn microphone(dir: &Path) -> PathBuf {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/codecs/tests/fixtures/speech-8k.s16")).unwrap();
    let mut samples = vec![0u8; 8000 * 2 * 3];
    samples.extend_from_slice(&pcm[..(9600 * 2).min(pcm.len())]);
    samples.resize(8000 * 2 * 5, 0);
    let mut wav = Vec::with_capacity(44 + samples.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    let path = dir.join("caller.wav");
    std::fs::write(&path, wav).unwrap();
    path
}

/// Records the widget's remote track: the RMS of every 50 ms into `window.cxbLevels`.
const RECORD: &str = r#"
    const w = window.cxbWidgets[0];
    if (!w.audio || !w.audio.srcObject) return false;
    if (window.cxbLevels) return true;
    const ctx = new AudioContext();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    ctx.createMediaStreamSource(w.audio.srcObject).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    window.cxbLevels = [];
    setInterval(() => {
        analyser.getFloatTimeDomainData(buf);
        let sum = 0;
        for (const x of buf) sum += x * x;
        window.cxbLevels.push(Math.sqrt(sum / buf.length));
    }, 50);
    return true;
"#;

const LONG_ANSWER: &str = "We are open from nine in the morning to five in the evening on weekdays, from ten to four on Saturdays, and we are closed on Sundays and on public holidays, when the shop stays shut all day long.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_calls_a_bot_from_a_web_page_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let stt = DeepgramServer::start(DeepgramConfig {
        script: vec![
            Step::on_finalize(Reply::Final { text: "when are you open".into(), speech_final: true }),
            Step::on_finalize(Reply::Final { text: "thank you".into(), speech_final: true }),
        ],
        ..DeepgramConfig::default()
    })
    .unwrap();
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: 320, ..ElevenLabsConfig::default() }).unwrap();
    let bot = json!({
        "name": "Front desk",
        "greeting": "Hello, thanks for calling the shop.",
        "stt": { "provider": "deepgram", "base_url": stt.url(), "secrets": { "api_key": "dg-secret" } },
        "llm": { "provider": "script", "options": { "script": {
            "intents": [
                { "name": "hours", "keywords": ["open"], "reply": LONG_ANSWER },
                { "name": "thanks", "keywords": ["thank"], "reply": "You are welcome." }
            ],
            "fallback": "Sorry?"
        } } },
        "tts": { "provider": "elevenlabs", "base_url": tts.url(), "secrets": { "api_key": "xi-secret" } },
        "voice": "v1",
        "idle": { "reprompt_after_seconds": 60 },
        "widget": { "enabled": true, "allowed_origins": [], "button_text": "Call the shop" },
    });
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let created: Value = r.json().await.unwrap();
    let bot_id = created["id"].as_str().unwrap().to_string();
    let key = created["widget"]["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("wk_"), "a key is made when the widget is enabled: {created}");

    // The shop's page, on an origin the bot allows; another page on one it does not.
    let shop = website(page(&base, &bot_id, &key)).await;
    let elsewhere = website(page(&base, &bot_id, &key)).await;
    let patch = json!({ "widget": { "enabled": true, "key": key, "allowed_origins": [shop], "button_text": "Call the shop" } });
    let r = http.patch(format!("{base}/v1/bots/{bot_id}")).bearer_auth(&token).json(&patch).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    let (_core, _port) = common::core(dir.path(), &base, &fleet, &["--workers", "1", "--webrtc-ports", "52000-52099"]);
    // The engine is in the fleet once it has heartbeated.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hosts: Value = http.get(format!("{base}/v1/fleet/hosts")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if hosts["items"].as_array().is_some_and(|h| !h.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the engine never joined the fleet: {hosts}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let browser = Browser::start(dir.path(), Some(&microphone(dir.path()))).await;
    browser.go(&shop).await;
    let label = browser.until("the call button", Duration::from_secs(10), "const b = document.querySelector('.cxb-call'); return b && b.textContent;").await;
    assert_eq!(label, "Call the shop", "the button says what the bot's widget settings say");
    browser.run("document.querySelector('.cxb-call').click(); return true;").await;
    let state = browser.until("connected", Duration::from_secs(15), "const s = document.querySelector('.cxb-widget').dataset.state; return s !== 'idle' && s !== 'connecting' && s;").await;
    assert!(state == "listening" || state == "speaking", "{state}: {}", browser.diagnostics().await);
    browser.until("the remote track", Duration::from_secs(5), RECORD).await;

    // The greeting, then the question (3 s into the microphone's loop) and the long answer,
    // cut short when the question comes round again at 8 s; then "thank you" and its answer.
    let transcript = browser
        .until(
            "the transcript",
            Duration::from_secs(30),
            "const lines = [...document.querySelectorAll('.cxb-transcript .cxb-line')].map(l => [l.dataset.role, l.textContent]); \
             return lines.some(l => l[1].includes('You are welcome')) && lines;",
        )
        .await;
    let lines: Vec<(String, String)> = transcript.as_array().unwrap().iter().map(|l| (l[0].as_str().unwrap().to_string(), l[1].as_str().unwrap().to_string())).collect();
    let said = |role: &str, text: &str| lines.iter().any(|(r, t)| r == role && t.contains(text));
    assert!(said("bot", "Hello, thanks for calling the shop."), "{lines:?}");
    assert!(said("caller", "when are you open"), "{lines:?}");
    assert!(said("bot", "We are open"), "{lines:?}");
    assert!(said("caller", "thank you"), "{lines:?}");

    // What the page heard, in 50 ms windows: stretches of the bot's voice apart by at least
    // half a second of quiet. The first is the greeting (its energy and length), the second
    // the long answer, cut short by the caller: shorter than the whole answer at the
    // greeting's pace.
    let levels: Vec<f64> = browser.run("return window.cxbLevels;").await.as_array().unwrap().iter().filter_map(Value::as_f64).collect();
    let mut stretches: Vec<(usize, usize)> = Vec::new();
    for (i, _) in levels.iter().enumerate().filter(|(_, l)| **l > 0.01) {
        match stretches.last_mut() {
            Some((_, end)) if i - *end <= 10 => *end = i,
            _ => stretches.push((i, i)),
        }
    }
    let shown: Vec<i64> = levels.iter().map(|l| (l * 1000.0).round() as i64).collect();
    assert!(stretches.len() >= 3, "greeting, answer, welcome: {stretches:?} in {shown:?}");
    let ms = |(a, b): (usize, usize)| (b - a + 1) as f64 * 50.0;
    let greeting = stretches[0];
    assert!((400.0..=3_000.0).contains(&ms(greeting)), "the greeting lasts {} ms: {shown:?}", ms(greeting));
    let loud: Vec<f64> = levels[greeting.0..=greeting.1].iter().copied().filter(|l| *l > 0.01).collect();
    let energy = loud.iter().sum::<f64>() / loud.len() as f64;
    assert!(energy > 0.015, "the greeting is the bot's voice, not noise: mean rms {energy:.3}");
    let per_char = ms(greeting) / "Hello, thanks for calling the shop.".len() as f64;
    let whole = per_char * LONG_ANSWER.len() as f64;
    assert!(ms(stretches[1]) < 0.8 * whole, "the answer stopped when the caller spoke: {} ms of {whole:.0}", ms(stretches[1]));

    // Hang up from the page.
    browser.run("document.querySelector('.cxb-hangup').click(); return true;").await;
    browser.until("ended", Duration::from_secs(5), "return document.querySelector('.cxb-widget').dataset.state === 'ended';").await;
    let call_id = browser.run("return window.cxbWidgets[0].callId;").await.as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        let r = http.get(format!("{base}/v1/calls/{call_id}")).bearer_auth(&token).send().await.unwrap();
        if r.status().as_u16() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the call's result never reached the API");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record["metrics"]["transport"], "webrtc", "{record}");
    assert_eq!(record["bot_id"], bot_id.as_str());
    assert_eq!(record["end_reason"], "hangup", "{record}");
    assert!(record["metrics"]["barge_ins"].as_u64().is_some_and(|n| n >= 1), "the caller spoke over the long answer: {record}");
    let cut = record["transcript"].as_array().unwrap().iter().find(|l| l["interrupted"] == true).cloned().unwrap_or_default();
    assert!(cut["text"].as_str().is_some_and(|t| t.len() < LONG_ANSWER.len()), "the answer was cut short where the caller spoke: {record}");
    let listed: Value = http.get(format!("{base}/v1/calls")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert!(listed["items"].as_array().unwrap().iter().any(|c| c["id"] == call_id.as_str()), "{listed}");

    // A page the bot does not allow gets nothing.
    browser.go(&elsewhere).await;
    browser.until("the call button", Duration::from_secs(10), "return !!document.querySelector('.cxb-call');").await;
    browser.run("document.querySelector('.cxb-call').click(); return true;").await;
    browser.until("refused", Duration::from_secs(10), "return document.querySelector('.cxb-widget').dataset.state === 'error';").await;
    let said = browser.run("return document.querySelector('.cxb-widget').textContent;").await;
    assert!(said.as_str().is_some_and(|t| t.contains("not allowed")), "{said}");
    drop(browser);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_sessions_are_refused_without_the_right_origin_key_or_pace() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let (_stt, _tts, mut bot) = common::front_desk();
    bot["widget"] = json!({ "enabled": true, "allowed_origins": ["https://shop.example"] });
    let created: Value = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap().json().await.unwrap();
    let (bot_id, key) = (created["id"].as_str().unwrap().to_string(), created["widget"]["key"].as_str().unwrap().to_string());
    let (_core, port) = common::core(dir.path(), &base, &fleet, &["--workers", "1", "--webrtc-ports", "52100-52199"]);
    let session = |origin: Option<&str>, key: &str| {
        let mut r = http.post(format!("{base}/v1/widget/sessions")).json(&json!({ "bot_id": bot_id, "key": key }));
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        r.send()
    };
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();

    // The preflight of a page's fetch.
    let r = http.request(reqwest::Method::OPTIONS, format!("{base}/v1/widget/sessions")).header("Origin", "https://shop.example").header("Access-Control-Request-Method", "POST").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    // Origins and keys.
    let r = session(Some("https://evil.example"), &key).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(code(&r.json().await.unwrap()), "origin_not_allowed");
    assert_eq!(session(None, &key).await.unwrap().status().as_u16(), 403, "no Origin, no call");
    let r = session(Some("https://shop.example"), "wk_not-the-key-at-all").await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example", "the page can read why");

    // The button's settings: a page elsewhere must be allowed; the API's own page (a
    // same-origin GET carries no Origin) reads them.
    let config = |origin: Option<&str>, key: &str| {
        let mut r = http.get(format!("{base}/v1/widget/config?bot_id={bot_id}&key={key}"));
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        r.send()
    };
    let r = config(Some("https://shop.example"), &key).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let shown: Value = r.json().await.unwrap();
    assert_eq!((shown["button_text"].as_str(), shown["show_transcript"].as_bool()), (Some("Talk to us"), Some(true)));
    assert_eq!(config(Some("https://evil.example"), &key).await.unwrap().status().as_u16(), 403);
    assert_eq!(config(None, &key).await.unwrap().status().as_u16(), 200);
    assert_eq!(config(None, "wk_wrong-key-0000000").await.unwrap().status().as_u16(), 404);
    // The demo page embeds the widget with what it is given, escaped.
    let page = http.get(format!("{base}/widget/demo?bot={bot_id}&key=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("data-bot=\"{bot_id}\"")) && html.contains("/widget.js"), "{html}");
    assert!(!html.contains("<script>alert(1)</script>") && html.contains("&lt;script&gt;"), "{html}");
    let script = http.get(format!("{base}/widget.js")).send().await.unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(script.text().await.unwrap().contains("/v1/widget/sessions"));

    // The engine joins the fleet; a session names it and admits one call.
    let deadline = Instant::now() + Duration::from_secs(10);
    let granted = loop {
        let r = session(Some("https://shop.example"), &key).await.unwrap();
        if r.status().as_u16() == 201 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "no session: {}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(granted["webrtc_url"], format!("http://127.0.0.1:{port}/webrtc/{bot_id}"));
    let webrtc_url = granted["webrtc_url"].as_str().unwrap().to_string();
    let call_token = granted["token"].as_str().unwrap().to_string();
    let offer = |n: u16| cxb_engine::transport::webrtc_client::WebRtcClient::new(Instant::now(), format!("127.0.0.1:{n}").parse().unwrap(), false).unwrap().1;
    let post = |sdp: String, t: &str| http.post(&webrtc_url).header("Content-Type", "application/sdp").bearer_auth(t).body(sdp).send();
    let first = post(offer(9), &call_token).await.unwrap();
    assert_eq!(first.status().as_u16(), 201, "{}", first.text().await.unwrap());
    let again = post(offer(9), &call_token).await.unwrap();
    assert_eq!(again.status().as_u16(), 401, "a call token admits one call");
    let forged = format!("{}x", &call_token[..call_token.len() - 1]);
    assert_eq!(post(offer(9), &forged).await.unwrap().status().as_u16(), 401);

    // Ten sessions a minute from one address; the eleventh waits.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(session(Some("https://shop.example"), &key).await.unwrap().status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let r = session(Some("https://shop.example"), &key).await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    api.shutdown().await;
}
