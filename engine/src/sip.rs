//! The engine's SIP port, UDP and TCP on the same address: its configuration and the state
//! every thread shares (the sockets, the route table, the TCP connections); `sip_front` has
//! the threads that read it. One thread (`cxb-sip`) reads the
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

pub mod dial;

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

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
    /// SIP over TLS (`transport=tls`) on this TCP address, with the engine's certificate
    /// (`EngineConfig::tls`, which it requires).
    pub tls_listen: Option<SocketAddr>,
}

impl SipConfig {
    /// SIP on `listen`, RTP on ports 20000–29999.
    pub fn new(listen: SocketAddr) -> SipConfig {
        SipConfig { listen, advertise: None, rtp_ports: (20_000, 30_000), tls_listen: None }
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
    /// TLS connection `id` (on the TLS port), from this address.
    Tls(u64, SocketAddr),
}

impl SipPeer {
    /// The peer's address.
    pub(crate) fn addr(self) -> SocketAddr {
        match self {
            SipPeer::Udp(a) | SipPeer::Tcp(_, a) | SipPeer::Tls(_, a) => a,
        }
    }

    /// The `;transport=` parameter of our URIs for a dialog with this peer (none for UDP).
    pub(crate) fn uri_param(self) -> &'static str {
        match self {
            SipPeer::Udp(_) => "",
            SipPeer::Tcp(..) => ";transport=tcp",
            SipPeer::Tls(..) => ";transport=tls",
        }
    }

    /// `UDP` or `TCP`, for Via and the dialog's retransmissions.
    pub(crate) fn transport(self) -> &'static str {
        match self {
            SipPeer::Udp(_) => "UDP",
            SipPeer::Tcp(..) => "TCP",
            SipPeer::Tls(..) => "TLS",
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
    pub(crate) listener: TcpListener,
    /// Open TCP and TLS connections by id: how to write to each.
    pub(crate) connections: Mutex<HashMap<u64, Connection>>,
    /// The TLS port, when there is one, and the certificate it serves.
    pub(crate) tls: Option<(TcpListener, crate::tls::TlsConfig)>,
    /// The TLS port's bound address.
    tls_local: Option<SocketAddr>,
    /// The connections the engine opened to trunks, by address, for reuse.
    pub(crate) outbound: Mutex<HashMap<SocketAddr, u64>>,
    pub(crate) next_connection: AtomicU64,
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

/// How to write to a connection: a TCP stream directly, a TLS one through its thread (which
/// owns the session).
#[derive(Debug)]
pub(crate) enum Connection {
    Plain(TcpStream),
    Tls(flume::Sender<Vec<u8>>),
}

impl SipShared {
    pub(crate) fn bind(config: &SipConfig, tls: Option<&crate::tls::TlsConfig>) -> std::io::Result<SipShared> {
        let (socket, listener) = Self::bind_pair(config.listen)?;
        let tls = match (config.tls_listen, tls) {
            (Some(addr), Some(tls)) => Some((TcpListener::bind(addr)?, tls.clone())),
            (Some(_), None) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "SIP over TLS needs the engine's certificate (--tls-cert, --tls-key)")),
            (None, _) => None,
        };
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
        Ok(SipShared {
            socket,
            listener,
            connections: Mutex::default(),
            tls_local: tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            tls,
            outbound: Mutex::default(),
            next_connection: AtomicU64::new(0),
            local,
            advertise,
            rtp_ports: config.rtp_ports,
            routes: Mutex::default(),
            counters: SipCounters::default(),
            nonce_key,
        })
    }

    /// UDP and TCP on the same port. With port 0 the UDP socket picks it, and a port whose
    /// TCP side is taken is given up for another (a few times).
    fn bind_pair(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
        let mut tries = 0;
        loop {
            let socket = UdpSocket::bind(listen)?;
            match TcpListener::bind(socket.local_addr()?) {
                Ok(listener) => return Ok((socket, listener)),
                Err(e) if listen.port() == 0 && tries < 8 => {
                    tracing::debug!("SIP port's TCP side taken ({e}); another port");
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `host:port` as peers reach this engine, for Contact and Via.
    pub(crate) fn sent_by(&self) -> String {
        SocketAddr::new(self.advertise, self.local.port()).to_string()
    }

    /// The sent-by and Contact address for a dialog with `peer`: the TLS port's for a peer on
    /// TLS.
    pub(crate) fn sent_by_for(&self, peer: SipPeer) -> String {
        match (peer, self.tls_local) {
            (SipPeer::Tls(..), Some(tls)) => SocketAddr::new(self.advertise, tls.port()).to_string(),
            _ => self.sent_by(),
        }
    }

    /// The TLS port's address.
    pub(crate) fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_local
    }

    /// Sends one message the way `to` reached us: a datagram the kernel will not take now is
    /// lost like any other (SIP over UDP retransmits); a TCP peer that does not read within a
    /// second loses its connection.
    pub(crate) fn send(&self, to: SipPeer, message: &[u8]) {
        match to {
            SipPeer::Udp(addr) => {
                let _ = self.socket.send_to(message, addr);
            }
            SipPeer::Tcp(id, _) | SipPeer::Tls(id, _) => {
                let writer = self.connections.lock().ok().and_then(|c| match c.get(&id) {
                    Some(Connection::Plain(s)) => s.try_clone().ok().map(Connection::Plain),
                    Some(Connection::Tls(tx)) => Some(Connection::Tls(tx.clone())),
                    None => None,
                });
                match writer {
                    Some(Connection::Plain(stream)) if (&stream).write_all(message).is_err() => {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    }
                    Some(Connection::Plain(_)) => {}
                    Some(Connection::Tls(tx)) => {
                        let _ = tx.try_send(message.to_vec());
                    }
                    None => {}
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

    pub(crate) fn route(&self, call_id: &str) -> Option<usize> {
        self.routes.lock().ok()?.get(call_id).copied()
    }
}
