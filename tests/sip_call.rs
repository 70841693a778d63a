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
/// silence (the turn ends, the answer plays). Longer than any call here: the tests hang up
/// themselves (baresip's own hang-up at the end of its file is not always sent).
fn caller_audio() -> Vec<i16> {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/codecs/tests/fixtures/speech-8k.s16")).unwrap();
    let speech: Vec<i16> = pcm.chunks_exact(2).take(9_600).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut audio = vec![0i16; 8_000];
    audio.extend(speech);
    audio.extend(std::iter::repeat_n(0, 8_000 * 20));
    audio
}

/// Waits for the call to be up, lets the conversation run (greeting, the caller's turn, the
/// answer), hangs up and waits for the end.
fn converse_and_hang_up(phone: &mut Baresip) {
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
    std::thread::sleep(Duration::from_secs(6));
    phone.command("hangup", "");
    assert!(phone.event("CALL_CLOSED", Duration::from_secs(10)).is_some(), "{}", phone.log());
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
            // baresip offers only Opus: the engine answers Opus (the later calls are G.711).
            let mut phone = Baresip::start_with("opus", "phone", &audio, "");
            phone.command("dial", &format!("sip:+15550100@{sip}"));
            converse_and_hang_up(&mut phone);
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
    let rtp = &call["metrics"]["rtp"];
    assert_eq!(rtp["codec"], "opus", "{rtp}");
    assert!(rtp["packets_in"].as_u64().is_some_and(|n| n > 200) && rtp["packets_out"].as_u64().is_some_and(|n| n > 200), "{rtp}");
    assert!(rtp["rtcp_sent"].as_u64().is_some_and(|n| n >= 1), "our sender reports: {rtp}");
    assert_eq!(rtp["lost"], 0, "{rtp}");
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

/// The dialler, placing calls for the API at `base` (loopback allowed: the trunk is baresip).
fn dialler_for(api: &cxb_control_plane::ApiServer, base: &str) -> cxb_dialler::Dialler {
    use cxb_dialler::carriers::Carriers;
    use cxb_dialler::{Dialler, DiallerConfig, DiallerTelephony, Shared};
    let egress = cxb_control_plane::egress::Egress::new(cxb_contract::egress::EgressPolicy::with_loopback(), Duration::from_secs(10)).unwrap();
    let mut config = DiallerConfig::new(base.to_string());
    config.tick = Duration::from_millis(50);
    let shared = Shared::new(api.state().db.clone(), Carriers::new(None, egress, api.state().secrets.clone()), config);
    api.attach_telephony(std::sync::Arc::new(DiallerTelephony(shared.clone())));
    Dialler::start(shared)
}

/// The organization's carrier becomes the SIP trunk on 127.0.0.1:`port` (baresip).
async fn use_trunk(http: &reqwest::Client, base: &str, token: &str, port: u16) {
    let settings = json!({"default_caller_id": "+15550199", "carrier": {"provider": "sip", "sip": {"host": "127.0.0.1", "port": port}}});
    let r = http.patch(format!("{base}/v1/settings")).bearer_auth(token).json(&settings).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// Waits until an engine has heartbeat to the API (it can take calls).
async fn heartbeat_seen(http: &reqwest::Client, base: &str, fleet: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.get(format!("{base}/v1/fleet/hosts")).bearer_auth(fleet).send().await.unwrap();
        let hosts: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default();
        if hosts["items"].as_array().is_some_and(|h| !h.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "the engine never heartbeat");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST /v1/calls` through the organization's SIP trunk: the dialler reserves a slot on the
/// engine and asks it to dial (the `sip` carrier), the engine INVITEs the trunk (baresip,
/// answering), the bot talks with the callee, and the engine's own call-end record and result
/// close the call in `GET /v1/calls` as answered, with its transcript.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_call_goes_out_through_the_organizations_sip_trunk() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let _dialler = dialler_for(&api, &base);

    let (_stt, _tts, bot) = common::front_desk();
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&bot).send().await.unwrap();
    let bot_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();
    let sip = format!("127.0.0.1:{}", free_port());
    let (_core, port) = common::core(dir.path(), &base, &fleet, &["--workers", "1", "--sip", &sip, "--rtp-ports", "41200-41300"]);
    heartbeat_seen(&http, &base, &fleet).await;

    let audio = caller_audio();
    let phone = tokio::task::spawn_blocking(move || Baresip::start_as("+15550100", &audio, "")).await.unwrap();
    use_trunk(&http, &base, &token, phone.sip.port()).await;
    let r = http.post(format!("{base}/v1/calls")).bearer_auth(&token).json(&json!({"to": "+15550100", "bot_id": bot_id})).send().await.unwrap();
    let status = r.status().as_u16();
    let placed: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!((200..=202).contains(&status), "{status}: {placed}");
    let call_id = placed["id"].as_str().or(placed["call_id"].as_str()).unwrap().to_string();
    let mut phone = phone;
    tokio::task::spawn_blocking(move || converse_and_hang_up(&mut phone)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let call = loop {
        let r = http.get(format!("{base}/v1/calls/{call_id}")).bearer_auth(&token).send().await.unwrap();
        let call: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default();
        if call["outcome"] == "completed" && call["transcript"].as_array().is_some_and(|t| !t.is_empty()) {
            break call;
        }
        assert!(Instant::now() < deadline, "the call was never closed with its result: {call}\n{}", std::fs::read_to_string(dir.path().join("core.log")).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(call["direction"], "outbound", "{call}");
    let lines: Vec<&str> = call["transcript"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap_or_default()).collect();
    assert!(lines.contains(&"when are you open") && lines.contains(&"Nine to five."), "{call}");
    // The call-end record went through the engine's outbox after the result: two deliveries,
    // nothing left on disk.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
        if metrics.lines().any(|l| l == "cxb_outbox_delivered_total 2") && metrics.lines().any(|l| l == "cxb_outbox_pending 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the result and the call-end record were not both delivered: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.shutdown().await;
}

/// A bare SIP phone on one UDP socket (signalling and RTP on the same port), for a caller
/// whose phone refuses REFER: it calls `number` at `engine`, speaks `audio` as PCMU at 20 ms a
/// packet (a 300 Hz tone once the REFER came), answers REFER with 405 and BYE with 200, and
/// hangs up `after_refer` after the REFER. Returns whether a REFER came and the audio heard
/// after it (8 kHz).
fn refusing_caller(engine: &str, number: &str, audio: &[i16], after_refer: Duration) -> (bool, Vec<i16>) {
    use cxb_codecs::g711;
    use cxb_codecs::rtp::RtpPacket;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let local = socket.local_addr().unwrap();
    let engine: std::net::SocketAddr = engine.parse().unwrap();
    let call_id = format!("refuser-{}", local.port());
    let sdp = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n", local.port());
    let head = |method: &str, cseq: u32, to_tag: &str| {
        format!("{method} sip:{number}@{engine} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{method}{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:refuser@{local}>;tag=r1\r\nTo: <sip:{number}@{engine}>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:refuser@{local}>\r\n")
    };
    let invite = format!("{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", head("INVITE", 1, ""), sdp.len());
    let header = |text: &str, name: &str| text.lines().find(|l| l.to_ascii_lowercase().starts_with(&format!("{}:", name.to_ascii_lowercase()))).map(|l| l.to_string());
    let reply = |request: &str, status: &str| {
        let copied: String = ["Via", "From", "To", "Call-ID", "CSeq"].iter().filter_map(|h| header(request, h)).map(|l| l + "\r\n").collect();
        format!("SIP/2.0 {status}\r\n{copied}Content-Length: 0\r\n\r\n")
    };
    let mut buf = [0u8; 4096];
    let (mut to_tag, mut media) = (String::new(), None);
    let until = Instant::now() + Duration::from_secs(10);
    let mut sent_invite = Instant::now() - Duration::from_secs(1);
    while media.is_none() {
        assert!(Instant::now() < until, "the engine never answered the INVITE");
        if sent_invite.elapsed() >= Duration::from_millis(500) {
            socket.send_to(invite.as_bytes(), engine).unwrap();
            sent_invite = Instant::now();
        }
        let Ok((n, _)) = socket.recv_from(&mut buf) else { continue };
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("SIP/2.0 200") {
            to_tag = header(&text, "To").and_then(|t| t.split_once(";tag=").map(|(_, tag)| format!(";tag={tag}"))).unwrap_or_default();
            let ip = text.lines().find_map(|l| l.strip_prefix("c=IN IP4 ")).unwrap().trim().to_string();
            let port = text.lines().find_map(|l| l.strip_prefix("m=audio ")).and_then(|l| l.split(' ').next()).unwrap().to_string();
            media = Some(format!("{ip}:{port}").parse::<std::net::SocketAddr>().unwrap());
        }
    }
    let media = media.unwrap();
    socket.send_to(format!("{}Content-Length: 0\r\n\r\n", head("ACK", 1, &to_tag)).as_bytes(), engine).unwrap();
    let (start, mut sent, mut refer_at, mut heard) = (Instant::now(), 0usize, None::<Instant>, Vec::new());
    let mut packet = Vec::new();
    loop {
        if refer_at.is_some_and(|at| at.elapsed() >= after_refer) || start.elapsed() > Duration::from_secs(40) {
            break;
        }
        while start + Duration::from_millis(20 * sent as u64) <= Instant::now() {
            let sample = |i: usize| match refer_at {
                Some(_) => ((((sent * 160 + i) as f64) * 2.0 * std::f64::consts::PI * 300.0 / 8000.0).sin() * 10_000.0) as i16,
                None => audio.get(sent * 160 + i).copied().unwrap_or(0),
            };
            let frame: Vec<u8> = (0..160).map(|i| g711::encode_mulaw(sample(i))).collect();
            packet.clear();
            RtpPacket { marker: sent == 0, payload_type: 0, sequence: sent as u16, timestamp: (sent * 160) as u32, ssrc: 0x5151, payload: &frame }.write(&mut packet);
            socket.send_to(&packet, media).unwrap();
            sent += 1;
        }
        let Ok((n, _)) = socket.recv_from(&mut buf) else { continue };
        let datagram = &buf[..n];
        if datagram[0] & 0xC0 == 0x80 {
            if let (Ok(p), Some(_)) = (RtpPacket::parse(datagram), refer_at) {
                heard.extend(p.payload.iter().map(|&b| g711::decode_mulaw(b)));
            }
            continue;
        }
        let text = String::from_utf8_lossy(datagram).to_string();
        if text.starts_with("REFER ") {
            socket.send_to(reply(&text, "405 Method Not Allowed").as_bytes(), engine).unwrap();
            refer_at.get_or_insert_with(Instant::now);
        } else if text.starts_with("BYE ") {
            socket.send_to(reply(&text, "200 OK").as_bytes(), engine).unwrap();
            return (refer_at.is_some(), heard);
        } else if !text.starts_with("SIP/2.0") {
            socket.send_to(reply(&text, "200 OK").as_bytes(), engine).unwrap();
        }
    }
    socket.send_to(format!("{}Content-Length: 0\r\n\r\n", head("BYE", 2, &to_tag)).as_bytes(), engine).unwrap();
    (refer_at.is_some(), heard)
}

/// The caller's phone refuses the bot's REFER (405): the engine places the call to the
/// destination itself (baresip, answering with its tone), relays the media both ways, and
/// ends the new leg when the caller hangs up; the result records the refusal and the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refer_becomes_a_call_the_engine_places_and_bridges() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let target = tokio::task::spawn_blocking(|| Baresip::start_as("+15550188", &baresip::tone(30), "")).await.unwrap();
    let (_stt, _tts, mut desk) = common::front_desk();
    desk["name"] = json!("Transfer desk");
    desk["llm"]["options"]["script"]["intents"] = json!([{ "name": "hours", "keywords": ["open"], "reply": "Connecting you.", "tool": { "name": "transfer_call", "arguments": {} } }]);
    desk["tools"] = json!([{ "kind": "transfer_call", "transfer_to": format!("sip:+15550188@127.0.0.1:{}", target.sip.port()) }]);
    let r = http.post(format!("{base}/v1/bots")).bearer_auth(&token).json(&desk).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let desk_id = serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["id"].as_str().unwrap().to_string();
    let number = json!({"number": "+15550133", "bot_id": desk_id, "allowed_sources": ["127.0.0.1"]});
    assert_eq!(http.post(format!("{base}/v1/phone-numbers")).bearer_auth(&token).json(&number).send().await.unwrap().status().as_u16(), 201);
    let sip = format!("127.0.0.1:{}", free_port());
    let (_core, _port) = common::core(dir.path(), &base, &fleet, &["--workers", "1", "--sip", &sip, "--rtp-ports", "41400-41500"]);

    let audio = caller_audio();
    let (refused, heard) = tokio::task::spawn_blocking(move || refusing_caller(&sip, "+15550133", &audio, Duration::from_secs(6))).await.unwrap();
    assert!(refused, "the bot transferred: a REFER came");
    // The destination's tone reached the caller through the engine.
    let loud: Vec<i16> = heard.chunks(160).filter(|f| f.iter().any(|s| s.unsigned_abs() > 3_000)).flatten().copied().collect();
    assert!(loud.len() >= 8_000, "a second or more of the destination's tone: {} samples", loud.len());
    let crossings = loud.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count() as f64 / 2.0 / (loud.len() as f64 / 8000.0);
    assert!((400.0..480.0).contains(&crossings), "at 440 Hz: {crossings:.0}");
    // The caller's hang-up ended the new leg too, and the destination heard the caller.
    let mut target = target;
    let (closed, to_target) = tokio::task::spawn_blocking(move || (target.event("CALL_CLOSED", Duration::from_secs(10)).is_some(), target.heard())).await.unwrap();
    assert!(closed, "the engine hung up the leg it placed");
    let loud: Vec<i16> = to_target.chunks(160).filter(|f| f.iter().any(|s| s.unsigned_abs() > 3_000)).flatten().copied().collect();
    assert!(loud.len() >= 8_000, "the destination heard a second or more of the caller: {} samples", loud.len());
    let crossings = loud.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count() as f64 / 2.0 / (loud.len() as f64 / 8000.0);
    assert!((260.0..340.0).contains(&crossings), "the caller's 300 Hz: {crossings:.0}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let call = loop {
        if let Some(call) = calls(&http, &base, &token, &desk_id).await.first().cloned() {
            break call;
        }
        assert!(Instant::now() < deadline, "the result never reached the API: {}", std::fs::read_to_string(dir.path().join("core.log")).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(call["end_reason"], "transferred", "{call}");
    let transfer = &call["metrics"]["transfer"];
    assert_eq!((transfer["method"].as_str(), transfer["status"].as_u64(), transfer["accepted"].as_bool()), (Some("refer"), Some(405), Some(false)), "{call}");
    assert_eq!((transfer["bridge"]["status"].as_u64(), transfer["bridge"]["answered"].as_bool()), (Some(200), Some(true)), "{call}");
    assert!(transfer["bridge"]["talked_ms"].as_u64().is_some_and(|ms| ms >= 3_000), "{call}");
    api.shutdown().await;
}

/// A campaign through the organization's SIP trunk: the dialler asks the engine to dial each
/// contact; baresip (the trunk) answers one number and the bot talks with it, and refuses the
/// other (404, no such user), which ends as an invalid number without a retry. The campaign
/// completes with both contacts done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_dials_through_the_sip_trunk_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (api, base, fleet, token) = common::api_with_org(dir.path()).await;
    let http = reqwest::Client::new();
    let _dialler = dialler_for(&api, &base);
    let post = async |path: &str, body: Value| -> Value {
        let r = http.post(format!("{base}{path}")).bearer_auth(&token).json(&body).send().await.unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    };

    let (_stt, _tts, bot) = common::front_desk();
    let bot_id = post("/v1/bots", bot).await["id"].as_str().unwrap().to_string();
    let sip = format!("127.0.0.1:{}", free_port());
    let (_core, _port) = common::core(dir.path(), &base, &fleet, &["--workers", "1", "--sip", &sip, "--rtp-ports", "41600-41700"]);
    heartbeat_seen(&http, &base, &fleet).await;
    let audio = caller_audio();
    let phone = tokio::task::spawn_blocking(move || Baresip::start_as("+15550100", &audio, "")).await.unwrap();
    use_trunk(&http, &base, &token, phone.sip.port()).await;
    let assistant = post("/v1/ai-assistants", json!({"name": "desk", "kind": "websocket", "bot_id": bot_id})).await;
    let campaign = post(
        "/v1/campaigns",
        json!({"name": "Over the trunk", "routing": {"type": "ai_assistant", "target_id": assistant["id"]},
            "caller_ids": ["+15550199"], "cac": 2, "cps": 2, "retry": {"max_attempts": 2, "backoff_seconds": 1}}),
    )
    .await;
    let id = campaign["id"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{base}/v1/campaigns/{id}/contacts/import"))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body("phone,name\n+15550100,Answers\n+15550111,Nobody\n")
        .send()
        .await
        .unwrap();
    let imported: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(imported["imported"], 2, "{imported}");
    assert_eq!(post(&format!("/v1/campaigns/{id}/start"), json!({})).await["state"], "ACTIVE");
    // The answered call: the bot talks, then the callee hangs up.
    let mut phone = phone;
    tokio::task::spawn_blocking(move || converse_and_hang_up(&mut phone)).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let r = http.get(format!("{base}/v1/campaigns/{id}/stats")).bearer_auth(&token).send().await.unwrap();
        let stats: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        if stats["state"] == "COMPLETED" {
            break stats;
        }
        assert!(Instant::now() < deadline, "the campaign did not complete: {stats}\n{}", std::fs::read_to_string(dir.path().join("core.log")).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(stats["contacts"]["done"], 2, "{stats}");
    assert_eq!((stats["attempts"].as_i64(), stats["answered"].as_i64(), stats["failed"].as_i64()), (Some(2), Some(1), Some(1)), "one answered, one invalid number, no retry: {stats}");
    let r = http.get(format!("{base}/v1/calls?campaign_id={id}")).bearer_auth(&token).send().await.unwrap();
    let calls: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let answered: Vec<&Value> = calls["items"].as_array().unwrap().iter().filter(|c| c["transcript"].as_array().is_some_and(|t| !t.is_empty())).collect();
    assert_eq!(answered.len(), 1, "{calls}");
    assert_eq!(answered[0]["to"], "+15550100", "{calls}");
    api.shutdown().await;
}
