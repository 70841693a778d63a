//! `wss://` through the engine's rustls: health over HTTPS, an echo call over TLS, and plain
//! HTTP or garbage on the TLS port closed without harm to the call in progress.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cxb_engine::tls::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tungstenite::Message;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn tls_engine() -> cxb_engine::Engine {
    let tls = TlsConfig::load(&fixture("tls-cert.pem"), &fixture("tls-key.pem")).expect("the test certificate loads");
    common::engine(move |c| c.tls = Some(tls))
}

/// A TLS client that trusts the test certificate.
fn connect_tls(addr: SocketAddr) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("tls-cert.pem")).expect("cert")).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").expect("name")).expect("client");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn health_and_an_echo_call_over_tls() {
    let e = tls_engine();
    let addr = e.local_addr();

    let mut https = connect_tls(addr);
    https.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    let _ = https.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    let body: Value = serde_json::from_str(raw.split_once("\r\n\r\n").expect("body").1).expect("json");
    assert_eq!(body["status"], "ok");

    let (mut ws, _) = tungstenite::client(format!("wss://localhost:{}/ws/echo", addr.port()), connect_tls(addr)).expect("wss upgrade");
    let send = |ws: &mut tungstenite::WebSocket<Tls>, v: Value| ws.send(Message::text(v.to_string())).expect("send");
    send(&mut ws, json!({"event":"connected","protocol":"Call","version":"1.0.0"}));
    send(&mut ws, json!({"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}));
    let frame = base64::engine::general_purpose::STANDARD.encode(common::mulaw_frame());
    let mut echoed = 0;
    for i in 0..50 {
        send(&mut ws, json!({"event":"media","sequenceNumber":(i + 2).to_string(),"streamSid":"MZ1","media":{"track":"inbound","chunk":(i + 1).to_string(),"timestamp":(i * 20).to_string(),"payload":frame}}));
        loop {
            let Message::Text(t) = ws.read().expect("read") else { continue };
            if serde_json::from_str::<Value>(t.as_str()).expect("json")["event"] == "media" {
                echoed += 1;
                break;
            }
        }
    }
    assert_eq!(echoed, 50, "every frame came back through TLS");

    // Plain HTTP and garbage on the TLS port are closed; the call goes on.
    for junk in [&b"GET /health HTTP/1.1\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0][..]] {
        let mut plain = TcpStream::connect(addr).expect("connect");
        plain.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        plain.write_all(junk).expect("send");
        let mut got = Vec::new();
        let _ = plain.read_to_end(&mut got);
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "no plaintext answer");
    }
    send(&mut ws, json!({"event":"media","sequenceNumber":"99","streamSid":"MZ1","media":{"track":"inbound","chunk":"60","timestamp":"1200","payload":frame}}));
    let still = loop {
        let Message::Text(t) = ws.read().expect("read") else { continue };
        let v: Value = serde_json::from_str(t.as_str()).expect("json");
        if v["event"] == "media" {
            break v;
        }
    };
    assert_eq!(still["event"], "media");
    e.shutdown();
}
