//! Shared by the binary's end-to-end tests: a child process killed when dropped,
//! `cxb core --api` started as its own process on a free port, and an API with an organization
//! whose admin is signed in.

#![allow(dead_code, clippy::unwrap_used)]

pub(crate) mod browser;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cxb_pipeline::testkit::deepgram::{DeepgramConfig, DeepgramServer, Reply, Step};
use cxb_pipeline::testkit::elevenlabs::{ElevenLabsConfig, ElevenLabsServer};

/// A child process, killed and reaped when dropped.
pub(crate) struct Kill(pub(crate) std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cxb core --listen 127.0.0.1:0 --no-pin --demo-bots --allow-private-egress 127.0.0.0/8 --api BASE` plus `extra`, with its registry,
/// control socket and data in `dir` and the fleet token in the environment; returns the process
/// and its port once it prints it.
pub(crate) fn core(dir: &Path, base: &str, fleet_token: &str, extra: &[&str]) -> (Kill, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxb"))
        .args(["core", "--listen", "127.0.0.1:0", "--no-pin", "--demo-bots", "--allow-private-egress", "127.0.0.0/8", "--api", base])
        .args(extra)
        .arg("--registry")
        .arg(dir.join("slots"))
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .arg("--data-dir")
        .arg(dir)
        .env("CXB_FLEET_TOKEN", fleet_token)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("core.log")).map_or(Stdio::null(), Stdio::from))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("health      http://127.0.0.1:") {
                let _ = tx.send(rest.trim_end_matches("/health").parse::<u16>().unwrap_or(0));
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    (child, port)
}

/// An API over SQLite in `dir` (requests for tenants may reach loopback, where the tests'
/// servers are) with organization Acme: the server, its base URL, an engine fleet token and the
/// admin's bearer token.
pub(crate) async fn api_with_org(dir: &Path) -> (cxb_control_plane::ApiServer, String, String, String) {
    use cxb_control_plane::clock::{Clock, SystemClock};
    use cxb_control_plane::{ApiConfig, ApiServer, admin};
    let mut config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), format!("sqlite://{}/cxb.db", dir.display()));
    config.egress = cxb_contract::egress::EgressPolicy::with_loopback();
    let api = ApiServer::start(config).await.unwrap();
    let base = format!("http://{}", api.local_addr());
    let now = SystemClock.now_ms();
    admin::create_org(&api.state().db, "Acme", "a@acme.test", "correct horse battery".into(), now).await.unwrap();
    let fleet = admin::create_fleet_token(&api.state().db, "test", now).await.unwrap();
    let login = reqwest::Client::new()
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"email":"a@acme.test","password":"correct horse battery"}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&login.bytes().await.unwrap()).unwrap();
    let token = body["token"].as_str().unwrap().to_string();
    (api, base, fleet, token)
}

/// This machine's host name as `cxb core` puts it in its fleet host id (`hostname:port`).
pub(crate) fn hostname() -> String {
    let host = std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty());
    host.or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "localhost".into())
}

/// About a second of speech, then silence long enough to end the turn: mu-law frames.
pub(crate) fn caller_turn() -> Vec<Vec<u8>> {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/codecs/tests/fixtures/speech-8k.s16")).unwrap();
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut frames: Vec<Vec<u8>> = samples.chunks_exact(160).take(60).map(|f| f.iter().map(|&s| cxb_codecs::g711::encode_mulaw(s)).collect()).collect();
    frames.extend(std::iter::repeat_n(vec![0xFF; 160], 15));
    frames
}

/// Media bytes received until `quiet` passes without any after the first (at most `limit`).
pub(crate) fn hear(ws: &mut tungstenite::WebSocket<std::net::TcpStream>, quiet: Duration, limit: Duration) -> usize {
    let (end, mut last, mut bytes) = (std::time::Instant::now() + limit, None::<std::time::Instant>, 0);
    ws.get_ref().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    while std::time::Instant::now() < end && last.is_none_or(|t| t.elapsed() < quiet) {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["event"] == "media" {
                    use base64::Engine as _;
                    bytes += base64::engine::general_purpose::STANDARD.decode(v["media"]["payload"].as_str().unwrap()).unwrap().len();
                    last = Some(std::time::Instant::now());
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("the call broke: {e}"),
        }
    }
    bytes
}

/// Fake Deepgram and ElevenLabs servers on loopback and a bot that uses them: it greets, hears
/// "when are you open" at the end of the caller's turn, and answers "Nine to five." (script).
/// Keep the servers alive as long as the call.
pub(crate) fn front_desk() -> (DeepgramServer, ElevenLabsServer, serde_json::Value) {
    let stt = DeepgramServer::start(DeepgramConfig {
        script: vec![Step::on_finalize(Reply::Final { text: "when are you open".into(), speech_final: true })],
        ..DeepgramConfig::default()
    })
    .unwrap();
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: 160, ..ElevenLabsConfig::default() }).unwrap();
    let bot = serde_json::json!({
        "name": "Front desk",
        "greeting": "Hello!",
        "stt": { "provider": "deepgram", "base_url": stt.url(), "secrets": { "api_key": "dg-secret" } },
        "llm": { "provider": "script", "options": { "script": {
            "intents": [{ "name": "hours", "keywords": ["open"], "reply": "Nine to five." }],
            "fallback": "Sorry?"
        } } },
        "tts": { "provider": "elevenlabs", "base_url": tts.url(), "secrets": { "api_key": "xi-secret" } },
        "voice": "v1",
    });
    (stt, tts, bot)
}
