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
    /// SIP calls on this worker by SIP Call-ID: where their messages go.
    sip_calls: RefCell<HashMap<String, Rc<sip::SipInbox>>>,
    /// This worker's free RTP ports.
    rtp_ports: RefCell<std::collections::VecDeque<u16>>,
    /// This worker's free WebRTC ports.
    webrtc_ports: RefCell<std::collections::VecDeque<u16>>,
    /// WebRTC calls on this worker by their resource (the secret part of their `Location`):
    /// the call's id.
    webrtc_calls: RefCell<HashMap<String, String>>,
    /// The reader of its calls' sockets once they are calls (RTP, RTCP, carriers' WebSockets).
    media_pump: Rc<media_pump::MediaPump>,
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
    let rtp_ports = sip::rtp_ports(&shared, index);
    let webrtc_ports = webrtc::ports(&shared, index);
    let media_pump = media_pump::MediaPump::new()?;
    let worker = Rc::new(Worker {
        index,
        shared,
        slots: RefCell::new(SlotTable::new(slots, ai_limit)),
        calls: RefCell::new(HashMap::new()),
        sip_calls: RefCell::new(HashMap::new()),
        rtp_ports: RefCell::new(rtp_ports),
        webrtc_ports: RefCell::new(webrtc_ports),
        webrtc_calls: RefCell::new(HashMap::new()),
        media_pump,
        next_call: Cell::new(0),
        refusals_logged: Cell::new(None),
        refusals_unlogged: Cell::new(0),
        epoch: Instant::now(),
    });
    worker.publish();
    runtime.block_on(async move {
        compio::runtime::spawn(housekeeping(worker.clone())).detach();
        compio::runtime::spawn(worker.media_pump.clone().run()).detach();
        while let Ok(msg) = inbox.recv_async().await {
            match msg {
                Inbox::Connection(stream) => {
                    compio::runtime::spawn(serve::serve(worker.clone(), stream)).detach();
                }
                Inbox::Sip { from, bytes } => sip::dispatch(&worker, from, bytes),
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

/// What woke a call's task.
enum Wake {
    /// Datagrams the pump queued for it.
    Media,
    /// A SIP message for its dialog.
    Sip,
    Timer,
    Control(Control),
    /// The bot's providers have something for it.
    Events,
}

/// The first of what a call's task waits for: datagrams the media pump queued for it, a SIP
/// message (`sip`, for SIP calls), its mailbox (`ctl`, kept across waits), its bot's provider
/// events, its deadline.
async fn next_wake<F: std::future::Future<Output = Control>>(
    media: &media_pump::MediaInbox,
    sip: Option<&sip::SipInbox>,
    ctl: &mut std::pin::Pin<&mut F>,
    events: Option<&cxb_pipeline::provider::Events>,
    deadline: Option<Instant>,
) -> Wake {
    use std::task::Poll;
    let mut timer = std::pin::pin!(async move {
        match deadline {
            Some(at) => compio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    });
    let mut ready = std::pin::pin!(async {
        match events {
            Some(e) => e.ready().await,
            None => std::future::pending().await,
        }
    });
    std::future::poll_fn(|cx| {
        if media.poll_ready(cx).is_ready() {
            return Poll::Ready(Wake::Media);
        }
        if sip.is_some_and(|inbox| inbox.poll_ready(cx).is_ready()) {
            return Poll::Ready(Wake::Sip);
        }
        if let Poll::Ready(c) = ctl.as_mut().poll(cx) {
            return Poll::Ready(Wake::Control(c));
        }
        if ready.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Events);
        }
        timer.as_mut().poll(cx).map(|()| Wake::Timer)
    })
    .await
}

/// Why a placed call's bot cannot answer it.
enum BotRefused {
    /// The bot belongs to another organization than the call token's.
    WrongBot,
    /// No such bot.
    Unknown,
    /// It cannot be loaded now (logged).
    Unavailable,
}

impl Worker {
    /// The AI bot a call to `bot_id` reaches (`None` for a built-in bot, `builtin`), when it
    /// belongs to `org` (the call token's; without a token only a bot of no organization).
    async fn placed_bot(&self, bot_id: &str, builtin: Option<BotKind>, org: Option<&cxb_contract::ids::OrgId>) -> Result<Option<Rc<cxb_contract::bot::BotConfig>>, BotRefused> {
        if builtin.is_some() {
            return Ok(None);
        }
        match self.shared.config.bots.resolve(bot_id).await {
            Ok(bot) if bot.org_id.as_ref().is_none_or(|o| org.is_some_and(|c| c.as_str() == o.as_str())) => Ok(Some(bot)),
            Ok(_) => Err(BotRefused::WrongBot),
            Err(BotError::NotFound) => Err(BotRefused::Unknown),
            Err(BotError::Unavailable(why)) => {
                tracing::warn!(bot = bot_id, "bot unavailable: {why}");
                Err(BotRefused::Unavailable)
            }
        }
    }

    /// A new call's number on this worker and its id (`w{worker}-{n}`).
    /// An AI agent for `bot` on this host: its handoffs, the desk's takeover (when the engine
    /// takes WebRTC) and the turn model as configured.
    fn agent(&self, bot: Rc<cxb_contract::bot::BotConfig>, claims: Option<cxb_contract::call_token::CallClaims>) -> Result<Agent, String> {
        let config = &self.shared.config;
        Agent::new(bot, config.bots.api.clone(), claims, self.now(), unix_ms()).map(|a| a.with_handoffs(config.results.clone(), config.webrtc.is_some()).with_turn_model(config.turn_model.clone()))
    }

    fn next_call_id(&self) -> (u64, String) {
        let n = self.next_call.get();
        self.next_call.set(n + 1);
        (n, format!("w{}-{n}", self.index))
    }

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
            Command::HangupWebRtc { resource } => {
                let call_id = self.webrtc_calls.borrow().get(&resource).cloned();
                match call_id.as_ref().and_then(|id| self.calls.borrow().get(id).cloned()) {
                    Some(mailbox) => {
                        mailbox.post(Control::Hangup);
                        json!({ "ok": true })
                    }
                    None => json!({ "ok": false, "error": "no such call" }),
                }
            }
            Command::SipState { sip_call_id } => match self.sip_calls.borrow().get(&sip_call_id) {
                Some(inbox) => {
                    let (state, status) = inbox.progress.get();
                    json!({ "ok": true, "live": true, "state": state, "status": status })
                }
                None => json!({ "ok": false, "error": "no such call" }),
            },
            Command::HangupSip { sip_call_id } => match self.sip_calls.borrow().get(&sip_call_id) {
                Some(inbox) => {
                    inbox.hang_up();
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

mod call_loop;
mod media_pump;
mod serve;
mod sip;
mod sip_bridge;
mod sip_out;
mod webrtc;
