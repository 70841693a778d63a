//! A real SIP client against the engine: baresip (`common::baresip`) calls the built-in bots.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::baresip::{Baresip, free_port, tone};
use common::{claims, engine, eventually, health, http, token};
use cxb_engine::Engine;
use cxb_engine::sip::SipConfig;

fn sip_engine() -> (Engine, SocketAddr) {
    let engine = engine(|c| {
        c.sip = Some(SipConfig::new("127.0.0.1:0".parse().expect("addr")));
        c.fault_injection = true;
    });
    let sip = engine.sip_addr().expect("SIP port");
    (engine, sip)
}

/// Zero crossings per second of `samples` at 8 kHz, over two: the frequency of a pure tone.
fn frequency(samples: &[i16]) -> f64 {
    let crossings = samples.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (samples.len() as f64 / 8000.0)
}

#[test]
fn baresip_calls_the_echo_bot_over_udp_and_tcp_and_in_opus_hears_its_own_tone_and_hangs_up() {
    let (engine, sip) = sip_engine();
    for (codec, transport) in [("PCMU", ""), ("PCMU", ";transport=tcp"), ("opus", "")] {
        let mut phone = Baresip::start_with(codec, "phone", &tone(10), "");
        phone.command("dial", &format!("sip:echo@{sip}{transport}"));
        assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{transport}: {}", phone.log());
        assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 1));
        std::thread::sleep(Duration::from_secs(2)); // two seconds of the tone go out and come back
        phone.command("hangup", "");
        assert!(phone.event("CALL_CLOSED", Duration::from_secs(5)).is_some(), "{}", phone.log());
        assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0), "the BYE ended the call");
        assert!(phone.log().contains(&format!("Set audio decoder: {codec}")), "{codec} was negotiated: {}", phone.log());
        let heard = phone.heard();
        // The middle of what it heard (past the first packets, before the hang-up): the echo of
        // its own tone.
        assert!(heard.len() >= 12_000, "heard {} samples", heard.len());
        let tail = &heard[heard.len() / 4..heard.len() * 3 / 4];
        let rms = (tail.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / tail.len().max(1) as f64).sqrt();
        assert!(rms > 3_000.0, "{codec}{transport}: heard the echo, RMS {rms:.0}");
        let f = frequency(tail);
        assert!((400.0..480.0).contains(&f), "{codec}{transport}: at 440 Hz: {f:.0}");
    }
    engine.shutdown();
}

/// SIP over TLS: baresip, trusting the engine's certificate, calls over `transport=tls` on the
/// engine's TLS port, hears its tone come back, and hangs up over the same connection.
#[test]
fn baresip_calls_over_tls_and_hears_its_tone() {
    let fixture = |name: &str| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let engine = engine(|c| {
        c.tls = Some(cxb_engine::tls::TlsConfig::load(&fixture("tls-cert.pem"), &fixture("tls-key.pem")).expect("the test certificate"));
        let mut sip = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
        sip.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.sip = Some(sip);
    });
    let tls = engine.sip_tls_addr().expect("the TLS port");
    let mut phone = Baresip::start_trusting(&fixture("tls-cert.pem"), &tone(10));
    phone.command("dial", &format!("sip:echo@{tls};transport=tls"));
    // (The engine's HTTP port serves TLS too here, so its /health is not read.)
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
    std::thread::sleep(Duration::from_secs(2));
    phone.command("hangup", "");
    let closed = phone.event("CALL_CLOSED", Duration::from_secs(5)).expect("closed");
    assert!(closed["peeruri"].as_str().is_some_and(|u| u.ends_with(";transport=tls")), "{closed}");
    let heard = phone.heard();
    assert!(heard.len() >= 12_000, "heard {} samples", heard.len());
    let f = frequency(&heard[heard.len() / 4..heard.len() * 3 / 4]);
    assert!((400.0..480.0).contains(&f), "its tone came back: {f:.0} Hz");
    engine.shutdown();
}

#[test]
fn a_key_pressed_on_baresip_reaches_the_bot_and_the_engine_hangs_up() {
    let (engine, sip) = sip_engine();
    let mut phone = Baresip::start(&tone(10), "");
    // The `fault` bot panics on a key press: the engine ends that call with a BYE.
    phone.command("dial", &format!("sip:fault@{sip}"));
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
    std::thread::sleep(Duration::from_millis(300));
    phone.command("sndcode", "5");
    let closed = phone.event("CALL_CLOSED", Duration::from_secs(5)).expect("the engine hung up");
    assert!(closed["param"].as_str().is_some_and(|p| p.contains("reset by peer")), "a BYE from the engine: {closed}");
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0));
    engine.shutdown();
}

/// kamailio (Debian's), as a record-routing proxy between baresip and the engine.
struct Kamailio(std::process::Child, std::path::PathBuf);

impl Kamailio {
    fn start(engine_sip: SocketAddr) -> (Kamailio, SocketAddr) {
        let dir = std::env::temp_dir().join(format!("cxb-kamailio-{}-{}", std::process::id(), engine_sip.port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let port = free_port();
        let config = format!(
            r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
disable_tcp=yes
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
modparam("rr", "enable_full_lr", 1)
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("INVITE")) {{ record_route(); }}
    $du = "sip:{engine_sip}";
    if (!t_relay()) {{ sl_reply_error(); }}
}}
"#
        );
        std::fs::write(dir.join("kamailio.cfg"), config).expect("config");
        use std::os::unix::process::CommandExt as _;
        // In a process group of its own: kamailio stops by signalling its whole group.
        let child = std::process::Command::new("kamailio")
            .process_group(0)
            .args(["-DD", "-E", "-m", "32", "-M", "4", "-f"])
            .arg(dir.join("kamailio.cfg"))
            .arg("-w")
            .arg(&dir)
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("kamailio.log")).expect("log"))
            .spawn()
            .expect("kamailio runs (apt-get install kamailio; .ci/run does)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        // Ready when it answers an OPTIONS it forwards to the engine (which answers 200).
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        probe.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let local = probe.local_addr().expect("addr");
        let options = format!("OPTIONS sip:{engine_sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe\r\nMax-Forwards: 70\r\nFrom: <sip:p@{local}>;tag=p\r\nTo: <sip:{engine_sip}>\r\nCall-ID: kamailio-probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        loop {
            let _ = probe.send_to(options.as_bytes(), addr);
            if let Ok((n, _)) = probe.recv_from(&mut buf)
                && buf[..n].starts_with(b"SIP/2.0 200")
            {
                break;
            }
            assert!(std::time::Instant::now() < until, "kamailio did not forward: {}", std::fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default());
        }
        (Kamailio(child, dir), addr)
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM: kamailio's main process stops its worker processes too.
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Through a proxy, requests in the dialog follow its Record-Route both ways: baresip's BYE
/// reaches the engine, and the engine's BYE (after the `fault` bot's key) reaches baresip.
#[test]
fn calls_through_a_kamailio_proxy_are_answered_and_hung_up_either_way() {
    let (engine, sip) = sip_engine();
    let (_proxy, proxy) = Kamailio::start(sip);
    let mut phone = Baresip::start(&tone(10), "");
    phone.command("dial", &format!("sip:echo@{proxy}"));
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 1));
    phone.command("hangup", "");
    assert!(phone.event("CALL_CLOSED", Duration::from_secs(5)).is_some());
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0), "the caller's BYE came through");
    drop(phone);
    let mut phone = Baresip::start(&tone(10), "");
    phone.command("dial", &format!("sip:fault@{proxy}"));
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
    std::thread::sleep(Duration::from_millis(300));
    phone.command("sndcode", "5");
    let closed = phone.event("CALL_CLOSED", Duration::from_secs(5)).expect("the engine's BYE came through");
    assert!(closed["param"].as_str().is_some_and(|p| p.contains("reset by peer")), "{closed}");
    engine.shutdown();
}

/// The engine dials out through a "trunk" (baresip itself, auto-answering): the call token
/// admits the request, the INVITE rings baresip, and the bot's audio (its own tone, echoed)
/// comes back to it; baresip's BYE ends the call.
#[test]
fn the_engine_dials_baresip_which_answers_and_hears_the_bot() {
    let (engine, _sip) = sip_engine();
    let mut phone = Baresip::start_as("+15550100", &tone(10), "");
    let dial = |bot: &str, token: &str, host: &str| {
        let body = format!(r#"{{"to":"+15550100","from":"+15550199","trunk":{{"host":"{host}","port":{}}}}}"#, phone.sip.port());
        let request = format!("POST /sip/dial/{bot}?token={token} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        http(engine.local_addr(), &request)
    };
    let (status, body) = dial("echo", "ct1.forged", "127.0.0.1");
    assert_eq!(status, 401, "{body}");
    let (status, body) = dial("echo", &token(&claims("echo")), "0.0.0.0");
    assert_eq!(status, 403, "the trunk passes the egress policy: {body}");
    let (status, body) = dial("echo", &token(&claims("echo")), "127.0.0.1");
    assert_eq!(status, 202, "{body}");
    assert!(body.contains(r#""call_id":"cl-test""#), "{body}");
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 1));
    let sip_call_id = serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["sip_call_id"].as_str().expect("sip_call_id").replace('@', "%40");
    let (status, state) = http(engine.local_addr(), &format!("GET /sip/calls/{sip_call_id} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(status, 200);
    assert!(state.contains(r#""state":"answered","status":200"#), "{state}");
    std::thread::sleep(Duration::from_secs(2));
    phone.command("hangup", "");
    assert!(phone.event("CALL_CLOSED", Duration::from_secs(5)).is_some());
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0), "the BYE ended the call");
    let heard = phone.heard();
    assert!(heard.len() >= 12_000, "heard {} samples", heard.len());
    let middle = &heard[heard.len() / 4..heard.len() * 3 / 4];
    let f = frequency(middle);
    assert!((400.0..480.0).contains(&f), "its own tone came back through the bot: {f:.0} Hz");
    drop(phone);

    // A trunk reached over TCP: the engine connects, the INVITE and the rest of the dialog
    // go over that connection, the media as before.
    let mut phone = Baresip::start_as("+15550100", &tone(10), "");
    let body = format!(r#"{{"to":"+15550100","from":"+15550199","trunk":{{"host":"127.0.0.1","port":{},"transport":"tcp"}}}}"#, phone.sip.port());
    let request = format!("POST /sip/dial/echo?token={} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", token(&claims("echo")), body.len());
    let (status, body) = http(engine.local_addr(), &request);
    assert_eq!(status, 202, "{body}");
    assert!(phone.event("CALL_ESTABLISHED", Duration::from_secs(10)).is_some(), "{}", phone.log());
    std::thread::sleep(Duration::from_secs(1));
    phone.command("hangup", "");
    assert!(phone.event("CALL_CLOSED", Duration::from_secs(5)).is_some());
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0), "the BYE over TCP ended the call");
    engine.shutdown();
}
