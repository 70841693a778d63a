//! The engine's SIP port, UDP and TCP on the same address. One thread (`cxb-sip`) reads the
//! UDP socket, one accepts TCP connections and one thread per connection (at most
//! [`MAX_TCP`]) reads its stream, framed by Content-Length. Each message goes to the worker
//! that owns its call (by Call-ID); what needs no call is answered here: OPTIONS keep-alives,
//! 503 when every worker is full, 481 for requests of calls it does not know. A new INVITE
//! goes to the worker with the most free slots; from then on the call's signalling and its
//! RTP socket live on that worker (`worker::sip`). Workers send their SIP messages back the
//! way the call came: through the UDP socket, so the trunk sees one address, or on the call's
//! TCP connection.
//!
//! Signalling is a handful of messages per call, so these threads and one lock on the route
//! table carry it; the media (50 packets a second each way per call) never passes here.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cxb_sip::message::{Message, StartLine, frame, response};

use crate::shared::{Inbox, Shared};

/// How the engine speaks SIP.
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// Where to listen (UDP).
    pub listen: SocketAddr,
    /// The address put in Contact, Via and SDP (behind NAT, the public one); the listening
    /// address by default.
    pub advertise: Option<IpAddr>,
    /// The RTP ports calls take, even numbers from `low` to below `high`, shared out among the
    /// workers.
    pub rtp_ports: (u16, u16),
}

impl SipConfig {
    /// SIP on `listen`, RTP on ports 20000–29999.
    pub fn new(listen: SocketAddr) -> SipConfig {
        SipConfig { listen, advertise: None, rtp_ports: (20_000, 30_000) }
    }
}

/// TCP connections the SIP port holds at most (trunks keep one or a few).
pub(crate) const MAX_TCP: usize = 256;

/// Where a SIP message came from, and so where its answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SipPeer {
    /// A datagram from this address.
    Udp(SocketAddr),
    /// TCP connection `id`, from this address.
    Tcp(u64, SocketAddr),
}

impl SipPeer {
    /// The peer's address.
    pub(crate) fn addr(self) -> SocketAddr {
        match self {
            SipPeer::Udp(a) | SipPeer::Tcp(_, a) => a,
        }
    }

    /// `UDP` or `TCP`, for Via and the dialog's retransmissions.
    pub(crate) fn transport(self) -> &'static str {
        match self {
            SipPeer::Udp(_) => "UDP",
            SipPeer::Tcp(..) => "TCP",
        }
    }
}

/// Counters of the SIP port.
#[derive(Debug, Default)]
pub(crate) struct SipCounters {
    /// Datagrams that are not SIP messages.
    pub(crate) malformed: AtomicU64,
    /// INVITEs refused here with 503: every worker full or draining.
    pub(crate) busy: AtomicU64,
}

/// The SIP port as every thread sees it.
#[derive(Debug)]
pub(crate) struct SipShared {
    pub(crate) socket: UdpSocket,
    listener: TcpListener,
    /// Open TCP connections (a clone of each stream, for writing) by id.
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
    /// The bound address.
    pub(crate) local: SocketAddr,
    /// The address in Contact, Via and SDP.
    pub(crate) advertise: IpAddr,
    pub(crate) rtp_ports: (u16, u16),
    /// Call-ID → the worker that owns the call.
    routes: Mutex<HashMap<String, usize>>,
    pub(crate) counters: SipCounters,
    /// Keys the digest nonces of this engine's challenges (random per process).
    pub(crate) nonce_key: [u8; 16],
}

impl SipShared {
    pub(crate) fn bind(config: &SipConfig) -> std::io::Result<SipShared> {
        let socket = UdpSocket::bind(config.listen)?;
        // Wakes the reading thread now and then to see whether the engine is stopping.
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let local = socket.local_addr()?;
        // TCP on the same port (the UDP one, when the configured port was 0).
        let listener = TcpListener::bind(local)?;
        let advertise = config.advertise.unwrap_or(match local.ip() {
            ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        });
        let mut nonce_key = [0u8; 16];
        for (i, chunk) in nonce_key.chunks_mut(8).enumerate() {
            use std::hash::BuildHasher;
            chunk.copy_from_slice(&std::collections::hash_map::RandomState::new().hash_one(i).to_le_bytes());
        }
        Ok(SipShared {
            socket,
            listener,
            connections: Mutex::default(),
            next_connection: AtomicU64::new(0),
            local,
            advertise,
            rtp_ports: config.rtp_ports,
            routes: Mutex::default(),
            counters: SipCounters::default(),
            nonce_key,
        })
    }

    /// `host:port` as peers reach this engine, for Contact and Via.
    pub(crate) fn sent_by(&self) -> String {
        SocketAddr::new(self.advertise, self.local.port()).to_string()
    }

    /// Sends one message the way `to` reached us: a datagram the kernel will not take now is
    /// lost like any other (SIP over UDP retransmits); a TCP peer that does not read within a
    /// second loses its connection.
    pub(crate) fn send(&self, to: SipPeer, message: &[u8]) {
        match to {
            SipPeer::Udp(addr) => {
                let _ = self.socket.send_to(message, addr);
            }
            SipPeer::Tcp(id, _) => {
                let stream = self.connections.lock().ok().and_then(|c| c.get(&id).and_then(|s| s.try_clone().ok()));
                if let Some(mut stream) = stream
                    && stream.write_all(message).is_err()
                {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }

    /// Messages for `call_id` go to `worker` (a new INVITE for a Call-ID it already had).
    pub(crate) fn claim(&self, call_id: &str, worker: usize) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(call_id.to_string(), worker);
        }
    }

    /// The call is gone from its worker: its messages are no longer routed.
    pub(crate) fn forget(&self, call_id: &str) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(call_id);
        }
    }

    fn route(&self, call_id: &str) -> Option<usize> {
        self.routes.lock().ok()?.get(call_id).copied()
    }
}

/// What the SIP port does with one message from `from`: route it to its call's worker, or
/// answer it here.
struct Front<'a> {
    shared: &'a Shared,
    sip: &'a SipShared,
    out: String,
    next: usize,
}

impl Front<'_> {
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
            connections.insert(id, writer);
        }
        let shared = shared.clone();
        let spawned = std::thread::Builder::new().name("cxb-sip-conn".into()).spawn(move || {
            read_tcp(&shared, stream, SipPeer::Tcp(id, peer));
            if let Some(sip) = shared.sip.as_ref()
                && let Ok(mut connections) = sip.connections.lock()
            {
                connections.remove(&id);
            }
        });
        if spawned.is_err()
            && let Ok(mut connections) = sip.connections.lock()
        {
            connections.remove(&id);
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
        loop {
            match frame(&pending) {
                Ok(Some(len)) => {
                    front.message(peer, &pending[..len]);
                    pending.drain(..len);
                }
                Ok(None) => break,
                Err(_) => {
                    // A stream whose framing is lost cannot be resynchronised.
                    sip.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}
