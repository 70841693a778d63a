//! The engine's SIP port: one UDP socket read by one thread (`cxb-sip`), which hands each
//! message to the worker that owns its call (by Call-ID) and answers what needs no call on
//! its own: OPTIONS keep-alives, 503 when every worker is full, 481 for requests of calls it
//! does not know. A new INVITE goes to the worker with the most free slots; from then on the
//! call's signalling and its RTP socket live on that worker (`worker::sip`). Workers send
//! their SIP messages through the same socket, so the trunk sees one address.
//!
//! Signalling is a handful of messages per call, so one thread and one lock on the route
//! table carry it; the media (50 packets a second each way per call) never passes here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cxb_sip::message::{Message, StartLine, response};

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
        let advertise = config.advertise.unwrap_or(match local.ip() {
            ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        });
        let mut nonce_key = [0u8; 16];
        for (i, chunk) in nonce_key.chunks_mut(8).enumerate() {
            use std::hash::BuildHasher;
            chunk.copy_from_slice(&std::collections::hash_map::RandomState::new().hash_one(i).to_le_bytes());
        }
        Ok(SipShared { socket, local, advertise, rtp_ports: config.rtp_ports, routes: Mutex::default(), counters: SipCounters::default(), nonce_key })
    }

    /// `host:port` as peers reach this engine, for Contact and Via.
    pub(crate) fn sent_by(&self) -> String {
        SocketAddr::new(self.advertise, self.local.port()).to_string()
    }

    /// Sends one message; a datagram the kernel will not take now is lost like any other
    /// (SIP over UDP retransmits).
    pub(crate) fn send(&self, to: SocketAddr, message: &[u8]) {
        let _ = self.socket.send_to(message, to);
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

/// The `cxb-sip` thread: reads the SIP port until the engine stops.
pub(crate) fn front(shared: &Shared) {
    let Some(sip) = shared.sip.as_ref() else { return };
    let mut buf = vec![0u8; 65_536];
    let mut out = String::new();
    let mut next = 0;
    while !shared.stopping.load(Ordering::SeqCst) {
        let Ok((n, from)) = sip.socket.recv_from(&mut buf) else { continue };
        let bytes = &buf[..n];
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // CRLF keep-alives
        }
        let Ok(message) = Message::parse(bytes) else {
            sip.counters.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let call_id = message.call_id();
        if call_id.is_empty() {
            sip.counters.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(worker) = sip.route(call_id) {
            let _ = shared.inboxes[worker].send(Inbox::Sip { from, bytes: bytes.to_vec() });
            continue;
        }
        let StartLine::Request { method, .. } = message.start else {
            continue; // a response to nothing we sent
        };
        let new_call = method == "INVITE" && message.tag("To").is_none();
        match method {
            _ if new_call => {
                let worker = shared.most_free(next);
                next = (next + 1) % shared.workers.len();
                if shared.workers[worker].free.load(Ordering::Relaxed) == 0 {
                    sip.counters.busy.fetch_add(1, Ordering::Relaxed);
                    response(&message, 503, "Service Unavailable", Some("busy"), &[("Retry-After", "5")], "", &mut out);
                    sip.send(from, out.as_bytes());
                    continue;
                }
                if let Ok(mut routes) = sip.routes.lock() {
                    routes.insert(call_id.to_string(), worker);
                }
                let _ = shared.inboxes[worker].send(Inbox::Sip { from, bytes: bytes.to_vec() });
            }
            "OPTIONS" => {
                let allow = [("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO"), ("Accept", "application/sdp")];
                response(&message, 200, "OK", Some("opt"), &allow, "", &mut out);
                sip.send(from, out.as_bytes());
            }
            "ACK" => {}
            _ => {
                response(&message, 481, "Call/Transaction Does Not Exist", None, &[], "", &mut out);
                sip.send(from, out.as_bytes());
            }
        }
    }
}
