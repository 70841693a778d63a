//! The SIP port's threads: the UDP reader, the TCP acceptor and a reader per connection, and
//! what they do with each message (route it by Call-ID to its call's worker, or answer it
//! here). The port's shared state is in `sip`.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use cxb_sip::message::{Message, StartLine, frame, response};

use crate::shared::{Inbox, Shared};
use crate::sip::{Connection, MAX_TCP, SipPeer, SipShared};
use crate::tls::Session;

/// What the SIP port does with one message from `from`: route it to its call's worker, or
/// answer it here.
struct Front<'a> {
    shared: &'a Shared,
    sip: &'a SipShared,
    out: String,
    next: usize,
}

impl Front<'_> {
    /// Takes the whole messages at the front of a stream's `pending` bytes; false when the
    /// framing is lost (a stream cannot be resynchronised: it is closed).
    fn stream(&mut self, from: SipPeer, pending: &mut Vec<u8>) -> bool {
        loop {
            match frame(pending) {
                Ok(Some(len)) => {
                    self.message(from, &pending[..len]);
                    pending.drain(..len);
                }
                Ok(None) => return true,
                Err(_) => {
                    self.sip.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
    }

    fn message(&mut self, from: SipPeer, bytes: &[u8]) {
        let (shared, sip) = (self.shared, self.sip);
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return; // CRLF keep-alives
        }
        let message = match Message::parse(bytes) {
            Ok(m) if !m.call_id().is_empty() => m,
            _ => {
                sip.counters.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let call_id = message.call_id();
        if let Some(worker) = sip.route(call_id) {
            let _ = shared.inboxes[worker].send(Inbox::Sip { from, bytes: bytes.to_vec() });
            return;
        }
        let StartLine::Request { method, .. } = message.start else {
            return; // a response to nothing we sent
        };
        let out = &mut self.out;
        match method {
            "INVITE" if message.tag("To").is_none() => {
                let worker = shared.most_free(self.next);
                self.next = (self.next + 1) % shared.workers.len();
                if shared.workers[worker].free.load(Ordering::Relaxed) == 0 {
                    sip.counters.busy.fetch_add(1, Ordering::Relaxed);
                    response(&message, 503, "Service Unavailable", Some("busy"), &[("Retry-After", "5")], "", out);
                    return sip.send(from, out.as_bytes());
                }
                sip.claim(call_id, worker);
                let _ = shared.inboxes[worker].send(Inbox::Sip { from, bytes: bytes.to_vec() });
            }
            "OPTIONS" => {
                let allow = [("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO"), ("Accept", "application/sdp")];
                response(&message, 200, "OK", Some("opt"), &allow, "", out);
                sip.send(from, out.as_bytes());
            }
            "ACK" => {}
            _ => {
                response(&message, 481, "Call/Transaction Does Not Exist", None, &[], "", out);
                sip.send(from, out.as_bytes());
            }
        }
    }
}

/// The `cxb-sip` thread: reads the UDP socket until the engine stops.
pub(crate) fn front(shared: &Shared) {
    let Some(sip) = shared.sip.as_ref() else { return };
    let mut front = Front { shared, sip, out: String::new(), next: 0 };
    let mut buf = vec![0u8; 65_536];
    while !shared.stopping.load(Ordering::SeqCst) {
        if let Ok((n, from)) = sip.socket.recv_from(&mut buf) {
            front.message(SipPeer::Udp(from), &buf[..n]);
        }
    }
}

/// The `cxb-sip-tcp` thread: accepts TCP connections, a reading thread for each.
pub(crate) fn accept_tcp(shared: std::sync::Arc<Shared>) {
    let Some(sip) = shared.sip.as_ref() else { return };
    for conn in sip.listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let (Ok(peer), Ok(writer)) = (stream.peer_addr(), stream.try_clone()) else { continue };
        let id = sip.next_connection.fetch_add(1, Ordering::Relaxed);
        {
            let Ok(mut connections) = sip.connections.lock() else { return };
            if connections.len() >= MAX_TCP {
                continue; // dropped: closed
            }
            let _ = writer.set_write_timeout(Some(Duration::from_secs(1)));
            connections.insert(id, Connection::Plain(writer));
        }
        serve_connection(&shared, id, "cxb-sip-conn", move |shared| read_tcp(shared, stream, SipPeer::Tcp(id, peer)));
    }
}

/// A TCP connection to `addr` for calls the engine places through a trunk: an open one the
/// engine made before is reused, else one is made (on a thread of its own, which then reads
/// it like an accepted one). The receiver answers the connection, or `None` if it cannot be
/// made within 5 s; the worker awaits it without blocking.
pub(crate) fn connect_tcp(shared: &std::sync::Arc<Shared>, addr: SocketAddr) -> flume::Receiver<Option<SipPeer>> {
    let (tx, rx) = flume::bounded(1);
    let Some(sip) = shared.sip.as_ref() else {
        let _ = tx.send(None);
        return rx;
    };
    if let Some(id) = sip.outbound.lock().ok().and_then(|o| o.get(&addr).copied())
        && sip.connections.lock().is_ok_and(|c| c.contains_key(&id))
    {
        let _ = tx.send(Some(SipPeer::Tcp(id, addr)));
        return rx;
    }
    let shared = shared.clone();
    let spawned = std::thread::Builder::new().name("cxb-sip-conn".into()).spawn(move || {
        let Some(sip) = shared.sip.as_ref() else { return };
        let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            let _ = tx.send(None);
            return;
        };
        let Ok(writer) = stream.try_clone() else {
            let _ = tx.send(None);
            return;
        };
        let id = sip.next_connection.fetch_add(1, Ordering::Relaxed);
        let _ = writer.set_write_timeout(Some(Duration::from_secs(1)));
        match sip.connections.lock() {
            Ok(mut connections) if connections.len() < MAX_TCP => connections.insert(id, Connection::Plain(writer)),
            _ => {
                let _ = tx.send(None);
                return;
            }
        };
        if let Ok(mut outbound) = sip.outbound.lock() {
            outbound.insert(addr, id);
        }
        let _ = tx.send(Some(SipPeer::Tcp(id, addr)));
        read_tcp(&shared, stream, SipPeer::Tcp(id, addr));
        if let Ok(mut connections) = sip.connections.lock() {
            connections.remove(&id);
        }
        if let Ok(mut outbound) = sip.outbound.lock()
            && outbound.get(&addr) == Some(&id)
        {
            outbound.remove(&addr);
        }
    });
    if spawned.is_err() {
        let (tx, rx) = flume::bounded(1);
        let _ = tx.send(None);
        return rx;
    }
    rx
}

/// The `cxb-sip-tls` thread: accepts TLS connections on the TLS port, a thread for each that
/// owns its session (reads, and writes what the workers send through its channel).
pub(crate) fn accept_tls(shared: std::sync::Arc<Shared>) {
    let Some((listener, tls)) = shared.sip.as_ref().and_then(|s| s.tls.as_ref()) else { return };
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (Ok(stream), Some(sip)) = (conn, shared.sip.as_ref()) else { continue };
        let (Ok(peer), Ok(session)) = (stream.peer_addr(), Session::new(tls)) else { continue };
        let id = sip.next_connection.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = flume::bounded(64);
        {
            let Ok(mut connections) = sip.connections.lock() else { return };
            if connections.len() >= MAX_TCP {
                continue;
            }
            connections.insert(id, Connection::Tls(tx));
        }
        serve_connection(&shared, id, "cxb-sip-tls-conn", move |shared| serve_tls(shared, stream, session, &rx, SipPeer::Tls(id, peer)));
    }
}

/// Runs `serve` for connection `id` on a thread of its own; the connection leaves the table
/// when it returns (or when the thread cannot start).
fn serve_connection(shared: &std::sync::Arc<Shared>, id: u64, name: &str, serve: impl FnOnce(&Shared) + Send + 'static) {
    let forget = move |shared: &Shared| {
        if let Some(sip) = shared.sip.as_ref()
            && let Ok(mut connections) = sip.connections.lock()
        {
            connections.remove(&id);
        }
    };
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        serve(&thread_shared);
        forget(&thread_shared);
    });
    if spawned.is_err() {
        forget(shared);
    }
}

/// One TLS connection: its records in, its messages to the front; what the workers send
/// (`outgoing`) sealed and written. Until it closes, breaks the framing or TLS, or the engine
/// stops. The socket is read with a short timeout so that sends wait at most that long.
fn serve_tls(shared: &Shared, mut stream: TcpStream, mut session: Session, outgoing: &flume::Receiver<Vec<u8>>, peer: SipPeer) {
    let Some(sip) = shared.sip.as_ref() else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut front = Front { shared, sip, out: String::new(), next: 0 };
    let (mut pending, mut plain, mut out) = (Vec::new(), Vec::new(), Vec::new());
    let mut buf = vec![0u8; 16 * 1024];
    while !shared.stopping.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                plain.clear();
                if session.receive(&buf[..n], &mut plain).is_err() {
                    return;
                }
                pending.extend_from_slice(&plain);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        if !front.stream(peer, &mut pending) {
            return;
        }
        out.clear();
        if !session.handshaking() {
            while let Ok(message) = outgoing.try_recv() {
                session.send(&message, &mut out);
            }
        }
        session.drain(&mut out);
        if !out.is_empty() && std::io::Write::write_all(&mut stream, &out).is_err() {
            return;
        }
    }
}

/// Reads one TCP connection's messages until it closes, breaks the framing or the engine stops.
fn read_tcp(shared: &Shared, mut stream: TcpStream, peer: SipPeer) {
    let Some(sip) = shared.sip.as_ref() else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut front = Front { shared, sip, out: String::new(), next: 0 };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !shared.stopping.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        if !front.stream(peer, &mut pending) {
            return;
        }
    }
}
