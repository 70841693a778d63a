//! Outbound SIP calls. `POST /sip/dial/BOT?token=…` on the engine's HTTP port asks this
//! engine to call a number through a SIP trunk for a call the platform placed: the call
//! token (signed for the bot and this host, good once, carrying the reserved slot) admits it,
//! the JSON body names the callee, the caller ID and the trunk. The engine answers `202` with
//! the call's SIP Call-ID once the INVITE is about to leave, and runs the call on this worker:
//! the INVITE through the trunk (digest credentials if it challenges), nothing played while it
//! rings, and on the answer the bot's conversation with the claims of the token (outbound, its
//! answering-machine action), over the same media loop as inbound calls.
//!
//! Not yet: the call-end record for unanswered calls (the attempts path) and the dialler's
//! `sip` carrier that calls this endpoint; TCP and TLS trunks (UDP only).

use std::net::SocketAddr;

use cxb_sip::message::Message;
use cxb_sip::outbound::{Dial, DialEvent, DialOutput, OutboundCall};

use cxb_contract::call_token::CallClaims;
use cxb_sip::sdp::SessionDescription;

use super::call_loop::finish_bot_with;
use super::sip::{Dialog, DialogEvent, DialogOutput, LINGER, Media, PortLease, Registered, SipInbox, linger, random, rtp_config};
use super::*;
use crate::protocol::{Start, StreamSid};
use crate::sip::dial::{DialRequest, MAX_BODY};
use crate::sip::{SipPeer, SipShared};
use crate::transport::RtpTransport;

impl Dialog for OutboundCall {
    fn on_message(&mut self, now: Duration, m: &Message<'_>) {
        OutboundCall::on_message(self, now, m);
    }
    fn remote_user(&self) -> Option<String> {
        None
    }
    fn handle_timeout(&mut self, now: Duration) {
        OutboundCall::handle_timeout(self, now);
    }
    fn hang_up(&mut self, now: Duration) {
        OutboundCall::hang_up(self, now);
    }
    fn answer_reoffer(&mut self, sdp: &str) {
        OutboundCall::answer_reoffer(self, sdp);
    }
    fn refer(&mut self, _now: Duration, _target: &str) {}
    fn poll(&mut self) -> DialogOutput {
        match self.poll_output() {
            DialOutput::Transmit(m) => DialogOutput::Transmit(m),
            DialOutput::Timeout(at) => DialogOutput::Timeout(at),
            DialOutput::Event(e) => DialogOutput::Event(match e {
                DialEvent::Dtmf(key) => DialogEvent::Dtmf(key),
                DialEvent::Reoffer(sdp) => DialogEvent::Reoffer(sdp),
                DialEvent::Ended { remote: true } => DialogEvent::Ended(EndReason::Stopped),
                DialEvent::Ended { remote: false } => DialogEvent::Ended(EndReason::Hangup),
                // Before the answer the call's task reads these itself.
                DialEvent::Progress(_) | DialEvent::Answered(_) | DialEvent::Failed(_) => DialogEvent::Other,
            }),
        }
    }
    fn is_ended(&self) -> bool {
        OutboundCall::is_ended(self)
    }
}

/// Answers a dial request with the engine's JSON error and closes.
async fn error(stream: &TcpStream, wire: &mut Wire, status: u16, code: &str, message: &str) {
    serve::reply(stream, wire, http::error(status, code, message, &[])).await;
}

/// Reads a request body of `length` bytes after `leftover`, within 5 s.
pub(super) async fn read_body(stream: &TcpStream, wire: &mut Wire, mut body: Vec<u8>, length: usize) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = Vec::with_capacity(READ_BUF);
    while body.len() < length {
        let mut r = stream;
        match compio::time::timeout_at(deadline, r.read(std::mem::take(&mut buf))).await {
            Ok(BufResult(Ok(n), b)) if n > 0 => {
                wire.receive(&b[..n], &mut body).ok()?;
                buf = b;
                buf.clear();
            }
            _ => return None,
        }
    }
    body.truncate(length);
    Some(body)
}

/// `POST /sip/dial/BOT?token=…`: admits, answers 202 and runs the call.
pub(super) async fn dial(worker: Rc<Worker>, stream: TcpStream, mut wire: Wire, req: Request, leftover: Vec<u8>, ip: std::net::IpAddr, bot_id: &str) {
    let Some(sip) = worker.shared.sip.as_ref() else {
        return error(&stream, &mut wire, 404, "sip_disabled", "this engine does not speak SIP (start it with --sip)").await;
    };
    let Some(token) = query_param(req.query.as_deref(), "token") else {
        return serve::refuse(&worker, &stream, &mut wire, ip, bot_id, Refusal::Missing).await;
    };
    let claims = match worker.shared.gate.check_token(&token, bot_id, unix_ms() / 1000) {
        Ok(claims) => claims,
        Err(why) => return serve::refuse(&worker, &stream, &mut wire, ip, bot_id, why).await,
    };
    let length = match req.content_length {
        Some(n) if n <= MAX_BODY => n,
        Some(_) => return error(&stream, &mut wire, 413, "payload_too_large", "the dial request is larger than 16 KiB").await,
        None => return error(&stream, &mut wire, 400, "bad_request", "a dial request needs a JSON body with Content-Length").await,
    };
    let Some(body) = read_body(&stream, &mut wire, leftover, length).await else { return };
    let request = match DialRequest::parse(&body) {
        Ok(r) => r,
        Err(why) => return error(&stream, &mut wire, 400, "bad_request", &why).await,
    };
    // The trunk is the tenant's: its name resolves through the egress policy, like every
    // request made for one.
    let trunk = match cxb_pipeline::egress::resolve(&request.trunk.host, request.trunk.port).await.map(|a| a.first().copied()) {
        Ok(Some(addr)) => addr,
        Ok(None) => return error(&stream, &mut wire, 400, "bad_request", "the trunk's host does not resolve").await,
        Err(why) if why.starts_with("egress_forbidden") => return error(&stream, &mut wire, 403, "egress_forbidden", &why).await,
        Err(why) => return error(&stream, &mut wire, 400, "bad_request", &why).await,
    };
    let config = &worker.shared.config;
    let builtin = BotKind::lookup(bot_id, config.demo_bots, config.fault_injection);
    let agent_bot = match worker.placed_bot(bot_id, builtin, Some(&claims.org_id)).await {
        Ok(bot) => bot,
        Err(BotRefused::WrongBot) => return serve::refuse(&worker, &stream, &mut wire, ip, bot_id, Refusal::WrongBot).await,
        Err(BotRefused::Unknown) => return error(&stream, &mut wire, 404, "unknown_bot", &format!("no bot `{bot_id}`")).await,
        Err(BotRefused::Unavailable) => return error(&stream, &mut wire, 503, "bot_unavailable", "the bot cannot be loaded now").await,
    };
    let kind = builtin.unwrap_or(BotKind::Agent);
    let reservation = claims.reservation.as_deref().and_then(|t| u64::from_str_radix(t, 16).ok());
    let (n, call_id) = worker.next_call_id();
    let slot = match worker.acquire(&call_id, kind.id(), reservation, agent_bot.is_some()) {
        Ok(slot) => slot,
        Err(_) => {
            worker.metrics().rejected_busy.add(1);
            return error(&stream, &mut wire, 503, "busy", "no call slot on this host").await;
        }
    };
    if let Some(token) = reservation {
        worker.shared.release_elsewhere(worker.index, token);
    }
    let Some((socket, port)) = worker.bind_rtp(sip) else {
        worker.free_slot(slot);
        return error(&stream, &mut wire, 503, "busy", "no RTP port free on this host").await;
    };
    let lease = PortLease { worker: worker.clone(), port };
    let peer = if request.trunk.tcp() {
        match crate::sip_front::connect_tcp(&worker.shared, trunk).recv_async().await {
            Ok(Some(peer)) => peer,
            _ => {
                worker.free_slot(slot);
                return error(&stream, &mut wire, 502, "trunk_unreachable", "no TCP connection to the trunk").await;
            }
        }
    } else {
        SipPeer::Udp(trunk)
    };
    let sip_call_id = format!("{:016x}{:08x}@{}", random(), n, sip.advertise);
    let body = serde_json::json!({ "call_id": claims.call_id, "sip_call_id": sip_call_id }).to_string();
    serve::reply(&stream, &mut wire, http::response(202, "application/json", &[], &body)).await;
    drop(stream);

    let guard = CallGuard { worker: worker.clone(), slot, call_id: call_id.clone(), reason: EndReason::Hangup };
    let sdp = cxb_sip::sdp::Local { address: sip.advertise, port, session_id: random() >> 1, version: 1 };
    let from_domain = request.trunk.from_domain.clone().unwrap_or_else(|| sip.advertise.to_string());
    let caller = format!("<sip:{}@{from_domain}>", request.from);
    let mut headers = Vec::new();
    if request.trunk.caller_id_header.as_deref() == Some("pai") {
        headers.push(("P-Asserted-Identity".to_string(), caller.clone()));
    }
    let plan = Dial {
        target: format!("sip:{}@{}{}", request.to, SocketAddr::new(trunk.ip(), trunk.port()), if request.trunk.tcp() { ";transport=tcp" } else { "" }),
        from: caller,
        to: format!("<sip:{}@{}>", request.to, request.trunk.host),
        call_id: sip_call_id.clone(),
        tag: format!("{:016x}", random()),
        contact: format!("sip:cxb@{}{}", sip.sent_by(), if request.trunk.tcp() { ";transport=tcp" } else { "" }),
        sent_by: sip.sent_by(),
        transport: peer.transport(),
        sdp: sdp.offer(),
        credentials: request.trunk.username.clone().zip(request.trunk.password.clone()),
        headers,
        ring_timeout: Duration::from_millis(request.ring_timeout_ms.unwrap_or(30_000).clamp(1_000, 300_000)),
    };
    let inbox = Rc::new(SipInbox::default());
    worker.sip_calls.borrow_mut().insert(sip_call_id.clone(), inbox.clone());
    sip.claim(&sip_call_id, worker.index);
    let _registered = Registered { worker: worker.clone(), call_id: sip_call_id.clone() };
    let mut dialog = OutboundCall::new(worker.sip_now(), plan);
    let span = tracing::info_span!("call", id = %call_id, bot = bot_id, transport = "sip", direction = "outbound", worker = worker.index, call = %claims.call_id);
    worker.metrics().calls_started.add(1);
    async {
        let start = Start {
            transport: "sip",
            stream_sid: StreamSid::new(&sip_call_id),
            call_sid: Some(claims.call_id.to_string()),
            account_sid: None,
            from: Some(request.from.clone()),
            to: Some(request.to.clone()),
            custom_parameters: Vec::new(),
            media_format: None,
        };
        let mut cdr = Cdr { carrier_call_id: sip_call_id.clone(), session: claims.call_id.to_string(), disposition: "answered", cause: None, started_at_ms: unix_ms(), answered_at_ms: None, ended_at_ms: 0 };
        let rung = ring(&worker, sip, &mut dialog, &inbox, peer).await;
        let answered = match &rung {
            Ok(answer) => {
                cdr.answered_at_ms = Some(unix_ms());
                connect(&worker, answer, agent_bot, &claims, kind, &start)
            }
            Err(code) => {
                (cdr.disposition, cdr.cause) = (disposition(*code), Some(code.to_string()));
                None
            }
        };
        let Some(call) = answered else {
            // Not answered, or answered with what the call cannot use: whatever is up ends.
            dialog.hang_up(worker.sip_now());
            drop(guard);
            drop(lease);
            cdr.ended_at_ms = unix_ms();
            post_cdr(&worker, request.cdr_url.as_deref(), &cdr).await;
            linger(&worker, sip, &mut dialog, &inbox, peer).await;
            return;
        };
        let mailbox = Rc::new(Mailbox { message: Cell::new(None), waker: Cell::new(None), last_rx: Cell::new(Instant::now()) });
        worker.calls.borrow_mut().insert(call_id.clone(), mailbox.clone());
        let mut guard = guard;
        let mut media = Media { worker: &worker, sip, peer, dialog: &mut dialog, inbox: &inbox, mailbox: &mailbox, slot, sdp, referred: None, bridged: None };
        let (reason, mut call) = media.run_call(call, socket).await;
        guard.reason = reason;
        drop(lease);
        let report = call.media_report();
        finish_bot_with(&worker, &mut call, &call_id, reason, |result| {
            result.metrics.insert("rtp".into(), report);
        })
        .await;
        drop(guard);
        cdr.ended_at_ms = unix_ms();
        cdr.cause = Some(reason.label().to_string());
        post_cdr(&worker, request.cdr_url.as_deref(), &cdr).await;
        linger(&worker, sip, &mut dialog, &inbox, peer).await;
    }
    .instrument(span)
    .await;
}

/// The call-end record the engine posts for a call it dialled (the `sip` carrier's CDR).
#[derive(Debug, serde::Serialize)]
struct Cdr {
    carrier_call_id: String,
    /// The platform's id of the call (the token's).
    session: String,
    /// `answered`, `busy`, `no_answer`, `invalid_number` or `failed`.
    disposition: &'static str,
    /// The final SIP status of an unanswered call; how an answered one ended.
    cause: Option<String>,
    started_at_ms: u64,
    answered_at_ms: Option<u64>,
    ended_at_ms: u64,
}

/// An unanswered call's disposition from its final status.
fn disposition(status: u16) -> &'static str {
    match status {
        486 | 600 => "busy",
        408 | 480 | 487 => "no_answer",
        404 | 484 | 604 => "invalid_number",
        _ => "failed",
    }
}

/// Hands the call-end record for `url` (the API's CDR webhook for this call) to the result
/// sink, which delivers it durably after the call's result (the outbox, in `cxb core`).
/// Without a sink that keeps records, it is posted from here, three tries a second apart; one
/// that cannot be delivered is logged (the dialler then ends the call as `no_cdr` when its
/// lease runs out).
async fn post_cdr(worker: &Worker, url: Option<&str>, cdr: &Cdr) {
    let Some(url) = url else { return };
    if let Some(stored) = worker.shared.config.results.as_ref().and_then(|sink| sink.submit_record(url, serde_json::to_value(cdr).unwrap_or_default())) {
        match stored.recv_async().await {
            Ok(Ok(())) => return,
            Ok(Err(why)) => tracing::warn!("the call-end record could not be stored ({why}); posting it directly"),
            Err(_) => tracing::warn!("the result sink stopped; posting the call-end record directly"),
        }
    }
    let body = serde_json::to_vec(cdr).unwrap_or_default();
    for attempt in 0..3 {
        if attempt > 0 {
            compio::time::sleep(Duration::from_secs(1)).await;
        }
        let Ok(client) = cxb_pipeline::providers::http() else { break };
        let Ok(request) = client.post(url).and_then(|r| r.header("Content-Type", "application/json")).map(|r| r.body(body.clone())) else { break };
        match compio::time::timeout(Duration::from_secs(5), request.send()).await {
            Ok(Ok(r)) if r.status().is_success() || r.status().as_u16() == 409 => return,
            Ok(Ok(r)) if r.status().is_client_error() => {
                tracing::warn!(status = r.status().as_u16(), "the call-end record was refused");
                return;
            }
            _ => {}
        }
    }
    tracing::warn!("the call-end record could not be delivered");
}

/// The answered call: the callee's SDP negotiated, the bot started with the token's claims;
/// `None` (logged) when either cannot be.
fn connect(worker: &Worker, answer: &str, agent_bot: Option<Rc<cxb_contract::bot::BotConfig>>, claims: &CallClaims, kind: BotKind, start: &Start) -> Option<Call<RtpTransport>> {
    let Some(negotiated) = SessionDescription::parse(answer).ok().and_then(|a| a.negotiate().ok()) else {
        tracing::warn!("the callee's SDP answer has no codec the engine speaks; hanging up");
        return None;
    };
    let agent = match agent_bot.map(|bot| worker.agent(bot, Some(claims.clone()))) {
        Some(Ok(agent)) => Some(agent),
        Some(Err(why)) => {
            tracing::warn!("bot failed to start: {why}");
            return None;
        }
        None => None,
    };
    Call::over_rtp(worker.now(), unix_ms(), CallConfig::new(Protocol::Twilio, kind), agent, rtp_config(&negotiated), start)
        .inspect_err(|why| tracing::warn!("media failed to start: {why}"))
        .ok()
}

/// The INVITE's life until the callee answers (its SDP) or the call fails (its final status,
/// logged).
async fn ring(worker: &Worker, sip: &SipShared, dialog: &mut OutboundCall, inbox: &SipInbox, peer: SipPeer) -> Result<String, u16> {
    loop {
        let next = loop {
            let next = flush_raw(sip, dialog, peer);
            match next {
                Ok(next) => break next,
                Err(DialEvent::Answered(sdp)) => {
                    inbox.progress.set(("answered", 200));
                    return Ok(sdp);
                }
                Err(DialEvent::Failed(code)) => {
                    tracing::info!(status = code, "the call was not answered");
                    return Err(code);
                }
                Err(DialEvent::Progress(code)) => {
                    tracing::debug!(status = code, "ringing");
                    inbox.progress.set((if code == 183 { "early" } else { "ringing" }, code));
                }
                Err(_) => {}
            }
        };
        let wake = next.map_or(Instant::now() + LINGER, |at| worker.epoch + at);
        let timer = std::pin::pin!(compio::time::sleep_until(wake));
        let ready = std::future::poll_fn(|cx| inbox.poll_ready(cx));
        match select(timer, std::pin::pin!(ready)).await {
            Either::Left(_) => dialog.handle_timeout(worker.sip_now()),
            Either::Right(_) => {
                if inbox.hangup.take() {
                    // The platform gave up on the call: CANCEL (or BYE, if it was answered).
                    dialog.hang_up(worker.sip_now());
                }
                while let Some((_, bytes)) = inbox.pop() {
                    if let Ok(m) = Message::parse(&bytes) {
                        dialog.on_message(worker.sip_now(), &m);
                    }
                }
            }
        }
    }
}

/// Sends what the dialog has to send; its next timer, or the first event before it.
fn flush_raw(sip: &SipShared, dialog: &mut OutboundCall, peer: SipPeer) -> Result<Option<Duration>, DialEvent> {
    loop {
        match dialog.poll_output() {
            DialOutput::Transmit(m) => sip.send(peer, m.as_bytes()),
            DialOutput::Event(e) => return Err(e),
            DialOutput::Timeout(at) => return Ok(at),
        }
    }
}
