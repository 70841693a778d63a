//! `cargo xtask load`: concurrent calls over real WebSockets against a running engine.
//!
//! Each call is a carrier: `connected`, `start`, then media on an absolute clock (20 ms
//! frames for Twilio, 100 ms chunks for Exotel) taken from the speech fixture, then `stop`.
//! It measures how much audio comes back (echo ratio), the latency of each echoed frame by
//! its offset in the stream (to see growth), the generator's own lateness, and the server's
//! CPU and RSS from /proc. All calls run on one pinned compio thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;
use cxb_engine::ws::{Incoming, WsSocket};

mod pump;
mod sip;
mod webrtc;

const USAGE: &str = "\
usage: cargo xtask load [options]
  --addr HOST:PORT      engine address (default 127.0.0.1:8080)
  --calls N             concurrent calls (default 100)
  --seconds S           length of each call's stream (default 60)
  --protocol P          twilio | exotel | sip | webrtc (default twilio); for sip, --addr
                        is the engine's SIP port and --server-pid is needed; webrtc calls
                        POST /webrtc/BOT on --addr and send Opus
  --tls-ca PEM          connect over TLS (wss://), trusting this certificate; server name localhost
  --bot ID              bot to call (default echo)
  --ramp-seconds R      spread call starts over R seconds (default 5)
  --pin CPU             pin the generator to this CPU (default 1; -1 for none)
  --server-pid PID      server to sample (default: the pid /health reports)
  --sweep N,N,...       run each level for --seconds, report which held
  --epoll               run the generator on epoll instead of io_uring
";

#[derive(Debug, Clone)]
struct Options {
    addr: SocketAddr,
    calls: usize,
    seconds: u64,
    exotel: bool,
    /// SIP calls with RTP media instead of carrier WebSockets.
    sip: bool,
    /// Browser calls over WebRTC (Opus) instead of carrier WebSockets.
    webrtc: bool,
    /// Connect over TLS, trusting this configuration's roots.
    tls: Option<Arc<rustls::ClientConfig>>,
    bot: String,
    ramp: Duration,
    pin: Option<usize>,
    server_pid: Option<u32>,
    sweep: Vec<usize>,
    epoll: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        addr: "127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?,
        calls: 100,
        seconds: 60,
        exotel: false,
        sip: false,
        webrtc: false,
        tls: None,
        bot: "echo".into(),
        ramp: Duration::from_secs(5),
        pin: Some(1),
        server_pid: None,
        sweep: Vec::new(),
        epoll: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value\n\n{USAGE}"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: `{v}` is not a number"));
        match flag.as_str() {
            "--addr" => o.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--calls" => o.calls = num(value()?)? as usize,
            "--seconds" => o.seconds = num(value()?)?,
            "--protocol" => (o.exotel, o.sip, o.webrtc) = match value()?.as_str() {
                "twilio" => (false, false, false),
                "exotel" => (true, false, false),
                "sip" => (false, true, false),
                "webrtc" => (false, false, true),
                other => return Err(format!("--protocol: `{other}` is not twilio, exotel, sip or webrtc")),
            },
            "--bot" => o.bot = value()?,
            "--ramp-seconds" => o.ramp = Duration::from_secs(num(value()?)?),
            "--pin" => {
                let v = value()?;
                o.pin = if v == "-1" { None } else { Some(num(v)? as usize) };
            }
            "--server-pid" => o.server_pid = Some(num(value()?)? as u32),
            "--sweep" => {
                o.sweep = value()?.split(',').map(|n| n.trim().parse().map_err(|_| format!("--sweep: bad level `{n}`"))).collect::<Result<_, _>>()?
            }
            "--epoll" => o.epoll = true,
            "--tls-ca" => o.tls = Some(tls_client(&value()?)?),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    Ok(o)
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    let levels = if opts.sweep.is_empty() { vec![opts.calls] } else { opts.sweep.clone() };
    let mut highest = None;
    for calls in levels {
        let report = run_level(&Options { calls, ..opts.clone() })?;
        report.print();
        if report.held() {
            highest = Some(calls);
        } else if !opts.sweep.is_empty() {
            break;
        }
        if !opts.sweep.is_empty() {
            std::thread::sleep(Duration::from_secs(2)); // let the engine settle between levels
        }
    }
    if !opts.sweep.is_empty() {
        match highest {
            Some(n) => eprintln!("highest level held: {n} calls"),
            None => eprintln!("no level held"),
        }
    }
    Ok(())
}

/// What one level measured.
#[derive(Debug, Default)]
struct Report {
    calls: usize,
    connected: usize,
    rejected: usize,
    seconds: u64,
    protocol: &'static str,
    frames_sent: u64,
    frames_echoed: u64,
    /// Latency samples (µs) per 10 s window of stream offset.
    windows: Vec<Vec<u32>>,
    gen_late_us: Vec<u32>,
    server_cpu_pct: f64,
    generator_cpu_pct: f64,
    rss_before_kib: u64,
    rss_loaded_kib: u64,
    errors: HashMap<String, usize>,
}

pub(crate) fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

impl Report {
    fn echo_ratio(&self) -> f64 {
        if self.frames_sent == 0 { 0.0 } else { self.frames_echoed as f64 / self.frames_sent as f64 }
    }

    fn all_latencies(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self.windows.iter().flatten().copied().collect();
        all.sort_unstable();
        all
    }

    fn window_p99(&self) -> Vec<f64> {
        self.windows
            .iter()
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut w = w.clone();
                w.sort_unstable();
                pct(&w, 0.99)
            })
            .collect()
    }

    /// Latency growth: last window's p99 minus the first's, in ms.
    fn growth_ms(&self) -> f64 {
        let p = self.window_p99();
        match (p.first(), p.last()) {
            (Some(a), Some(b)) if p.len() > 1 => b - a,
            _ => 0.0,
        }
    }

    fn held(&self) -> bool {
        let all = self.all_latencies();
        self.connected == self.calls && self.echo_ratio() >= 0.999 && pct(&all, 0.99) <= 60.0 && self.growth_ms() <= 10.0
    }

    fn print(&self) {
        let all = self.all_latencies();
        let mut late = self.gen_late_us.clone();
        late.sort_unstable();
        let per_call = if self.calls > 0 {
            (self.rss_loaded_kib.saturating_sub(self.rss_before_kib)) as f64 / self.calls as f64
        } else {
            0.0
        };
        eprintln!(
            "{} calls ({}), {} s: connected {}, rejected {}\n  echo ratio {:.5} ({} of {} frames)\n  latency ms p50 {:.2} p95 {:.2} p99 {:.2} max {:.2}\n  p99 by 10 s window of stream offset: {}\n  latency growth (last - first window p99): {:+.2} ms\n  generator lateness ms p50 {:.3} p99 {:.3} max {:.3}\n  server CPU {:.1}% of one core, generator CPU {:.1}%\n  server RSS {} KiB idle -> {} KiB loaded: {:.1} KiB per call\n  errors: {:?}\n  verdict: {}",
            self.calls,
            self.protocol,
            self.seconds,
            self.connected,
            self.rejected,
            self.echo_ratio(),
            self.frames_echoed,
            self.frames_sent,
            pct(&all, 0.5),
            pct(&all, 0.95),
            pct(&all, 0.99),
            all.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
            self.window_p99().iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>().join(" "),
            self.growth_ms(),
            pct(&late, 0.5),
            pct(&late, 0.99),
            late.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
            self.server_cpu_pct,
            self.generator_cpu_pct,
            self.rss_before_kib,
            self.rss_loaded_kib,
            per_call,
            self.errors,
            if self.held() { "HELD (echo >= 99.9%, p99 <= 60 ms, growth <= 10 ms)" } else { "DID NOT HOLD" },
        );
    }
}

/// Reads utime+stime (clock ticks) of a process.
pub(crate) fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(crate) fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(crate) fn ticks_per_second() -> f64 {
    100.0 // USER_HZ on Linux
}

/// The server's pid, from its /health.
fn health_pid(addr: SocketAddr) -> Option<u32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let body = raw.split_once("\r\n\r\n")?.1;
    serde_json::from_str::<serde_json::Value>(body).ok()?["pid"].as_u64().map(|p| p as u32)
}

/// Per-frame messages, built once and shared by every call.
struct Script {
    messages: Vec<String>,
    /// 20 ms frames carried by each message.
    frames_per_message: u64,
    period: Duration,
    start: [String; 2],
}

fn script(exotel: bool, seconds: u64) -> Script {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16")).unwrap_or_default();
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let (per, frames_per_message, period) = if exotel { (800, 5, Duration::from_millis(100)) } else { (160, 1, Duration::from_millis(20)) };
    let count = (seconds * 1000 / period.as_millis() as u64) as usize;
    let chunks: Vec<&[i16]> = samples.chunks_exact(per).collect();
    let mut messages = Vec::with_capacity(count);
    for k in 0..count {
        let chunk = chunks.get(k % chunks.len().max(1)).copied().unwrap_or(&[]);
        let mut bytes = Vec::new();
        let mut b64 = String::new();
        if exotel {
            cxb_codecs::l16::encode_into(chunk, &mut bytes);
        } else {
            cxb_codecs::g711::encode_mulaw_into(chunk, &mut bytes);
        }
        cxb_codecs::payload::encode_into(&bytes, &mut b64);
        let n = k as u64 + 1;
        messages.push(if exotel {
            format!(r#"{{"event":"media","sequence_number":"{}","stream_sid":"load","media":{{"chunk":"{n}","timestamp":"{}","payload":"{b64}"}}}}"#, n + 1, n * 100)
        } else {
            twilio_media(n, &b64)
        });
    }
    let start = if exotel {
        [
            r#"{"event":"connected"}"#.to_string(),
            r#"{"event":"start","sequence_number":"1","stream_sid":"load","start":{"stream_sid":"load","call_sid":"c","account_sid":"a","from":"+10000000000","to":"+10000000001","custom_parameters":{},"media_format":{"encoding":"audio/x-raw","sample_rate":"8000","bit_rate":"16"}}}"#.to_string(),
        ]
    } else {
        TWILIO_START.map(str::to_string)
    };
    Script { messages, frames_per_message, period, start }
}

/// Twilio's `connected` and `start` (mu-law 8 kHz, stream `load`).
pub(crate) const TWILIO_START: [&str; 2] = [
    r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    r#"{"event":"start","sequenceNumber":"1","streamSid":"load","start":{"accountSid":"AC","streamSid":"load","callSid":"CA","tracks":["inbound"],"customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#,
];

/// Twilio's `stop`.
pub(crate) const TWILIO_STOP: &str = r#"{"event":"stop","sequenceNumber":"0","stop":{"accountSid":"AC","callSid":"CA"}}"#;

/// Twilio's `media` message for the `n`th 20 ms frame (from 1) carrying base64 `b64`.
pub(crate) fn twilio_media(n: u64, b64: &str) -> String {
    format!(r#"{{"event":"media","sequenceNumber":"{}","streamSid":"load","media":{{"track":"inbound","chunk":"{n}","timestamp":"{}","payload":"{b64}"}}}}"#, n + 1, n * 20)
}

#[derive(Default)]
struct Shared {
    connected: usize,
    rejected: usize,
    frames_sent: u64,
    frames_echoed: u64,
    windows: Vec<Vec<u32>>,
    gen_late_us: Vec<u32>,
    errors: HashMap<String, usize>,
}

fn run_level(o: &Options) -> Result<Report, String> {
    let pid = match o.server_pid {
        Some(pid) => pid,
        None if o.sip => return Err("--protocol sip needs --server-pid (the SIP port has no /health)".into()),
        None => health_pid(o.addr).ok_or("cannot reach the engine's /health (is it running?)")?,
    }
    .to_string();
    let script = Rc::new(script(o.exotel, if o.sip || o.webrtc { 0 } else { o.seconds }));
    let frames: Rc<[[u8; 160]]> = if o.sip { sip::frames(o.seconds).into() } else { Rc::new([]) };
    let packets = Rc::new(webrtc::Packets::new(if o.webrtc { o.seconds } else { 0 })?);
    let shared = Rc::new(RefCell::new(Shared { windows: vec![Vec::new(); (o.seconds / 10 + 2) as usize], ..Shared::default() }));
    let pump = pump::Pump::new()?;
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor.capacity(4096);
    if o.epoll {
        proactor.driver_type(compio::driver::DriverType::Poll);
    }
    let mut builder = compio::runtime::RuntimeBuilder::new();
    builder.with_proactor(proactor);
    if let Some(cpu) = o.pin {
        builder.thread_affinity([cpu].into_iter().collect());
    }
    let rt = builder.build().map_err(|e| format!("runtime: {e}"))?;
    let rss_before = rss_kib(&pid).unwrap_or(0);
    let mut rss_loaded = 0;
    let (mut server_cpu, mut gen_cpu) = (0.0, 0.0);
    rt.block_on(async {
        let begin = Instant::now();
        let stop = Rc::new(std::cell::Cell::new(false));
        {
            let (pump, stop) = (pump.clone(), stop.clone());
            compio::runtime::spawn(async move { pump.run(&stop).await }).detach();
        }
        let mut handles = Vec::new();
        for i in 0..o.calls {
            let offset = o.ramp.mul_f64(i as f64 / o.calls.max(1) as f64);
            let (script, frames, packets, shared, o, pump) = (script.clone(), frames.clone(), packets.clone(), shared.clone(), o.clone(), pump.clone());
            handles.push(compio::runtime::spawn(async move {
                compio::time::sleep_until(begin + offset).await;
                let done = if o.sip {
                    sip::call(&o, i, &frames, &shared, &pump).await
                } else if o.webrtc {
                    webrtc::call(&o, &packets, &shared, &pump).await
                } else {
                    call(&o, &script, &shared, &pump).await
                };
                if let Err(e) = done {
                    *shared.borrow_mut().errors.entry(e).or_default() += 1;
                }
            }));
        }
        // Sample the server over the steady part: after the ramp, for the stream's length.
        compio::time::sleep_until(begin + o.ramp + Duration::from_secs(1)).await;
        let (s0, g0, t0) = (cpu_ticks(&pid), cpu_ticks("self"), Instant::now());
        let steady = Duration::from_secs(o.seconds.saturating_sub(o.ramp.as_secs() + 2).max(1));
        compio::time::sleep(steady).await;
        let (s1, g1, elapsed) = (cpu_ticks(&pid), cpu_ticks("self"), t0.elapsed().as_secs_f64());
        rss_loaded = rss_kib(&pid).unwrap_or(0);
        if let (Some(a), Some(b)) = (s0, s1) {
            server_cpu = (b - a) as f64 / ticks_per_second() / elapsed * 100.0;
        }
        if let (Some(a), Some(b)) = (g0, g1) {
            gen_cpu = (b - a) as f64 / ticks_per_second() / elapsed * 100.0;
        }
        for h in handles {
            let _ = h.await;
        }
        stop.set(true);
    });
    let s = Rc::try_unwrap(shared).map_err(|_| "calls still running")?.into_inner();
    Ok(Report {
        calls: o.calls,
        connected: s.connected,
        rejected: s.rejected,
        seconds: o.seconds,
        protocol: if o.sip { "sip" } else if o.webrtc { "webrtc" } else if o.exotel { "exotel" } else { "twilio" },
        frames_sent: s.frames_sent,
        frames_echoed: s.frames_echoed,
        windows: s.windows,
        gen_late_us: s.gen_late_us,
        server_cpu_pct: server_cpu,
        generator_cpu_pct: gen_cpu,
        rss_before_kib: rss_before,
        rss_loaded_kib: rss_loaded,
        errors: s.errors,
    })
}

pub(crate) async fn read_into(stream: &TcpStream, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
    let mut r = stream;
    r.read(buf).await
}

pub(crate) async fn write(stream: &TcpStream, ws: &mut WsSocket, out: &mut Vec<u8>) -> Result<(), String> {
    if ws.output().is_empty() {
        return Ok(());
    }
    std::mem::swap(ws.output(), out);
    let mut w = stream;
    let BufResult(r, mut b) = w.write_all(std::mem::take(out)).await;
    r.map_err(|e| format!("write: {}", e.kind()))?;
    b.clear();
    *out = b;
    Ok(())
}

/// Length of the audio in a `media` message, from its base64 payload's length.
pub(crate) fn media_bytes(text: &str) -> Option<usize> {
    if !text.starts_with(r#"{"event":"media""#) {
        return None;
    }
    let at = text.find(r#""payload":""#)? + 11;
    let len = text[at..].find('"')?;
    let pad = text[at..at + len].bytes().rev().take_while(|&b| b == b'=').count();
    Some(len / 4 * 3 - pad)
}

/// Why a WebSocket upgrade failed.
pub(crate) enum UpgradeError {
    /// The server answered with something other than 101.
    Refused(String),
    /// The connection failed.
    Io(String),
}

/// A client connection's bytes as they go on the wire: as they are, or through TLS (rustls
/// driven in memory, as the engine drives its side).
pub(crate) enum ClientWire {
    Plain,
    Tls(Box<rustls::ClientConnection>),
}

impl ClientWire {
    /// Socket bytes in; the plaintext they carry appended to `plain`.
    fn receive(&mut self, mut bytes: &[u8], plain: &mut Vec<u8>) -> Result<(), String> {
        let ClientWire::Tls(conn) = self else {
            plain.extend_from_slice(bytes);
            return Ok(());
        };
        while !bytes.is_empty() {
            conn.read_tls(&mut bytes).map_err(|e| format!("tls: {e}"))?;
            let state = conn.process_new_packets().map_err(|e| format!("tls: {e}"))?;
            let n = state.plaintext_bytes_to_read();
            let start = plain.len();
            plain.resize(start + n, 0);
            std::io::Read::read_exact(&mut conn.reader(), &mut plain[start..]).map_err(|e| format!("tls: {e}"))?;
        }
        Ok(())
    }

    /// Plaintext in; what goes on the socket appended to `out` (with anything the TLS session
    /// has waiting, such as its handshake).
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        match self {
            ClientWire::Plain => out.extend_from_slice(plain),
            ClientWire::Tls(conn) => {
                if !plain.is_empty() {
                    let _ = std::io::Write::write_all(&mut conn.writer(), plain);
                }
                while conn.wants_write() {
                    if conn.write_tls(out).is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// A TLS client configuration that trusts the PEM certificate at `path` (a test engine's
/// self-signed one).
pub(crate) fn tls_client(path: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| format!("{path}: {e}"))? {
        roots.add(cert.map_err(|e| format!("{path}: {e}"))?).map_err(|e| format!("{path}: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens a carrier WebSocket to `path`: the stream, a read buffer, and a client socket fed
/// with whatever followed the 101 answer.
pub(crate) async fn upgrade(addr: SocketAddr, path: &str) -> Result<(TcpStream, Vec<u8>, WsSocket), UpgradeError> {
    upgrade_with(addr, path, None).await.map(|(stream, buf, ws, _)| (stream, buf, ws))
}

/// [`upgrade`], through TLS when `tls` is given (server name `localhost`).
pub(crate) async fn upgrade_with(
    addr: SocketAddr,
    path: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(TcpStream, Vec<u8>, WsSocket, ClientWire), UpgradeError> {
    let io = |what: &str, e: std::io::Error| UpgradeError::Io(format!("{what}: {}", e.kind()));
    let stream = TcpStream::connect(addr).await.map_err(|e| io("connect", e))?;
    stream.set_nodelay(true).map_err(|e| io("nodelay", e))?;
    let mut wire = match tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| UpgradeError::Io(e.to_string()))?;
            let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| UpgradeError::Io(e.to_string()))?;
            ClientWire::Tls(Box::new(conn))
        }
        None => ClientWire::Plain,
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut first = Vec::new();
    wire.seal(request.as_bytes(), &mut first);
    let mut w = &stream;
    w.write_all(first).await.0.map_err(|e| io("handshake write", e))?;
    let mut head = Vec::new();
    let mut buf = Vec::with_capacity(8192);
    loop {
        let BufResult(r, b) = read_into(&stream, buf).await;
        let n = r.map_err(|e| io("handshake read", e))?;
        if n == 0 {
            return Err(UpgradeError::Io("closed during handshake".into()));
        }
        wire.receive(&b[..n], &mut head).map_err(UpgradeError::Io)?;
        let mut more = Vec::new();
        wire.seal(&[], &mut more);
        if !more.is_empty() {
            w.write_all(more).await.0.map_err(|e| io("handshake write", e))?;
        }
        buf = b;
        buf.clear();
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                return Err(UpgradeError::Refused(format!("upgrade refused: {}", String::from_utf8_lossy(&head[..head.len().min(12)]))));
            }
            let mut ws = WsSocket::client();
            ws.feed(&head[end + 4..]);
            return Ok((stream, buf, ws, wire));
        }
    }
}

/// [`write`] through the call's wire.
async fn write_wire(stream: &TcpStream, ws: &mut WsSocket, wire: &mut ClientWire, plain: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), String> {
    if ws.output().is_empty() {
        return Ok(());
    }
    std::mem::swap(ws.output(), plain);
    out.clear();
    wire.seal(plain, out);
    plain.clear();
    let mut w = stream;
    let BufResult(r, mut b) = w.write_all(std::mem::take(out)).await;
    r.map_err(|e| format!("write: {}", e.kind()))?;
    b.clear();
    *out = b;
    Ok(())
}

/// One WebSocket call of the load: the upgrade and the start messages here, the media in the
/// pump (`pump`).
async fn call(o: &Options, script: &Rc<Script>, shared: &RefCell<Shared>, pump: &Rc<pump::Pump>) -> Result<(), String> {
    let path = if o.exotel { format!("/exotel/{}", o.bot) } else { format!("/ws/{}", o.bot) };
    let (stream, buf, mut ws, mut wire) = match upgrade_with(o.addr, &path, o.tls.as_ref()).await {
        Ok(up) => up,
        Err(UpgradeError::Refused(e)) => {
            shared.borrow_mut().rejected += 1;
            return Err(e);
        }
        Err(UpgradeError::Io(e)) => return Err(e),
    };
    shared.borrow_mut().connected += 1;
    for m in &script.start {
        ws.send_text(m);
    }
    let (mut out, mut plain) = (Vec::new(), Vec::new());
    write_wire(&stream, &mut ws, &mut wire, &mut plain, &mut out).await?;
    // The pump reads and writes a duplicate of the socket, without blocking, from now on.
    let socket = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().map(std::net::TcpStream::from).map_err(|e| format!("dup: {}", e.kind()))?;
    drop(buf);
    let total = script.messages.len();
    let t0 = Instant::now();
    let done = Rc::new(pump::Done::default());
    pump.add(Box::new(WsMedia {
        socket,
        ws,
        wire,
        script: script.clone(),
        frame_bytes: if o.exotel { 320 } else { 160 },
        t0,
        end: t0 + script.period * total as u32 + Duration::from_millis(500),
        next: 0,
        sent_at: Vec::with_capacity(total),
        echoed_bytes: 0,
        latencies: Vec::with_capacity(total * script.frames_per_message as usize),
        late: Vec::with_capacity(total),
        plain: Vec::new(),
        out: Vec::new(),
        error: None,
        done: done.clone(),
    }))
    .map_err(|e| format!("epoll: {}", e.kind()))?;
    let m = done.wait().await;
    drop(stream);
    let mut s = shared.borrow_mut();
    s.frames_sent += m.next as u64 * script.frames_per_message;
    s.frames_echoed += (m.echoed_bytes / m.frame_bytes) as u64;
    for (w, l) in m.latencies {
        if let Some(win) = s.windows.get_mut(w) {
            win.push(l);
        }
    }
    s.gen_late_us.extend(m.late);
    m.error.map_or(Ok(()), Err)
}

/// A WebSocket call's media, run by the pump: the script's messages on their clock, the
/// echo counted and timed.
struct WsMedia {
    socket: std::net::TcpStream,
    ws: WsSocket,
    wire: ClientWire,
    script: Rc<Script>,
    frame_bytes: usize,
    t0: Instant,
    end: Instant,
    next: usize,
    sent_at: Vec<Instant>,
    echoed_bytes: usize,
    /// (10 s window, µs) per echoed frame.
    latencies: Vec<(usize, u32)>,
    late: Vec<u32>,
    plain: Vec<u8>,
    /// Bytes for the socket that it did not take yet.
    out: Vec<u8>,
    /// Why the call ended early.
    error: Option<String>,
    done: Rc<pump::Done<WsMedia>>,
}

impl WsMedia {
    /// Seals what the WebSocket has to send and writes as much as the socket takes now.
    fn flush(&mut self) {
        if !self.ws.output().is_empty() {
            std::mem::swap(self.ws.output(), &mut self.plain);
            self.wire.seal(&self.plain, &mut self.out);
            self.plain.clear();
        }
        while !self.out.is_empty() {
            match rustix::net::send(&self.socket, &self.out, rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => {
                    self.error.get_or_insert_with(|| format!("write: {e}"));
                    self.out.clear();
                }
            }
        }
    }
}

impl pump::PumpCall for WsMedia {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.socket)
    }

    fn read(&mut self, now: Instant, buf: &mut [u8]) {
        loop {
            match rustix::net::recv(&self.socket, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    self.error.get_or_insert_with(|| "server closed the call early".to_string());
                    break;
                }
                Ok((n, _)) => {
                    self.plain.clear();
                    if let Err(e) = self.wire.receive(&buf[..n], &mut self.plain) {
                        self.error.get_or_insert(e);
                        break;
                    }
                    self.ws.feed(&self.plain);
                    self.plain.clear();
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    self.error.get_or_insert_with(|| format!("read: {e}"));
                    break;
                }
            }
        }
        loop {
            match self.ws.read() {
                Ok(Some(Incoming::Text(t))) => {
                    if let Some(bytes) = media_bytes(t) {
                        let first = self.echoed_bytes / self.frame_bytes;
                        self.echoed_bytes += bytes;
                        let last = self.echoed_bytes / self.frame_bytes;
                        for f in first..last {
                            let msg = f / self.script.frames_per_message as usize;
                            if let Some(at) = self.sent_at.get(msg) {
                                let offset = (msg as u64 * self.script.period.as_millis() as u64 / 10_000) as usize;
                                self.latencies.push((offset, now.duration_since(*at).as_micros() as u32));
                            }
                        }
                    }
                }
                Ok(Some(Incoming::Closed)) | Ok(Some(Incoming::Binary)) | Ok(None) => break,
                Err(e) => {
                    self.error.get_or_insert_with(|| format!("websocket: {e:?}"));
                    break;
                }
            }
        }
        // Pongs and close replies the WebSocket queued.
        self.flush();
    }

    fn tick(&mut self, now: Instant) -> bool {
        let total = self.script.messages.len();
        while self.next < total && self.error.is_none() {
            let due = self.t0 + self.script.period * self.next as u32;
            if due > now {
                break;
            }
            self.late.push(now.saturating_duration_since(due).as_micros() as u32);
            self.sent_at.push(now);
            let message = &self.script.messages[self.next];
            self.ws.send_text(message);
            self.next += 1;
        }
        self.flush();
        if self.error.is_none() && now < self.end {
            return false;
        }
        self.ws.send_text(TWILIO_STOP);
        self.flush();
        true
    }

    fn finish(self: Box<Self>) {
        let done = self.done.clone();
        done.hand_back(self);
    }
}
