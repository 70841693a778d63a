//! What the engine's threads share: the configuration, each worker's atomics, the slot
//! registry, the admission gate and address limits, the workers' inboxes and the fleet
//! tokens seen; and the commands a worker takes from other threads.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::metrics::WorkerMetrics;
use crate::registry::Segment;
use crate::config::EngineConfig;

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
    /// End the SIP call with this Call-ID.
    HangupSip { sip_call_id: String },
    /// End the WebRTC call with this resource (its `Location`'s last segment).
    HangupWebRtc { resource: String },
    /// Where the SIP call with this Call-ID stands.
    SipState { sip_call_id: String },
    Drain { on: bool },
}

/// What a worker receives from other threads.
#[derive(Debug)]
pub(crate) enum Inbox {
    Connection(TcpStream),
    /// A SIP message for a call this worker owns, or a new INVITE for it to take.
    Sip { from: crate::sip::SipPeer, bytes: Vec<u8> },
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
pub(crate) const FLEET_OWNER: usize = 0xff;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) workers: Vec<WorkerShared>,
    pub(crate) segment: Segment,
    pub(crate) gate: crate::admission::Gate,
    pub(crate) limits: std::sync::Mutex<crate::limits::AddressLimits>,
    pub(crate) inboxes: Vec<flume::Sender<Inbox>>,
    /// The SIP port, when the engine speaks SIP.
    pub(crate) sip: Option<crate::sip::SipShared>,
    pub(crate) started: Instant,
    pub(crate) stopping: AtomicBool,
    pub(crate) tokens: AtomicU64,
    /// Fleet tokens calls have presented, newest last (at most [`USED_TOKENS`]): a reservation
    /// that reaches this host after its call already came is not held again.
    pub(crate) used_tokens: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

/// How many presented fleet tokens are remembered.
pub(crate) const USED_TOKENS: usize = 4096;

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

    pub(crate) fn ask(&self, worker: usize, cmd: Command) -> Value {
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

    pub(crate) fn most_free(&self, start: usize) -> usize {
        let n = self.workers.len();
        (0..n)
            .map(|k| (start + k) % n)
            .max_by_key(|&i| (self.workers[i].free.load(Ordering::Relaxed), n - i))
            .unwrap_or(0)
    }

    /// Handles one control command (a JSON object with `cmd`).
    pub(crate) fn control(&self, request: &Value) -> Value {
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
