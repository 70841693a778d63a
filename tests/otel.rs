//! `cxb core --otlp-endpoint`: an AI call with one answered turn, and a loopback HTTP server
//! standing in for the OpenTelemetry collector. The call's span and its turn's span arrive as
//! OTLP/HTTP JSON in one trace, the turn a child of the call, carrying its stage latencies.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tungstenite::Message;

mod common;

use common::{caller_turn, hear};

/// A collector on loopback: answers every request 200 and passes on its path, content type
/// and body.
fn collector() -> (u16, mpsc::Receiver<(String, String, Vec<u8>)>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let (mut length, mut content_type) = (0, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "content-type" => content_type = value.trim().to_string(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut stream = reader.into_inner();
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").unwrap();
            let path = request_line.split(' ').nth(1).unwrap_or_default().to_string();
            if tx.send((path, content_type, body)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// An attribute's value from an OTLP `attributes` list.
fn attribute<'a>(attributes: &'a Value, key: &str) -> Option<&'a Value> {
    attributes.as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

fn is_hex(v: &Value, len: usize) -> bool {
    v.as_str().is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0'))
}

#[test]
fn call_and_turn_spans_reach_the_collector_as_one_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (collector_port, exports) = collector();
    let (_stt, _tts, mut bot) = common::front_desk();
    bot["recording"] = json!(false);
    bot["inbound"] = json!({ "allow_unsigned": true });
    std::fs::create_dir_all(dir.path().join("bots")).unwrap();
    std::fs::write(dir.path().join("bots/desk.json"), bot.to_string()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_cxb"))
        .args(["core", "--listen", "127.0.0.1:0", "--workers", "1", "--no-pin", "--allow-private-egress", "127.0.0.0/8"])
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{collector_port}"))
        .arg("--bots")
        .arg(dir.path().join("bots"))
        .arg("--registry")
        .arg(dir.path().join("slots"))
        .arg("--control-socket")
        .arg(dir.path().join("ctl.sock"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _core = common::Kill(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("health      http://127.0.0.1:") {
                let _ = tx.send(rest.trim_end_matches("/health").parse::<u16>().unwrap_or(0));
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(20)).unwrap();

    // One call: the greeting, one caller turn and its answer, then the carrier stops the stream.
    let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws/desk"), TcpStream::connect(("127.0.0.1", port)).unwrap()).unwrap();
    let send = |ws: &mut tungstenite::WebSocket<_>, v: Value| ws.send(Message::text(v.to_string())).unwrap();
    send(&mut ws, json!({"event":"connected","protocol":"Call","version":"1.0.0"}));
    send(&mut ws, json!({"event":"start","sequenceNumber":"1","streamSid":"MZ7","start":{"accountSid":"AC7","streamSid":"MZ7","callSid":"CA7","tracks":["inbound"],"customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}));
    assert!(hear(&mut ws, Duration::from_millis(400), Duration::from_secs(10)) > 0, "the greeting");
    for (i, f) in caller_turn().iter().enumerate() {
        send(&mut ws, json!({"event":"media","sequenceNumber":(i + 2).to_string(),"streamSid":"MZ7","media":{"track":"inbound","chunk":(i + 1).to_string(),"timestamp":(i * 20).to_string(),"payload":STANDARD.encode(f)}}));
    }
    assert!(hear(&mut ws, Duration::from_millis(400), Duration::from_secs(10)) > 0, "the answer");
    send(&mut ws, json!({"event":"stop","sequenceNumber":"99","streamSid":"MZ7","stop":{"accountSid":"AC7","callSid":"CA7"}}));
    ws.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while ws.read().is_ok() {}

    // The spans come in batches (at least once a second); gather them until both are in.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut spans: Vec<Value> = Vec::new();
    let found = |spans: &[Value], name: &str| spans.iter().find(|s| s["name"] == name).cloned();
    while found(&spans, "call").is_none() || found(&spans, "turn").is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((path, content_type, body)) = exports.recv_timeout(left) else {
            panic!("no call and turn spans exported in time; got {spans:#?}");
        };
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/json");
        let request: Value = serde_json::from_slice(&body).unwrap();
        for resource in request["resourceSpans"].as_array().unwrap() {
            assert_eq!(attribute(&resource["resource"]["attributes"], "service.name"), Some(&json!({"stringValue": "cxb"})));
            for scope in resource["scopeSpans"].as_array().unwrap() {
                spans.extend(scope["spans"].as_array().unwrap().iter().cloned());
            }
        }
    }
    let call = found(&spans, "call").unwrap();
    let turn = found(&spans, "turn").unwrap();
    assert!(is_hex(&call["traceId"], 32) && is_hex(&call["spanId"], 16) && is_hex(&turn["spanId"], 16), "{call}\n{turn}");
    assert_eq!(turn["traceId"], call["traceId"], "one trace");
    assert_eq!(turn["parentSpanId"], call["spanId"], "the turn is the call's child");
    assert!(call.get("parentSpanId").is_none(), "{call}");
    assert_eq!(call["kind"], 2);
    assert_eq!(attribute(&call["attributes"], "bot"), Some(&json!({"stringValue": "desk"})));
    assert_eq!(attribute(&call["attributes"], "transport"), Some(&json!({"stringValue": "twilio"})));
    let time = |span: &Value, key: &str| span[key].as_str().unwrap().parse::<u64>().unwrap();
    assert!(time(&call, "startTimeUnixNano") <= time(&turn, "startTimeUnixNano"));
    assert!(time(&turn, "endTimeUnixNano") <= time(&call, "endTimeUnixNano"));
    for key in ["final_transcript_ms", "first_token_ms", "first_audio_ms", "first_frame_ms"] {
        let value = attribute(&turn["attributes"], key).unwrap_or_else(|| panic!("{key} in {turn}"));
        value["intValue"].as_str().unwrap().parse::<u64>().unwrap_or_else(|e| panic!("{key}: {value} ({e})"));
    }
    assert!(!body_mentions(&spans, "dg-secret") && !body_mentions(&spans, "xi-secret"), "no provider secret in the spans");
}

fn body_mentions(spans: &[Value], text: &str) -> bool {
    spans.iter().any(|s| s.to_string().contains(text))
}
