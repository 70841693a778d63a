//! Who gets a call in, through the engine's public surface: call tokens (signature, expiry,
//! bot, host, single use), Twilio's handshake signature, a bot's inbound secret in the URL or
//! as HTTP Basic credentials, unsigned inbound calls only when the bot allows them, demo bots
//! only with `demo_bots`, refusals as 401 JSON counted by reason, and a flood of refused
//! upgrades that leaves admitted calls echoing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use common::{claims, connect, engine, mulaw_frame, tempdir, token};
use cxb_contract::call_token::{CallKey, KeyRing};
use cxb_contract::carrier::twilio_signature;
use cxb_engine::Engine;
use serde_json::{Value, json};

/// An upgrade request with `headers`; the status and the body of the answer (empty for 101).
fn upgrade(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, body) = common::upgrade(addr, path, headers);
    (status, body)
}

/// An engine serving one offline AI bot `ai` with these `inbound` settings.
fn ai_engine(inbound: Value, tweak: impl FnOnce(&mut cxb_engine::EngineConfig)) -> Engine {
    let bots = tempdir();
    let bot = json!({
        "name": "Gate",
        "org_id": "org-test",
        "stt": { "provider": "none" },
        "llm": { "provider": "script", "options": { "script": { "fallback": "ok" } } },
        "tts": { "provider": "espeak" },
        "recording": false,
        "inbound": inbound,
    });
    std::fs::write(bots.join("ai.json"), bot.to_string()).expect("bot file");
    engine(move |c| {
        c.bots.dir = Some(bots);
        tweak(c);
    })
}

fn refused(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, body) = upgrade(addr, path, headers);
    assert_eq!(status, 401, "{path}: {body}");
    let v: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(v["error"]["code"], "unauthorized", "{body}");
    assert!(!body.contains("ct1."), "the token is not echoed back: {body}");
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn refusals(addr: SocketAddr, reason: &str) -> u64 {
    // From another loopback address: the one under test may be backing off.
    let metrics = get_from(addr, [127, 0, 0, 3], "/metrics").1;
    let prefix = format!("cxb_admission_refused_total{{worker=\"0\",reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.parse().ok()).expect("the metric is rendered")
}

#[test]
fn an_ai_bot_takes_a_call_only_with_a_valid_unused_token_for_it_and_this_host() {
    let e = ai_engine(json!({}), |c| c.host_id = Some("host-a".into()));
    let addr = e.local_addr();

    assert!(refused(addr, "/ws/ai", &[]).contains("call token"));
    assert_eq!(refusals(addr, "missing"), 1);

    let good = token(&claims("ai"));
    assert_eq!(upgrade(addr, &format!("/ws/ai?token={good}"), &[]).0, 101);
    refused(addr, &format!("/ws/ai?token={good}"), &[]);
    assert_eq!(refusals(addr, "replayed"), 1, "a token is good once");

    let mut expired = claims("ai");
    expired.exp = 1_000;
    assert!(refused(addr, &format!("/ws/ai?token={}", token(&expired)), &[]).contains("expired"));
    assert_eq!(refusals(addr, "expired"), 1);

    refused(addr, &format!("/ws/ai?token={}", token(&claims("other-bot"))), &[]);
    assert_eq!(refusals(addr, "wrong_bot"), 1);

    let mut other_org = claims("ai");
    other_org.org_id = "org-other".into();
    refused(addr, &format!("/ws/ai?token={}", token(&other_org)), &[]);
    assert_eq!(refusals(addr, "wrong_bot"), 2, "a token for the same bot id in another organization");

    let mut elsewhere = claims("ai");
    elsewhere.host_id = Some("host-b".into());
    refused(addr, &format!("/ws/ai?token={}", token(&elsewhere)), &[]);
    assert_eq!(refusals(addr, "wrong_host"), 1);
    let mut here = claims("ai");
    here.host_id = Some("host-a".into());
    assert_eq!(upgrade(addr, &format!("/ws/ai?token={}", token(&here)), &[]).0, 101);

    let foreign = KeyRing::new(vec![CallKey::new("test", &[7; 32]).expect("key")]);
    refused(addr, &format!("/ws/ai?token={}", foreign.sign(&claims("ai")).expect("token")), &[]);
    assert_eq!(refusals(addr, "bad_signature"), 1);
    let unknown = KeyRing::new(vec![CallKey::new("nope", &[42; 32]).expect("key")]);
    refused(addr, &format!("/ws/ai?token={}", unknown.sign(&claims("ai")).expect("token")), &[]);
    assert_eq!(refusals(addr, "unknown_key"), 1);
    for junk in ["x", "ct1.test.%FF.", "ct1.test..", &"A".repeat(3000)] {
        refused(addr, &format!("/ws/ai?token={junk}"), &[]);
    }
    assert_eq!(refusals(addr, "malformed_token") + refusals(addr, "bad_signature"), 4 + 1, "an empty MAC is a bad signature");
    e.shutdown();
}

#[test]
fn keys_from_the_fleet_rotate_with_the_old_key_still_valid() {
    let e = ai_engine(json!({}), |c| c.call_keys = KeyRing::default());
    let addr = e.local_addr();
    let k1 = CallKey::new("k1", &[1; 32]).expect("key");
    let k2 = CallKey::new("k2", &[2; 32]).expect("key");
    let old = KeyRing::new(vec![k1.clone()]);
    refused(addr, &format!("/ws/ai?token={}", old.sign(&claims("ai")).expect("token")), &[]);
    e.handle().set_call_keys(KeyRing::new(vec![k1.clone()]));
    assert_eq!(upgrade(addr, &format!("/ws/ai?token={}", old.sign(&claims("ai")).expect("token")), &[]).0, 101);
    e.handle().set_call_keys(KeyRing::new(vec![k2.clone(), k1]));
    let new = KeyRing::new(vec![k2.clone()]);
    assert_eq!(upgrade(addr, &format!("/ws/ai?token={}", old.sign(&claims("ai")).expect("token")), &[]).0, 101);
    assert_eq!(upgrade(addr, &format!("/ws/ai?token={}", new.sign(&claims("ai")).expect("token")), &[]).0, 101);
    e.handle().set_call_keys(KeyRing::new(vec![k2]));
    refused(addr, &format!("/ws/ai?token={}", old.sign(&claims("ai")).expect("token")), &[]);
    e.shutdown();
}

#[test]
fn inbound_calls_are_checked_by_what_the_carrier_offers() {
    let inbound = json!({ "secrets": { "twilio_auth_token": "twilio-token", "secret": "in-secret" } });
    let e = ai_engine(inbound, |_| {});
    let addr = e.local_addr();
    // Twilio signs the URL it requested.
    let signature = twilio_signature("twilio-token", &format!("ws://{addr}/ws/ai"), &[]);
    assert_eq!(upgrade(addr, "/ws/ai", &[("X-Twilio-Signature", &signature)]).0, 101);
    assert!(refused(addr, "/ws/ai?x=1", &[("X-Twilio-Signature", &signature)]).contains("signature"));
    refused(addr, "/ws/ai", &[("X-Twilio-Signature", "Zm9vYmFy")]);
    assert_eq!(refusals(addr, "bad_signature"), 2);
    // Exotel and Cloudonix: the secret in the URL, or as HTTP Basic credentials.
    assert_eq!(upgrade(addr, "/exotel/ai?secret=in-secret", &[]).0, 101);
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("exotel:in-secret"));
    assert_eq!(upgrade(addr, "/exotel/ai", &[("Authorization", &basic)]).0, 101);
    refused(addr, "/exotel/ai?secret=wrong", &[]);
    assert_eq!(refusals(addr, "bad_secret"), 1);
    refused(addr, "/ws/ai", &[]);
    assert_eq!(refusals(addr, "missing"), 1);
    e.shutdown();

    let open = ai_engine(json!({ "allow_unsigned": true }), |_| {});
    assert_eq!(upgrade(open.local_addr(), "/ws/ai", &[]).0, 101, "the owner allowed unsigned calls");
    open.shutdown();
}

#[test]
fn demo_bots_exist_only_when_asked_for() {
    let e = engine(|c| c.demo_bots = false);
    let addr = e.local_addr();
    for path in ["/ws/echo", "/ws/turn-echo", "/exotel/echo", "/ws/fault"] {
        assert_eq!(upgrade(addr, path, &[]).0, 404, "{path}");
    }
    e.shutdown();
    let e = engine(|_| {});
    assert_eq!(upgrade(e.local_addr(), "/ws/echo", &[]).0, 101);
    e.shutdown();
}

#[test]
fn a_flood_of_refused_upgrades_backs_off_and_leaves_admitted_calls_echoing() {
    let e = ai_engine(json!({}), |_| {});
    let addr = e.local_addr();
    let mut call = connect(addr, "/ws/echo").expect("upgrade");
    call.start();
    let flood = std::thread::spawn(move || {
        let (mut unauthorized, mut backing_off) = (0u64, 0u64);
        for i in 0..2_000 {
            let path = if i % 2 == 0 { "/ws/ai".to_string() } else { format!("/ws/ai?token=ct1.test.e30.{i}") };
            match upgrade(addr, &path, &[]) {
                (401, _) => unauthorized += 1,
                (429, body) => {
                    assert!(body.contains("backing_off"), "{body}");
                    backing_off += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        (unauthorized, backing_off)
    });
    let mut echoed = 0;
    while !flood.is_finished() {
        call.media(&mulaw_frame());
        if call.next_media().is_some() {
            echoed += 1;
        }
    }
    let (unauthorized, backing_off) = flood.join().expect("every attempt refused");
    assert!(echoed > 0);
    for _ in 0..50 {
        call.media(&mulaw_frame());
        assert!(call.next_media().is_some(), "the admitted call still echoes");
    }
    let counted: u64 = ["missing", "malformed_token", "bad_signature"].iter().map(|r| refusals(addr, r)).sum();
    assert_eq!(counted, unauthorized, "every 401 counted");
    assert!(backing_off > 1_000, "past 20 failures the address backs off: {unauthorized} refused, {backing_off} backing off");
    let metrics = get_from(addr, [127, 0, 0, 2], "/metrics").1;
    assert!(metrics.contains(&format!("cxb_rejected_address_total{{worker=\"0\"}} {backing_off}")), "counted");
    e.shutdown();
}

/// A GET from a given loopback source address.
fn get_from(addr: SocketAddr, source: [u8; 4], path: &str) -> (u16, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::from((source, 0)).into()).expect("bind a loopback source");
    socket.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).expect("send");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[test]
fn an_address_that_keeps_failing_backs_off_even_with_a_good_token_then_may_try_again() {
    let e = ai_engine(json!({}), |c| {
        c.address_limits.failures_allowed = 3;
        c.address_limits.first_backoff = Duration::from_millis(300);
    });
    let addr = e.local_addr();
    for _ in 0..4 {
        assert_eq!(upgrade(addr, "/ws/ai", &[]).0, 401);
    }
    let good = format!("/ws/ai?token={}", token(&claims("ai")));
    let (status, body) = upgrade(addr, &good, &[]);
    assert_eq!(status, 429, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["error"]["code"], "backing_off");
    assert_eq!(get_from(addr, [127, 0, 0, 2], "/health").0, 200, "other addresses are served");
    std::thread::sleep(Duration::from_millis(350)); // the engine's own clock: no virtual time here
    assert_eq!(upgrade(addr, &good, &[]).0, 101, "after the back-off");
    e.shutdown();
}

#[test]
fn a_core_takes_ai_calls_up_to_its_limit_and_says_so_in_health() {
    let e = ai_engine(json!({}), |c| c.ai_calls_per_worker = 1);
    let addr = e.local_addr();
    let h = common::health(addr);
    assert_eq!(h["limits"]["ai_calls_per_worker"], 1);
    assert_eq!(h["limits"]["pending_per_address"], 64);
    assert_eq!(h["slots_free"], 1, "free capacity is what one more AI call could take");
    let mut first = connect(addr, &format!("/ws/ai?token={}", token(&claims("ai")))).expect("the first AI call");
    first.start();
    let (status, body) = upgrade(addr, &format!("/ws/ai?token={}", token(&claims("ai"))), &[]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ai_capacity"), "{body}");
    assert_eq!(upgrade(addr, "/ws/echo", &[]).0, 101, "demo calls are not AI calls");
    let h = common::health(addr);
    assert_eq!((&h["workers"][0]["ai_calls"], &h["slots_free"]), (&json!(1), &json!(0)));
    first.stop();
    assert!(common::eventually(Duration::from_secs(5), || common::health(addr)["workers"][0]["ai_calls"] == 0));
    assert_eq!(upgrade(addr, &format!("/ws/ai?token={}", token(&claims("ai"))), &[]).0, 101, "room again");
    e.shutdown();
}

#[test]
fn slow_request_heads_from_one_address_cannot_starve_health() {
    let e = engine(|c| c.slots_per_worker = 4);
    let addr = e.local_addr();
    // 200 connections that send their head a byte at a time, slowly.
    let mut slow: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    let started = std::time::Instant::now();
    let mut worst = Duration::ZERO;
    for round in 0..4 {
        for s in &mut slow {
            let _ = s.write_all(&b"GET /ws/echo HTTP/1.1\r\n"[round..=round]);
        }
        let asked = std::time::Instant::now();
        let (status, _) = get_from(addr, [127, 0, 0, 2], "/health");
        worst = worst.max(asked.elapsed());
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
    // Not a speed bar (a shared CI machine is slow at times): a starved engine would answer
    // only when the slow heads time out, 10 s after they opened.
    assert!(worst < Duration::from_secs(4), "health answered within {worst:?} each time");
    // Beyond 64 waiting heads, the address's further connections were turned away at once.
    let refused = slow
        .iter_mut()
        .filter_map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
            let mut buf = [0u8; 64];
            matches!(s.read(&mut buf), Ok(n) if n > 12 && buf.starts_with(b"HTTP/1.1 429")).then_some(())
        })
        .count();
    assert_eq!(refused, 200 - 64, "in {:?}", started.elapsed());
    e.shutdown();
}
