//! Starting and stopping the engine: the acceptor, the workers, the control socket.
//!
//! One acceptor thread takes connections from the listening socket and hands each to the
//! worker with the most free slots (the workers publish their free count with an atomic).
//! A worker that receives an upgrade with no slot left answers 503, so capacity is decided
//! by the worker that owns the slots, never by a shared lock.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::registry::Segment;
pub use crate::config::{EngineConfig, runtime_dir};
pub use crate::results::ResultSink;
pub use crate::shared::unix_ms;
use crate::shared::{Command, Inbox, Shared, WorkerShared};

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
        let sip = config.sip.as_ref().map(|s| crate::sip::SipShared::bind(s, config.tls.as_ref())).transpose()?;
        let shared = Arc::new(Shared {
            gate,
            limits,
            config: EngineConfig { workers, ..config },
            workers: (0..workers).map(|_| WorkerShared::default()).collect(),
            segment,
            inboxes: senders,
            sip,
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
        if shared.sip.is_some() {
            let sip_shared = shared.clone();
            threads.push(std::thread::Builder::new().name("cxb-sip".into()).spawn(move || crate::sip_front::front(&sip_shared))?);
            let tcp_shared = shared.clone();
            threads.push(std::thread::Builder::new().name("cxb-sip-tcp".into()).spawn(move || crate::sip_front::accept_tcp(tcp_shared))?);
            if shared.sip.as_ref().is_some_and(|s| s.tls.is_some()) {
                let tls_shared = shared.clone();
                threads.push(std::thread::Builder::new().name("cxb-sip-tls".into()).spawn(move || crate::sip_front::accept_tls(tls_shared))?);
            }
        }
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

    /// The SIP port's address, when the engine speaks SIP.
    pub fn sip_addr(&self) -> Option<SocketAddr> {
        self.shared.sip.as_ref().map(|s| s.local)
    }

    /// The SIP-over-TLS port's address, when it has one.
    pub fn sip_tls_addr(&self) -> Option<SocketAddr> {
        self.shared.sip.as_ref().and_then(|s| s.tls_addr())
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
        if let Some(sip) = self.sip_addr() {
            let _ = TcpStream::connect(sip); // wakes the SIP port's TCP acceptor
        }
        if let Some(tls) = self.sip_tls_addr() {
            let _ = TcpStream::connect(tls); // and its TLS acceptor
        }
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
