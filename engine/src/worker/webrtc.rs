//! Browser calls over WebRTC, signalled in the WHIP style on the engine's HTTP port:
//! `POST /webrtc/BOT` with an SDP offer (`Content-Type: application/sdp`) and a call token
//! (`Authorization: Bearer …`, or `?token=`) answers `201` with the SDP answer and a
//! `Location`; `DELETE` on that location hangs up. The call runs on the worker that took the
//! offer, on a UDP port of its own from the configured range (read by the worker's media pump),
//! and its bot's conversation is the same as a phone call's; its result says transport
//! `webrtc`. Every answer carries CORS headers: pages on any origin may call, since only a
//! call token (which the API gives out per the bot's allowed origins) admits a call.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::call_loop::finish_bot_with;
use super::sip::{bind_free, random};
use super::sip_out::read_body;
use super::*;
use cxb_contract::call_token::CallClaims;

use crate::protocol::{Start, StreamSid};
use crate::transport::webrtc::WebRtcTransport;

/// The largest offer taken (a browser's is 3 to 6 KiB).
const MAX_OFFER: usize = 64 * 1024;

/// What every answer on `/webrtc/` carries, errors included, so a page can read them.
const CORS: [(&str, &str); 4] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, DELETE, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
    ("Access-Control-Expose-Headers", "Location"),
];

/// This worker's share of the WebRTC ports: `p` with `(p - low) % workers == index`.
pub(super) fn ports(shared: &Shared, index: usize) -> VecDeque<u16> {
    let Some(webrtc) = &shared.config.webrtc else { return VecDeque::new() };
    let (low, high) = webrtc.ports;
    let n = shared.workers.len();
    (low..=high).filter(|p| usize::from(p - low) % n == index).collect()
}

/// A WebRTC port the call holds; back to the worker's free list when dropped.
struct Lease<'a> {
    worker: &'a Worker,
    port: u16,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.worker.webrtc_ports.borrow_mut().push_back(self.port);
    }
}

/// Answers with the engine's JSON error and CORS, and closes.
async fn error(stream: &TcpStream, wire: &mut Wire, status: u16, code: &str, message: &str) {
    serve::reply(stream, wire, http::error(status, code, message, &CORS)).await;
}

/// Routes `/webrtc/…`: the preflight, an offer, or a hang-up.
pub(super) async fn route(worker: Rc<Worker>, stream: TcpStream, mut wire: Wire, req: Request, leftover: Vec<u8>, ip: std::net::IpAddr) {
    let rest = req.path.strip_prefix("/webrtc/").unwrap_or_default().to_string();
    if worker.shared.config.webrtc.is_none() {
        return error(&stream, &mut wire, 404, "webrtc_disabled", "this engine does not take WebRTC calls").await;
    }
    if req.method == "OPTIONS" {
        let mut headers = CORS.to_vec();
        headers.push(("Access-Control-Max-Age", "600"));
        return serve::reply(&stream, &mut wire, http::response(204, "text/plain", &headers, "")).await;
    }
    match (req.method.as_str(), rest.strip_prefix("calls/")) {
        ("DELETE", Some(resource)) => hang_up(&worker, &stream, &mut wire, resource).await,
        ("POST", None) if rest == "takeover" => takeover(worker, stream, wire, req, leftover, ip).await,
        ("POST", None) if !rest.is_empty() && !rest.contains('/') => offer(worker, stream, wire, req, leftover, ip, &rest).await,
        (_, Some(_)) => error(&stream, &mut wire, 405, "method_not_allowed", "DELETE hangs up").await,
        _ => error(&stream, &mut wire, 405, "method_not_allowed", "POST an SDP offer to /webrtc/BOT").await,
    }
}

/// `DELETE /webrtc/calls/RESOURCE`: the call's worker (named in the resource) hangs it up.
async fn hang_up(worker: &Worker, stream: &TcpStream, wire: &mut Wire, resource: &str) {
    let owner = resource.strip_prefix('w').and_then(|r| r.split_once('-')).and_then(|(w, _)| w.parse::<usize>().ok()).filter(|w| *w < worker.shared.inboxes.len());
    let Some(owner) = owner else {
        return error(stream, wire, 404, "not_found", "no such call").await;
    };
    let (tx, rx) = flume::bounded(1);
    let _ = worker.shared.inboxes[owner].send(Inbox::Command(Command::HangupWebRtc { resource: resource.to_string() }, tx));
    let answer = compio::time::timeout(Duration::from_secs(2), rx.recv_async()).await.ok().and_then(Result::ok);
    match answer {
        Some(v) if v["ok"] == true => serve::reply(stream, wire, http::response(200, "application/json", &CORS, r#"{"ok":true}"#)).await,
        _ => error(stream, wire, 404, "not_found", "no such call").await,
    }
}

/// The call token: `Authorization: Bearer …` (WHIP), or `?token=`.
fn token(req: &Request) -> Option<String> {
    let bearer = req.authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer "))).map(|t| t.trim().to_string());
    bearer.or_else(|| query_param(req.query.as_deref(), "token")).filter(|t| !t.is_empty())
}

/// The offer in the request's body, UTF-8 and at most [`MAX_OFFER`]; `None` once the error
/// is answered.
async fn read_offer(stream: &TcpStream, wire: &mut Wire, req: &Request, leftover: Vec<u8>) -> Option<String> {
    let length = match req.content_length {
        Some(n) if n <= MAX_OFFER => n,
        Some(_) => {
            error(stream, wire, 413, "payload_too_large", "the offer is larger than 64 KiB").await;
            return None;
        }
        None => {
            error(stream, wire, 400, "bad_request", "POST the SDP offer as the body, with Content-Length").await;
            return None;
        }
    };
    let body = read_body(stream, wire, leftover, length).await?;
    match String::from_utf8(body) {
        Ok(offer) => Some(offer),
        Err(_) => {
            error(stream, wire, 400, "bad_offer", "the offer is not UTF-8 text").await;
            None
        }
    }
}

/// `POST /webrtc/BOT`: admits the offer, answers it and runs the call.
async fn offer(worker: Rc<Worker>, stream: TcpStream, mut wire: Wire, req: Request, leftover: Vec<u8>, ip: std::net::IpAddr, bot_id: &str) {
    let config = &worker.shared.config;
    let builtin = BotKind::lookup(bot_id, config.demo_bots, config.fault_injection);
    // A call token admits every call; without one only the demo bots of an engine that
    // offers them answer (load tests, demos), as on the WebSocket port.
    let claims = match token(&req) {
        Some(token) => match worker.shared.gate.check_token(&token, bot_id, unix_ms() / 1000) {
            Ok(claims) => Some(claims),
            Err(why) => {
                serve::note_refusal(&worker, ip, bot_id, why);
                return error(&stream, &mut wire, 401, "unauthorized", why.message()).await;
            }
        },
        None if builtin.is_some() => None,
        None => {
            serve::note_refusal(&worker, ip, bot_id, Refusal::Missing);
            return error(&stream, &mut wire, 401, "unauthorized", Refusal::Missing.message()).await;
        }
    };
    let Some(offer) = read_offer(&stream, &mut wire, &req, leftover).await else { return };
    let agent_bot = match worker.placed_bot(bot_id, builtin, claims.as_ref().map(|c| &c.org_id)).await {
        Ok(bot) => bot,
        Err(BotRefused::WrongBot) => {
            serve::note_refusal(&worker, ip, bot_id, Refusal::WrongBot);
            return error(&stream, &mut wire, 401, "unauthorized", Refusal::WrongBot.message()).await;
        }
        Err(BotRefused::Unknown) => {
            worker.metrics().rejected_unknown_bot.add(1);
            return error(&stream, &mut wire, 404, "unknown_bot", &format!("no bot `{bot_id}`")).await;
        }
        Err(BotRefused::Unavailable) => return error(&stream, &mut wire, 503, "bot_unavailable", "the bot cannot be loaded now").await,
    };
    let kind = builtin.unwrap_or(BotKind::Agent);
    let is_ai = agent_bot.is_some();
    if is_ai && config.results.as_ref().is_some_and(|r| !r.writable()) {
        worker.metrics().rejected_outbox.add(1);
        return error(&stream, &mut wire, 503, "outbox_unavailable", "this host cannot store call results now; try another host").await;
    }
    let reservation = claims.as_ref().and_then(|c| c.reservation.as_deref()).and_then(|t| u64::from_str_radix(t, 16).ok());
    let (_, call_id) = worker.next_call_id();
    let slot = match worker.acquire(&call_id, kind.id(), reservation, is_ai) {
        Ok(slot) => slot,
        Err(full) => {
            worker.metrics().rejected_busy.add(1);
            let (code, msg) = full.refusal();
            return error(&stream, &mut wire, 503, code, msg).await;
        }
    };
    if let Some(token) = reservation {
        worker.shared.release_elsewhere(worker.index, token);
    }
    let agent = match agent_bot.map(|bot| worker.agent(bot, claims.clone())) {
        Some(Ok(agent)) => Some(agent),
        Some(Err(why)) => {
            worker.free_slot(slot);
            tracing::warn!(bot = bot_id, "bot failed to start: {why}");
            return error(&stream, &mut wire, 503, "bot_unavailable", &why).await;
        }
        None => None,
    };
    let bot = crate::call::bot_for(&CallConfig::new(Protocol::Twilio, kind), agent);
    let leg = Leg { call_id, slot, bot, bot_id: bot_id.to_string(), claims };
    answer(worker, stream, wire, &offer, leg).await;
}

/// `POST /webrtc/takeover`: a person on the Agent Desk joins a live call its bot handed off
/// (the takeover token names it), on this host; the bot falls silent while they talk.
async fn takeover(worker: Rc<Worker>, stream: TcpStream, mut wire: Wire, req: Request, leftover: Vec<u8>, ip: std::net::IpAddr) {
    let checked = match token(&req) {
        Some(token) => worker.shared.gate.check_takeover(&token, unix_ms() / 1000),
        None => Err(Refusal::Missing),
    };
    let claims = match checked {
        Ok(claims) => claims,
        Err(why) => {
            serve::note_refusal(&worker, ip, "takeover", why);
            return error(&stream, &mut wire, 401, "unauthorized", why.message()).await;
        }
    };
    let Some(offer) = read_offer(&stream, &mut wire, &req, leftover).await else { return };
    let Some(line) = crate::desk::find(claims.call_id.as_str()) else {
        return error(&stream, &mut wire, 404, "not_live", "the call is not live on this host (it ended, or its bot did not hand it off here)").await;
    };
    if !line.take() {
        return error(&stream, &mut wire, 409, "taken", "someone on the desk has this call already").await;
    }
    // From here the desk's bot gives the line back when it goes, however the leg ends.
    let bot: Box<dyn crate::session::Bot> = Box::new(crate::desk::DeskBot::new(line));
    let (_, call_id) = worker.next_call_id();
    let slot = match worker.acquire(&call_id, "desk", None, false) {
        Ok(slot) => slot,
        Err(full) => {
            worker.metrics().rejected_busy.add(1);
            let (code, msg) = full.refusal();
            return error(&stream, &mut wire, 503, code, msg).await;
        }
    };
    let leg = Leg { call_id, slot, bot, bot_id: "desk".to_string(), claims: Some(claims) };
    answer(worker, stream, wire, &offer, leg).await;
}

/// A call admitted on this worker, its slot held, waiting for its offer's answer.
struct Leg {
    call_id: String,
    slot: usize,
    bot: Box<dyn crate::session::Bot>,
    bot_id: String,
    claims: Option<CallClaims>,
}

/// Answers `offer` for `leg` on a port of this worker's and runs the call until it ends.
async fn answer(worker: Rc<Worker>, stream: TcpStream, mut wire: Wire, offer: &str, leg: Leg) {
    let Some(webrtc) = worker.shared.config.webrtc else { return };
    let Leg { call_id, slot, bot, bot_id, claims } = leg;
    let Some((socket, port)) = bind_free(&worker.webrtc_ports, webrtc.bind) else {
        worker.free_slot(slot);
        return error(&stream, &mut wire, 503, "busy", "no WebRTC port free on this host").await;
    };
    let lease = Lease { worker: &worker, port };
    let local = SocketAddr::new(webrtc.advertise, port);
    let (transport, answer) = match WebRtcTransport::accept(worker.now(), worker.epoch, local, offer) {
        Ok(accepted) => accepted,
        Err(why) => {
            worker.free_slot(slot);
            return error(&stream, &mut wire, 400, "bad_offer", &why.to_string()).await;
        }
    };
    let guard = CallGuard { worker: worker.clone(), slot, call_id: call_id.clone(), reason: EndReason::PeerClosed };
    let resource = format!("{call_id}-{:016x}", random());
    let location = format!("/webrtc/calls/{resource}");
    let mut headers = CORS.to_vec();
    headers.push(("Location", &location));
    serve::reply(&stream, &mut wire, http::response(201, "application/sdp", &headers, &answer)).await;
    drop(stream);

    let start = Start {
        transport: "webrtc",
        stream_sid: StreamSid::new(&resource),
        call_sid: claims.as_ref().map(|c| c.call_id.to_string()),
        account_sid: None,
        from: None,
        to: None,
        custom_parameters: Vec::new(),
        media_format: None,
    };
    let call = Call::over_webrtc(worker.now(), CallConfig::new(Protocol::Twilio, BotKind::Agent), bot, transport, &start);
    let mailbox = Rc::new(Mailbox { message: Cell::new(None), waker: Cell::new(None), last_rx: Cell::new(Instant::now()) });
    worker.calls.borrow_mut().insert(call_id.clone(), mailbox.clone());
    worker.webrtc_calls.borrow_mut().insert(resource.clone(), call_id.clone());
    worker.metrics().calls_started.add(1);
    let mut guard = guard;
    let span = tracing::info_span!("call", id = %call_id, bot = bot_id, transport = "webrtc", worker = worker.index, call = tracing::field::Empty, org = tracing::field::Empty);
    if let Some(claims) = &claims {
        span.record("call", claims.call_id.as_str());
        span.record("org", claims.org_id.as_str());
    }
    async {
        let (reason, mut call) = run(&worker, call, &socket, &mailbox, slot).await;
        guard.reason = reason;
        worker.webrtc_calls.borrow_mut().remove(&resource);
        drop(lease);
        let report = call.webrtc().media_report();
        finish_bot_with(&worker, &mut call, &call_id, reason, |result| {
            result.metrics.insert("webrtc".into(), report);
        })
        .await;
        tracing::debug!(reason = reason.label(), "call ended");
    }
    .instrument(span)
    .await;
}

/// Sends what the call's WebRTC session has to send, without blocking (a full socket buffer
/// drops it, as the network would).
fn send(transport: &mut WebRtcTransport, socket: &std::net::UdpSocket) {
    while let Some((to, datagram)) = transport.poll_transmit() {
        let _ = socket2::SockRef::from(socket).send_to_with_flags(&datagram, &to.into(), MSG_DONTWAIT);
    }
}

/// The call from the answer until either side ends it.
async fn run(worker: &Rc<Worker>, mut call: Call<WebRtcTransport>, socket: &std::net::UdpSocket, mailbox: &Mailbox, slot: usize) -> (EndReason, Call<WebRtcTransport>) {
    let registration = match worker.media_pump.register(socket, None) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("webrtc socket: {e}");
            return (EndReason::Panicked, call);
        }
    };
    let media = &registration.inbox;
    let provider_events = call.events();
    let mut ctl = std::pin::pin!(mailbox.recv());
    let mut lines = 0;
    let reason = loop {
        // The live transcript's new lines go out over the data channel.
        for line in call.transcript_since(lines) {
            lines += 1;
            call.webrtc().send_message(worker.now(), line);
        }
        send(call.webrtc(), socket);
        let stats = call.stats();
        worker.shared.segment.count_frames(worker.index, slot, stats.frames_in, stats.frames_out);
        if let Some(reason) = call.end() {
            break reason;
        }
        if call.webrtc().closed() {
            break EndReason::PeerClosed;
        }
        let deadline = call.deadline().map(|t| worker.instant(t));
        let wake = next_wake(media, None, &mut ctl, provider_events.as_ref(), deadline).await;
        let now = worker.now();
        let handled = match wake {
            Wake::Media => {
                let mut handled = Ok(());
                while let Some(d) = media.pop() {
                    mailbox.last_rx.set(Instant::now());
                    handled = std::panic::catch_unwind(AssertUnwindSafe(|| call.on_datagram(now, d.from, &d.bytes, worker.metrics())));
                    media.recycle(d.bytes);
                    if handled.is_err() {
                        break;
                    }
                }
                handled
            }
            Wake::Events => {
                let at = worker.instant(now);
                std::panic::catch_unwind(AssertUnwindSafe(|| call.on_events(now, at, worker.metrics())))
            }
            Wake::Timer => std::panic::catch_unwind(AssertUnwindSafe(|| call.on_timeout(now, worker.metrics()))),
            // A WebRTC call has no SIP dialog.
            Wake::Sip => Ok(()),
            Wake::Control(Control::Hangup) => break EndReason::Hangup,
            Wake::Control(Control::Shutdown) => break EndReason::Shutdown,
            Wake::Control(Control::Idle) => break EndReason::IdleTimeout,
        };
        if handled.is_err() {
            break EndReason::Panicked;
        }
    };
    drop(registration);
    call.webrtc().close(worker.now());
    send(call.webrtc(), socket);
    (reason, call)
}
