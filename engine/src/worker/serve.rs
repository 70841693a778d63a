//! A connection from its first byte to its upgrade: address limits, the request head, plain
//! HTTP answers (`/health`, `/metrics`, errors), admission and the bot, then the call loop.

use super::*;
use super::call_loop::{finish_bot, run_call};

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
pub(super) async fn serve(worker: Rc<Worker>, stream: std::net::TcpStream) {
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
pub(super) async fn reply(stream: &TcpStream, wire: &mut Wire, bytes: Vec<u8>) {
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
    if let (Some(id), Some(sip)) = (call_path("/sip/calls/"), worker.shared.sip.as_ref()) {
        // A dialled call's state and hang-up, by its SIP Call-ID (random, known to the platform).
        let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy().into_owned();
        // The owning worker answers for its call (it may be this one: the command waits in
        // its inbox while this task yields).
        let ask = |owner: usize, command: Command| {
            let (tx, rx) = flume::bounded(1);
            let _ = worker.shared.inboxes[owner].send(Inbox::Command(command, tx));
            async move { compio::time::timeout(Duration::from_secs(2), rx.recv_async()).await.ok().and_then(Result::ok).filter(|v| v["ok"] == true) }
        };
        let gone = || http::error(404, "not_found", "no such call", &[]);
        let answer = match (req.method.as_str(), sip.route(&id)) {
            (_, None) => gone(),
            ("GET", Some(owner)) => match ask(owner, Command::SipState { sip_call_id: id }).await {
                Some(v) => {
                    let body = serde_json::json!({ "live": true, "state": v["state"], "status": v["status"] }).to_string();
                    http::response(200, "application/json", &[], &body)
                }
                None => gone(),
            },
            ("DELETE", Some(owner)) => match ask(owner, Command::HangupSip { sip_call_id: id }).await {
                Some(_) => http::response(200, "application/json", &[], r#"{"ok":true}"#),
                None => gone(),
            },
            _ => http::error(405, "method_not_allowed", "GET or DELETE", &[]),
        };
        return reply(&stream, &mut wire, answer).await;
    }
    if req.path.starts_with("/webrtc/") {
        return super::webrtc::route(worker, stream, wire, req, leftover, ip).await;
    }
    if let Some(bot) = call_path("/sip/dial/").filter(|_| req.method == "POST") {
        let bot = bot.to_string();
        return super::sip_out::dial(worker, stream, wire, req, leftover, ip, &bot).await;
    }
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
            if let Some(model) = &worker.shared.config.turn_model {
                crate::metrics::render_gauges(&mut body, &model.counters());
            }
            if let Some(sip) = &worker.shared.sip {
                use std::sync::atomic::Ordering::Relaxed;
                let counters = [
                    ("cxb_sip_malformed_total", "Datagrams and TCP streams on the SIP port that were not SIP (dropped, or the connection closed).", sip.counters.malformed.load(Relaxed)),
                    ("cxb_sip_busy_total", "INVITEs the SIP port refused with 503 because every worker was full.", sip.counters.busy.load(Relaxed)),
                ];
                crate::metrics::render_gauges(&mut body, &counters);
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
    let (_, call_id) = worker.next_call_id();
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
            let (code, msg) = full.refusal();
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
        Some(bot) => match worker.agent(bot, admitted.claims().cloned()) {
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
pub(super) async fn refuse(worker: &Worker, stream: &TcpStream, wire: &mut Wire, ip: std::net::IpAddr, bot_id: &str, why: Refusal) {
    note_refusal(worker, ip, bot_id, why);
    reply(stream, wire, http::error(401, "unauthorized", why.message(), &[])).await;
}

/// Counts and logs a refused call (see [`refuse`]) and backs its address off.
pub(super) fn note_refusal(worker: &Worker, ip: std::net::IpAddr, bot_id: &str, why: Refusal) {
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
