//! A worker: one thread, pinned to its core, running its own single-threaded compio runtime
//! (io_uring, or epoll where io_uring is refused or `--force-epoll` asks). Every call it
//! accepts lives here until it ends: socket, WebSocket framing, media path and timers. Per-call
//! state is `!Send` and shared only within the thread (`Rc`, `RefCell`), never locked.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use cxb_media::Timestamp;
use futures_util::future::{Either, select};
use tracing::Instrument;

use crate::admission::{self, Admitted, Refusal, query_param};
use crate::agent::{Agent, BotError};
use crate::bots::BotKind;
use crate::call::{Call, CallConfig};
use crate::error::{EndReason, ProtocolErrorKind};
use crate::http::{self, HeadError, Request};
use crate::limits::Verdict;
use crate::tls::{Session, Wire};
use crate::protocol::Protocol;
use crate::registry::{SlotState, SlotUpdate, WorkerRecord};
use crate::shared::{Command, Inbox, Shared, unix_ms};
use crate::slots::{Full, Reserved, SlotTable};
use crate::ws::{Incoming, WsSocket};

/// `MSG_DONTWAIT` (Linux): send without blocking even on a socket in blocking mode.
const MSG_DONTWAIT: i32 = 0x40;

/// Bytes read from a socket at a time.
const READ_BUF: usize = 8 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages to a live call from outside it.
#[derive(Debug, Clone, Copy)]
enum Control {
    Hangup,
    Shutdown,
    Idle,
}

/// A call's mailbox: how its worker (on the same thread) reaches the call's task, and when
/// the call last heard from its peer. Cheaper to poll than a channel: one `Cell` check.
struct Mailbox {
    message: Cell<Option<Control>>,
    waker: Cell<Option<std::task::Waker>>,
    last_rx: Cell<Instant>,
}

impl Mailbox {
    fn post(&self, message: Control) {
        self.message.set(Some(message));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn recv(&self) -> impl std::future::Future<Output = Control> + '_ {
        std::future::poll_fn(move |cx| match self.message.take() {
            Some(m) => std::task::Poll::Ready(m),
            None => {
                match self.waker.take() {
                    Some(w) if w.will_wake(cx.waker()) => self.waker.set(Some(w)),
                    _ => self.waker.set(Some(cx.waker().clone())),
                }
                std::task::Poll::Pending
            }
        })
    }
}

/// Everything the worker's tasks share, on this thread only.
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    /// The worker's slots; mirrored into the shared registry as they change.
    slots: RefCell<SlotTable>,
    calls: RefCell<HashMap<String, Rc<Mailbox>>>,
    next_call: Cell<u64>,
    /// When a refusal was last logged, and how many were not since.
    refusals_logged: Cell<Option<Instant>>,
    refusals_unlogged: Cell<u64>,
    epoch: Instant,
}

/// Runs worker `index` until shutdown. Called on the worker's own thread.
pub(crate) fn run(
    index: usize,
    shared: Arc<Shared>,
    inbox: flume::Receiver<Inbox>,
) -> std::io::Result<()> {
    let mut proactor = compio::driver::ProactorBuilder::new();
    if shared.config.force_epoll {
        proactor.driver_type(compio::driver::DriverType::Poll);
    } else {
        // Deferred task work (completions reaped only when the worker enters the kernel) was
        // measured: it cut no CPU and added 20 ms of queueing at 400 calls, so it stays off.
        proactor.capacity(4096);
    }
    let mut builder = compio::runtime::RuntimeBuilder::new();
    builder.with_proactor(proactor);
    if let Some(cpu) = shared.config.pin.then(|| core_for(index)).flatten() {
        builder.thread_affinity([cpu].into_iter().collect());
    }
    let runtime = builder.build()?;
    cxb_pipeline::egress::set_policy(shared.config.egress.clone());
    // AI calls on this thread stream their recordings into the result sink.
    crate::agent::record_into(shared.config.results.as_ref());
    let driver = if runtime.driver_type().is_iouring() {
        1
    } else {
        2
    };
    shared.workers[index]
        .driver
        .store(driver, Ordering::Relaxed);
    tracing::info!(worker = index, driver = if driver == 1 { "io_uring" } else { "epoll" }, "worker running");
    let (slots, ai_limit) = (shared.config.slots_per_worker, shared.config.ai_calls_per_worker);
    let worker = Rc::new(Worker {
        index,
        shared,
        slots: RefCell::new(SlotTable::new(slots, ai_limit)),
        calls: RefCell::new(HashMap::new()),
        next_call: Cell::new(0),
        refusals_logged: Cell::new(None),
        refusals_unlogged: Cell::new(0),
        epoch: Instant::now(),
    });
    worker.publish();
    runtime.block_on(async move {
        compio::runtime::spawn(housekeeping(worker.clone())).detach();
        while let Ok(msg) = inbox.recv_async().await {
            match msg {
                Inbox::Connection(stream) => {
                    compio::runtime::spawn(serve(worker.clone(), stream)).detach();
                }
                Inbox::Command(cmd, reply) => {
                    let _ = reply.send(worker.command(cmd));
                }
                Inbox::Shutdown => {
                    worker.slots.borrow_mut().set_draining(true);
                    for mailbox in worker.calls.borrow().values() {
                        mailbox.post(Control::Shutdown);
                    }
                    // Let calls send their close frames and AI calls write their results and
                    // recordings to the outbox (each waits at most 30 s for it).
                    let deadline = Instant::now() + Duration::from_secs(35);
                    while !worker.calls.borrow().is_empty() && Instant::now() < deadline {
                        compio::time::sleep(Duration::from_millis(10)).await;
                    }
                    break;
                }
            }
        }
    });
    Ok(())
}

/// The CPU to pin worker `index` to: the `index`-th CPU this process may run on.
fn core_for(index: usize) -> Option<usize> {
    let online = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Some(index % online)
}

/// Once a second: lapse expired reservations, end idle calls, publish the worker's summary,
/// beat.
async fn housekeeping(worker: Rc<Worker>) {
    loop {
        compio::time::sleep(Duration::from_secs(1)).await;
        let now = unix_ms();
        let expired: Vec<usize> = worker.slots.borrow().expired(now).collect();
        for slot in expired {
            worker.free_slot(slot);
        }
        let idle_since = Instant::now() - worker.shared.config.idle_timeout;
        for mailbox in worker.calls.borrow().values() {
            if mailbox.last_rx.get() <= idle_since {
                mailbox.post(Control::Idle);
            }
        }
        worker.publish();
        if worker.index == 0 {
            worker.shared.segment.beat(now);
        }
    }
}

impl Worker {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    fn instant(&self, t: Timestamp) -> Instant {
        self.epoch + Duration::from_micros(t.as_micros())
    }

    fn metrics(&self) -> &crate::metrics::WorkerMetrics {
        &self.shared.workers[self.index].metrics
    }

    /// Publishes free capacity (the slots a new AI call could take) to the acceptor and the
    /// registry.
    fn publish(&self) {
        let slots = self.slots.borrow();
        let (free, live) = (slots.capacity(), slots.live());
        let w = &self.shared.workers[self.index];
        w.free.store(free, Ordering::Relaxed);
        w.ai_calls.store(slots.ai_calls(), Ordering::Relaxed);
        w.metrics.live_calls.store(live as u64, Ordering::Relaxed);
        self.shared.segment.write_worker(
            self.index,
            WorkerRecord {
                driver: u64::from(w.driver.load(Ordering::Relaxed)),
                draining: slots.draining(),
                live: live as u64,
                free: free as u64,
            },
        );
    }

    /// Takes a slot for a call: the reserved one named by `token` if it is ours, else a free
    /// one (unless draining, or, for an AI call, unless the worker carries all the AI calls it
    /// may). An AI call counts as one until [`Worker::free_slot`].
    fn acquire(&self, call_id: &str, bot: &str, token: Option<u64>, ai: bool) -> Result<usize, Full> {
        let slot = self.slots.borrow_mut().acquire(token, ai)?;
        let update = SlotUpdate {
            state: SlotState::Active,
            started_ms: unix_ms(),
            until_ms: 0,
            call_id,
            bot_id: bot,
        };
        self.shared.segment.write_slot(self.index, slot, update);
        self.publish();
        Ok(slot)
    }

    fn free_slot(&self, slot: usize) {
        let freed = self.slots.borrow_mut().free(slot);
        if freed {
            self.shared.segment.write_slot(self.index, slot, SlotUpdate::FREE);
        }
        self.publish();
    }

    fn command(&self, cmd: Command) -> serde_json::Value {
        use serde_json::json;
        match cmd {
            Command::Reserve { ttl, token } => {
                if self.slots.borrow().draining() {
                    return json!({ "ok": false, "error": "draining" });
                }
                if self.shared.token_used(token) {
                    // Its call came before the reservation did: nothing is left to hold.
                    return json!({ "ok": true, "worker": self.index, "token": format!("{token:016x}"), "used": true });
                }
                let until_ms = unix_ms() + ttl.as_millis() as u64;
                let reserved = self.slots.borrow_mut().reserve(token, until_ms);
                let slot = match reserved {
                    None => return json!({ "ok": false, "error": "no free slot" }),
                    Some(Reserved::Renewed(slot)) => {
                        return json!({ "ok": true, "worker": self.index, "slot": slot, "token": format!("{token:016x}"), "expires_unix_ms": until_ms });
                    }
                    Some(Reserved::New(slot)) => slot,
                };
                let update = SlotUpdate {
                    state: SlotState::Reserved,
                    started_ms: unix_ms(),
                    until_ms,
                    call_id: "",
                    bot_id: "",
                };
                self.shared.segment.write_slot(self.index, slot, update);
                self.publish();
                json!({ "ok": true, "worker": self.index, "slot": slot, "token": format!("{token:016x}"), "expires_unix_ms": until_ms })
            }
            Command::Release { token } => {
                let slot = self.slots.borrow().reservation(token);
                match slot {
                    Some(slot) => {
                        self.free_slot(slot);
                        json!({ "ok": true })
                    }
                    None => json!({ "ok": false, "error": "no such reservation" }),
                }
            }
            Command::Hangup { call_id } => match self.calls.borrow().get(&call_id) {
                Some(mailbox) => {
                    mailbox.post(Control::Hangup);
                    json!({ "ok": true })
                }
                None => json!({ "ok": false, "error": "no such call" }),
            },
            Command::Drain { on } => {
                self.slots.borrow_mut().set_draining(on);
                let state = if on { SlotState::Draining } else { SlotState::Active };
                for slot in self.slots.borrow().active_slots() {
                    self.shared.segment.set_state(self.index, slot, state);
                }
                self.publish();
                json!({ "ok": true, "worker": self.index, "draining": on })
            }
        }
    }
}

/// Frees a call's slot and counts its end however the call's task finishes, unwinding
/// included.
struct CallGuard {
    worker: Rc<Worker>,
    slot: usize,
    call_id: String,
    reason: EndReason,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.worker.calls.borrow_mut().remove(&self.call_id);
        self.worker.metrics().call_ended(self.reason);
        self.worker.free_slot(self.slot);
    }
}

/// Counts a connection as waiting for its request head until dropped.
struct PendingHead<'a> {
    shared: &'a crate::shared::Shared,
    ip: std::net::IpAddr,
}

impl Drop for PendingHead<'_> {
    fn drop(&mut self) {
        if let Ok(mut limits) = self.shared.limits.lock() {
            limits.head_done(self.ip);
        }
    }
}

/// Serves one accepted connection: a plain HTTP request, or a call. Its address's limits are
/// checked first (connections waiting for their heads, back-off after failed admissions).
async fn serve(worker: Rc<Worker>, stream: std::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(worker.shared.config.send_buffer);
    let ip = stream.peer_addr().map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let Ok(stream) = TcpStream::from_std(stream) else {
        return;
    };
    let mut wire = match &worker.shared.config.tls {
        Some(tls) => match Session::new(tls) {
            Ok(session) => Wire::Tls(Box::new(session)),
            Err(_) => return,
        },
        None => Wire::Plain,
    };
    let verdict = worker.shared.limits.lock().map_or(Verdict::Proceed, |mut l| l.open(ip, Instant::now()));
    match verdict {
        Verdict::Proceed => {}
        Verdict::TooManyPending => {
            worker.metrics().rejected_address.add(1);
            let msg = "too many connections from this address are waiting to be served";
            // Over TLS there is no session yet to answer in: the connection is just closed.
            return reply(&stream, &mut wire, http::error(429, "too_many_connections", msg, &[("Retry-After", "1")])).await;
        }
        Verdict::BackOff(wait) => {
            worker.metrics().rejected_address.add(1);
            let retry = wait.as_secs().max(1).to_string();
            let msg = "too many failed admissions from this address; try again later";
            return reply(&stream, &mut wire, http::error(429, "backing_off", msg, &[("Retry-After", &retry)])).await;
        }
    }
    let pending = PendingHead { shared: &worker.shared, ip };
    let mut head = Vec::new();
    let mut buf = Vec::with_capacity(READ_BUF);
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let (request, len) = loop {
        match http::parse_head(&head) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(HeadError::TooLarge) => {
                return reply(
                    &stream,
                    &mut wire,
                    http::error(431, "head_too_large", "request head too large", &[]),
                )
                .await;
            }
            Err(HeadError::Malformed(m)) => {
                return reply(&stream, &mut wire, http::error(400, "bad_request", &m, &[])).await;
            }
        }
        let read =
            compio::time::timeout_at(deadline, (&stream).read(std::mem::take(&mut buf))).await;
        match read {
            Ok(BufResult(Ok(n), b)) if n > 0 => {
                if wire.receive(&b[..n], &mut head).is_err() {
                    return; // not TLS, or a broken handshake
                }
                // The handshake's answers.
                let answer = wire.pending();
                if !answer.is_empty() {
                    let mut w = &stream;
                    if compio::time::timeout_at(deadline, w.write_all(answer)).await.is_err() {
                        return;
                    }
                }
                buf = b;
                buf.clear();
            }
            _ => return,
        }
    };
    drop(pending);
    let leftover = head[len..].to_vec();
    route(worker, stream, wire, request, leftover, ip).await;
}

/// Sends a whole response (through TLS when the connection has it) and closes.
async fn reply(stream: &TcpStream, wire: &mut Wire, bytes: Vec<u8>) {
    if matches!(wire, Wire::Tls(s) if s.handshaking()) {
        let mut s = stream;
        let _ = s.shutdown().await;
        return;
    }
    let mut bytes = wire.seal(bytes);
    if let Wire::Tls(session) = wire {
        session.close(&mut bytes);
    }
    let mut s = stream;
    let _ = compio::time::timeout(Duration::from_secs(5), s.write_all(bytes)).await;
    let _ = s.shutdown().await;
}

async fn route(worker: Rc<Worker>, stream: TcpStream, mut wire: Wire, req: Request, leftover: Vec<u8>, ip: std::net::IpAddr) {
    let call_path = |prefix: &str| {
        req.path
            .strip_prefix(prefix)
            .filter(|b| !b.is_empty() && !b.contains('/'))
    };
    let (protocol, bot_id) = match (req.path.as_str(), call_path("/ws/"), call_path("/exotel/")) {
        ("/health", _, _) if req.method == "GET" => {
            let body = worker.shared.health().to_string();
            return reply(&stream, &mut wire, http::response(200, "application/json", &[], &body)).await;
        }
        ("/metrics", _, _) if req.method == "GET" => {
            let mut body = crate::metrics::render(worker.shared.workers.iter().map(|w| &w.metrics));
            if let Some(results) = &worker.shared.config.results {
                crate::metrics::render_gauges(&mut body, &results.gauges());
            }
            return reply(
                &stream,
                &mut wire,
                http::response(200, "text/plain; version=0.0.4", &[], &body),
            )
            .await;
        }
        (_, Some(bot), _) => (Protocol::Twilio, bot),
        (_, _, Some(bot)) => (Protocol::Exotel, bot),
        _ => {
            return reply(
                &stream,
                &mut wire,
                http::error(404, "not_found", "no such endpoint", &[]),
            )
            .await;
        }
    };
    let config = &worker.shared.config;
    // A call token is checked before anything is loaded for it.
    let claims = match query_param(req.query.as_deref(), "token") {
        Some(token) => match worker.shared.gate.check_token(&token, bot_id, unix_ms() / 1000) {
            Ok(claims) => Some(claims),
            Err(why) => return refuse(&worker, &stream, &mut wire, ip, bot_id, why).await,
        },
        None => None,
    };
    let builtin = BotKind::lookup(bot_id, config.demo_bots, config.fault_injection);
    let agent_bot = match builtin {
        Some(_) => None,
        None if config.bots.is_configured() => {
            match config.bots.resolve(bot_id).await {
                Ok(bot) => Some(bot),
                Err(BotError::NotFound) => None,
                Err(BotError::Unavailable(why)) => {
                    tracing::warn!(bot = bot_id, "bot unavailable: {why}");
                    return reply(
                        &stream,
                        &mut wire,
                        http::error(
                            503,
                            "bot_unavailable",
                            "the bot cannot be loaded now",
                            &[("Retry-After", "5")],
                        ),
                    )
                    .await;
                }
            }
        }
        None => None,
    };
    let Some(bot) = builtin.or(agent_bot.as_ref().map(|_| BotKind::Agent)) else {
        worker.metrics().rejected_unknown_bot.add(1);
        return reply(
            &stream,
            &mut wire,
            http::error(404, "unknown_bot", &format!("no bot `{bot_id}`"), &[]),
        )
        .await;
    };
    let admitted = match (claims, &agent_bot) {
        (Some(claims), Some(b)) if b.org_id.as_ref().is_some_and(|org| *org != claims.org_id) => {
            return refuse(&worker, &stream, &mut wire, ip, bot_id, Refusal::WrongBot).await;
        }
        (Some(claims), _) => Admitted::Token(Box::new(claims)),
        (None, None) => Admitted::Demo,
        (None, Some(b)) => match admission::check_inbound(&b.inbound, &req, &signed_urls(config.advertise.as_deref(), &req)) {
            Ok(admitted) => admitted,
            Err(why) => return refuse(&worker, &stream, &mut wire, ip, bot_id, why).await,
        },
    };
    let (true, Some(key)) = (req.upgrade, req.ws_key.as_deref()) else {
        let msg = "this endpoint takes a WebSocket upgrade";
        return reply(
            &stream,
            &mut wire,
            http::error(426, "upgrade_required", msg, &[("Upgrade", "websocket")]),
        )
        .await;
    };
    let reservation = admitted
        .claims()
        .and_then(|c| c.reservation.clone())
        .or_else(|| query_param(req.query.as_deref(), "reservation"));
    let token = reservation.and_then(|t| u64::from_str_radix(&t, 16).ok());
    let n = worker.next_call.get();
    worker.next_call.set(n + 1);
    let call_id = format!("w{}-{n}", worker.index);
    let is_ai = agent_bot.is_some();
    if is_ai && config.results.as_ref().is_some_and(|r| !r.writable()) {
        worker.metrics().rejected_outbox.add(1);
        let msg = "this host cannot store call results now (its outbox is full or failing); try another host";
        return reply(&stream, &mut wire, http::error(503, "outbox_unavailable", msg, &[("Retry-After", "5")])).await;
    }
    let slot = match worker.acquire(&call_id, bot.id(), token, is_ai) {
        Ok(slot) => slot,
        Err(full) => {
            worker.metrics().rejected_busy.add(1);
            let (code, msg) = match full {
                Full::Slots => ("busy", "every call slot on this host is taken"),
                Full::AiCalls => ("ai_capacity", "this core carries all the AI calls it may; try another host"),
            };
            return reply(&stream, &mut wire, http::error(503, code, msg, &[("Retry-After", "1")])).await;
        }
    };
    if let Some(token) = token {
        // A reservation held by another worker is given back: this call took a slot here.
        worker.shared.release_elsewhere(worker.index, token);
    }
    let config = CallConfig::new(protocol, bot);
    let call = match agent_bot {
        // The providers start connecting (and the greeting synthesising) before the upgrade.
        Some(bot) => match Agent::new(bot, worker.shared.config.bots.api.clone(), admitted.claims().cloned(), worker.now(), unix_ms()) {
            Ok(agent) => Call::with_agent(config, agent),
            Err(why) => {
                worker.free_slot(slot);
                tracing::warn!(bot = bot_id, "bot failed to start: {why}");
                return reply(&stream, &mut wire, http::error(503, "bot_unavailable", &why, &[])).await;
            }
        },
        None => Call::new(config),
    };
    let mut s = &stream;
    if s.write_all(wire.seal(http::switching_protocols(key))).await.0.is_err() {
        worker.free_slot(slot);
        return;
    }
    let mailbox = Rc::new(Mailbox {
        message: Cell::new(None),
        waker: Cell::new(None),
        last_rx: Cell::new(Instant::now()),
    });
    worker
        .calls
        .borrow_mut()
        .insert(call_id.clone(), mailbox.clone());
    worker.metrics().calls_started.add(1);
    let mut guard = CallGuard {
        worker: worker.clone(),
        slot,
        call_id: call_id.clone(),
        reason: EndReason::PeerClosed,
    };
    let span = tracing::info_span!(
        "call",
        id = %call_id,
        bot = bot_id,
        transport = protocol.name(),
        worker = worker.index,
        call = tracing::field::Empty,
        org = tracing::field::Empty,
    );
    if let Some(claims) = admitted.claims() {
        span.record("call", claims.call_id.as_str());
        span.record("org", claims.org_id.as_str());
    }
    async {
        tracing::debug!("call started");
        let (reason, mut call) = run_call(&worker, &stream, &mut wire, slot, call, leftover, &mailbox).await;
        guard.reason = reason;
        finish_bot(&worker, &mut call, &call_id, reason).await;
        let stats = call.stats();
        tracing::debug!(reason = reason.label(), frames_in = stats.frames_in, frames_out = stats.frames_out, "call ended");
    }
    .instrument(span)
    .await;
}

/// Refuses a call with `401` and the engine's JSON error; counted by reason and logged (at
/// most once a second per worker, with how many were not logged) without the credential.
async fn refuse(worker: &Worker, stream: &TcpStream, wire: &mut Wire, ip: std::net::IpAddr, bot_id: &str, why: Refusal) {
    worker.metrics().refused(why);
    let now = Instant::now();
    if let Ok(mut limits) = worker.shared.limits.lock() {
        limits.failed(ip, now);
    }
    let quiet = worker.refusals_logged.get().is_some_and(|at| now.duration_since(at) < Duration::from_secs(1));
    if quiet {
        worker.refusals_unlogged.set(worker.refusals_unlogged.get() + 1);
    } else {
        let peer = ip;
        let more = worker.refusals_unlogged.replace(0);
        tracing::warn!(bot = bot_id, %peer, reason = why.label(), not_logged = more, "call refused");
        worker.refusals_logged.set(Some(now));
    }
    reply(stream, wire, http::error(401, "unauthorized", why.message(), &[])).await;
}

/// The URLs a carrier may have signed for `req`: as this engine is advertised, and as the
/// request's `Host` names it over `wss://` and `ws://`.
fn signed_urls(advertise: Option<&str>, req: &Request) -> Vec<String> {
    let target = match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    };
    let mut urls = Vec::with_capacity(3);
    if let Some(base) = advertise {
        urls.push(format!("{}{target}", base.trim_end_matches('/')));
    }
    if let Some(host) = &req.host {
        urls.push(format!("wss://{host}{target}"));
        urls.push(format!("ws://{host}{target}"));
    }
    urls
}

/// Writes an AI call's result and recording to the outbox and waits until they are durable;
/// the call's slot is freed only after that. The call was admitted, so its result is written
/// if at all possible: a write that fails (a full disk) is tried again every second, without
/// the recording, for up to 30 s in all.
async fn finish_bot(worker: &Worker, call: &mut Call, call_id: &str, reason: EndReason) {
    use crate::results::Recording;
    const AGAIN: Duration = Duration::from_secs(1);
    let Some((result, recording)) = call.finish(worker.now(), unix_ms(), call_id, reason) else { return };
    let Some(sink) = worker.shared.config.results.as_ref() else {
        tracing::warn!("no outbox configured; result dropped");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done = match recording {
        Some(Recording::Wav(wav)) => sink.submit(result.clone(), Some(wav)),
        Some(Recording::Streamed(stream, summary)) => sink.submit_streamed(result.clone(), stream, summary),
        None => sink.submit(result.clone(), None),
    };
    loop {
        match compio::time::timeout_at(deadline, done.recv_async()).await {
            Ok(Ok(Ok(()))) => return,
            Ok(Ok(Err(e))) if Instant::now() + AGAIN < deadline => {
                tracing::warn!("outbox: {e}; trying again");
                compio::time::sleep(AGAIN).await;
                done = sink.submit(result.clone(), None);
            }
            Ok(Ok(Err(e))) => return tracing::error!("outbox: {e}; result lost"),
            Ok(Err(_)) => return tracing::error!("outbox stopped; result lost"),
            Err(_) => return tracing::error!("outbox did not answer in 30 s; result lost"),
        }
    }
}

/// One read from `stream` into `buf`, as a future that borrows the stream only shared.
async fn read_into(stream: &TcpStream, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
    let mut r = stream;
    r.read(buf).await
}

/// The call loop: socket reads, the call's timers and control messages, until the call ends.
async fn run_call(
    worker: &Rc<Worker>,
    stream: &TcpStream,
    wire: &mut Wire,
    slot: usize,
    mut call: Call,
    leftover: Vec<u8>,
    mailbox: &Mailbox,
) -> (EndReason, Call) {
    let config = &worker.shared.config;
    let mut socket = WsSocket::new();
    socket.feed(&leftover);
    let mut plain = Vec::new();
    let mut sealed = Vec::new();
    let mut read = Box::pin(read_into(stream, Vec::with_capacity(READ_BUF)));
    let mut ctl = std::pin::pin!(mailbox.recv());
    let mut out = Vec::new();
    let events = call.events();
    let reason = 'call: loop {
        // Everything readable.
        loop {
            match socket.read() {
                Ok(Some(Incoming::Text(text))) => {
                    let now = worker.now();
                    let handled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        call.on_text(now, text, worker.metrics())
                    }));
                    match handled {
                        Ok(Ok(())) => {}
                        Ok(Err(reason)) => break 'call reason,
                        Err(_) => break 'call EndReason::Panicked,
                    }
                }
                Ok(Some(Incoming::Binary)) => {
                    break 'call EndReason::Protocol(ProtocolErrorKind::BinaryFrame);
                }
                Ok(Some(Incoming::Closed)) => break 'call EndReason::PeerClosed,
                Ok(None) => break,
                Err(kind) => break 'call EndReason::Protocol(kind),
            }
        }
        let stats = call.stats();
        worker
            .shared
            .segment
            .count_frames(worker.index, slot, stats.frames_in, stats.frames_out);
        while let Some(msg) = call.poll_transmit() {
            socket.send_text(&msg);
            call.recycle(msg);
        }
        if !socket.output().is_empty() || wire.wants_write() {
            // First a non-blocking send: when the socket buffer has room (nearly always) the
            // frame is handed to the kernel at once, without an io_uring round trip and a
            // second wake-up of this task. Whatever does not fit goes through the runtime,
            // bounded: the send backlog is the kernel's (bounded) buffer plus this one write,
            // and a peer that stops reading ends the call instead of queueing more.
            std::mem::swap(socket.output(), &mut out);
            if let Wire::Tls(session) = wire {
                sealed.clear();
                session.send(&out, &mut sealed);
                std::mem::swap(&mut out, &mut sealed);
            }
            let sent = match socket2::SockRef::from(stream).send_with_flags(&out, MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => break EndReason::PeerClosed,
            };
            if sent < out.len() {
                out.drain(..sent);
                let mut w = stream;
                match compio::time::timeout(
                    config.write_timeout,
                    w.write_all(std::mem::take(&mut out)),
                )
                .await
                {
                    Ok(BufResult(Ok(()), b)) => out = b,
                    Ok(BufResult(Err(_), _)) => break EndReason::PeerClosed,
                    Err(_) => break EndReason::SlowConsumer,
                }
            }
            out.clear();
        }
        if let Some(t) = call.take_wire_sent() {
            worker.metrics().agent_wire.observe(t.elapsed());
        }
        if let Some(reason) = call.end() {
            break reason;
        }
        // Wait for bytes, the call's next deadline or a control message (hang-up, shutdown,
        // idle: the worker's housekeeping watches `last_rx`). The read and mailbox futures
        // live across iterations; only a call with something scheduled (queued playout, a
        // pending turn end) arms a timer.
        let deadline = call.deadline().map(|t| worker.instant(t));
        let scheduled = std::pin::pin!(async move {
            match deadline {
                Some(at) => compio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        });
        let provider_events = std::pin::pin!(async {
            match &events {
                Some(e) => e.ready().await,
                None => std::future::pending().await,
            }
        });
        let waiting = select(
            read.as_mut(),
            select(scheduled, select(ctl.as_mut(), provider_events)),
        );
        match waiting.await {
            Either::Left((BufResult(Ok(n), buf), _)) if n > 0 => {
                mailbox.last_rx.set(Instant::now());
                match wire {
                    Wire::Plain => socket.feed(&buf[..n]),
                    Wire::Tls(session) => {
                        plain.clear();
                        if session.receive(&buf[..n], &mut plain).is_err() {
                            break EndReason::Protocol(ProtocolErrorKind::Tls);
                        }
                        socket.feed(&plain);
                    }
                }
                let mut buf = buf;
                buf.clear();
                // The next read in the same box: no allocation per read.
                read.set(read_into(stream, buf));
            }
            Either::Left(_) => break EndReason::PeerClosed,
            Either::Right((Either::Left(((), _)), _)) => {
                let now = worker.now();
                if std::panic::catch_unwind(AssertUnwindSafe(|| {
                    call.on_timeout(now, worker.metrics())
                }))
                .is_err()
                {
                    break EndReason::Panicked;
                }
            }
            Either::Right((Either::Right((Either::Left((Control::Hangup, _)), _)), _)) => {
                break EndReason::Hangup;
            }
            Either::Right((Either::Right((Either::Left((Control::Shutdown, _)), _)), _)) => {
                break EndReason::Shutdown;
            }
            Either::Right((Either::Right((Either::Left((Control::Idle, _)), _)), _)) => {
                break EndReason::IdleTimeout;
            }
            Either::Right((Either::Right((Either::Right(((), _)), _)), _)) => {
                let now = worker.now();
                if std::panic::catch_unwind(AssertUnwindSafe(|| {
                    call.on_events(now, worker.metrics())
                }))
                .is_err()
                {
                    break EndReason::Panicked;
                }
            }
        }
    };
    drop(read);
    if let Some((code, text)) = reason.close() {
        socket.close(code, &text);
    }
    // What is queued leaves before the shutdown: our close frame, or the reply to the peer's
    // close (and a pong read with it) that makes the close clean. A peer that stopped reading
    // gets nothing more.
    if reason != EndReason::SlowConsumer && !socket.output().is_empty() {
        let mut bytes = wire.seal(std::mem::take(socket.output()));
        if let Wire::Tls(session) = wire {
            session.close(&mut bytes);
        }
        let mut w = stream;
        let _ = compio::time::timeout(Duration::from_secs(1), w.write_all(bytes)).await;
    }
    let mut w = stream;
    let _ = w.shutdown().await;
    (reason, call)
}
