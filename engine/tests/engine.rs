//! The engine over real sockets: HTTP surface, echo over both carrier protocols, bad peers,
//! a full host, panic isolation, a peer that stops reading, control commands.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{Carrier, connect, engine, eventually, get, health, http, mulaw_frame};
use serde_json::{Value, json};
use tungstenite::Message;

fn echo_some(call: &mut Carrier, frames: usize) {
    for _ in 0..frames {
        call.media(&mulaw_frame());
        let back = call.next_media().expect("echo comes back");
        assert_eq!(back.len(), 160, "one 20 ms mu-law frame per message");
    }
}

#[test]
fn http_surface_answers_in_json() {
    let e = engine(|_| {});
    let addr = e.local_addr();
    let h = health(addr);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["slots_total"], 16);
    assert!(matches!(h["workers"][0]["driver"].as_str(), Some("io_uring" | "epoll")));
    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    for name in ["cxb_live_calls", "cxb_calls_ended_total", "cxb_frames_in_total", "cxb_playout_lateness_seconds_bucket", "cxb_protocol_errors_total"] {
        assert!(metrics.contains(name), "{name} missing");
    }
    let (status, body) = get(addr, "/ws/nobody");
    assert_eq!(status, 404);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"]["code"], "unknown_bot");
    assert_eq!(get(addr, "/ws/echo").0, 426, "a call endpoint needs an upgrade");
    assert_eq!(get(addr, "/nothing").0, 404);
    assert_eq!(http(addr, "BLAH\r\n\r\n").0, 400);
    e.shutdown();
}

#[test]
fn twilio_echo_returns_every_frame_then_stops_cleanly() {
    let e = engine(|_| {});
    let mut call = connect(e.local_addr(), "/ws/echo").expect("upgrade");
    call.start();
    echo_some(&mut call, 50);
    assert_eq!(health(e.local_addr())["live_calls"], 1);
    call.stop();
    assert_eq!(call.close_frame(), Some((1000, "stream stopped".to_string())));
    assert!(eventually(Duration::from_secs(2), || health(e.local_addr())["slots_free"] == 16));
    e.shutdown();
}

#[test]
fn exotel_echo_comes_back_in_valid_chunks() {
    let e = engine(|_| {});
    let mut call = connect(e.local_addr(), "/exotel/echo").expect("upgrade");
    call.start();
    let tone: Vec<u8> = (0..800).flat_map(|i| (((i as f64 * 0.7).sin() * 6000.0) as i16).to_le_bytes()).collect();
    let mut got = 0;
    for _ in 0..5 {
        call.media(&tone); // 100 ms of 8 kHz LINEAR16, as Exotel sends
    }
    // 8,000 bytes come back in chunks of whole 20 ms frames, at least 3,200 bytes each; once
    // no more audio follows, the tail is padded with silence to a valid chunk.
    while got < 8_000 {
        let chunk = call.next_media().expect("echo chunk");
        assert!(chunk.len() >= 3_200 && chunk.len().is_multiple_of(320), "chunk of {} bytes", chunk.len());
        got += chunk.len();
    }
    assert!(got - 8_000 < 3_200, "every frame echoed, only the last chunk padded: {got}");
    e.shutdown();
}

#[test]
fn bad_peers_are_cut_off_alone_with_the_right_code() {
    let e = engine(|c| c.slots_per_worker = 8);
    let addr = e.local_addr();
    let mut healthy: Vec<Carrier> = (0..2).map(|_| connect(addr, "/ws/echo").expect("upgrade")).collect();
    for h in &mut healthy {
        h.start();
        echo_some(h, 3);
    }
    let started = |c: &mut Carrier| c.start();
    type Misbehaviour = Box<dyn Fn(&mut Carrier)>;
    let cases: Vec<(&str, Misbehaviour, u16)> = vec![
        ("malformed JSON", Box::new(|c| c.send_raw(Message::text("{not json"))), 1007),
        ("bad base64", Box::new(move |c| { started(c); c.send(json!({"event":"media","streamSid":"MZ1","media":{"payload":"!!!"}})) }), 1007),
        ("binary frame", Box::new(|c| c.send_raw(Message::binary(vec![1, 2, 3]))), 1003),
        ("oversized", Box::new(|c| c.send_raw(Message::text("x".repeat(300 * 1024)))), 1009),
        ("media before start", Box::new(|c| c.media(&mulaw_frame())), 1008),
    ];
    for (what, misbehave, code) in &cases {
        let mut bad = connect(addr, "/ws/echo").expect("upgrade");
        misbehave(&mut bad);
        let close = bad.close_frame().unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!(close.0, *code, "{what}: {close:?}");
        for h in &mut healthy {
            echo_some(h, 2);
        }
    }
    assert!(eventually(Duration::from_secs(2), || health(addr)["live_calls"] == 2), "bad peers' slots freed");
    let metrics = get(addr, "/metrics").1;
    for kind in ["malformed_json", "bad_base64", "binary_frame", "oversized", "media_before_start"] {
        assert!(metrics.contains(&format!("kind=\"{kind}\"}} 1")), "{kind} counted once");
    }
    e.shutdown();
}

/// A masked client frame, written by hand so that the test can break the rules.
fn raw_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9u8, 8, 7, 6];
    assert!(payload.len() < 126);
    let mut f = vec![b0, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Writes `bytes` on an upgraded echo call's socket in one write, then reads until the
/// engine closes the TCP connection: the server's frames as (opcode, payload).
fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut call = connect(addr, "/ws/echo").expect("upgrade");
    call.start();
    let stream = call.ws.get_mut();
    stream.write_all(bytes).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the engine did not close the connection: {e}"),
        }
    }
    let mut frames = Vec::new();
    let mut rest = got.as_slice();
    while rest.len() >= 2 {
        let len = usize::from(rest[1] & 0x7F);
        assert!(len < 126 && rest[1] & 0x80 == 0, "a short unmasked server frame");
        frames.push((rest[0] & 0x0F, rest[2..2 + len].to_vec()));
        rest = &rest[2 + len..];
    }
    frames
}

#[test]
fn a_client_close_is_answered_on_the_socket_and_bad_closes_get_1002_or_1007() {
    let e = engine(|_| {});
    let addr = e.local_addr();
    // A ping and a close in one write: the pong, then the close echoed, then EOF.
    let frames = raw_exchange(addr, &[raw_frame(0x89, b"ping"), raw_frame(0x88, &[0x03, 0xE9, b'o', b'k'])].concat());
    assert_eq!(frames, vec![(0xA, b"ping".to_vec()), (0x8, vec![0x03, 0xE9])]);
    let close_code = |frames: &[(u8, Vec<u8>)]| {
        let (op, body) = frames.last().expect("a close frame");
        assert_eq!(*op, 0x8);
        u16::from_be_bytes([body[0], body[1]])
    };
    for (what, bytes, code) in [
        ("code 5000", raw_frame(0x88, &5000u16.to_be_bytes()), 1002),
        ("code 1005", raw_frame(0x88, &1005u16.to_be_bytes()), 1002),
        ("one-byte close", raw_frame(0x88, &[0x03]), 1002),
        ("reason not UTF-8", raw_frame(0x88, &[0x03, 0xE8, 0xFF]), 1007),
        ("text not UTF-8", raw_frame(0x81, &[0xCE, 0xBA, 0xE1, 0xBD]), 1007),
    ] {
        assert_eq!(close_code(&raw_exchange(addr, &bytes)), code, "{what}");
    }
    assert!(eventually(Duration::from_secs(2), || health(addr)["slots_free"] == 16));
    let metrics = get(addr, "/metrics").1;
    assert!(metrics.contains("kind=\"invalid_utf8\"} 2"), "invalid UTF-8 counted: {metrics}");
    e.shutdown();
}

#[test]
fn a_full_host_answers_503_before_any_upgrade() {
    let e = engine(|c| c.slots_per_worker = 2);
    let addr = e.local_addr();
    let _a = connect(addr, "/ws/echo").expect("first");
    let _b = connect(addr, "/ws/echo").expect("second");
    match connect(addr, "/ws/echo") {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    drop(_a);
    assert!(eventually(Duration::from_secs(2), || connect(addr, "/ws/echo").is_ok()), "a freed slot is reused");
    e.shutdown();
}

#[test]
fn a_panic_ends_only_its_own_call() {
    let e = engine(|c| c.fault_injection = true);
    let addr = e.local_addr();
    let mut healthy = connect(addr, "/ws/echo").expect("upgrade");
    healthy.start();
    let mut fault = connect(addr, "/ws/fault").expect("upgrade");
    fault.start();
    echo_some(&mut fault, 2);
    fault.send(json!({"event":"dtmf","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"9"}}));
    assert_eq!(fault.close_frame().map(|c| c.0), Some(1011));
    echo_some(&mut healthy, 20);
    // The call is counted once its task has ended, which may be just after its close frame.
    assert!(eventually(Duration::from_secs(2), || get(addr, "/metrics").1.contains("reason=\"panicked\"} 1")));
    assert!(eventually(Duration::from_secs(2), || health(addr)["live_calls"] == 1));
    e.shutdown();
}

#[test]
fn a_peer_that_stops_reading_is_dropped() {
    let e = engine(|c| c.send_buffer = 8 * 1024);
    let addr = e.local_addr();
    let mut healthy = connect(addr, "/ws/echo").expect("upgrade");
    healthy.start();
    // A small receive buffer so the server's writes back up quickly.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_write_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let (mut deaf, _) = tungstenite::client::client(format!("ws://{addr}/ws/echo"), stream).map_err(|_| ()).expect("upgrade");
    let start = json!({"event":"start","streamSid":"MZ9","start":{"streamSid":"MZ9"}}).to_string();
    deaf.send(Message::text(start)).expect("start");
    let media = json!({"event":"media","streamSid":"MZ9","media":{"payload": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, mulaw_frame())}}).to_string();
    // Send without ever reading until the engine gives up on us.
    let dropped = eventually(Duration::from_secs(20), || {
        for _ in 0..200 {
            if deaf.send(Message::text(media.clone())).is_err() {
                break;
            }
        }
        get(addr, "/metrics").1.contains("reason=\"slow_consumer\"} 1")
    });
    assert!(dropped, "the deaf peer was dropped as a slow consumer");
    echo_some(&mut healthy, 5);
    assert!(eventually(Duration::from_secs(2), || health(addr)["live_calls"] == 1));
    e.shutdown();
}

#[test]
fn control_socket_hangs_up_drains_and_reserves() {
    use std::io::{BufRead, BufReader, Write};
    let e = engine(|c| c.slots_per_worker = 2);
    let addr = e.local_addr();
    let ctl = |cmd: Value| -> Value {
        let mut s = std::os::unix::net::UnixStream::connect(&e.config().control_socket).expect("control socket");
        writeln!(s, "{cmd}").expect("send");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("answer");
        serde_json::from_str(&line).expect("json")
    };
    let mut call = connect(addr, "/ws/echo").expect("upgrade");
    call.start();
    echo_some(&mut call, 1);
    assert_eq!(ctl(json!({"cmd":"hangup","call_id":"w0-0"}))["ok"], true);
    assert_eq!(call.close_frame(), Some((1000, "hung up".to_string())));

    assert_eq!(ctl(json!({"cmd":"drain"}))["ok"], true);
    assert!(matches!(connect(addr, "/ws/echo"), Err(tungstenite::Error::Http(r)) if r.status() == 503));
    assert_eq!(ctl(json!({"cmd":"undrain"}))["ok"], true);
    assert!(eventually(Duration::from_secs(2), || health(addr)["slots_free"] == 2));

    let r = ctl(json!({"cmd":"reserve","ttl_ms":60_000}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(health(addr)["slots_free"], 1);
    let token = r["token"].as_str().expect("token").to_string();
    let mut reserved = connect(addr, &format!("/ws/echo?reservation={token}")).expect("reserved call");
    reserved.start();
    echo_some(&mut reserved, 1);
    assert_eq!(health(addr)["slots_free"], 1, "the call took the reserved slot, not another");
    let r = ctl(json!({"cmd":"reserve","ttl_ms":300}));
    assert_eq!(r["ok"], true);
    assert_eq!(health(addr)["slots_free"], 0);
    assert!(eventually(Duration::from_secs(5), || health(addr)["slots_free"] == 1), "an expired reservation returns to free");
    assert_eq!(ctl(json!({"cmd":"bogus"}))["ok"], false);
    e.shutdown();
}

#[test]
fn a_fleet_reservation_that_arrives_after_its_call_holds_nothing() {
    let e = engine(|c| c.slots_per_worker = 3);
    let addr = e.local_addr();
    let token = "ff00000000abcdef";
    // The dialler reserved through the API; the call comes before the heartbeat delivers it.
    let mut call = connect(addr, &format!("/ws/echo?reservation={token}")).expect("call");
    call.start();
    echo_some(&mut call, 1);
    assert_eq!(health(addr)["slots_free"], 2);
    assert!(e.handle().hold_reservation(token, Duration::from_secs(60)), "applied: its call already came");
    assert_eq!(health(addr)["slots_free"], 2, "no slot is held for a reservation already used");
    // A token no call presented is held as before.
    assert!(e.handle().hold_reservation("ff00000000000001", Duration::from_secs(60)));
    assert_eq!(health(addr)["slots_free"], 1);
    e.shutdown();
}


fn speech_frames() -> Vec<Vec<u8>> {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16")).expect("fixture");
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    samples.chunks_exact(160).map(|f| f.iter().map(|&s| cxb_codecs::g711::encode_mulaw(s)).collect()).collect()
}

#[test]
fn turn_echo_plays_the_turn_back_marks_it_and_yields_to_barge_in() {
    let e = engine(|_| {});
    let mut call = connect(e.local_addr(), "/ws/turn-echo").expect("upgrade");
    call.start();
    let speech = speech_frames();
    let silence = vec![0xFFu8; 160];
    for f in &speech {
        call.media(f);
    }
    for _ in 0..10 {
        call.media(&silence);
    }
    // The turn ends 700 ms after the speech; then it plays back, then the mark follows it.
    let mut played = 0;
    let mark = loop {
        let v = call.next_json().expect("playback, then its mark");
        match v["event"].as_str() {
            Some("media") => played += 1,
            Some("mark") => break v["mark"]["name"].as_str().unwrap_or("").to_string(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(mark, "utterance-1");
    assert!(played > speech.len() / 2, "most of the utterance came back ({played} of {} frames)", speech.len());
    call.send(json!({"event":"mark","streamSid":"MZ1","mark":{"name":"utterance-1"}}));

    // Speak again; while it plays back, speak over it.
    for f in &speech {
        call.media(f);
    }
    for _ in 0..10 {
        call.media(&silence);
    }
    let first = call.next_json().expect("second playback");
    assert_eq!(first["event"], "media");
    for f in speech.iter().take(25) {
        call.media(f);
    }
    let event = loop {
        let v = call.next_json().expect("barge-in answer");
        if v["event"] != "media" {
            break v;
        }
    };
    assert_eq!(event["event"], "clear", "barge-in clears the carrier's buffer: {event}");
    e.shutdown();
}
