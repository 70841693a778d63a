//! Starting and stopping the engine: the acceptor, the workers, the control socket.
//!
//! One acceptor thread takes connections from the listening socket and hands each to the
//! worker with the most free slots (the workers publish their free count with an atomic).
//! A worker that receives an upgrade with no slot left answers 503, so capacity is decided
//! by the worker that owns the slots, never by a shared lock.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::metrics::WorkerMetrics;
use crate::registry::Segment;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where to listen for carriers and HTTP.
    pub listen: SocketAddr,
    /// Worker threads (one per core by default).
    pub workers: usize,
    /// Call slots per worker.
    pub slots_per_worker: usize,
    /// Use epoll even where io_uring is available.
    pub force_epoll: bool,
    /// Pin each worker to its own core.
    pub pin: bool,
    /// The slot registry's shared-memory file.
    pub registry: PathBuf,
    /// The Unix socket for commands.
    pub control_socket: PathBuf,
    /// Offer the built-in `echo` and `turn-echo` bots to anyone who reaches the engine (demos,
    /// load tests). Without it they answer 404.
    pub demo_bots: bool,
    /// Offer the `fault` bot (panics on DTMF), for isolation tests (with `demo_bots`).
    pub fault_injection: bool,
    /// Call-token keys held locally (a standalone engine, tests); the fleet's come with the
    /// heartbeat's answer.
    pub call_keys: cxb_contract::call_token::KeyRing,
    /// This host's id in the fleet: call tokens for another host are refused.
    pub host_id: Option<String>,
    /// How carriers reach this engine (`wss://host`), for the URL Twilio signs.
    pub advertise: Option<String>,
    /// Which addresses calls' requests for their tenant may reach (public only by default).
    pub egress: cxb_contract::egress::EgressPolicy,
    /// AI calls one worker (core) carries at most; beyond, new AI calls answer 503 before the
    /// upgrade instead of the core falling behind every call it has. Default 500: the load
    /// measured to keep the engine's added latency under 20 ms at p99 (docs/PERFORMANCE.md).
    pub ai_calls_per_worker: usize,
    /// Per-address limits before the upgrade.
    pub address_limits: crate::limits::AddressLimitConfig,
    /// Serve `wss://` (and `https://` for health and metrics) with this certificate.
    pub tls: Option<crate::tls::TlsConfig>,
    /// A call with no inbound bytes for this long ends.
    pub idle_timeout: Duration,
    /// A write the peer does not take within this long ends the call (it stopped reading).
    pub write_timeout: Duration,
    /// The kernel send buffer of each call's socket: with `write_timeout`, the bound on what
    /// a peer that stops reading can hold up.
    pub send_buffer: usize,
    /// Where AI bots come from (local files, the API).
    pub bots: crate::agent::BotSource,
    /// Where finished AI calls go (the durable outbox); without one, results are logged and
    /// dropped.
    pub results: Option<std::sync::Arc<dyn ResultSink>>,
}

/// Where finished calls go: a durable outbox that delivers them to the control plane.
pub trait ResultSink: Send + Sync + std::fmt::Debug {
    /// Stores a finished call's result (a `POST /v1/runtime/results` body) and recording (a
    /// WAV file). The receiver answers once the entry is durable (fsynced): the call's slot
    /// is freed only after that.
    fn submit(
        &self,
        result: serde_json::Value,
        recording: Option<Vec<u8>>,
    ) -> flume::Receiver<Result<(), String>>;

    /// Whether the sink can take new calls' results now (not over its disk cap, its last write
    /// did not fail). While it says no, the engine admits no new AI call (503
    /// `outbox_unavailable` before the upgrade); calls already running still submit theirs.
    /// Read on every AI call's admission: keep it to an atomic load. Default: always.
    fn writable(&self) -> bool {
        true
    }

    /// Gauges for `/metrics` (name, help, value): the outbox's disk use and queue. Default:
    /// none.
    fn gauges(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }

    /// A sink for a new AI call's recording that takes it to durable storage as the call goes,
    /// so the call's memory stays bounded whatever its length. Its `write` and `spare` are
    /// called on the call's worker thread and must not block. `None` (the default): the
    /// engine keeps the recording in memory and passes the WAV file to [`ResultSink::submit`].
    fn recording_stream(&self) -> Option<Box<dyn cxb_codecs::wav::RecordingSink>> {
        None
    }

    /// Stores a finished call whose recording went to `recording` (made by
    /// [`ResultSink::recording_stream`], everything written to it), `summary` saying what it
    /// holds; otherwise as [`ResultSink::submit`]. The default, for sinks that make no
    /// streams, stores the result without the recording.
    fn submit_streamed(
        &self,
        result: serde_json::Value,
        recording: Box<dyn cxb_codecs::wav::RecordingSink>,
        summary: cxb_codecs::wav::RecordingSummary,
    ) -> flume::Receiver<Result<(), String>> {
        let _ = (recording, summary);
        self.submit(result, None)
    }
}

impl EngineConfig {
    /// Defaults for listening on `listen`: every core, 1,000 slots each, files named after
    /// the port under the runtime directory.
    pub fn new(listen: SocketAddr) -> EngineConfig {
        let dir = runtime_dir();
        EngineConfig {
            listen,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            slots_per_worker: 1_000,
            force_epoll: false,
            pin: true,
            registry: dir.join(format!("cxb-core-{}.slots", listen.port())),
            control_socket: dir.join(format!("cxb-core-{}.sock", listen.port())),
            demo_bots: false,
            fault_injection: false,
            call_keys: cxb_contract::call_token::KeyRing::default(),
            host_id: None,
            advertise: None,
            egress: cxb_contract::egress::EgressPolicy::public_only(),
            ai_calls_per_worker: 500,
            address_limits: crate::limits::AddressLimitConfig::default(),
            tls: None,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(2),
            send_buffer: 64 * 1024,
            bots: crate::agent::BotSource {
                cache_ttl: Duration::from_secs(10),
                ..Default::default()
            },
            results: None,
        }
    }
}

/// Where the registry and control socket live by default: `/dev/shm` when present (memory,
/// never written back to disk), else the temporary directory.
pub fn runtime_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A command for a worker.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Reserve { ttl: Duration, token: u64 },
    Release { token: u64 },
    Hangup { call_id: String },
    Drain { on: bool },
}

/// What a worker receives from other threads.
#[derive(Debug)]
pub(crate) enum Inbox {
    Connection(TcpStream),
    Command(Command, flume::Sender<Value>),
    Shutdown,
}

/// What a worker shares with the other threads: atomics only.
#[derive(Debug, Default)]
pub(crate) struct WorkerShared {
    pub(crate) free: AtomicUsize,
    /// AI calls in progress.
    pub(crate) ai_calls: AtomicUsize,
    /// 0 starting, 1 io_uring, 2 epoll.
    pub(crate) driver: AtomicU8,
    pub(crate) metrics: WorkerMetrics,
}

/// State shared by all threads of the engine.
/// The top byte of reservation tokens issued by the fleet registry (`cxb api`); engine-issued
/// tokens carry their worker's index there instead.
const FLEET_OWNER: usize = 0xff;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) workers: Vec<WorkerShared>,
    pub(crate) segment: Segment,
    pub(crate) gate: crate::admission::Gate,
    pub(crate) limits: std::sync::Mutex<crate::limits::AddressLimits>,
    inboxes: Vec<flume::Sender<Inbox>>,
    started: Instant,
    stopping: AtomicBool,
    tokens: AtomicU64,
    /// Fleet tokens calls have presented, newest last (at most [`USED_TOKENS`]): a reservation
    /// that reaches this host after its call already came is not held again.
    used_tokens: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

/// How many presented fleet tokens are remembered.
const USED_TOKENS: usize = 4096;

impl Shared {
    /// The `/health` document.
    pub(crate) fn health(&self) -> Value {
        let per = self.config.slots_per_worker;
        let workers: Vec<Value> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let driver = match w.driver.load(Ordering::Relaxed) {
                    1 => "io_uring",
                    2 => "epoll",
                    _ => "starting",
                };
                let rec = self.segment.worker(i);
                json!({ "worker": i, "driver": driver, "slots": per, "free": rec.free,
                        "live_calls": rec.live, "ai_calls": w.ai_calls.load(Ordering::Relaxed),
                        "draining": rec.draining })
            })
            .collect();
        let free: u64 = (0..self.workers.len())
            .map(|i| self.segment.worker(i).free)
            .sum();
        let live: u64 = (0..self.workers.len())
            .map(|i| self.segment.worker(i).live)
            .sum();
        let draining = (0..self.workers.len()).all(|i| self.segment.worker(i).draining);
        json!({
            "status": if draining { "draining" } else { "ok" },
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "slots_total": per * self.workers.len(),
            "slots_free": free,
            "live_calls": live,
            // False while the result outbox cannot write (its disk cap, a full disk): new AI
            // calls are refused then.
            "outbox_writable": self.config.results.as_ref().is_none_or(|r| r.writable()),
            "limits": {
                "ai_calls_per_worker": self.config.ai_calls_per_worker,
                "pending_per_address": self.config.address_limits.pending_per_address,
                "failed_admissions_per_address": self.config.address_limits.failures_allowed,
                "failed_admissions_window_seconds": self.config.address_limits.failure_window.as_secs(),
            },
            "workers": workers,
        })
    }

    /// Asks the worker that holds reservation `token` to release it, unless that is `except`.
    /// Fleet-issued tokens (top byte `ff`) may be held by any worker: every other one is asked.
    pub(crate) fn release_elsewhere(&self, except: usize, token: u64) {
        let owner = (token >> 56) as usize;
        if owner == FLEET_OWNER
            && let Ok(mut used) = self.used_tokens.lock()
        {
            if used.len() >= USED_TOKENS {
                used.pop_front();
            }
            used.push_back(token);
        }
        let owners: Vec<usize> = if owner == FLEET_OWNER {
            (0..self.inboxes.len()).collect()
        } else {
            vec![owner]
        };
        for owner in owners {
            if owner != except && owner < self.inboxes.len() {
                let (tx, _rx) = flume::bounded(1);
                let _ = self.inboxes[owner].send(Inbox::Command(Command::Release { token }, tx));
            }
        }
    }

    /// Whether a call already presented fleet token `token`.
    pub(crate) fn token_used(&self, token: u64) -> bool {
        self.used_tokens.lock().is_ok_and(|used| used.contains(&token))
    }

    /// Holds a slot for a fleet-issued reservation on the worker with the most free slots.
    pub(crate) fn hold(&self, token: u64, ttl: Duration) -> bool {
        if (token >> 56) as usize != FLEET_OWNER {
            return false;
        }
        self.ask(self.most_free(0), Command::Reserve { ttl, token })["ok"] == true
    }

    fn ask(&self, worker: usize, cmd: Command) -> Value {
        let (tx, rx) = flume::bounded(1);
        if self
            .inboxes
            .get(worker)
            .is_none_or(|inbox| inbox.send(Inbox::Command(cmd, tx)).is_err())
        {
            return json!({ "ok": false, "error": "no such worker" });
        }
        rx.recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| json!({ "ok": false, "error": "worker did not answer" }))
    }

    fn most_free(&self, start: usize) -> usize {
        let n = self.workers.len();
        (0..n)
            .map(|k| (start + k) % n)
            .max_by_key(|&i| (self.workers[i].free.load(Ordering::Relaxed), n - i))
            .unwrap_or(0)
    }

    /// Handles one control command (a JSON object with `cmd`).
    fn control(&self, request: &Value) -> Value {
        match request.get("cmd").and_then(Value::as_str) {
            Some("report") => self.health(),
            Some("reserve") => {
                let ttl = Duration::from_millis(
                    request
                        .get("ttl_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(30_000),
                );
                let worker = self.most_free(0);
                let random = std::hash::BuildHasher::hash_one(
                    &std::collections::hash_map::RandomState::new(),
                    (self.tokens.fetch_add(1, Ordering::Relaxed), unix_ms()),
                );
                let token = ((worker as u64) << 56) | (random & ((1 << 56) - 1));
                self.ask(worker, Command::Reserve { ttl, token })
            }
            Some("release") => match request
                .get("token")
                .and_then(Value::as_str)
                .and_then(|t| u64::from_str_radix(t, 16).ok())
            {
                Some(token) => self.ask((token >> 56) as usize, Command::Release { token }),
                None => json!({ "ok": false, "error": "release needs a hex `token`" }),
            },
            Some("hangup") => {
                let id = request.get("call_id").and_then(Value::as_str).unwrap_or("");
                let worker = id
                    .strip_prefix('w')
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(w, _)| w.parse().ok());
                match worker {
                    Some(w) => self.ask(
                        w,
                        Command::Hangup {
                            call_id: id.to_string(),
                        },
                    ),
                    None => json!({ "ok": false, "error": "no such call" }),
                }
            }
            Some(cmd @ ("drain" | "undrain")) => {
                let on = cmd == "drain";
                match request.get("worker").and_then(Value::as_u64) {
                    Some(w) => self.ask(w as usize, Command::Drain { on }),
                    None => {
                        let answers: Vec<Value> = (0..self.workers.len())
                            .map(|w| self.ask(w, Command::Drain { on }))
                            .collect();
                        json!({ "ok": answers.iter().all(|a| a["ok"] == true), "workers": answers })
                    }
                }
            }
            _ => {
                json!({ "ok": false, "error": "unknown command; try report, reserve, release, hangup, drain, undrain" })
            }
        }
    }
}

/// What other threads may ask of a running engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// The `/health` document: workers, slots, free slots, live calls.
    pub fn health(&self) -> Value {
        self.shared.health()
    }

    /// Holds a slot for `ttl` for a call that will present `?reservation=<token>` (16 hex
    /// digits, top byte `ff`, as the fleet registry issues them). False when the token is
    /// malformed or no worker has a free slot. Holding the same token again renews it.
    pub fn hold_reservation(&self, token: &str, ttl: Duration) -> bool {
        let parsed = (token.len() == 16)
            .then(|| u64::from_str_radix(token, 16).ok())
            .flatten();
        parsed.is_some_and(|t| self.shared.hold(t, ttl))
    }

    /// Gives back the slot held for fleet reservation `token` (16 hex digits) whose call will
    /// not come (the carrier reported it ended unanswered). False when no worker holds it.
    pub fn release_reservation(&self, token: &str) -> bool {
        let Some(token) = (token.len() == 16).then(|| u64::from_str_radix(token, 16).ok()).flatten() else {
            return false;
        };
        let mut released = false;
        for w in 0..self.shared.workers.len() {
            released |= self.shared.ask(w, Command::Release { token })["ok"] == true;
        }
        released
    }

    /// Replaces the fleet's call-token keys (newest first); keys from the configuration stay.
    pub fn set_call_keys(&self, keys: cxb_contract::call_token::KeyRing) {
        self.shared.gate.set_keys(keys);
    }
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Binds, maps the registry, and starts the acceptor, the workers and the control socket.
    pub fn start(config: EngineConfig) -> io::Result<Engine> {
        let workers = config.workers.max(1);
        let listener = TcpListener::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let segment = Segment::create(
            &config.registry,
            workers,
            config.slots_per_worker,
            u64::from(std::process::id()),
            unix_ms(),
        )?;
        let _ = std::fs::remove_file(&config.control_socket);
        let control = UnixListener::bind(&config.control_socket)?;
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| flume::unbounded()).unzip();
        let gate = crate::admission::Gate::new(config.call_keys.clone(), config.host_id.clone());
        let limits = std::sync::Mutex::new(crate::limits::AddressLimits::new(config.address_limits));
        let shared = Arc::new(Shared {
            gate,
            limits,
            config: EngineConfig { workers, ..config },
            workers: (0..workers).map(|_| WorkerShared::default()).collect(),
            segment,
            inboxes: senders,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            tokens: AtomicU64::new(0),
            used_tokens: std::sync::Mutex::default(),
        });
        for w in &shared.workers {
            w.free
                .store(shared.config.slots_per_worker, Ordering::Relaxed);
        }
        let mut threads = Vec::new();
        for (i, inbox) in receivers.into_iter().enumerate() {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cxb-worker-{i}"))
                    .spawn(move || {
                        if let Err(e) = crate::worker::run(i, shared, inbox) {
                            tracing::error!(worker = i, "worker failed to start: {e}");
                        }
                    })?,
            );
        }
        let acceptor_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("cxb-acceptor".into())
                .spawn(move || accept(&acceptor_shared, &listener))?,
        );
        let control_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("cxb-control".into())
                .spawn(move || serve_control(&control_shared, &control))?,
        );
        // Wait until every worker has its runtime, so /health is complete from the start.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared
            .workers
            .iter()
            .any(|w| w.driver.load(Ordering::Relaxed) == 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Engine {
            shared,
            addr,
            threads,
        })
    }

    /// The address carriers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration in effect.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The `/health` document, without HTTP.
    pub fn health(&self) -> Value {
        self.shared.health()
    }

    /// A handle for other threads (the fleet heartbeat) while [`Engine::wait`] blocks.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            shared: self.shared.clone(),
        }
    }

    /// Stops taking calls (every worker drains: new calls and reservations answer 503, and the
    /// fleet sees no free slot) and waits up to `within` for live calls to end by themselves.
    /// Returns how many are still live; [`Engine::shutdown`] then ends them.
    pub fn drain(&self, within: Duration) -> u64 {
        for w in 0..self.shared.workers.len() {
            self.shared.ask(w, Command::Drain { on: true });
        }
        let deadline = Instant::now() + within;
        loop {
            let live = self.shared.health()["live_calls"].as_u64().unwrap_or(0);
            if live == 0 || Instant::now() >= deadline {
                return live;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Closes every call (1001; AI calls write their results and recordings to the outbox
    /// first), stops every thread and removes the registry and socket files.
    pub fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the acceptor
        let _ = UnixStream::connect(&self.shared.config.control_socket); // wakes the control thread
        for inbox in &self.shared.inboxes {
            let _ = inbox.send(Inbox::Shutdown);
        }
        for t in self.threads {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.shared.config.registry);
        let _ = std::fs::remove_file(&self.shared.config.control_socket);
    }

    /// Blocks until the engine's threads end (they do not, short of a shutdown).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn accept(shared: &Shared, listener: &TcpListener) {
    let mut next = 0;
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let worker = shared.most_free(next);
        next = (next + 1) % shared.workers.len();
        let _ = shared.inboxes[worker].send(Inbox::Connection(stream));
    }
}

fn serve_control(shared: &Shared, listener: &UnixListener) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(mut writer) = stream.try_clone() else {
            continue;
        };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let answer = match serde_json::from_str::<Value>(&line) {
                Ok(request) => shared.control(&request),
                Err(e) => json!({ "ok": false, "error": format!("not JSON: {e}") }),
            };
            if writeln!(writer, "{answer}").is_err() {
                break;
            }
        }
    }
}
