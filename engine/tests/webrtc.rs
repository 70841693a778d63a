//! Browser calls over WebRTC on loopback: a caller on str0m (the client side of the engine's
//! own stack) posts its SDP offer to `/webrtc/BOT`, takes the answer, runs ICE, DTLS-SRTP and
//! the data channel with the engine over UDP, and talks. The echo bot sends the caller's tone
//! back; the AI bot greets, answers a question and sends its live transcript; the refusals are
//! the engine's admission rules.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Captured, engine, eventually, health, tempdir};
use cxb_engine::config::WebRtcConfig;
use cxb_engine::transport::webrtc_client::WebRtcClient;
use cxb_engine::Engine;
use cxb_pipeline::testkit::deepgram::{DeepgramConfig, DeepgramServer, Reply, Step};
use cxb_pipeline::testkit::elevenlabs::{ElevenLabsConfig, ElevenLabsServer};
use serde_json::{Value, json};

fn webrtc_engine(tweak: impl FnOnce(&mut cxb_engine::EngineConfig)) -> Engine {
    engine(|c| {
        c.webrtc = Some(WebRtcConfig { bind: "127.0.0.1".parse().expect("ip"), ..WebRtcConfig::new("127.0.0.1".parse().expect("ip")) });
        tweak(c);
    })
}

/// One HTTP exchange: status, head, body.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// A browser on a UDP socket of its own.
struct Browser {
    socket: UdpSocket,
    client: WebRtcClient,
    location: String,
}

impl Browser {
    /// Offers to `/webrtc/BOT` with `headers`; the engine's answer taken.
    fn call(engine: SocketAddr, bot: &str, headers: &[(&str, &str)]) -> Browser {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_read_timeout(Some(Duration::from_millis(2))).expect("timeout");
        let (mut client, offer) = WebRtcClient::new(Instant::now(), socket.local_addr().expect("addr"), true).expect("client");
        let mut all = vec![("Content-Type", "application/sdp")];
        all.extend_from_slice(headers);
        let (status, head, answer) = request(engine, "POST", &format!("/webrtc/{bot}"), &all, &offer);
        assert_eq!(status, 201, "{head}\n{answer}");
        assert_eq!(header(&head, "Content-Type"), Some("application/sdp"));
        assert_eq!(header(&head, "Access-Control-Allow-Origin"), Some("*"), "a page on any origin reads the answer");
        let location = header(&head, "Location").expect("a Location").to_string();
        assert!(location.starts_with("/webrtc/calls/"), "{location}");
        client.accept_answer(&answer).expect("the answer is usable");
        Browser { socket, client, location }
    }

    /// Runs the call for `limit` in real time; `each` every 20 ms with the frame index.
    fn run(&mut self, limit: Duration, mut each: impl FnMut(&mut WebRtcClient, usize)) {
        let start = Instant::now();
        let mut next_frame = start;
        let mut frame = 0;
        let mut buf = [0u8; 2048];
        while start.elapsed() < limit {
            let now = Instant::now();
            if now >= next_frame {
                each(&mut self.client, frame);
                frame += 1;
                next_frame += Duration::from_millis(20);
            }
            self.client.handle_timeout(now);
            while let Some((to, d)) = self.client.poll_transmit() {
                let _ = self.socket.send_to(&d, to);
            }
            if let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                self.client.on_datagram(Instant::now(), from, &buf[..n]);
            }
        }
    }
}

fn tone(hz: f64, frame: usize) -> Vec<u8> {
    (frame * 160..(frame + 1) * 160).map(|i| (((i as f64) * 2.0 * std::f64::consts::PI * hz / 8000.0).sin() * 8_000.0) as i16).flat_map(i16::to_le_bytes).collect()
}

fn rms(b: &[u8]) -> f64 {
    let n = (b.len() / 2).max(1) as f64;
    (b.chunks_exact(2).map(|s| f64::from(i16::from_le_bytes([s[0], s[1]])).powi(2)).sum::<f64>() / n).sqrt()
}

#[test]
fn the_echo_bot_answers_a_browser_and_delete_hangs_up() {
    let e = webrtc_engine(|_| {});
    let mut browser = Browser::call(e.local_addr(), "echo", &[]);
    browser.run(Duration::from_secs(3), |c, i| {
        let _ = c.send_frame(Instant::now(), &tone(300.0, i));
    });
    assert!(browser.client.connected(), "ICE and DTLS came up over loopback");
    let heard = browser.client.take_heard();
    assert!(heard.len() >= 320 * 50, "a second of echo at least: {} bytes", heard.len());
    let tail = &heard[heard.len() - 320 * 25..];
    assert!(rms(tail) > 2_000.0, "the caller hears its own tone back: rms {:.0}", rms(tail));
    assert_eq!(health(e.local_addr())["live_calls"], 1);

    let (status, head, _) = request(e.local_addr(), "DELETE", &browser.location, &[], "");
    assert_eq!(status, 200, "{head}");
    assert!(eventually(Duration::from_secs(5), || health(e.local_addr())["live_calls"] == 0), "the call ended");
    let (status, _, body) = request(e.local_addr(), "DELETE", &browser.location, &[], "");
    assert_eq!(status, 404, "gone: {body}");
    // A guessed resource (the call's id without its secret) hangs nothing up.
    let guessed = browser.location.rsplit_once('-').map(|(p, _)| format!("{p}-0000000000000000")).expect("resource");
    assert_eq!(request(e.local_addr(), "DELETE", &guessed, &[], "").0, 404);
}

#[test]
fn offers_are_admitted_by_the_engines_rules() {
    let e = webrtc_engine(|_| {});
    let addr = e.local_addr();
    let (_, offer) = WebRtcClient::new(Instant::now(), "127.0.0.1:9".parse().expect("addr"), false).expect("client");
    let sdp = [("Content-Type", "application/sdp")];
    let code = |body: &str| serde_json::from_str::<Value>(body).map(|v| v["error"]["code"].as_str().unwrap_or("").to_string()).unwrap_or_default();

    // The preflight a page's fetch sends first.
    let (status, head, _) = request(addr, "OPTIONS", "/webrtc/support", &[("Origin", "https://shop.example"), ("Access-Control-Request-Method", "POST")], "");
    assert_eq!(status, 204);
    assert!(header(&head, "Access-Control-Allow-Headers").is_some_and(|h| h.contains("Authorization")), "{head}");
    assert!(header(&head, "Access-Control-Expose-Headers").is_some_and(|h| h.contains("Location")), "{head}");

    // No token: only the demo bots answer.
    let (status, head, body) = request(addr, "POST", "/webrtc/support", &sdp, &offer);
    assert_eq!((status, code(&body).as_str()), (401, "unauthorized"), "{body}");
    assert_eq!(header(&head, "Access-Control-Allow-Origin"), Some("*"), "the page can read why");
    // A forged, an expired, another bot's and a reused token.
    let bearer = |t: &str| format!("Bearer {t}");
    let forged = bearer("eyJmb3JnZWQiOnRydWV9.AAAA");
    assert_eq!(request(addr, "POST", "/webrtc/support", &[sdp[0], ("Authorization", &forged)], &offer).0, 401);
    let mut expired = common::claims("support");
    expired.exp = 1;
    assert_eq!(request(addr, "POST", "/webrtc/support", &[sdp[0], ("Authorization", &bearer(&common::token(&expired)))], &offer).0, 401);
    let other = bearer(&common::token(&common::claims("other")));
    assert_eq!(request(addr, "POST", "/webrtc/support", &[sdp[0], ("Authorization", &other)], &offer).0, 401);
    let token = common::token(&common::claims("echo"));
    let _first = Browser::call(addr, "echo", &[("Authorization", &bearer(&token))]);
    let (status, _, body) = request(addr, "POST", &format!("/webrtc/echo?token={token}"), &sdp, &offer);
    assert_eq!(status, 401, "a token admits one call: {body}");

    // What is not an offer.
    let (status, _, body) = request(addr, "POST", "/webrtc/echo", &sdp, "v=0\r\nthis is not sdp");
    assert_eq!((status, code(&body).as_str()), (400, "bad_offer"), "{body}");
    let pcmu = offer.replace("opus/48000/2", "PCMU/8000");
    assert_eq!(request(addr, "POST", "/webrtc/echo", &sdp, &pcmu).0, 400, "no Opus, no call");
    assert_eq!(request(addr, "POST", "/webrtc/echo", &sdp, &"a".repeat(70_000)).0, 413);
    assert_eq!(request(addr, "POST", "/webrtc/echo", &sdp, "\u{0}\u{1}\u{2}").0, 400);
    assert_eq!(request(addr, "GET", "/webrtc/echo", &[], "").0, 405);
    assert_eq!(health(addr)["live_calls"], 1, "only the admitted call is live");
    let disabled = engine(|_| {});
    let (status, _, body) = request(disabled.local_addr(), "POST", "/webrtc/echo", &sdp, &offer);
    assert_eq!((status, code(&body).as_str()), (404, "webrtc_disabled"));
}

/// Fake Deepgram (answering `heard`, one line per finalize) and ElevenLabs (20 ms of audio a
/// character) servers, and an engine whose bot `support` uses them, greets with `greeting` and
/// thinks with the script `script`, plus the fields of `extra`; its results captured.
fn support_engine(heard: &[&str], greeting: &str, script: Value, extra: Value) -> (DeepgramServer, ElevenLabsServer, Engine, Arc<Captured>) {
    let steps = heard.iter().map(|t| Step::on_finalize(Reply::Final { text: (*t).into(), speech_final: false })).collect();
    let stt = DeepgramServer::start(DeepgramConfig { script: steps, ..DeepgramConfig::default() }).expect("stt server");
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: 320, ..ElevenLabsConfig::default() }).expect("tts server");
    let bots = tempdir();
    let mut bot = json!({
        "name": "Support",
        "greeting": greeting,
        "stt": { "provider": "deepgram", "base_url": stt.url(), "secrets": { "api_key": "dg" } },
        "llm": { "provider": "script", "options": { "script": script } },
        "tts": { "provider": "elevenlabs", "base_url": tts.url(), "secrets": { "api_key": "xi" } },
        "voice": "voice1",
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        bot[k] = v.clone();
    }
    std::fs::write(bots.join("support.json"), bot.to_string()).expect("bot file");
    let results = Arc::new(Captured::default());
    let sink = results.clone();
    let e = webrtc_engine(move |c| {
        c.bots.dir = Some(bots);
        c.results = Some(sink);
    });
    (stt, tts, e, results)
}

#[test]
fn an_ai_bot_greets_a_browser_answers_and_streams_its_transcript() {
    let script = json!({
        "intents": [ { "name": "hours", "keywords": ["hours"], "reply": "We are open nine to five." } ],
        "fallback": "Sorry?"
    });
    let (_stt, _tts, e, results) = support_engine(&["what are your opening hours"], "Hello, thanks for calling.", script, json!({}));
    let token = common::token(&common::claims("support"));
    let mut browser = Browser::call(e.local_addr(), "support", &[("Authorization", &format!("Bearer {token}"))]);
    let speech = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16")).expect("fixture");
    // Two seconds of silence (the greeting plays), 1.2 s of speech, then silence.
    browser.run(Duration::from_secs(6), |c, i| {
        let frame = match i.checked_sub(100) {
            Some(j) if j < 60 => speech[j * 320..(j + 1) * 320].to_vec(),
            _ => vec![0; 320],
        };
        let _ = c.send_frame(Instant::now(), &frame);
    });
    let heard = browser.client.take_heard();
    let greeting = &heard[..heard.len().min(8_000 * 2 * 2)];
    assert!(rms(greeting) > 100.0, "the greeting is heard: rms {:.0} over {} bytes", rms(greeting), heard.len());
    let messages: Vec<Value> = browser.client.take_messages().iter().filter_map(|m| serde_json::from_str(m).ok()).collect();
    let lines: Vec<(&str, &str)> = messages.iter().filter(|m| m["type"] == "transcript").map(|m| (m["role"].as_str().unwrap_or(""), m["text"].as_str().unwrap_or(""))).collect();
    assert_eq!(lines, [("bot", "Hello, thanks for calling."), ("caller", "what are your opening hours"), ("bot", "We are open nine to five.")], "{messages:?}");
    assert!(messages.iter().any(|m| m["type"] == "speaking" && m["speaking"] == true), "{messages:?}");

    let (status, _, _) = request(e.local_addr(), "DELETE", &browser.location, &[], "");
    assert_eq!(status, 200);
    assert!(eventually(Duration::from_secs(5), || !results.0.lock().expect("lock").is_empty()), "the result is written");
    let (result, recording) = results.0.lock().expect("lock")[0].clone();
    assert!(recording.is_some_and(|wav| wav.starts_with(b"RIFF")), "the call is recorded as a phone call is");
    assert_eq!(result["metrics"]["transport"], "webrtc", "{result}");
    assert_eq!(result["end_reason"], "hangup", "{result}");
    assert!(result["metrics"]["webrtc"]["packets_in"].as_u64().is_some_and(|n| n > 200), "{result}");
}

/// Runs two browsers side by side for `limit` in real time, each sending what `each` gives
/// for its frame index every 20 ms.
fn run_both(a: &mut Browser, b: &mut Browser, limit: Duration, mut each: impl FnMut(usize, usize) -> (Vec<u8>, Vec<u8>), frame: &mut usize) {
    let start = Instant::now();
    let mut next = start;
    let mut buf = [0u8; 2048];
    while start.elapsed() < limit {
        let now = Instant::now();
        if now >= next {
            let (fa, fb) = each(*frame, *frame);
            let _ = a.client.send_frame(now, &fa);
            let _ = b.client.send_frame(now, &fb);
            *frame += 1;
            next += Duration::from_millis(20);
        }
        for x in [&mut *a, &mut *b] {
            x.client.handle_timeout(Instant::now());
            while let Some((to, d)) = x.client.poll_transmit() {
                let _ = x.socket.send_to(&d, to);
            }
            x.socket.set_read_timeout(Some(Duration::from_millis(1))).expect("timeout");
            if let Ok((n, from)) = x.socket.recv_from(&mut buf) {
                x.client.on_datagram(Instant::now(), from, &buf[..n]);
            }
        }
    }
}

#[test]
fn a_person_on_the_desk_takes_over_a_handed_off_call_while_the_bot_stays_silent() {
    let script = json!({
        "intents": [ { "name": "person", "keywords": ["person"], "reply": "One moment.",
                       "tool": { "name": "handoff", "arguments": { "reason": "asked for a person", "summary": "Wants a person." } },
                       "after_tool": "A colleague will join you." } ],
        "fallback": "Sorry?"
    });
    let extra = json!({ "tools": [ { "kind": "handoff" } ], "idle": { "reprompt_after_seconds": 1, "max_reprompts": 5 } });
    let (_stt, _tts, e, results) = support_engine(&["I need a person", "it is about my bill"], "Hello.", script, extra);
    let addr = e.local_addr();
    let mut claims = common::claims("support");
    claims.call_id = "cl-takeover".into();
    let mut caller = Browser::call(addr, "support", &[("Authorization", &format!("Bearer {}", common::token(&claims)))]);
    let speech = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16")).expect("fixture");
    let speech_frame = |j: usize| speech[(j % 60) * 320..(j % 60 + 1) * 320].to_vec();
    // The greeting, then "I need a person": the bot hands off and says so.
    caller.run(Duration::from_secs(5), |c, i| {
        let frame = match i.checked_sub(50) {
            Some(j) if j < 60 => speech_frame(j),
            _ => vec![0; 320],
        };
        let _ = c.send_frame(Instant::now(), &frame);
    });
    let _ = caller.client.take_heard();

    // Refusals: a call token is no takeover token, and a takeover token takes no new call.
    let (_, offer) = WebRtcClient::new(Instant::now(), "127.0.0.1:9".parse().expect("addr"), false).expect("client");
    let sdp = ("Content-Type", "application/sdp");
    let plain = format!("Bearer {}", common::token(&common::claims("support")));
    assert_eq!(request(addr, "POST", "/webrtc/takeover", &[sdp, ("Authorization", &plain)], &offer).0, 401);
    let mut other = common::claims("support");
    other.takeover = true;
    other.call_id = "cl-elsewhere".into();
    let (status, _, body) = request(addr, "POST", "/webrtc/takeover", &[sdp, ("Authorization", &format!("Bearer {}", common::token(&other)))], &offer);
    assert_eq!(status, 404, "no such live call here: {body}");
    let mut misuse = common::claims("support");
    misuse.takeover = true;
    assert_eq!(request(addr, "POST", "/webrtc/support", &[sdp, ("Authorization", &format!("Bearer {}", common::token(&misuse)))], &offer).0, 401);

    // The person joins and both talk: each hears the other; the bot says nothing.
    let mut take = common::claims("support");
    take.takeover = true;
    take.call_id = "cl-takeover".into();
    let bearer = format!("Bearer {}", common::token(&take));
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (mut client, offer) = WebRtcClient::new(Instant::now(), socket.local_addr().expect("addr"), true).expect("client");
    let (status, head, answer) = request(addr, "POST", "/webrtc/takeover", &[sdp, ("Authorization", &bearer)], &offer);
    assert_eq!(status, 201, "{head}\n{answer}");
    client.accept_answer(&answer).expect("answer");
    let location = header(&head, "Location").expect("a Location").to_string();
    let mut person = Browser { socket, client, location };
    let mut second = common::claims("support");
    second.takeover = true;
    second.call_id = "cl-takeover".into();
    let (status, _, body) = request(addr, "POST", "/webrtc/takeover", &[sdp, ("Authorization", &format!("Bearer {}", common::token(&second)))], &offer);
    assert_eq!(status, 409, "one person at a time: {body}");

    let mut frame = 0;
    // The caller is quiet while the person speaks (a tone, then a pause the STT finalizes).
    run_both(&mut caller, &mut person, Duration::from_secs(4), |i, _| (vec![0; 320], if i < 75 { tone(440.0, i) } else { vec![0; 320] }), &mut frame);
    let to_caller = caller.client.take_heard();
    assert!(rms(&to_caller[to_caller.len() / 4..]) > 1_000.0, "the caller hears the person: rms {:.0}", rms(&to_caller));
    // Then the caller speaks, long past the bot's idle re-prompt: the person hears them, and
    // the bot answers nothing.
    let _ = person.client.take_heard();
    run_both(&mut caller, &mut person, Duration::from_secs(4), |i, _| (tone(300.0, i), vec![0; 320]), &mut frame);
    let to_person = person.client.take_heard();
    assert!(rms(&to_person[to_person.len() / 2..]) > 1_000.0, "the person hears the caller: rms {:.0}", rms(&to_person));
    let to_caller = caller.client.take_heard();
    assert!(rms(&to_caller[to_caller.len() / 2..]) < 100.0, "the bot stays silent while the person has the call: rms {:.0}", rms(&to_caller));

    // The person hangs up; the caller's call goes on with the bot; then the caller hangs up.
    assert_eq!(request(addr, "DELETE", &person.location, &[], "").0, 200);
    caller.run(Duration::from_secs(1), |c, _| {
        let _ = c.send_frame(Instant::now(), &[0; 320]);
    });
    assert_eq!(health(addr)["live_calls"], 1, "the caller's call outlives the person's leg");
    assert_eq!(request(addr, "DELETE", &caller.location, &[], "").0, 200);
    assert!(eventually(Duration::from_secs(5), || !results.0.lock().expect("lock").is_empty()), "the result is written");
    let (result, _) = results.0.lock().expect("lock")[0].clone();
    let lines: Vec<(String, String)> = result["transcript"].as_array().into_iter().flatten().map(|l| (l["role"].as_str().unwrap_or("").to_string(), l["text"].as_str().unwrap_or("").to_string())).collect();
    assert!(lines.iter().any(|(r, t)| r == "caller" && t == "I need a person"), "{lines:?}");
    assert!(lines.iter().any(|(r, t)| r == "agent" && t == "I need a person"), "the person's words are transcribed, marked by speaker: {lines:?}");
    let handoff = &result["metrics"]["handoffs"][0];
    assert_eq!(handoff["live"], true, "{result}");
    assert!(handoff["talked_ms"].as_u64().is_some_and(|ms| ms >= 7_000), "{handoff}");
    assert!(eventually(Duration::from_secs(5), || health(addr)["live_calls"] == 0));
}
