//! SIP calls on a worker: the dialog ([`InboundCall`], sans-IO) and the call's RTP socket
//! live on the worker that the SIP port (`crate::sip`) routed the INVITE to. One task per call
//! reads its RTP socket, takes its SIP messages from a per-call inbox, and runs the dialog's
//! and the call's timers on the worker's clock.
//!
//! An INVITE is answered 100 at once; then the Request-URI's user names the bot (for now the
//! built-in demo bots; unknown users get 404), the SDP offer is negotiated (488 when it has no
//! G.711), a slot and an RTP port are taken (503 with Retry-After when there are none), and
//! the call is answered (180, then 200 with our SDP). The bot starts with the answer. Either
//! side hangs up with a BYE; a call that hears nothing for the idle timeout is hung up.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::task::{Poll, Waker};

use cxb_sip::call::{CallEvent, EndCause, InboundCall, Local, Output as SipOutput};
use cxb_sip::message::{Message, StartLine, uri_of, user_of};
use cxb_sip::sdp::{Codec, Negotiated, SessionDescription};

use super::*;
use crate::protocol::{Start, StreamSid};
use crate::sip::{SipPeer, SipShared};
use crate::transport::{RtpCodec, RtpConfig, RtpTransport};
use super::call_loop::finish_bot_with;

/// The longest a finished dialog waits for its last messages (our BYE's answer, the ACK of
/// a refusal): 64·T1, RFC 3261's transaction timeout.
pub(super) const LINGER: Duration = Duration::from_secs(32);

/// A call's SIP messages, from the worker's dispatch to the call's task.
pub(super) struct SipInbox {
    messages: RefCell<VecDeque<(SipPeer, Vec<u8>)>>,
    waker: Cell<Option<Waker>>,
    /// The platform asked to end the call (`DELETE /sip/calls/{id}`).
    pub(super) hangup: Cell<bool>,
    /// Where a dialled call stands, for `GET /sip/calls/{id}`: `trying`, `ringing` (180),
    /// `early` (183, early media), `answered` (200), and the last status heard.
    pub(super) progress: Cell<(&'static str, u16)>,
}

impl Default for SipInbox {
    fn default() -> SipInbox {
        SipInbox { messages: RefCell::default(), waker: Cell::default(), hangup: Cell::default(), progress: Cell::new(("trying", 100)) }
    }
}

impl SipInbox {
    fn push(&self, from: SipPeer, bytes: Vec<u8>) {
        let mut messages = self.messages.borrow_mut();
        if messages.len() < 64 {
            messages.push_back((from, bytes));
        }
        drop(messages);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Asks the call to end.
    pub(super) fn hang_up(&self) {
        self.hangup.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub(super) fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.messages.borrow().is_empty() && !self.hangup.get() {
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    pub(super) fn pop(&self) -> Option<(SipPeer, Vec<u8>)> {
        self.messages.borrow_mut().pop_front()
    }
}

/// This worker's share of the RTP ports: even ports `p` with `(p - low) / 2 % workers ==
/// index`, least recently used first.
pub(super) fn rtp_ports(shared: &Shared, index: usize) -> VecDeque<u16> {
    let Some(sip) = &shared.sip else { return VecDeque::new() };
    let (low, high) = sip.rtp_ports;
    let n = shared.workers.len();
    (low..high).step_by(2).filter(|p| usize::from((p - low) / 2) % n == index).collect()
}

/// A SIP message for this worker (the SIP port routed its Call-ID here).
pub(super) fn dispatch(worker: &Rc<Worker>, from: SipPeer, bytes: Vec<u8>) {
    let Some(sip) = &worker.shared.sip else { return };
    let Ok(message) = Message::parse(&bytes) else { return };
    let call_id = message.call_id();
    if let Some(inbox) = worker.sip_calls.borrow().get(call_id) {
        inbox.push(from, bytes);
        return;
    }
    if message.method() == Some("INVITE") && message.tag("To").is_none() {
        // The call's inbox exists from now on: what comes before its task first runs (a
        // retransmitted INVITE, a CANCEL) waits there instead of starting a second call.
        let inbox = register(worker, call_id);
        let worker = worker.clone();
        compio::runtime::spawn(async move {
            // A refused INVITE may be followed by another for the same Call-ID (with the
            // credentials a 401 asked for): the next call, on this worker.
            let mut next = Some((from, bytes, inbox));
            while let Some((from, bytes, inbox)) = next {
                next = inbound(worker.clone(), from, bytes, inbox).await.map(|(from, bytes)| {
                    let call_id = Message::parse(&bytes).map(|m| m.call_id().to_string()).unwrap_or_default();
                    let inbox = register(&worker, &call_id);
                    (from, bytes, inbox)
                });
            }
        })
        .detach();
    } else {
        // The call ended here between the SIP port's lookup and now.
        sip.forget(call_id);
    }
}

/// A new call's inbox, registered on this worker and in the SIP port's routes.
pub(super) fn register(worker: &Rc<Worker>, call_id: &str) -> Rc<SipInbox> {
    let inbox = Rc::new(SipInbox::default());
    worker.sip_calls.borrow_mut().insert(call_id.to_string(), inbox.clone());
    if let Some(sip) = &worker.shared.sip {
        sip.claim(call_id, worker.index);
    }
    inbox
}

/// Unregisters a SIP call from its worker and the SIP port however its task ends.
pub(super) struct Registered {
    pub(super) worker: Rc<Worker>,
    pub(super) call_id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.worker.sip_calls.borrow_mut().remove(&self.call_id);
        if let Some(sip) = &self.worker.shared.sip {
            sip.forget(&self.call_id);
        }
    }
}

/// A random value for tags, SSRCs and SDP session ids.
pub(super) fn random() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(unix_ms())
}

/// The RTP stream an offer/answer settled, with a random SSRC.
pub(super) fn rtp_config(negotiated: &Negotiated) -> RtpConfig {
    RtpConfig {
        codec: match negotiated.codec {
            Codec::Pcmu => RtpCodec::Pcmu,
            Codec::Pcma => RtpCodec::Pcma,
            Codec::Opus(_) => RtpCodec::Opus,
        },
        payload_type: negotiated.codec.payload_type(),
        dtmf: negotiated.dtmf,
        dtmf_clock: negotiated.dtmf_clock,
        ssrc: random() as u32,
        remote: negotiated.remote.map(|(ip, port)| SocketAddr::new(ip, port)),
    }
}

/// Why an INVITE is refused: the status, its reason phrase, a digest challenge for a 401.
struct Refused(u16, &'static str, Option<String>);

impl Refused {
    fn status(code: u16, reason: &'static str) -> Refused {
        Refused(code, reason, None)
    }
}

/// Who answers.
enum Answerer {
    /// A built-in bot.
    Builtin(BotKind),
    /// An AI bot, through a number of its organization.
    Agent(Rc<cxb_contract::bot::BotConfig>),
}

/// What the INVITE asked for and got.
struct Accepted {
    answerer: Answerer,
    negotiated: Negotiated,
    slot: usize,
    call_id: String,
}

/// Digest realm of the engine's challenges, and how long its nonces are good for.
const REALM: &str = "cxb";
const NONCE_SECONDS: u64 = 300;

impl Worker {
    pub(super) fn sip_now(&self) -> Duration {
        Duration::from_micros(self.now().as_micros())
    }

    /// Decides an INVITE from `peer`: who answers (the Request-URI's user: a demo bot, or a
    /// number from the API whose trunk this is), its media, a slot.
    async fn admit_sip(&self, sip: &SipShared, user: Option<&str>, invite: &Message<'_>, peer: SipPeer) -> Result<Accepted, Refused> {
        let config = &self.shared.config;
        let user = user.ok_or(Refused::status(404, "Not Found"))?;
        let answerer = match BotKind::lookup(user, config.demo_bots, config.fault_injection) {
            Some(kind) => Answerer::Builtin(kind),
            None => self.admit_number(sip, user, invite, peer).await?,
        };
        let negotiated = std::str::from_utf8(invite.body)
            .ok()
            .and_then(|text| SessionDescription::parse(text).ok())
            .and_then(|offer| offer.negotiate().ok())
            .ok_or(Refused::status(488, "Not Acceptable Here"))?;
        let ai = matches!(answerer, Answerer::Agent(_));
        if ai && config.results.as_ref().is_some_and(|r| !r.writable()) {
            self.metrics().rejected_outbox.add(1);
            return Err(Refused::status(503, "Service Unavailable"));
        }
        let (_, call_id) = self.next_call_id();
        let bot_id = match &answerer {
            Answerer::Builtin(kind) => kind.id().to_string(),
            Answerer::Agent(bot) => bot.id.clone(),
        };
        let slot = self.acquire(&call_id, &bot_id, None, ai).map_err(|_| {
            self.metrics().rejected_busy.add(1);
            Refused::status(503, "Service Unavailable")
        })?;
        Ok(Accepted { answerer, negotiated, slot, call_id })
    }

    /// A number's route from the API: the trunk's source address and digest credentials
    /// checked (403, 401 with a challenge), then its bot.
    async fn admit_number(&self, sip: &SipShared, number: &str, invite: &Message<'_>, peer: SipPeer) -> Result<Answerer, Refused> {
        let config = &self.shared.config;
        let route = match config.bots.resolve_number(number).await {
            Ok(route) => route,
            Err(BotError::NotFound) => {
                self.metrics().rejected_unknown_bot.add(1);
                return Err(Refused::status(404, "Not Found"));
            }
            Err(BotError::Unavailable(why)) => {
                tracing::warn!(number, "number unavailable: {why}");
                return Err(Refused::status(503, "Service Unavailable"));
            }
        };
        if !route.allowed_sources.is_empty() && !route.allowed_sources.iter().any(|net| net.contains(&peer.addr().ip())) {
            self.metrics().refused(Refusal::WrongSource);
            tracing::warn!(number, peer = %peer.addr(), "INVITE from a source the number does not allow");
            return Err(Refused::status(403, "Forbidden"));
        }
        if let (Some(username), Some(password)) = (&route.digest_username, &route.digest_password) {
            let now = unix_ms() / 1000;
            let credentials = invite.header("Authorization").and_then(cxb_sip::digest::Credentials::parse);
            let verdict = credentials.as_ref().map(|c| {
                let right = c.username == *username && c.realm == REALM && c.verify("INVITE", password);
                (right, cxb_sip::digest::nonce_fresh(&sip.nonce_key, &c.nonce, now, NONCE_SECONDS))
            });
            match verdict {
                Some((true, true)) => {}
                Some((right, _)) => {
                    if !right {
                        self.metrics().refused(Refusal::BadCredentials);
                    }
                    let challenge = cxb_sip::digest::Challenge { realm: REALM.into(), nonce: cxb_sip::digest::nonce(&sip.nonce_key, now), stale: right };
                    return Err(Refused(401, "Unauthorized", Some(challenge.header())));
                }
                None => {
                    let challenge = cxb_sip::digest::Challenge { realm: REALM.into(), nonce: cxb_sip::digest::nonce(&sip.nonce_key, now), stale: false };
                    return Err(Refused(401, "Unauthorized", Some(challenge.header())));
                }
            }
        }
        // The organization may route a number to a built-in bot to try a trunk out.
        if let Some(kind) = BotKind::lookup(&route.bot_id, true, false) {
            return Ok(Answerer::Builtin(kind));
        }
        match config.bots.resolve(&route.bot_id).await {
            Ok(bot) if bot.org_id.as_deref().is_none_or(|org| org == route.org_id) => Ok(Answerer::Agent(bot)),
            Ok(_) => Err(Refused::status(403, "Forbidden")),
            Err(BotError::NotFound) => Err(Refused::status(404, "Not Found")),
            Err(BotError::Unavailable(why)) => {
                tracing::warn!(bot = route.bot_id, "bot unavailable: {why}");
                Err(Refused::status(503, "Service Unavailable"))
            }
        }
    }

    /// Binds an RTP socket on one of this worker's ports, and its RTCP socket on the next
    /// port when that one is free.
    pub(super) fn bind_rtp(&self, sip: &SipShared) -> Option<(MediaSockets, u16)> {
        let (rtp, port) = bind_free(&self.rtp_ports, sip.local.ip())?;
        let rtcp = std::net::UdpSocket::bind((sip.local.ip(), port + 1)).ok();
        Some((MediaSockets { rtp, rtcp }, port))
    }
}

/// A UDP socket on `ip` and the least recently used port of `ports` that binds (a port taken
/// by someone else goes to the back, tried again later; at most 16 are tried).
pub(super) fn bind_free(ports: &RefCell<VecDeque<u16>>, ip: std::net::IpAddr) -> Option<(std::net::UdpSocket, u16)> {
    let mut ports = ports.borrow_mut();
    for _ in 0..ports.len().min(16) {
        let port = ports.pop_front()?;
        match std::net::UdpSocket::bind((ip, port)) {
            Ok(socket) => return Some((socket, port)),
            Err(_) => ports.push_back(port),
        }
    }
    None
}

/// A call's media sockets: RTP, and RTCP on the next port.
pub(super) struct MediaSockets {
    pub(super) rtp: std::net::UdpSocket,
    pub(super) rtcp: Option<std::net::UdpSocket>,
}

/// Sends a stream's RTP and RTCP packets without blocking: a full socket buffer drops them,
/// as the network would.
pub(super) fn send_media(rtp: &mut RtpTransport, socket: &std::net::UdpSocket, rtcp: Option<&std::net::UdpSocket>) {
    while let Some((to, packet)) = rtp.poll_transmit() {
        let _ = socket2::SockRef::from(socket).send_to_with_flags(&packet, &to.into(), MSG_DONTWAIT);
        rtp.recycle(packet);
    }
    while let Some((to, packet)) = rtp.poll_rtcp() {
        if let Some(socket) = rtcp {
            let _ = socket2::SockRef::from(socket).send_to_with_flags(&packet, &to.into(), MSG_DONTWAIT);
        }
    }
}

/// Gives an RTP port back to its worker when the call's socket is gone.
pub(super) struct PortLease {
    pub(super) worker: Rc<Worker>,
    pub(super) port: u16,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.worker.rtp_ports.borrow_mut().push_back(self.port);
    }
}

/// What a dialog's events mean for the call's task, whichever side placed the call.
#[derive(Debug)]
pub(super) enum DialogEvent {
    /// A key pressed (SIP INFO).
    Dtmf(char),
    /// A re-INVITE or UPDATE offered this SDP.
    Reoffer(String),
    /// The peer answered our REFER with this status.
    Referred(u16),
    /// The dialog is over, for this reason.
    Ended(EndReason),
    /// Nothing for the media.
    Other,
}

/// One answer of a dialog's `poll`.
pub(super) enum DialogOutput {
    Transmit(String),
    Event(DialogEvent),
    Timeout(Option<Duration>),
}

/// A SIP dialog as a call's task drives it: the inbound `InboundCall` or the outbound
/// `OutboundCall`.
pub(super) trait Dialog {
    fn on_message(&mut self, now: Duration, m: &Message<'_>);
    fn handle_timeout(&mut self, now: Duration);
    fn hang_up(&mut self, now: Duration);
    fn answer_reoffer(&mut self, sdp: &str);
    /// Asks the peer to take the call elsewhere; its answer comes as `Referred`.
    fn refer(&mut self, now: Duration, target: &str);
    fn poll(&mut self) -> DialogOutput;
    fn is_ended(&self) -> bool;
    /// A new INVITE for this Call-ID (after a refusal), to be the next call.
    fn is_new_invite(&self, _m: &Message<'_>) -> bool {
        false
    }
    /// The other party's number or user (the caller of an inbound call).
    fn remote_user(&self) -> Option<String>;
}

impl Dialog for InboundCall {
    fn on_message(&mut self, now: Duration, m: &Message<'_>) {
        InboundCall::on_message(self, now, m);
    }
    fn remote_user(&self) -> Option<String> {
        user_of(uri_of(self.parties().0)).map(str::to_string)
    }
    fn handle_timeout(&mut self, now: Duration) {
        InboundCall::handle_timeout(self, now);
    }
    fn hang_up(&mut self, now: Duration) {
        InboundCall::hang_up(self, now);
    }
    fn answer_reoffer(&mut self, sdp: &str) {
        InboundCall::answer_reoffer(self, sdp);
    }
    fn refer(&mut self, now: Duration, target: &str) {
        InboundCall::refer(self, now, target);
    }
    fn poll(&mut self) -> DialogOutput {
        match self.poll_output() {
            SipOutput::Transmit(m) => DialogOutput::Transmit(m),
            SipOutput::Timeout(at) => DialogOutput::Timeout(at),
            SipOutput::Event(e) => DialogOutput::Event(match e {
                CallEvent::Dtmf(key) => DialogEvent::Dtmf(key),
                CallEvent::Reoffer(sdp) => DialogEvent::Reoffer(sdp),
                CallEvent::Referred(code) => DialogEvent::Referred(code),
                CallEvent::Ended(cause) => {
                    tracing::debug!(?cause, "dialog ended");
                    DialogEvent::Ended(match cause {
                        EndCause::RemoteBye | EndCause::Cancelled => EndReason::Stopped,
                        EndCause::NoAck => EndReason::PeerClosed,
                        EndCause::SessionExpired => EndReason::IdleTimeout,
                        EndCause::LocalBye | EndCause::Refused(_) => EndReason::Hangup,
                    })
                }
                CallEvent::Confirmed => DialogEvent::Other,
            }),
        }
    }
    fn is_ended(&self) -> bool {
        InboundCall::is_ended(self)
    }
    fn is_new_invite(&self, m: &Message<'_>) -> bool {
        InboundCall::is_new_invite(self, m)
    }
}

/// Sends the dialog's messages to `to`; returns its events.
pub(super) fn flush<D: Dialog>(sip: &SipShared, dialog: &mut D, to: SipPeer, events: &mut Vec<DialogEvent>) -> Option<Duration> {
    loop {
        match dialog.poll() {
            DialogOutput::Transmit(message) => sip.send(to, message.as_bytes()),
            DialogOutput::Event(event) => events.push(event),
            DialogOutput::Timeout(at) => return at,
        }
    }
}

/// One inbound SIP call, from its INVITE to the dialog's end; a new INVITE for the same
/// Call-ID that came after a refusal (answering a 401) is returned, to be the next call.
async fn inbound(worker: Rc<Worker>, peer: SipPeer, invite: Vec<u8>, inbox: Rc<SipInbox>) -> Option<(SipPeer, Vec<u8>)> {
    let sip = worker.shared.sip.as_ref()?;
    let message = Message::parse(&invite).ok()?;
    let user = match message.start {
        StartLine::Request { uri, .. } => user_of(uri).map(str::to_string),
        StartLine::Response { .. } => None,
    };
    let tcp = peer.uri_param();
    let local = Local {
        tag: format!("{:016x}", random()),
        contact: format!("sip:{}@{}{tcp}", user.as_deref().unwrap_or("cxb"), sip.sent_by_for(peer)),
        sent_by: sip.sent_by_for(peer),
        transport: peer.transport(),
    };
    let sip_call_id = message.call_id().to_string();
    let registered = Registered { worker: worker.clone(), call_id: sip_call_id.clone() };
    let mut dialog = InboundCall::new(&message, local)?;
    let mut events = Vec::new();
    flush(sip, &mut dialog, peer, &mut events);
    let admitted = worker.admit_sip(sip, user.as_deref(), &message, peer).await.and_then(|accepted| match worker.bind_rtp(sip) {
        Some(rtp) => Ok((accepted, rtp)),
        None => {
            worker.free_slot(accepted.slot);
            tracing::warn!("no RTP port free");
            Err(Refused::status(503, "Service Unavailable"))
        }
    });
    let now = worker.sip_now();
    let (accepted, (socket, port)) = match admitted {
        Ok(admitted) => admitted,
        Err(Refused(code, reason, challenge)) => {
            let headers: Vec<(&str, &str)> = challenge.iter().map(|c| ("WWW-Authenticate", c.as_str())).collect();
            dialog.refuse_with(now, code, reason, &headers);
            let next = linger(&worker, sip, &mut dialog, &inbox, peer).await;
            drop(registered);
            return next;
        }
    };
    let lease = PortLease { worker: worker.clone(), port };
    let (from, to) = dialog.parties();
    let start = Start {
        transport: "sip",
        stream_sid: StreamSid::new(&sip_call_id),
        // The call's id in its result: ours, not the caller's Call-ID (any characters, chosen
        // by the peer).
        call_sid: Some(format!("sip-{:016x}", random())),
        account_sid: None,
        from: user_of(uri_of(from)).map(str::to_string),
        to: user.clone().or_else(|| user_of(uri_of(to)).map(str::to_string)),
        custom_parameters: Vec::new(),
        media_format: None,
    };
    let negotiated = accepted.negotiated;
    let started = match accepted.answerer {
        Answerer::Builtin(kind) => Ok((kind, None)),
        Answerer::Agent(bot) => worker.agent(bot, None).map(|agent| (BotKind::Agent, Some(agent))).map_err(|why| format!("bot failed to start: {why}")),
    }
    .and_then(|(kind, agent)| {
        let call = Call::over_rtp(worker.now(), unix_ms(), CallConfig::new(Protocol::Twilio, kind), agent, rtp_config(&negotiated), &start);
        call.map(|call| (kind, call)).map_err(|why| format!("media failed to start: {why}"))
    });
    let (kind, call) = match started {
        Ok(started) => started,
        Err(why) => {
            tracing::warn!("{why}");
            worker.free_slot(accepted.slot);
            dialog.refuse(now, 503, "Service Unavailable");
            drop(lease);
            linger(&worker, sip, &mut dialog, &inbox, peer).await;
            return None;
        }
    };
    let sdp = cxb_sip::sdp::Local { address: sip.advertise, port, session_id: random() >> 1, version: 1 };
    dialog.ring(now);
    dialog.answer(now, &sdp.answer(&negotiated));
    let mailbox = Rc::new(Mailbox { message: Cell::new(None), waker: Cell::new(None), last_rx: Cell::new(Instant::now()) });
    worker.calls.borrow_mut().insert(accepted.call_id.clone(), mailbox.clone());
    worker.metrics().calls_started.add(1);
    let mut guard = CallGuard { worker: worker.clone(), slot: accepted.slot, call_id: accepted.call_id.clone(), reason: EndReason::PeerClosed };
    let span = tracing::info_span!("call", id = %accepted.call_id, bot = kind.id(), transport = "sip", worker = worker.index);
    async {
        let mut media = Media { worker: &worker, sip, peer, dialog: &mut dialog, inbox: &inbox, mailbox: &mailbox, slot: accepted.slot, sdp, referred: None, bridged: None };
        let (reason, mut call) = media.run_call(call, socket).await;
        let (referred, bridged) = (media.referred, media.bridged);
        let report = call.media_report();
        guard.reason = reason;
        drop(lease);
        // The result is made durable before the slot is freed, as for every AI call; the
        // dialog's BYE is out already. A transfer records how the peer answered the REFER.
        finish_bot_with(&worker, &mut call, &accepted.call_id, reason, |result| {
            result.metrics.insert("rtp".into(), report);
            if let (Some(code), Some(transfer)) = (referred, result.metrics.get_mut("transfer").and_then(|t| t.as_object_mut())) {
                transfer.insert("status".into(), code.into());
                transfer.insert("accepted".into(), (200..300).contains(&code).into());
                if let Some(b) = bridged {
                    transfer.insert("bridge".into(), serde_json::json!({ "status": b.status, "answered": b.status == 200, "talked_ms": b.talked.as_millis() as u64 }));
                }
            }
        })
        .await;
        tracing::debug!(reason = reason.label(), "call ended");
    }
    .instrument(span)
    .await;
    drop(guard);
    linger(&worker, sip, &mut dialog, &inbox, peer).await;
    None
}

/// A finished dialog's last exchanges (its BYE answered, its refusal acknowledged), bounded;
/// a new INVITE for the Call-ID (after a 401) is returned.
pub(super) async fn linger<D: Dialog>(worker: &Worker, sip: &SipShared, dialog: &mut D, inbox: &SipInbox, peer: SipPeer) -> Option<(SipPeer, Vec<u8>)> {
    let give_up = Instant::now() + LINGER;
    let mut events = Vec::new();
    loop {
        let next = flush(sip, dialog, peer, &mut events);
        while let Some((from, bytes)) = inbox.pop() {
            let Ok(m) = Message::parse(&bytes) else { continue };
            if dialog.is_new_invite(&m) {
                dialog.handle_timeout(Duration::MAX); // whatever it waited for, it is over
                flush(sip, dialog, peer, &mut events);
                return Some((from, bytes));
            }
            dialog.on_message(worker.sip_now(), &m);
        }
        let next = flush(sip, dialog, peer, &mut events).or(next);
        if dialog.is_ended() || Instant::now() >= give_up {
            return None;
        }
        let wake = next.map_or(give_up, |at| worker.epoch + at).min(give_up);
        let timer = std::pin::pin!(compio::time::sleep_until(wake));
        let ready = std::future::poll_fn(|cx| inbox.poll_ready(cx));
        if let Either::Left(_) = select(timer, std::pin::pin!(ready)).await {
            dialog.handle_timeout(worker.sip_now());
        }
    }
}

/// An answered SIP call's media and signalling, until either side ends it.
pub(super) struct Media<'a, D> {
    pub(super) worker: &'a Rc<Worker>,
    pub(super) sip: &'a SipShared,
    pub(super) peer: SipPeer,
    pub(super) dialog: &'a mut D,
    pub(super) inbox: &'a SipInbox,
    pub(super) mailbox: &'a Mailbox,
    pub(super) slot: usize,
    pub(super) sdp: cxb_sip::sdp::Local,
    /// The answer to our REFER, when the bot transferred the call.
    pub(super) referred: Option<u16>,
    /// The engine's own leg to the destination, when the REFER was not taken.
    pub(super) bridged: Option<super::sip_bridge::Bridged>,
}

impl<D: Dialog> Media<'_, D> {
    pub(super) async fn run_call(&mut self, mut call: Call<RtpTransport>, sockets: MediaSockets) -> (EndReason, Call<RtpTransport>) {
        let worker = self.worker;
        let MediaSockets { rtp: sender, rtcp } = sockets;
        // The worker's pump reads both sockets (see `media_pump`); the task sends on them.
        let pump = &worker.media_pump;
        let registration = match pump.register(&sender, rtcp.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("media sockets: {e}");
                return (EndReason::Panicked, call);
            }
        };
        let media = &registration.inbox;
        let provider_events = call.events();
        let mut ctl = std::pin::pin!(self.mailbox.recv());
        let mut events = Vec::new();
        let mut sip_next;
        let reason = 'call: loop {
            // The dialog's messages and what they mean for the call (answering a re-INVITE
            // makes more to send).
            loop {
                sip_next = self.signal(&mut events);
                if events.is_empty() {
                    break;
                }
                for event in std::mem::take(&mut events) {
                    match event {
                        DialogEvent::Ended(reason) => break 'call reason,
                        DialogEvent::Dtmf(digit) => {
                            let now = worker.now();
                            if std::panic::catch_unwind(AssertUnwindSafe(|| call.on_dtmf(now, digit, worker.metrics()))).is_err() {
                                break 'call EndReason::Panicked;
                            }
                        }
                        DialogEvent::Reoffer(offer) => self.reoffer(&offer, call.rtp().payload_type()),
                        DialogEvent::Referred(_) | DialogEvent::Other => {}
                    }
                }
            }
            send_media(call.rtp(), &sender, rtcp.as_ref());
            let stats = call.stats();
            worker.shared.segment.count_frames(worker.index, self.slot, stats.frames_in, stats.frames_out);
            if let Some(reason) = call.end() {
                break reason;
            }
            let deadline = [call.deadline().map(|t| worker.instant(t)), sip_next.map(|at| worker.epoch + at)].into_iter().flatten().min();
            let wake = next_wake(media, Some(self.inbox), &mut ctl, provider_events.as_ref(), deadline).await;
            let now = worker.now();
            let handled = match wake {
                Wake::Media => {
                    let mut handled = Ok(());
                    while let Some(d) = media.pop() {
                        if d.rtcp {
                            call.rtp().on_rtcp(now, d.from, &d.bytes);
                        } else {
                            self.mailbox.last_rx.set(Instant::now());
                            handled = std::panic::catch_unwind(AssertUnwindSafe(|| call.on_datagram(now, d.from, &d.bytes, worker.metrics())));
                        }
                        media.recycle(d.bytes);
                        if handled.is_err() {
                            break;
                        }
                    }
                    handled
                }
                Wake::Sip if self.inbox.hangup.take() => break EndReason::Hangup,
                Wake::Sip => Ok(()),
                Wake::Events => {
                    let at = worker.instant(now);
                    std::panic::catch_unwind(AssertUnwindSafe(|| call.on_events(now, at, worker.metrics())))
                }
                Wake::Timer => {
                    self.dialog.handle_timeout(worker.sip_now());
                    std::panic::catch_unwind(AssertUnwindSafe(|| call.on_timeout(now, worker.metrics())))
                }
                Wake::Control(Control::Hangup) => break EndReason::Hangup,
                Wake::Control(Control::Shutdown) => break EndReason::Shutdown,
                Wake::Control(Control::Idle) => break EndReason::IdleTimeout,
            };
            if handled.is_err() {
                break EndReason::Panicked;
            }
        };
        if reason == EndReason::Transferred
            && let Some(target) = call.transfer_target()
        {
            let referred = self.transfer(&target).await;
            self.referred = Some(referred);
            // Not taken (refused, or unanswered in time): the engine places the call itself
            // and relays the media (400: the destination is not one).
            if !(200..300).contains(&referred) && referred != 400 {
                self.bridged = self.bridge(&target, call.rtp(), &sender, rtcp.as_ref(), media).await;
            }
        }
        drop(registration);
        call.rtp().rtcp_bye();
        send_media(call.rtp(), &sender, rtcp.as_ref());
        self.dialog.hang_up(worker.sip_now());
        flush(self.sip, self.dialog, self.peer, &mut events);
        (reason, call)
    }

    /// A blind transfer of the caller to `destination` (a SIP or tel URI, or a number the
    /// trunk routes): the REFER's final status (408 when unanswered in time, 400 for a
    /// destination that is not one).
    async fn transfer(&mut self, destination: &str) -> u16 {
        let worker = self.worker;
        let uri = if ["sip:", "sips:", "tel:"].iter().any(|s| destination.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s))) {
            destination.to_string()
        } else if !destination.is_empty() && destination.len() <= 64 && destination.bytes().all(|b| b.is_ascii_alphanumeric() || b"+*#._-".contains(&b)) {
            format!("sip:{destination}@{}", self.peer.addr())
        } else {
            return 400;
        };
        if uri.chars().any(|c| c.is_control() || c == '>' || c == '<') {
            return 400;
        }
        self.dialog.refer(worker.sip_now(), &uri);
        let give_up = Instant::now() + Duration::from_secs(8);
        let mut events = Vec::new();
        loop {
            let next = self.signal(&mut events);
            if let Some(code) = events.iter().find_map(|e| match e {
                DialogEvent::Referred(code) => Some(*code),
                _ => None,
            }) {
                return code;
            }
            if events.iter().any(|e| matches!(e, DialogEvent::Ended(_))) || Instant::now() >= give_up {
                return 408;
            }
            events.clear();
            let wake = next.map_or(give_up, |at| worker.epoch + at).min(give_up);
            let timer = std::pin::pin!(compio::time::sleep_until(wake));
            let inbox = self.inbox;
            let ready = std::future::poll_fn(|cx| inbox.poll_ready(cx));
            if let Either::Left(_) = select(timer, std::pin::pin!(ready)).await {
                self.dialog.handle_timeout(worker.sip_now());
            }
        }
    }

    /// Feeds the inbox's messages to the dialog and sends its answers; its next timer.
    pub(super) fn signal(&mut self, events: &mut Vec<DialogEvent>) -> Option<Duration> {
        while let Some((_, bytes)) = self.inbox.pop() {
            match Message::parse(&bytes) {
                Ok(m) => self.dialog.on_message(self.worker.sip_now(), &m),
                Err(_) => continue,
            }
        }
        flush(self.sip, self.dialog, self.peer, events)
    }

    /// A re-INVITE (hold, unhold, a refresh) on a call whose media runs under payload type
    /// `current`: answered with our address and that codec while offered; the media keeps
    /// flowing to the latched address.
    fn reoffer(&mut self, offer: &str, current: u8) {
        self.sdp.version += 1;
        let answer = match SessionDescription::parse(offer).ok().and_then(|o| o.renegotiate(current).ok()) {
            Some(negotiated) => self.sdp.answer(&negotiated),
            None => self.sdp.offer(),
        };
        self.dialog.answer_reoffer(&answer);
    }
}
