//! A live call's task: socket reads, the call's timers, provider events and control messages
//! in; the call's output written to the socket, non-blocking first; at the end, the bot's
//! result made durable before the slot is freed.

use super::*;

/// Writes an AI call's result and recording to the outbox and waits until they are durable;
/// the call's slot is freed only after that. The call was admitted, so its result is written
/// if at all possible: a write that fails (a full disk) is tried again every second, without
/// the recording, for up to 30 s in all.
pub(super) async fn finish_bot<T: crate::transport::Transport>(worker: &Worker, call: &mut Call<T>, call_id: &str, reason: EndReason) {
    finish_bot_with(worker, call, call_id, reason, |_| {}).await;
}

/// [`finish_bot`], with what the transport adds to the result (a SIP transfer's answer).
pub(super) async fn finish_bot_with<T: crate::transport::Transport>(
    worker: &Worker,
    call: &mut Call<T>,
    call_id: &str,
    reason: EndReason,
    amend: impl FnOnce(&mut cxb_contract::result::CallResult),
) {
    use crate::results::Recording;
    const AGAIN: Duration = Duration::from_secs(1);
    let Some((mut result, recording)) = call.finish(worker.now(), unix_ms(), call_id, reason) else { return };
    amend(&mut result);
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

/// The call loop: socket reads, the call's timers and control messages, until the call ends.
pub(super) async fn run_call(
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
    // The worker's pump reads the connection from now on (see `media_pump`); this task writes.
    let registration = match std::os::fd::AsFd::as_fd(stream).try_clone_to_owned().and_then(|fd| worker.media_pump.register_stream(fd)) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("the call's connection cannot be read: {e}");
            return (EndReason::PeerClosed, call);
        }
    };
    let media = &registration.inbox;
    let mut peer_gone = false;
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
        if peer_gone {
            break EndReason::PeerClosed;
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
        let readable = std::pin::pin!(std::future::poll_fn(|cx| media.poll_ready(cx)));
        let waiting = select(readable, select(scheduled, select(ctl.as_mut(), provider_events)));
        match waiting.await {
            Either::Left(_) => {
                mailbox.last_rx.set(Instant::now());
                let mut closed = false;
                while let Some(read) = media.pop() {
                    closed |= read.bytes.is_empty();
                    let fed = match wire {
                        Wire::Plain => {
                            socket.feed(&read.bytes);
                            true
                        }
                        Wire::Tls(session) => {
                            plain.clear();
                            let ok = session.receive(&read.bytes, &mut plain).is_ok();
                            socket.feed(&plain);
                            ok
                        }
                    };
                    media.recycle(read.bytes);
                    if !fed {
                        break 'call EndReason::Protocol(ProtocolErrorKind::Tls);
                    }
                }
                // What came before the end is read first (a stop message, a close frame).
                peer_gone |= closed;
            }
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
                let at = worker.instant(now);
                if std::panic::catch_unwind(AssertUnwindSafe(|| {
                    call.on_events(now, at, worker.metrics())
                }))
                .is_err()
                {
                    break EndReason::Panicked;
                }
            }
        }
    };
    drop(registration);
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
