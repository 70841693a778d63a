//! The worker's reader of its calls' media sockets: SIP calls' RTP and RTCP, and carriers'
//! WebSocket connections once they are calls. A read waiting on every call's socket costs the
//! sender of each packet a wake-up of this thread (on a VM an inter-processor interrupt,
//! charged to whoever sent) and this thread a task-work run per packet: at 1,000 calls that was
//! a fifth of the worker's core. Instead the sockets sit in one edge-triggered epoll set that
//! nothing waits in: a packet that arrives is only marked ready. Every millisecond while the
//! worker has such calls, the pump asks the set which sockets are ready (without waiting),
//! reads each dry, queues what it read in the call's inbox and wakes the call's task once,
//! which then handles all of it. A packet waits at most a tick (1 ms) longer than it would
//! have; the call's task runs once per tick with packets instead of once per packet. A call's
//! inbox holds 64 datagrams (or reads of a stream); past that the pump leaves the rest in the
//! socket's buffer until the next tick, so a flood meets the kernel's limit (and a stream's
//! sender its flow control), as before. A stream's end, or its error, is an empty read.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustix::event::epoll;

/// How often the pump reads the ready sockets.
const TICK: Duration = Duration::from_millis(1);
/// Datagrams a call's inbox holds; more wait in the socket's buffer.
const MAX_QUEUED: usize = 64;
/// The largest datagram read whole, and a stream's bytes per read.
const MAX_DATAGRAM: usize = 8192;

/// One datagram for a call.
pub(super) struct Datagram {
    /// It came to the RTCP socket.
    pub(super) rtcp: bool,
    pub(super) from: SocketAddr,
    pub(super) bytes: Vec<u8>,
}

/// A call's queue of datagrams, filled by the pump and emptied by the call's task.
#[derive(Default)]
pub(super) struct MediaInbox {
    queue: RefCell<VecDeque<Datagram>>,
    spare: RefCell<Vec<Vec<u8>>>,
    waker: Cell<Option<Waker>>,
}

impl MediaInbox {
    /// Ready when datagrams are queued.
    pub(super) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.queue.borrow().is_empty() {
            return Poll::Ready(());
        }
        match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(cx.waker().clone())),
        }
        Poll::Pending
    }

    /// The next datagram; give its bytes back with [`MediaInbox::recycle`].
    pub(super) fn pop(&self) -> Option<Datagram> {
        self.queue.borrow_mut().pop_front()
    }

    pub(super) fn recycle(&self, mut bytes: Vec<u8>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < 8 {
            bytes.clear();
            spare.push(bytes);
        }
    }

    fn is_full(&self) -> bool {
        self.queue.borrow().len() >= MAX_QUEUED
    }

    fn push(&self, rtcp: bool, from: SocketAddr, datagram: &[u8]) {
        let mut queue = self.queue.borrow_mut();
        let mut bytes = self.spare.borrow_mut().pop().unwrap_or_default();
        bytes.extend_from_slice(datagram);
        queue.push_back(Datagram { rtcp, from, bytes });
    }

    fn wake(&self) {
        if !self.queue.borrow().is_empty()
            && let Some(w) = self.waker.take()
        {
            w.wake();
        }
    }
}

/// A socket in the set: the pump's own handle on it, and where what it reads goes.
struct Entry {
    source: Source,
    rtcp: bool,
    inbox: Rc<MediaInbox>,
}

enum Source {
    Udp(UdpSocket),
    /// A stream, until it has ended (its end queued once).
    Tcp(TcpStream, SocketAddr, bool),
}

impl Source {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Source::Udp(s) => s.as_fd(),
            Source::Tcp(s, ..) => s.as_fd(),
        }
    }
}

/// The worker's set of RTP and RTCP sockets.
pub(super) struct MediaPump {
    epoll: OwnedFd,
    entries: RefCell<HashMap<u64, Entry>>,
    next_key: Cell<u64>,
    /// Sockets left unread because their call's inbox was full: read first at the next tick
    /// (the epoll set, edge-triggered, does not report them again).
    backlog: RefCell<Vec<u64>>,
    /// The keys a tick reads, kept for the next tick's.
    keys: RefCell<Vec<u64>>,
    /// The pump's task, waiting for a first socket.
    idle: Cell<Option<Waker>>,
}

impl std::fmt::Debug for MediaPump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaPump").field("sockets", &self.entries.borrow().len()).finish()
    }
}

/// A call's sockets in the pump's set; dropping it takes them out.
pub(super) struct Registration {
    pump: Rc<MediaPump>,
    keys: Vec<u64>,
    pub(super) inbox: Rc<MediaInbox>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.pump.entries.borrow_mut();
        for key in &self.keys {
            if let Some(entry) = entries.remove(key) {
                let _ = epoll::delete(&self.pump.epoll, entry.source.fd());
            }
        }
    }
}

impl MediaPump {
    pub(super) fn new() -> std::io::Result<Rc<MediaPump>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(Rc::new(MediaPump { epoll, entries: RefCell::new(HashMap::new()), next_key: Cell::new(0), backlog: RefCell::new(Vec::new()), keys: RefCell::new(Vec::new()), idle: Cell::new(None) }))
    }

    /// Puts a call's RTP socket (and its RTCP socket) in the set; both become non-blocking,
    /// and only the pump reads them from now on.
    pub(super) fn register(self: &Rc<Self>, rtp: &UdpSocket, rtcp: Option<&UdpSocket>) -> std::io::Result<Registration> {
        let inbox = Rc::new(MediaInbox::default());
        let mut registration = Registration { pump: self.clone(), keys: Vec::new(), inbox: inbox.clone() };
        for (socket, is_rtcp) in std::iter::once((rtp, false)).chain(rtcp.map(|s| (s, true))) {
            socket.set_nonblocking(true)?;
            let key = self.add(Source::Udp(socket.try_clone()?), is_rtcp, &inbox)?;
            registration.keys.push(key);
        }
        self.wake_idle();
        Ok(registration)
    }

    /// Puts a call's connection in the set: only the pump reads `fd` (a duplicate of the
    /// runtime's socket) from now on, each read without blocking whatever the socket's mode;
    /// the runtime may still write it.
    pub(super) fn register_stream(self: &Rc<Self>, fd: OwnedFd) -> std::io::Result<Registration> {
        let stream = TcpStream::from(fd);
        let peer = stream.peer_addr()?;
        let inbox = Rc::new(MediaInbox::default());
        let key = self.add(Source::Tcp(stream, peer, false), false, &inbox)?;
        self.wake_idle();
        Ok(Registration { pump: self.clone(), keys: vec![key], inbox })
    }

    fn add(&self, source: Source, rtcp: bool, inbox: &Rc<MediaInbox>) -> std::io::Result<u64> {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        epoll::add(&self.epoll, source.fd(), epoll::EventData::new_u64(key), epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET)?;
        self.entries.borrow_mut().insert(key, Entry { source, rtcp, inbox: inbox.clone() });
        Ok(key)
    }

    fn wake_idle(&self) {
        if let Some(w) = self.idle.take() {
            w.wake();
        }
    }

    /// Reads every ready socket dry (or until its call's inbox is full) into the inbox, and
    /// wakes the calls that got some.
    fn read_ready(&self, events: &mut Vec<epoll::Event>, buf: &mut [u8]) {
        events.clear();
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        if epoll::wait(&self.epoll, rustix::buffer::spare_capacity(events), Some(&zero)).is_err() {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        let mut backlog = self.backlog.borrow_mut();
        // The sockets left unread last tick, then the ready ones; the backlog's vector is
        // reused for this tick's leftovers.
        let mut keys = std::mem::take(&mut *self.keys.borrow_mut());
        keys.clear();
        keys.append(&mut backlog);
        keys.extend(events.iter().map(|e| e.data.u64()));
        for &key in &keys {
            let Some(entry) = entries.get_mut(&key) else { continue };
            loop {
                if entry.inbox.is_full() {
                    if !backlog.contains(&key) {
                        backlog.push(key);
                    }
                    break;
                }
                match &mut entry.source {
                    Source::Udp(socket) => match socket.recv_from(buf) {
                        Ok((n, from)) => entry.inbox.push(entry.rtcp, from, &buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // ICMP errors and the like: the next read may well succeed.
                        Err(_) => {}
                    },
                    Source::Tcp(_, _, true) => break,
                    Source::Tcp(stream, peer, ended) => match rustix::net::recv(&*stream, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
                        Ok((n, _)) if n > 0 => entry.inbox.push(false, *peer, &buf[..n]),
                        Err(e) if e == rustix::io::Errno::AGAIN => break,
                        Err(e) if e == rustix::io::Errno::INTR => {}
                        // The end (or a reset): an empty read, once.
                        _ => {
                            *ended = true;
                            entry.inbox.push(false, *peer, &[]);
                            break;
                        }
                    },
                }
            }
            entry.inbox.wake();
        }
        *self.keys.borrow_mut() = keys;
    }

    /// The pump's task: a tick every millisecond while the set has sockets.
    pub(super) async fn run(self: Rc<Self>) {
        let mut events = Vec::with_capacity(1024);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut next = Instant::now();
        loop {
            if self.entries.borrow().is_empty() {
                std::future::poll_fn(|cx| {
                    if self.entries.borrow().is_empty() {
                        self.idle.set(Some(cx.waker().clone()));
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
                .await;
            }
            next = (next + TICK).max(Instant::now());
            compio::time::sleep_until(next).await;
            self.read_ready(&mut events, &mut buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_the_inbox_of_their_socket_and_a_dropped_registration_leaves_the_set() {
        let pump = MediaPump::new().expect("epoll");
        let (rtp, rtcp) = (UdpSocket::bind("127.0.0.1:0").expect("bind"), UdpSocket::bind("127.0.0.1:0").expect("bind"));
        let registration = pump.register(&rtp, Some(&rtcp)).expect("register");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..3 {
            peer.send_to(b"rtp", rtp.local_addr().expect("addr")).expect("send");
        }
        peer.send_to(b"rtcp", rtcp.local_addr().expect("addr")).expect("send");
        let (mut events, mut buf) = (Vec::with_capacity(8), vec![0u8; MAX_DATAGRAM]);
        let until = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 4 && Instant::now() < until {
            pump.read_ready(&mut events, &mut buf);
            while let Some(d) = registration.inbox.pop() {
                got.push((d.rtcp, d.bytes.clone(), d.from));
                registration.inbox.recycle(d.bytes);
            }
        }
        got.sort();
        let from = peer.local_addr().expect("addr");
        assert_eq!(got, [(false, b"rtp".to_vec(), from), (false, b"rtp".to_vec(), from), (false, b"rtp".to_vec(), from), (true, b"rtcp".to_vec(), from)]);
        drop(registration);
        assert!(pump.entries.borrow().is_empty());
        peer.send_to(b"late", rtp.local_addr().expect("addr")).expect("send");
        pump.read_ready(&mut events, &mut buf);
        assert!(events.is_empty(), "no longer in the set");
    }

    #[test]
    fn a_full_inbox_leaves_the_rest_in_the_socket_until_the_next_tick() {
        let pump = MediaPump::new().expect("epoll");
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let registration = pump.register(&rtp, None).expect("register");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for n in 0..MAX_QUEUED + 6 {
            peer.send_to(&[n as u8], rtp.local_addr().expect("addr")).expect("send");
        }
        let (mut events, mut buf) = (Vec::with_capacity(8), vec![0u8; MAX_DATAGRAM]);
        let until = Instant::now() + Duration::from_secs(5);
        while registration.inbox.queue.borrow().len() < MAX_QUEUED && Instant::now() < until {
            pump.read_ready(&mut events, &mut buf);
        }
        assert_eq!(registration.inbox.queue.borrow().len(), MAX_QUEUED, "full");
        let mut got = Vec::new();
        while let Some(d) = registration.inbox.pop() {
            got.push(d.bytes[0]);
        }
        // No new packet arrives: the backlog, not the epoll set, brings the rest.
        pump.read_ready(&mut events, &mut buf);
        while let Some(d) = registration.inbox.pop() {
            got.push(d.bytes[0]);
        }
        assert_eq!(got, (0..MAX_QUEUED as u8 + 6).collect::<Vec<_>>(), "all of them, in order");
    }
}
