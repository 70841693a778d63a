//! `cargo xtask converse`: AI phone calls under load, everything on 127.0.0.1.
//!
//! The command starts local servers speaking Deepgram's live transcription protocol, the
//! ElevenLabs stream-input protocol and OpenAI's streamed chat completions (or uses the
//! `script` model, which needs no server), writes a bot that uses them into a temporary
//! folder, starts `cxb core --workers 1 --bots DIR` (its worker pins itself to CPU 0) and runs
//! N Twilio calls from a generator pinned to CPU 1. The test servers are started from the
//! generator's thread after it is pinned, so their threads inherit CPU 1: only the engine
//! runs on CPU 0.
//!
//! Every caller follows the same timeline, shifted by its start in the ramp: 1 s of silence
//! (the greeting), then the fixture's two phrases (1.68 s and 1.42 s) in turn, each followed by
//! silence, on an absolute 20 ms clock. After most phrases the silence outlasts the bot's
//! answer; after every `--barge-every`th it is short, so the caller speaks again while the bot
//! is answering (a barge-in). Marks are echoed as a carrier that played them would.
//!
//! Measured: calls completed, turns answered, barge-ins (`clear` received), the engine's own
//! latency (`cxb_agent_wire_seconds`, `cxb_agent_dispatch_seconds` from `/metrics`,
//! interpolated within buckets as Prometheus' `histogram_quantile` does), at the caller the
//! end of speech to the first frame of the answer and a barge-in's speech to `clear` (a path
//! through the engine alone, socket waits included), the engine's CPU and RSS, per-CPU busy
//! time (so a run disturbed by other processes says so), the inbound frames the engine
//! counted late or lost, outbound playout lateness and the generator's own lateness.
//! Latencies are taken over the steady part (every call up); counts over the whole run, as
//! are the per-turn stages read from the call results in the engine's outbox afterwards.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::AsyncWriteExt;
use compio::net::TcpStream;
use cxb_engine::ws::Incoming;
use cxb_pipeline::testkit::deepgram::{DeepgramConfig, DeepgramServer, Reply, Step};
use cxb_pipeline::testkit::elevenlabs::{ElevenLabsConfig, ElevenLabsServer};
use cxb_pipeline::testkit::openai::{ChatReply, OpenAiServer, ServerOptions};
use futures_util::future::{Either, select};
use serde_json::json;

use crate::load::{UpgradeError, cpu_ticks, media_bytes, pct, read_into, rss_kib, ticks_per_second, upgrade, write};

const USAGE: &str = "\
usage: cargo xtask converse [options]
  --calls N             concurrent calls (default 100)
  --seconds S           length of each call's stream (default 60)
  --ramp-seconds R      spread call starts over R seconds (default 10)
  --sweep N,N,...       run each level (a fresh engine each), one after another
  --port P              the engine's port on 127.0.0.1 (default 18700)
  --cxb PATH            the engine binary (default: TARGET_DIR/release/cxb)
  --llm openai|script   the language model: the OpenAI-compatible test server over
                        streamed HTTP (default) or the built-in script model
  --no-recording        the bot does not record calls
  --barge-every K       every Kth caller turn barges in (default 3; 0: never)
  --pin CPU             the generator's and test servers' CPU (default 1)
  --turn-model DIR      the bot's turns end by the turn-completion model, run by the engine
                        from DIR (`cargo xtask turn-model` fetches it); reports its decisions
";

/// Engine-added latency bar: p99 of both histograms at or below this.
const BAR: Duration = Duration::from_millis(20);
/// Silence before the first phrase (the greeting plays).
const LEAD_IN_FRAMES: usize = 50;
/// Silence after a phrase that the answer fits in.
const LONG_GAP_FRAMES: usize = 150;
/// Silence after a phrase before the caller barges in (the answer starts about 0.75 s after
/// the end of speech and lasts 0.88 s).
const SHORT_GAP_FRAMES: usize = 65;
/// The fixture's two phrases, in 20 ms frames, each cut after its last loud frame (so the
/// end of speech the caller marks is where the engine's voice detection hears it end). A
/// barge-in always starts with the first, so its onset is always the same.
const PHRASES: [std::ops::Range<usize>; 2] = [0..84, 104..175];
/// The bot's answer to every turn: two sentences, 88 characters, 0.88 s of audio at the
/// ElevenLabs test server's 80 bytes (10 ms) per character.
const ANSWER: &str = "We are open from nine to five on weekdays. On Saturdays we open at ten and close at four.";
/// What the caller says, as the speech-to-text server transcribes it (in turn).
const CALLER_SAYS: [&str; 3] = ["what are your opening hours", "and on saturdays", "thank you"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Llm {
    OpenAi,
    Script,
}

#[derive(Debug, Clone)]
struct Options {
    calls: usize,
    seconds: u64,
    ramp: Duration,
    sweep: Vec<usize>,
    port: u16,
    cxb: PathBuf,
    llm: Llm,
    recording: bool,
    barge_every: usize,
    pin: usize,
    turn_model: Option<PathBuf>,
}

fn default_cxb() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| crate::root().join("target"));
    target.join("release/cxb")
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        calls: 100,
        seconds: 60,
        ramp: Duration::from_secs(10),
        sweep: Vec::new(),
        port: 18700,
        cxb: default_cxb(),
        llm: Llm::OpenAi,
        recording: true,
        barge_every: 3,
        pin: 1,
        turn_model: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value\n\n{USAGE}"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: `{v}` is not a number"));
        match flag.as_str() {
            "--calls" => o.calls = num(value()?)? as usize,
            "--seconds" => o.seconds = num(value()?)?.max(5),
            "--ramp-seconds" => o.ramp = Duration::from_secs(num(value()?)?),
            "--sweep" => {
                o.sweep = value()?.split(',').map(|n| n.trim().parse().map_err(|_| format!("--sweep: bad level `{n}`"))).collect::<Result<_, _>>()?
            }
            "--port" => o.port = u16::try_from(num(value()?)?).map_err(|_| "--port: out of range")?,
            "--cxb" => o.cxb = PathBuf::from(value()?),
            "--llm" => {
                o.llm = match value()?.as_str() {
                    "openai" => Llm::OpenAi,
                    "script" => Llm::Script,
                    other => return Err(format!("--llm: `{other}` is not openai or script")),
                }
            }
            "--no-recording" => o.recording = false,
            "--barge-every" => o.barge_every = num(value()?)? as usize,
            "--pin" => o.pin = num(value()?)? as usize,
            "--turn-model" => o.turn_model = Some(PathBuf::from(value()?)),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    if o.ramp.as_secs() + 5 > o.seconds {
        return Err("--seconds must exceed --ramp-seconds by at least 5 (the steady part is measured)".into());
    }
    Ok(o)
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    if !opts.cxb.is_file() {
        return Err(format!("no engine binary at {} (build it with `cargo build --release`, or pass --cxb)", opts.cxb.display()));
    }
    let levels = if opts.sweep.is_empty() { vec![opts.calls] } else { opts.sweep.clone() };
    for calls in levels {
        let report = run_level(&Options { calls, ..opts.clone() })?;
        report.print();
    }
    Ok(())
}

/// A temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir, String> {
        let path = std::env::temp_dir().join(format!("cxb-converse-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("bots")).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The engine under test, a child process; killed when dropped.
struct Engine {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Engine {
    fn start(o: &Options, dir: &Path) -> Result<Engine, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], o.port));
        let log = dir.join("engine.log");
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&o.cxb)
            .args(["core", "--listen", &addr.to_string(), "--workers", "1", "--idle-timeout-secs", "30"])
            .args(["--allow-private-egress", "127.0.0.0/8"])
            .arg("--bots")
            .arg(dir.join("bots"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(o.turn_model.iter().flat_map(|d| [std::ffi::OsStr::new("--turn-model"), d.as_os_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", o.cxb.display()))?;
        let mut engine = Engine { child, addr, log };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if health_pid(addr) == Some(engine.child.id()) {
                return Ok(engine);
            }
            if Instant::now() > until || engine.child.try_wait().ok().flatten().is_some() {
                return Err(format!("the engine did not come up on {addr}:\n{}", engine.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The engine's pid, from its /health.
fn health_pid(addr: SocketAddr) -> Option<u32> {
    let raw = http_get_blocking(addr, "/health")?;
    let body = raw.split_once("\r\n\r\n")?.1;
    serde_json::from_str::<serde_json::Value>(body).ok()?["pid"].as_u64().map(|p| p as u32)
}

fn http_get_blocking(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    Some(raw)
}

/// `GET path` on the generator's runtime (the engine closes after answering).
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("metrics: {e}"))?;
    let mut w = &stream;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    w.write_all(request.into_bytes()).await.0.map_err(|e| format!("metrics: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let BufResult(r, b) = read_into(&stream, buf).await;
        match r {
            Ok(n) if n > 0 => raw.extend_from_slice(&b[..n]),
            Ok(_) => break,
            Err(e) => return Err(format!("metrics: {e}")),
        }
        buf = b;
        buf.clear();
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).ok_or_else(|| "metrics: no body".to_string())
}

/// A `/metrics` snapshot, summed over workers: histograms as (upper bound, cumulative count)
/// sorted by bound, everything else by series name without labels.
#[derive(Debug, Default, Clone)]
struct Metrics {
    histograms: HashMap<String, Vec<(f64, u64)>>,
    values: HashMap<String, f64>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let name = series.split('{').next().unwrap_or(series);
            if let Some(base) = name.strip_suffix("_bucket") {
                let le = series.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                let buckets = m.histograms.entry(base.to_string()).or_default();
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, count)) => *count += value as u64,
                    None => buckets.push((le, value as u64)),
                }
            } else {
                *m.values.entry(name.to_string()).or_default() += value;
            }
        }
        for buckets in m.histograms.values_mut() {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        m
    }

    /// The histogram `name`'s buckets from `before` to `self`.
    fn delta(&self, before: &Metrics, name: &str) -> Vec<(f64, u64)> {
        let old = before.histograms.get(name);
        self.histograms
            .get(name)
            .map(|buckets| {
                buckets
                    .iter()
                    .map(|&(le, n)| {
                        let was = old.and_then(|o| o.iter().find(|(b, _)| *b == le)).map_or(0, |x| x.1);
                        (le, n.saturating_sub(was))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn value_delta(&self, before: &Metrics, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0) - before.values.get(name).copied().unwrap_or(0.0)
    }
}

/// The `q` quantile of cumulative buckets, interpolated linearly within its bucket (the
/// first bucket starts at 0); `None` without observations, infinity past the last bound.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank && count > below {
            if le.is_infinite() {
                return Some(f64::INFINITY);
            }
            return Some(lower + (le - lower) * (rank - below as f64) / (count - below) as f64);
        }
        lower = le;
        below = count;
    }
    None
}

/// The share of observations at or below `bound` (one of the bucket bounds).
fn share_within(buckets: &[(f64, u64)], bound: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    let within = buckets.iter().find(|(le, _)| (*le - bound).abs() < 1e-9)?.1;
    (total > 0).then(|| within as f64 / total as f64)
}

/// What every caller sends, frame by frame.
struct Timeline {
    /// One `media` message per 20 ms frame.
    messages: Vec<String>,
    /// The frame ending each phrase, and whether the caller barges in after it.
    turn_ends: Vec<(usize, bool)>,
}

fn timeline(o: &Options) -> Timeline {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16")).unwrap_or_default();
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let fixture: Vec<Vec<u8>> = samples.chunks_exact(160).map(|f| f.iter().map(|&s| cxb_codecs::g711::encode_mulaw(s)).collect()).collect();
    let silence = vec![0xFF; 160];
    let total = (o.seconds * 50) as usize;
    let mut frames: Vec<&[u8]> = vec![silence.as_slice(); total];
    let mut turn_ends = Vec::new();
    let mut at = LEAD_IN_FRAMES;
    let mut barged = false;
    for k in 0.. {
        let phrase = if barged { PHRASES[0].clone() } else { PHRASES[k % PHRASES.len()].clone() };
        let Some(audio) = fixture.get(phrase) else { break };
        if at + audio.len() > total {
            break;
        }
        for (i, f) in audio.iter().enumerate() {
            frames[at + i] = f.as_slice();
        }
        at += audio.len();
        let barge = o.barge_every > 0 && (k + 1) % o.barge_every == 0;
        barged = barge;
        turn_ends.push((at - 1, barge));
        at += if barge { SHORT_GAP_FRAMES } else { LONG_GAP_FRAMES };
    }
    let mut b64 = String::new();
    let messages = (1u64..)
        .zip(&frames)
        .map(|(n, f)| {
            b64.clear();
            cxb_codecs::payload::encode_into(f, &mut b64);
            crate::load::twilio_media(n, &b64)
        })
        .collect();
    Timeline { messages, turn_ends }
}

/// The bot file, using the servers at these addresses.
fn bot(o: &Options, stt: &str, tts: &str, llm: Option<&str>) -> serde_json::Value {
    let llm = match llm {
        Some(base_url) => json!({ "provider": "openai", "base_url": base_url, "model": "gpt-4o-mini", "secrets": { "api_key": "sk-load" } }),
        None => json!({ "provider": "script", "options": { "script": { "intents": [], "fallback": ANSWER } } }),
    };
    json!({
        "name": "Load",
        "greeting": "Hello, thanks for calling.",
        "system_prompt": "You answer questions about opening hours.",
        "stt": { "provider": "deepgram", "base_url": stt, "secrets": { "api_key": "dg-load" } },
        "llm": llm,
        "tts": { "provider": "elevenlabs", "base_url": tts, "secrets": { "api_key": "xi-load" } },
        "voice": "voice1",
        "recording": o.recording,
        "turn_detection": { "mode": if o.turn_model.is_some() { "model" } else { "silence" } },
        // The load generator dials in as a carrier would without signing: the engine checks the
        // bot's setting, not a credential (a token check per call is one HMAC, not measured here).
        "inbound": { "allow_unsigned": true },
    })
}

/// One caller turn: when its speech ended and when the answer's first frame came.
#[derive(Debug, Clone, Copy)]
struct Turn {
    ended: Instant,
    answered: Option<Instant>,
    barge: bool,
}

/// What the calls add up to (on the generator's thread).
#[derive(Debug, Default)]
struct Tally {
    connected: usize,
    rejected: usize,
    completed: usize,
    frames_sent: u64,
    bot_frames: u64,
    clears: u64,
    marks: u64,
    turns: Vec<Turn>,
    greeting_us: Vec<u32>,
    /// The caller's speech start (a barge-in) to `clear`.
    clear_us: Vec<u32>,
    late_us: Vec<u32>,
    errors: HashMap<String, usize>,
}

/// What one level measured.
#[derive(Debug, Default)]
struct Report {
    calls: usize,
    seconds: u64,
    llm: &'static str,
    recording: bool,
    steady_seconds: f64,
    connected: usize,
    rejected: usize,
    completed: usize,
    frames_sent: u64,
    bot_frames: u64,
    turns: usize,
    answered: usize,
    barge_turns: usize,
    clears: u64,
    marks: u64,
    /// End of speech to the answer's first frame, steady part (µs, sorted).
    answer_us: Vec<u32>,
    greeting_us: Vec<u32>,
    clear_us: Vec<u32>,
    late_us: Vec<u32>,
    wire: Vec<(f64, u64)>,
    dispatch: Vec<(f64, u64)>,
    playout: Vec<(f64, u64)>,
    engine_late_frames: f64,
    engine_lost_frames: f64,
    /// The turn model over the steady part: decisions, given up, busy seconds, as the
    /// engine's /metrics count them.
    turn_model: Option<(f64, f64, f64)>,
    engine_frames_in: f64,
    engine_cpu_pct: f64,
    generator_cpu_pct: f64,
    /// Per CPU over the steady part, % of that CPU: busy, interrupts + softirqs, stolen by
    /// the host.
    cpus: Vec<(f64, f64, f64)>,
    rss_idle_kib: u64,
    rss_loaded_kib: u64,
    server_threads: Vec<String>,
    errors: HashMap<String, usize>,
    /// Results the engine wrote to its outbox.
    results: usize,
    /// Barge-ins the results count.
    result_barge_ins: u64,
    /// Per-turn stages from the results' `turn_latency_ms` (ms, sorted), whole run.
    stages: Vec<(&'static str, Vec<u32>)>,
}

fn ms(s: Option<f64>) -> String {
    match s {
        Some(v) if v.is_infinite() => "> 1000".into(),
        Some(v) => format!("{:.2}", v * 1e3),
        None => "-".into(),
    }
}

impl Report {
    /// CPU used by other processes (both CPUs, % of one): busy time not spent in
    /// interrupts, the engine or this process.
    fn others_pct(&self) -> f64 {
        let (busy, irq): (f64, f64) = self.cpus.iter().fold((0.0, 0.0), |(b, i), c| (b + c.0, i + c.1));
        (busy - irq - self.engine_cpu_pct - self.generator_cpu_pct).max(0.0)
    }

    fn bar_met(&self) -> bool {
        let p99 = |b: &[(f64, u64)]| quantile(b, 0.99).is_some_and(|v| v <= BAR.as_secs_f64());
        self.completed == self.calls && p99(&self.wire) && p99(&self.dispatch)
    }

    fn print(&self) {
        let hist = |b: &[(f64, u64)]| {
            format!(
                "p50 {} p99 {} ms ({} observations, {} within 20 ms)",
                ms(quantile(b, 0.5)),
                ms(quantile(b, 0.99)),
                b.last().map_or(0, |x| x.1),
                share_within(b, 0.02).map_or("-".into(), |s| format!("{:.3}%", s * 100.0)),
            )
        };
        let max = |v: &[u32]| v.last().map_or(0.0, |&m| f64::from(m) / 1000.0);
        let per_call = self.rss_loaded_kib.saturating_sub(self.rss_idle_kib) as f64 / self.calls.max(1) as f64;
        eprintln!(
            "{} conversational calls, {} s each ({} model, recording {}); steady part {:.0} s\n\
             \x20 calls: connected {}, rejected {}, completed {}\n\
             \x20 turns: {} spoken, {} answered, {} with a barge-in planned; clear received {}; carrier marks received {}\n\
             \x20 frames: {} sent by callers, {} bot frames received\n\
             \x20 engine wire   (audio arrives -> first frame written):  {}\n\
             \x20 engine dispatch (event arrives -> provider request):    {}\n\
             \x20 caller: end of speech -> first answer frame ms p50 {:.1} p99 {:.1} max {:.1} ({} turns)\n\
             \x20 caller: answer -> first greeting frame ms p50 {:.1} p99 {:.1} max {:.1}\n\
             \x20 caller: barge-in speech starts -> clear ms p50 {:.1} p99 {:.1} max {:.1} ({} barge-ins)\n\
             \x20 engine playout lateness: {}\n\
             \x20 engine inbound frames: {:.0} received, {:.0} late, {:.0} lost\n\
             \x20 generator lateness ms p50 {:.3} p99 {:.3} max {:.3}\n\
             \x20 engine CPU {:.1}% of one core; generator + test servers CPU {:.1}%\n\
             \x20 machine: {}; other processes {:.1}%{}\n\
             \x20 engine RSS {} KiB idle -> {} KiB loaded: {:.1} KiB per call\n\
             \x20 test server threads: {}\n\
             \x20 results in the outbox: {} ({} barge-ins); per turn, ms p50 / p99 / max:{}\n\
             \x20 errors: {:?}\n\
             \x20 verdict: {}",
            self.calls,
            self.seconds,
            self.llm,
            if self.recording { "on" } else { "off" },
            self.steady_seconds,
            self.connected,
            self.rejected,
            self.completed,
            self.turns,
            self.answered,
            self.barge_turns,
            self.clears,
            self.marks,
            self.frames_sent,
            self.bot_frames,
            hist(&self.wire),
            hist(&self.dispatch),
            pct(&self.answer_us, 0.5),
            pct(&self.answer_us, 0.99),
            max(&self.answer_us),
            self.answer_us.len(),
            pct(&self.greeting_us, 0.5),
            pct(&self.greeting_us, 0.99),
            max(&self.greeting_us),
            pct(&self.clear_us, 0.5),
            pct(&self.clear_us, 0.99),
            max(&self.clear_us),
            self.clear_us.len(),
            hist(&self.playout),
            self.engine_frames_in,
            self.engine_late_frames,
            self.engine_lost_frames,
            pct(&self.late_us, 0.5),
            pct(&self.late_us, 0.99),
            max(&self.late_us),
            self.engine_cpu_pct,
            self.generator_cpu_pct,
            self.cpus
                .iter()
                .enumerate()
                .map(|(i, (busy, irq, steal))| format!("CPU {i} busy {busy:.1}% (irq+softirq {irq:.1}%, steal {steal:.1}%)"))
                .collect::<Vec<_>>()
                .join("; "),
            self.others_pct(),
            if self.others_pct() > 10.0 { " (OTHER WORK RAN DURING THE RUN: not a valid measurement)" } else { "" },
            self.rss_idle_kib,
            self.rss_loaded_kib,
            per_call,
            self.server_threads.join(", "),
            self.results,
            self.result_barge_ins,
            self.stages
                .iter()
                .map(|(name, v)| format!("\n    {name:<44} {:>7.0} {:>7.0} {:>7.0}", pct(v, 0.5), pct(v, 0.99), max(v)))
                .collect::<String>(),
            self.errors,
            if self.bar_met() {
                "BAR MET (every call completed; engine-added p99 <= 20 ms, wire and dispatch)"
            } else {
                "BAR NOT MET (every call completed; engine-added p99 <= 20 ms, wire and dispatch)"
            },
        );
        if let Some((judged, skipped, busy)) = self.turn_model {
            eprintln!(
                "  turn model, steady part: {judged:.0} pauses judged, {skipped:.0} given up (those turns ended at the silence cap); \
                 {busy:.1} s busy: {:.1} ms a decision, {:.0}% of its thread",
                busy * 1e3 / judged.max(1.0),
                busy / self.steady_seconds.max(1e-9) * 100.0
            );
        }
    }
}

/// The CPU each test server thread may run on, e.g. `deepgram-test: 1`.
fn server_threads() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("?").to_string();
        let name = field("Name:");
        if name.contains("test") || name.contains("testkit") {
            out.push(format!("{name} on CPU {}", field("Cpus_allowed_list:")));
        }
    }
    out.sort();
    out
}

fn run_level(o: &Options) -> Result<Report, String> {
    let dir = TempDir::new(&o.calls.to_string())?;
    // The engine first, from this (unpinned) thread: its worker pins itself to CPU 0.
    let engine = Engine::start(o, &dir.0)?;
    let (addr, pid, bots) = (engine.addr, engine.pid(), dir.0.join("bots"));
    let o2 = o.clone();
    let generator = std::thread::Builder::new()
        .name("generator".into())
        .spawn(move || generate(&o2, addr, &pid, &bots))
        .map_err(|e| format!("generator thread: {e}"))?;
    let mut report = generator.join().map_err(|_| "the generator panicked".to_string())??;
    if report.connected == 0 {
        eprintln!("engine log:\n{}", engine.log_tail());
    }
    // Every result is in the outbox before its call's slot is freed.
    let until = Instant::now() + Duration::from_secs(60);
    while live_calls(addr) != Some(0) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(engine);
    read_results(&dir.0.join("data/outbox"), &mut report);
    Ok(report)
}

fn live_calls(addr: SocketAddr) -> Option<u64> {
    let raw = http_get_blocking(addr, "/health")?;
    let body = raw.split_once("\r\n\r\n")?.1;
    serde_json::from_str::<serde_json::Value>(body).ok()?["live_calls"].as_u64()
}

/// The per-turn latency stages of the results in the outbox: each from the end of the
/// caller's speech as the engine heard it, and the steps between them.
fn read_results(outbox: &Path, report: &mut Report) {
    const STAGES: [&str; 8] = [
        "speech end -> final transcript (STT)",
        "final transcript -> first token (LLM)",
        "first token -> first audio (TTS)",
        "first audio -> first frame (engine wire)",
        "speech end -> final transcript",
        "speech end -> first token",
        "speech end -> first audio",
        "speech end -> first frame on the wire",
    ];
    let mut stages: Vec<Vec<u32>> = vec![Vec::new(); STAGES.len()];
    let entries = std::fs::read_dir(outbox).into_iter().flatten().flatten();
    for entry in entries.filter(|e| e.path().extension().is_some_and(|x| x == "json")) {
        let Ok(text) = std::fs::read(entry.path()) else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else { continue };
        let metrics = &v["result"]["metrics"];
        report.results += 1;
        report.result_barge_ins += metrics["barge_ins"].as_u64().unwrap_or(0);
        for turn in metrics["turn_latency_ms"].as_array().into_iter().flatten() {
            let at = |k: &str| turn[k].as_u64().filter(|&v| v > 0).map(|v| v as u32);
            let (Some(f), Some(t), Some(a), Some(w)) =
                (at("final_transcript_ms"), at("first_token_ms"), at("first_audio_ms"), at("first_frame_ms"))
            else {
                continue;
            };
            let values = [f, t.saturating_sub(f), a.saturating_sub(t), w.saturating_sub(a), f, t, a, w];
            for (stage, value) in stages.iter_mut().zip(values) {
                stage.push(value * 1000);
            }
        }
    }
    for stage in &mut stages {
        stage.sort_unstable();
    }
    report.stages = STAGES.into_iter().zip(stages).collect();
}

/// The generator's thread: pins itself, starts the test servers (their threads inherit the
/// pinning), writes the bot and runs the calls.
fn generate(o: &Options, addr: SocketAddr, pid: &str, bots: &Path) -> Result<Report, String> {
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor.capacity(4096);
    let mut builder = compio::runtime::RuntimeBuilder::new();
    builder.with_proactor(proactor);
    builder.thread_affinity([o.pin].into_iter().collect());
    let rt = builder.build().map_err(|e| format!("runtime: {e}"))?;

    let turns = (o.seconds as usize / 2 + 50).max(CALLER_SAYS.len());
    let stt = DeepgramServer::start(DeepgramConfig {
        script: (0..turns)
            .map(|i| Step::on_finalize(Reply::Final { text: CALLER_SAYS[i % CALLER_SAYS.len()].into(), speech_final: true }))
            .collect(),
        ..DeepgramConfig::default()
    })
    .map_err(|e| format!("deepgram test server: {e}"))?;
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: 80, ..ElevenLabsConfig::default() })
        .map_err(|e| format!("elevenlabs test server: {e}"))?;
    let chat = match o.llm {
        Llm::OpenAi => Some(
            OpenAiServer::start_with(ServerOptions {
                no_recording: true,
                default_reply: Some(ChatReply::text(ANSWER)),
                ..ServerOptions::default()
            })
            .map_err(|e| format!("openai test server: {e}"))?,
        ),
        Llm::Script => None,
    };
    let bot = bot(o, &stt.url(), &tts.url(), chat.as_ref().map(OpenAiServer::base_url).as_deref());
    std::fs::write(bots.join("load.json"), bot.to_string()).map_err(|e| format!("bot file: {e}"))?;
    let server_threads = server_threads();

    let timeline = Rc::new(timeline(o));
    let tally = Rc::new(RefCell::new(Tally::default()));
    let rss_idle = rss_kib(pid).unwrap_or(0);
    let mut report = Report {
        calls: o.calls,
        seconds: o.seconds,
        llm: match o.llm {
            Llm::OpenAi => "OpenAI-compatible chat over HTTP",
            Llm::Script => "script",
        },
        recording: o.recording,
        rss_idle_kib: rss_idle,
        server_threads,
        ..Report::default()
    };
    let result: Result<(), String> = rt.block_on(async {
        let begin = Instant::now();
        let mut handles = Vec::new();
        for i in 0..o.calls {
            let offset = o.ramp.mul_f64(i as f64 / o.calls.max(1) as f64);
            let (timeline, tally) = (timeline.clone(), tally.clone());
            handles.push(compio::runtime::spawn(async move {
                compio::time::sleep_until(begin + offset).await;
                if let Err(e) = call(addr, &timeline, &tally).await {
                    *tally.borrow_mut().errors.entry(e).or_default() += 1;
                }
            }));
        }
        // The steady part: every call up (after the ramp and one more second) until the first
        // call's stream ends.
        let steady_from = begin + o.ramp + Duration::from_secs(1);
        let steady_to = begin + Duration::from_secs(o.seconds);
        compio::time::sleep_until(steady_from).await;
        let before = Metrics::parse(&http_get(addr, "/metrics").await?);
        let (e0, g0, c0, t0) = (cpu_ticks(pid), cpu_ticks("self"), cpu_stat(), Instant::now());
        compio::time::sleep_until(steady_to).await;
        let (e1, g1, c1, elapsed) = (cpu_ticks(pid), cpu_ticks("self"), cpu_stat(), t0.elapsed().as_secs_f64());
        report.cpus = c0
            .iter()
            .zip(&c1)
            .map(|(a, b)| {
                let d = |i: usize| (b[i].saturating_sub(a[i])) as f64 / ticks_per_second() / elapsed * 100.0;
                (d(0) + d(1) + d(2) + d(5) + d(6) + d(7), d(5) + d(6), d(7))
            })
            .collect();
        let after = Metrics::parse(&http_get(addr, "/metrics").await?);
        report.rss_loaded_kib = rss_kib(pid).unwrap_or(0);
        report.steady_seconds = elapsed;
        if let (Some(a), Some(b)) = (e0, e1) {
            report.engine_cpu_pct = (b - a) as f64 / ticks_per_second() / elapsed * 100.0;
        }
        if let (Some(a), Some(b)) = (g0, g1) {
            report.generator_cpu_pct = (b - a) as f64 / ticks_per_second() / elapsed * 100.0;
        }
        report.wire = after.delta(&before, "cxb_agent_wire_seconds");
        report.dispatch = after.delta(&before, "cxb_agent_dispatch_seconds");
        report.playout = after.delta(&before, "cxb_playout_lateness_seconds");
        report.engine_late_frames = after.value_delta(&before, "cxb_late_frames_total");
        report.engine_lost_frames = after.value_delta(&before, "cxb_lost_frames_total");
        report.engine_frames_in = after.value_delta(&before, "cxb_frames_in_total");
        if o.turn_model.is_some() {
            report.turn_model = Some((
                after.value_delta(&before, "cxb_turn_model_decisions_total"),
                after.value_delta(&before, "cxb_turn_model_skipped_total"),
                after.value_delta(&before, "cxb_turn_model_busy_microseconds_total") / 1e6,
            ));
        }
        for h in handles {
            let _ = h.await;
        }
        let t = tally.borrow();
        let mut answer: Vec<u32> = t
            .turns
            .iter()
            .filter(|turn| turn.ended >= steady_from && turn.ended <= steady_to)
            .filter_map(|turn| turn.answered.map(|a| a.duration_since(turn.ended).as_micros() as u32))
            .collect();
        answer.sort_unstable();
        report.answer_us = answer;
        Ok(())
    });
    result?;
    let t = Rc::try_unwrap(tally).map_err(|_| "calls still running")?.into_inner();
    report.connected = t.connected;
    report.rejected = t.rejected;
    report.completed = t.completed;
    report.frames_sent = t.frames_sent;
    report.bot_frames = t.bot_frames;
    report.clears = t.clears;
    report.marks = t.marks;
    report.turns = t.turns.len();
    report.answered = t.turns.iter().filter(|turn| turn.answered.is_some()).count();
    report.barge_turns = t.turns.iter().filter(|turn| turn.barge).count();
    report.greeting_us = t.greeting_us;
    report.greeting_us.sort_unstable();
    report.clear_us = t.clear_us;
    report.clear_us.sort_unstable();
    report.late_us = t.late_us;
    report.late_us.sort_unstable();
    report.errors = t.errors;
    drop((stt, tts, chat));
    Ok(report)
}

/// Per CPU, the first eight fields of its `/proc/stat` line (clock ticks): user, nice,
/// system, idle, iowait, irq, softirq, steal.
fn cpu_stat() -> Vec<[u64; 8]> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let mut f = [0u64; 8];
            for (slot, v) in f.iter_mut().zip(l.split_whitespace().skip(1)) {
                *slot = v.parse().unwrap_or(0);
            }
            f
        })
        .collect()
}

/// The `name` of a `mark` message.
fn mark_name(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v["mark"]["name"].as_str().map(str::to_string)
}

/// One caller: the timeline on an absolute 20 ms clock, the bot's audio, `clear` and marks
/// (echoed), then `stop` once the answer to the last phrase had time to come.
async fn call(addr: SocketAddr, timeline: &Timeline, tally: &RefCell<Tally>) -> Result<(), String> {
    let (stream, buf, mut ws) = match upgrade(addr, "/ws/load").await {
        Ok(up) => up,
        Err(UpgradeError::Refused(e)) => {
            tally.borrow_mut().rejected += 1;
            return Err(e);
        }
        Err(UpgradeError::Io(e)) => return Err(e),
    };
    tally.borrow_mut().connected += 1;
    for m in crate::load::TWILIO_START {
        ws.send_text(m);
    }
    let mut out = Vec::new();
    write(&stream, &mut ws, &mut out).await?;

    let t0 = Instant::now();
    let total = timeline.messages.len();
    let end = t0 + Duration::from_millis(20) * total as u32 + Duration::from_millis(1500);
    let mut next = 0usize;
    let mut ends = timeline.turn_ends.iter().peekable();
    let mut turns: Vec<Turn> = Vec::new();
    let mut waiting = false;
    // A barge-in: the frame where the caller speaks again early, then when that was sent.
    let (mut barge_frame, mut barge_sent) = (None, None::<Instant>);
    let mut clear_us = Vec::new();
    let (mut greeting, mut bot_bytes, mut clears, mut marks) = (None, 0usize, 0u64, 0u64);
    let mut late = Vec::with_capacity(total);
    let mut read = Box::pin(read_into(&stream, buf));
    let result = loop {
        let due = t0 + Duration::from_millis(20) * next as u32;
        let wake = if next < total { due } else { end };
        match select(read.as_mut(), Box::pin(compio::time::sleep_until(wake))).await {
            Either::Left((BufResult(Ok(n), b), _)) if n > 0 => {
                ws.feed(&b[..n]);
                let mut b = b;
                b.clear();
                read = Box::pin(read_into(&stream, b));
                let now = Instant::now();
                let mut echo = Vec::new();
                loop {
                    match ws.read() {
                        Ok(Some(Incoming::Text(t))) => {
                            if let Some(bytes) = media_bytes(t) {
                                bot_bytes += bytes;
                                if turns.is_empty() {
                                    greeting.get_or_insert(now.duration_since(t0));
                                }
                                if waiting && let Some(turn) = turns.last_mut() {
                                    turn.answered = Some(now);
                                    waiting = false;
                                }
                            } else if t.starts_with(r#"{"event":"clear""#) {
                                clears += 1;
                                if let Some(at) = barge_sent.take() {
                                    clear_us.push(now.duration_since(at).as_micros() as u32);
                                }
                            } else if t.starts_with(r#"{"event":"mark""#) {
                                marks += 1;
                                if let Some(name) = mark_name(t) {
                                    echo.push(name);
                                }
                            }
                        }
                        Ok(Some(Incoming::Closed)) => break,
                        Ok(Some(Incoming::Binary)) | Ok(None) => break,
                        Err(e) => return Err(format!("websocket: {e:?}")),
                    }
                }
                for name in echo {
                    let name = serde_json::Value::String(name);
                    ws.send_text(&format!(r#"{{"event":"mark","sequenceNumber":"0","streamSid":"load","mark":{{"name":{name}}}}}"#));
                }
                write(&stream, &mut ws, &mut out).await?;
            }
            Either::Left(_) => break Err("the engine closed the call early".to_string()),
            Either::Right(_) => {
                if next >= total {
                    break Ok(());
                }
                let now = Instant::now();
                late.push(now.saturating_duration_since(due).as_micros() as u32);
                ws.send_text(&timeline.messages[next]);
                if barge_frame == Some(next) {
                    barge_sent = Some(now);
                }
                if let Some(&(_, barge)) = ends.next_if(|(frame, _)| *frame == next) {
                    turns.push(Turn { ended: now, answered: None, barge });
                    waiting = true;
                    barge_frame = barge.then_some(next + 1 + SHORT_GAP_FRAMES);
                }
                next += 1;
                write(&stream, &mut ws, &mut out).await?;
            }
        }
    };
    ws.send_text(crate::load::TWILIO_STOP);
    let _ = write(&stream, &mut ws, &mut out).await;
    let mut t = tally.borrow_mut();
    t.completed += usize::from(result.is_ok());
    t.frames_sent += next as u64;
    t.bot_frames += (bot_bytes / 160) as u64;
    t.clears += clears;
    t.marks += marks;
    t.turns.extend(turns);
    t.greeting_us.extend(greeting.map(|g| g.as_micros() as u32));
    t.clear_us.extend(clear_us);
    t.late_us.extend(late);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = [(0.001, 50), (0.002, 90), (0.005, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&buckets, 0.5), Some(0.001));
        let p = quantile(&buckets, 0.7).unwrap_or_default();
        assert!((p - 0.0015).abs() < 1e-12, "{p}");
        let p = quantile(&buckets, 0.95).unwrap_or_default();
        assert!((p - 0.0035).abs() < 1e-12, "{p}");
        assert_eq!(quantile(&[(0.001, 0), (f64::INFINITY, 0)], 0.5), None);
        assert_eq!(quantile(&[(0.001, 1), (f64::INFINITY, 3)], 0.99), Some(f64::INFINITY));
        assert_eq!(share_within(&buckets, 0.002), Some(0.9));
    }

    #[test]
    fn metrics_sum_workers_and_subtract_snapshots() {
        let text = "# TYPE x histogram\n\
            x_bucket{worker=\"0\",le=\"0.01\"} 3\nx_bucket{worker=\"0\",le=\"+Inf\"} 4\n\
            x_bucket{worker=\"1\",le=\"0.01\"} 1\nx_bucket{worker=\"1\",le=\"+Inf\"} 1\n\
            cxb_late_frames_total{worker=\"0\"} 7\ncxb_late_frames_total{worker=\"1\"} 2\n";
        let after = Metrics::parse(text);
        assert_eq!(after.histograms["x"], vec![(0.01, 4), (f64::INFINITY, 5)]);
        let before = Metrics::parse("x_bucket{worker=\"0\",le=\"0.01\"} 1\nx_bucket{worker=\"0\",le=\"+Inf\"} 1\ncxb_late_frames_total{worker=\"0\"} 4\n");
        assert_eq!(after.delta(&before, "x"), vec![(0.01, 3), (f64::INFINITY, 4)]);
        assert_eq!(after.value_delta(&before, "cxb_late_frames_total"), 5.0);
    }

    #[test]
    fn the_timeline_alternates_phrases_and_plans_barge_ins() {
        let o = parse(&["--seconds".into(), "60".into()]).unwrap_or_else(|e| panic!("{e}"));
        let t = timeline(&o);
        assert_eq!(t.messages.len(), 3000);
        assert!(t.turn_ends.len() >= 12, "{} turns", t.turn_ends.len());
        assert_eq!(t.turn_ends[0].0, LEAD_IN_FRAMES + 83);
        // After a short gap the caller starts the first phrase again.
        assert_eq!(t.turn_ends[3].0 - t.turn_ends[2].0, SHORT_GAP_FRAMES + PHRASES[0].len());
        let barges: Vec<bool> = t.turn_ends.iter().map(|e| e.1).collect();
        assert_eq!(&barges[..6], &[false, false, true, false, false, true]);
        // Speech in the phrases, silence (mu-law 0xFF, base64 "/////") between them.
        assert!(t.messages[0].contains(r#""payload":"/////"#));
        assert!(!t.messages[LEAD_IN_FRAMES + 10].contains(r#""payload":"/////"#));
    }
}
