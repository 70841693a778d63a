//! The engine as a SIP endpoint on loopback: a blocking user agent here sends INVITEs with
//! SDP and RTP to the engine's SIP port and reads what comes back.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{engine, eventually, health, mulaw_frame};
use cxb_codecs::rtp::{RtpPacket, TelephoneEvent};
use cxb_engine::Engine;
use cxb_engine::sip::SipConfig;
use cxb_sip::message::{Message, StartLine};

fn sip_engine(tweak: impl FnOnce(&mut cxb_engine::EngineConfig)) -> (Engine, SocketAddr) {
    let engine = engine(|c| {
        c.sip = Some(SipConfig::new("127.0.0.1:0".parse().expect("addr")));
        tweak(c);
    });
    let sip = engine.sip_addr().expect("SIP port");
    (engine, sip)
}

/// A user agent on one socket (signalling and RTP).
struct Phone {
    socket: UdpSocket,
    local: SocketAddr,
    engine: SocketAddr,
    call_id: String,
    to_tag: String,
    cseq: u32,
}

const SDP_PCMU: &str = "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

impl Phone {
    fn new(engine: SocketAddr, call_id: &str) -> Phone {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let local = socket.local_addr().expect("addr");
        Phone { socket, local, engine, call_id: call_id.to_string(), to_tag: String::new(), cseq: 1 }
    }

    fn invite(&self, user: &str, media: &str) {
        let media = media.replace("{port}", &self.local.port().to_string());
        let sdp = format!("v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{media}");
        let msg = format!(
            "INVITE sip:{user}@{e} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK{c}\r\nMax-Forwards: 70\r\nFrom: <sip:+15550100@{l}>;tag=t{c}\r\nTo: <sip:{user}@{e}>\r\nCall-ID: {c}\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{l}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            e = self.engine,
            l = self.local,
            c = self.call_id
        );
        self.send(&msg);
    }

    fn request(&mut self, method: &str, extra: &str, body: &str) {
        if method != "ACK" {
            self.cseq += 1;
        }
        let msg = format!(
            "{method} sip:x@{e} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK{c}{method}{n}\r\nMax-Forwards: 70\r\nFrom: <sip:+15550100@{l}>;tag=t{c}\r\nTo: <sip:x@{e}>;tag={tag}\r\nCall-ID: {c}\r\nCSeq: {n} {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len(),
            e = self.engine,
            l = self.local,
            c = self.call_id,
            tag = self.to_tag,
            n = if method == "ACK" { 1 } else { self.cseq },
        );
        self.send(&msg);
    }

    fn send(&self, msg: &str) {
        self.socket.send_to(msg.as_bytes(), self.engine).expect("send");
    }

    /// The next SIP message within `limit` (RTP skipped), as text.
    fn next_sip(&self, limit: Duration) -> Option<String> {
        let until = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf)
                && buf[0] & 0xC0 != 0x80
            {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Reads SIP until a final response; its code and text.
    fn final_response(&mut self) -> (u16, String) {
        loop {
            let text = self.next_sip(Duration::from_secs(5)).expect("a response");
            let m = Message::parse(text.as_bytes()).expect("SIP");
            if let StartLine::Response { code, .. } = m.start
                && code >= 200
            {
                self.to_tag = m.tag("To").unwrap_or_default().to_string();
                return (code, text.clone());
            }
        }
    }

    /// Answered: the engine's RTP address from the 200's SDP, after ACKing it.
    fn answered(&mut self) -> SocketAddr {
        let (code, text) = self.final_response();
        assert_eq!(code, 200, "{text}");
        let m = Message::parse(text.as_bytes()).expect("SIP");
        let sdp = cxb_sip::sdp::SessionDescription::parse(std::str::from_utf8(m.body).expect("utf8")).expect("SDP answer");
        let n = sdp.negotiate().expect("G.711");
        assert_eq!(n.codec, cxb_sip::sdp::Codec::Pcmu);
        assert_eq!(n.dtmf, Some(101));
        self.request("ACK", "", "");
        let (ip, port) = n.remote.expect("address");
        SocketAddr::new(ip, port)
    }

    fn rtp(&self, to: SocketAddr, pt: u8, seq: u16, payload: &[u8]) {
        let mut out = Vec::new();
        RtpPacket { marker: false, payload_type: pt, sequence: seq, timestamp: u32::from(seq) * 160, ssrc: 9, payload }.write(&mut out);
        self.socket.send_to(&out, to).expect("rtp");
    }

    /// RTP packets that are not silence, counted for `limit`, and silent packets that came
    /// between two that were not (comfort silence must not cut into audio); SIP requests are
    /// kept.
    fn count_voice(&self, limit: Duration, sip: &mut Vec<String>) -> (usize, usize) {
        let until = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        let (mut voice, mut gaps, mut silent_run) = (0, 0, 0);
        while Instant::now() < until {
            let Ok((n, _)) = self.socket.recv_from(&mut buf) else { continue };
            match RtpPacket::parse(&buf[..n]) {
                Ok(p) if buf[0] & 0xC0 == 0x80 => {
                    if p.payload.iter().all(|&b| b == 0xFF) {
                        silent_run += 1;
                    } else {
                        if voice > 0 {
                            gaps += silent_run;
                        }
                        silent_run = 0;
                        voice += 1;
                    }
                }
                _ => sip.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            }
        }
        (voice, gaps)
    }
}

#[test]
fn a_call_to_echo_is_answered_its_audio_comes_back_and_a_bye_ends_it() {
    let (engine, sip) = sip_engine(|_| {});
    let mut phone = Phone::new(sip, "echo-1");
    phone.invite("echo", SDP_PCMU);
    let first = phone.next_sip(Duration::from_secs(5)).expect("100 Trying");
    assert!(first.starts_with("SIP/2.0 100"), "{first}");
    let media = phone.answered();
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 1));
    let frame = mulaw_frame();
    for seq in 0..25 {
        phone.rtp(media, 0, seq, &frame);
    }
    let mut requests = Vec::new();
    let (voice, gaps) = phone.count_voice(Duration::from_millis(1500), &mut requests);
    assert!(voice >= 20, "echoed {voice} of 25 frames");
    assert_eq!(gaps, 0, "silence packets between echoed frames");
    assert!(requests.is_empty(), "{requests:?}");
    phone.request("BYE", "", "");
    let (code, _) = phone.final_response();
    assert_eq!(code, 200);
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0));
    engine.shutdown();
}

#[test]
fn unknown_users_offers_of_no_codec_the_engine_speaks_and_a_full_host_are_refused_with_their_codes() {
    let (engine, sip) = sip_engine(|c| c.slots_per_worker = 1);
    let mut nobody = Phone::new(sip, "nobody");
    nobody.invite("no-such-bot", SDP_PCMU);
    assert_eq!(nobody.final_response().0, 404);
    let mut g722 = Phone::new(sip, "g722-only");
    g722.invite("echo", "m=audio {port} RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n");
    assert_eq!(g722.final_response().0, 488);
    let mut first = Phone::new(sip, "first");
    first.invite("echo", SDP_PCMU);
    first.answered();
    let mut second = Phone::new(sip, "second");
    second.invite("echo", SDP_PCMU);
    let (code, text) = second.final_response();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("Retry-After:"), "{text}");
    engine.shutdown();
}

#[test]
fn options_is_answered_and_garbage_on_the_port_disturbs_no_call() {
    let (engine, sip) = sip_engine(|_| {});
    let mut phone = Phone::new(sip, "steady");
    phone.invite("echo", SDP_PCMU);
    let media = phone.answered();
    let junk = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let frame = mulaw_frame();
    let garbage: [&[u8]; 6] = [
        b"\x00\x01\x02",
        b"INVITE sip:x SIP/2.0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nCall-ID: steady\r\n\r\n",
        b"BYE sip:x SIP/2.0\r\nCall-ID: steady\r\nCSeq: nope\r\n\r\n",
        &[0x80; 3],
        &[0xFF; 1500],
    ];
    for seq in 0..25u16 {
        for g in garbage {
            let _ = junk.send_to(g, sip);
            let _ = junk.send_to(g, media);
        }
        phone.rtp(media, 0, seq, &frame);
    }
    // Over TCP, a stream whose framing is lost is closed.
    let mut tcp = std::net::TcpStream::connect(sip).expect("tcp");
    tcp.write_all(b"\r\n\r\nNOT SIP\r\nContent-Length: 99999999\r\n\r\n").expect("write");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!(tcp.read(&mut [0u8; 64]).ok(), Some(0), "closed");
    let mut requests = Vec::new();
    let (voice, _) = phone.count_voice(Duration::from_millis(1500), &mut requests);
    assert!(voice >= 20, "echoed {voice} of 25 frames while garbage arrived");
    assert!(requests.is_empty(), "the call was not disturbed: {requests:?}");
    let ping = Phone::new(sip, "ping");
    ping.send(&format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKping\r\nFrom: <sip:p@{l}>;tag=p\r\nTo: <sip:{sip}>\r\nCall-ID: ping\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        l = ping.local
    ));
    let pong = ping.next_sip(Duration::from_secs(5)).expect("an answer");
    assert!(pong.starts_with("SIP/2.0 200") && pong.contains("Allow:"), "{pong}");
    assert_eq!(health(engine.local_addr())["live_calls"], 1);
    let (_, metrics) = common::get(engine.local_addr(), "/metrics");
    let malformed = metrics.lines().find_map(|l| l.strip_prefix("cxb_sip_malformed_total ")).and_then(|v| v.parse::<u64>().ok());
    assert!(malformed.is_some_and(|n| n >= 25 * 3), "the garbage is counted: {malformed:?}");
    engine.shutdown();
}

/// Key presses reach the bot by RFC 4733 and by SIP INFO: the `fault` bot panics on one, and
/// the engine ends that call with a BYE of its own.
#[test]
fn key_presses_reach_the_bot_and_the_engine_hangs_up_with_a_bye() {
    let (engine, sip) = sip_engine(|c| c.fault_injection = true);
    for by_info in [false, true] {
        let mut phone = Phone::new(sip, if by_info { "info-key" } else { "rtp-key" });
        phone.invite("fault", SDP_PCMU);
        let media = phone.answered();
        if by_info {
            phone.request("INFO", "Content-Type: application/dtmf-relay\r\n", "Signal=5\r\nDuration=160\r\n");
        } else {
            let key = TelephoneEvent { event: 5, end: false, volume: 10, duration: 160 }.to_bytes();
            phone.rtp(media, 101, 1, &key);
        }
        let bye = (0..20).find_map(|_| phone.next_sip(Duration::from_millis(500)).filter(|m| m.starts_with("BYE ")));
        let bye = bye.expect("the engine's BYE");
        let m = Message::parse(bye.as_bytes()).expect("SIP");
        assert_eq!(m.tag("From"), Some(phone.to_tag.as_str()), "in the dialog: {bye}");
        let mut ok = String::new();
        cxb_sip::message::response(&m, 200, "OK", None, &[], "", &mut ok);
        phone.send(&ok);
    }
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0));
    engine.shutdown();
}

/// A trunk that refuses the engine's INVITE: the refusal is acknowledged, the slot freed, and
/// the call-end record posted to the call's CDR URL says why (486 → busy).
#[test]
fn a_refused_dial_ends_with_a_call_end_record_of_its_disposition() {
    let (engine, _sip) = sip_engine(|_| {});
    let trunk = UdpSocket::bind("127.0.0.1:0").expect("bind");
    trunk.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let cdr_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let cdr_url = format!("http://{}/cdr?token=t1", cdr_listener.local_addr().expect("addr"));
    let body = format!(r#"{{"to":"+15550100","from":"+15550199","trunk":{{"host":"127.0.0.1","port":{}}},"cdr_url":"{cdr_url}"}}"#, trunk.local_addr().expect("addr").port());
    let token = common::token(&common::claims("echo"));
    let request = format!("POST /sip/dial/echo?token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let (status, answer) = common::http(engine.local_addr(), &request);
    assert_eq!(status, 202, "{answer}");
    let mut buf = [0u8; 4096];
    let (n, from) = trunk.recv_from(&mut buf).expect("the INVITE");
    let invite = Message::parse(&buf[..n]).expect("SIP");
    assert_eq!(invite.method(), Some("INVITE"));
    assert!(std::str::from_utf8(invite.body).expect("utf8").contains("m=audio"), "an SDP offer");
    let mut busy = String::new();
    cxb_sip::message::response(&invite, 486, "Busy Here", Some("trunk"), &[], "", &mut busy);
    trunk.send_to(busy.as_bytes(), from).expect("486");
    let (n, _) = trunk.recv_from(&mut buf).expect("the ACK");
    assert!(buf[..n].starts_with(b"ACK "), "{}", String::from_utf8_lossy(&buf[..n]));
    cdr_listener.set_nonblocking(false).expect("blocking");
    let (mut conn, _) = cdr_listener.accept().expect("the CDR's request");
    conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("\"ended_at_ms\"") {
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "closed early");
        raw.extend_from_slice(&chunk[..n]);
    }
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").expect("answer");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("POST /cdr?token=t1 "), "{text}");
    let cdr: serde_json::Value = serde_json::from_str(text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default()).expect("JSON");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str(), cdr["session"].as_str()), (Some("busy"), Some("486"), Some("cl-test")), "{cdr}");
    assert!(cdr["answered_at_ms"].is_null());
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0), "the slot is free");

    // A trunk reached over TCP: the INVITE comes over a connection the engine opened, with
    // a TCP Via, and the ACK of the refusal follows on it.
    let trunk = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let body = format!(r#"{{"to":"+15550100","from":"+15550199","trunk":{{"host":"127.0.0.1","port":{},"transport":"tcp"}}}}"#, trunk.local_addr().expect("addr").port());
    let request = format!("POST /sip/dial/echo?token={} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", common::token(&common::claims("echo")), body.len());
    let (status, answer) = common::http(engine.local_addr(), &request);
    assert_eq!(status, 202, "{answer}");
    let (mut conn, _) = trunk.accept().expect("the engine connects");
    conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut raw = Vec::new();
    let invite_len = loop {
        if let Ok(Some(len)) = cxb_sip::message::frame(&raw) {
            break len;
        }
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "closed early");
        raw.extend_from_slice(&chunk[..n]);
    };
    let invite = Message::parse(&raw[..invite_len]).expect("SIP");
    assert!(invite.header("Via").is_some_and(|v| v.starts_with("SIP/2.0/TCP ")), "{}", String::from_utf8_lossy(&raw));
    assert!(String::from_utf8_lossy(&raw[..invite_len]).starts_with("INVITE sip:+15550100@127.0.0.1:"));
    // Ringing: the engine says so to whoever asks about the call.
    let mut ringing = String::new();
    cxb_sip::message::response(&invite, 180, "Ringing", Some("trunk"), &[], "", &mut ringing);
    conn.write_all(ringing.as_bytes()).expect("180");
    let sip_call_id: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    let path = format!("/sip/calls/{}", sip_call_id["sip_call_id"].as_str().expect("sip_call_id").replace('@', "%40"));
    let state = |path: &str| common::http(engine.local_addr(), &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(eventually(Duration::from_secs(5), || state(&path).1.contains(r#""state":"ringing","status":180"#)), "{:?}", state(&path));
    let mut busy = String::new();
    cxb_sip::message::response(&invite, 486, "Busy Here", Some("trunk"), &[], "", &mut busy);
    raw.drain(..invite_len);
    conn.write_all(busy.as_bytes()).expect("486");
    while !String::from_utf8_lossy(&raw).contains("\r\n\r\n") {
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "closed early");
        raw.extend_from_slice(&chunk[..n]);
    }
    assert!(raw.starts_with(b"ACK "), "{}", String::from_utf8_lossy(&raw));
    assert!(eventually(Duration::from_secs(5), || health(engine.local_addr())["live_calls"] == 0), "the slot is free");
    assert!(eventually(Duration::from_secs(5), || state(&path).0 == 404), "the call is gone");
    engine.shutdown();
}
