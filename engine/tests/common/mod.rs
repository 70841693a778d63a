//! A carrier's side of the engine's sockets, for tests: a blocking tungstenite client that
//! speaks the Twilio and Exotel media protocols.
#![allow(dead_code, unreachable_pub)]

pub mod baresip;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cxb_contract::call_token::{CallClaims, CallKey, KeyRing};
use cxb_engine::{Engine, EngineConfig};
use serde_json::{Value, json};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// An engine on a free loopback port with its files in a fresh temp directory.
pub fn engine(tweak: impl FnOnce(&mut EngineConfig)) -> Engine {
    let dir = tempdir();
    let mut c = EngineConfig::new("127.0.0.1:0".parse().expect("addr"));
    c.workers = 1;
    c.slots_per_worker = 16;
    c.pin = false;
    c.registry = dir.join("slots");
    c.control_socket = dir.join("ctl.sock");
    c.idle_timeout = Duration::from_secs(10);
    c.write_timeout = Duration::from_millis(300);
    c.demo_bots = true;
    c.call_keys = keys();
    // The providers' test servers listen on loopback.
    c.egress = cxb_contract::egress::EgressPolicy::with_loopback();
    tweak(&mut c);
    Engine::start(c).expect("engine starts")
}

/// The call-token key every test engine holds.
pub fn keys() -> KeyRing {
    KeyRing::new(vec![CallKey::new("test", &[42; 32]).expect("key")])
}

/// Claims for a call to `bot`: a fresh `jti`, valid for an hour.
pub fn claims(bot: &str) -> CallClaims {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CallClaims {
        jti: format!("jti-{}-{n}", std::process::id()),
        bot_id: bot.into(),
        call_id: "cl-test".into(),
        org_id: "org-test".into(),
        exp: now + 3600,
        ..CallClaims::default()
    }
}

/// A call token for `claims`, signed with [`keys`].
pub fn token(claims: &CallClaims) -> String {
    keys().sign(claims).expect("signed")
}

pub fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cxb-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A raw HTTP exchange: the status code and body.
pub fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A raw WebSocket upgrade request with extra `headers`: the status, the response head and
/// the body (empty for 101; the connection is then left to close).
pub fn upgrade(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if status == 101 {
        return (101, head, String::new());
    }
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

pub fn health(addr: SocketAddr) -> Value {
    serde_json::from_str(&get(addr, "/health").1).expect("health is JSON")
}

/// Polls `f` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

pub struct Carrier {
    pub ws: WebSocket<TcpStream>,
    pub exotel: bool,
    chunk: u64,
}

pub fn connect(addr: SocketAddr, path: &str) -> Result<Carrier, tungstenite::Error> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let (ws, _) = tungstenite::client::client(format!("ws://{addr}{path}"), stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
    })?;
    Ok(Carrier { ws, exotel: path.starts_with("/exotel/"), chunk: 0 })
}

impl Carrier {
    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn send_raw(&mut self, m: Message) {
        let _ = self.ws.send(m);
    }

    pub fn start(&mut self) {
        if self.exotel {
            self.send(json!({"event":"connected"}));
            self.send(json!({"event":"start","sequence_number":1,"stream_sid":"s1","start":{"stream_sid":"s1","call_sid":"c1","account_sid":"a1","from":"+911","to":"+912","media_format":{"encoding":"audio/x-raw","sample_rate":"8000","bit_rate":"16"}}}));
        } else {
            self.send(json!({"event":"connected","protocol":"Call","version":"1.0.0"}));
            self.send(json!({"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}));
        }
    }

    pub fn media(&mut self, bytes: &[u8]) {
        let m = self.media_message(bytes);
        self.send(m);
    }

    /// Sends a media frame; `false` once the engine has closed the call.
    pub fn try_media(&mut self, bytes: &[u8]) -> bool {
        let m = self.media_message(bytes);
        self.ws.send(Message::text(m.to_string())).is_ok()
    }

    fn media_message(&mut self, bytes: &[u8]) -> Value {
        self.chunk += 1;
        let payload = STANDARD.encode(bytes);
        let c = self.chunk;
        if self.exotel {
            json!({"event":"media","sequence_number":c + 1,"stream_sid":"s1","media":{"chunk":c,"timestamp":(c * 100).to_string(),"payload":payload}})
        } else {
            json!({"event":"media","sequenceNumber":(c + 1).to_string(),"streamSid":"MZ1","media":{"track":"inbound","chunk":c.to_string(),"timestamp":(c * 20).to_string(),"payload":payload}})
        }
    }

    pub fn stop(&mut self) {
        self.send(json!({"event":"stop","sequenceNumber":"99","stop":{"accountSid":"AC1","callSid":"CA1"}}));
    }

    /// The next text message as JSON; `None` on close or timeout.
    pub fn next_json(&mut self) -> Option<Value> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next `media` payload, decoded.
    pub fn next_media(&mut self) -> Option<Vec<u8>> {
        loop {
            let v = self.next_json()?;
            if v["event"] == "media" {
                return STANDARD.decode(v["media"]["payload"].as_str()?).ok();
            }
        }
    }

    /// Reads until the server's close frame; its code and reason.
    pub fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(CloseFrame { code, reason }))) => return Some((code.into(), reason.to_string())),
                Ok(Message::Close(None)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

/// 20 ms of mu-law carrying a 1 kHz tone (loud enough to be voice to nothing but VAD).
pub fn mulaw_frame() -> Vec<u8> {
    (0..160).map(|i| cxb_codecs::g711::encode_mulaw(((i as f64 * std::f64::consts::PI / 4.0).sin() * 8000.0) as i16)).collect()
}

/// Results as the outbox would get them: each as JSON, with its recording.
#[derive(Debug, Default)]
pub struct Captured(pub std::sync::Mutex<Vec<(Value, Option<Vec<u8>>)>>);

impl cxb_engine::ResultSink for Captured {
    fn submit(&self, result: cxb_engine::results::CallResult, recording: Option<Vec<u8>>) -> flume::Receiver<Result<(), String>> {
        let result = serde_json::to_value(&result).expect("a result is JSON");
        self.0.lock().expect("lock").push((result, recording));
        let (tx, rx) = flume::bounded(1);
        let _ = tx.send(Ok(()));
        rx
    }
}
