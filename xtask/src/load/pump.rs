//! The load generator's media pump: once a call is set up (a SIP call answered, a WebSocket
//! upgraded), its socket leaves the runtime for one task that wakes every millisecond on its
//! own timer, asks one edge-triggered epoll set which sockets have something (without waiting
//! in it), lets each such call read, and lets every call send what is due. Nothing sleeps on a
//! call's socket, so the engine's packets are queued without waking a thread: on loopback the
//! sender pays for the receiver's wake-up (an inter-processor interrupt in a VM), and with a
//! read waiting on every socket the engine spent about a fifth of its core waking the
//! generator. Receive times are read at the tick, so latencies are late by up to 1 ms, and
//! packets go out up to 1 ms after their slot.

use std::cell::{Cell, RefCell};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rustix::event::epoll;

/// A call the pump runs.
pub(super) trait PumpCall {
    /// Its socket.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Reads everything waiting on the socket at `now`.
    fn read(&mut self, now: Instant, buf: &mut [u8]);
    /// Sends what is due at `now`; true when the call is over.
    fn tick(&mut self, now: Instant) -> bool;
    /// Hands the finished call back to its task.
    fn finish(self: Box<Self>);
}

/// Where the pump hands a finished call back to its task.
pub(super) struct Done<T> {
    call: Cell<Option<Box<T>>>,
    waker: Cell<Option<Waker>>,
}

impl<T> Default for Done<T> {
    fn default() -> Self {
        Done { call: Cell::new(None), waker: Cell::new(None) }
    }
}

impl<T> Done<T> {
    /// The call is over: back to the task waiting in [`Done::wait`].
    pub(super) fn hand_back(&self, call: Box<T>) {
        self.call.set(Some(call));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The call, once the pump is done with it.
    pub(super) async fn wait(&self) -> Box<T> {
        std::future::poll_fn(|cx| match self.call.take() {
            Some(c) => Poll::Ready(c),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Runs every set-up call's media: see the module's documentation.
pub(crate) struct Pump {
    epoll: OwnedFd,
    calls: RefCell<Vec<Option<Box<dyn PumpCall>>>>,
}

impl Pump {
    pub(crate) fn new() -> Result<Rc<Pump>, String> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
        Ok(Rc::new(Pump { epoll, calls: RefCell::new(Vec::new()) }))
    }

    pub(super) fn add(&self, call: Box<dyn PumpCall>) -> std::io::Result<()> {
        let mut calls = self.calls.borrow_mut();
        let key = calls.iter().position(Option::is_none).unwrap_or(calls.len());
        epoll::add(&self.epoll, call.fd(), epoll::EventData::new_u64(key as u64), epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET)?;
        if key == calls.len() {
            calls.push(None);
        }
        calls[key] = Some(call);
        Ok(())
    }

    /// Ticks every millisecond until `stop` is set.
    pub(crate) async fn run(&self, stop: &Cell<bool>) {
        let mut events = Vec::with_capacity(1024);
        let mut buf = vec![0u8; 16 * 1024];
        let mut next_tick = Instant::now();
        while !stop.get() {
            next_tick = (next_tick + Duration::from_millis(1)).max(Instant::now());
            compio::time::sleep_until(next_tick).await;
            let now = Instant::now();
            events.clear();
            let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
            let _ = epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&zero));
            let mut calls = self.calls.borrow_mut();
            for event in &events {
                if let Some(Some(call)) = calls.get_mut(event.data.u64() as usize) {
                    call.read(now, &mut buf);
                }
            }
            for slot in calls.iter_mut() {
                if slot.as_mut().is_some_and(|call| call.tick(now))
                    && let Some(call) = slot.take()
                {
                    let _ = epoll::delete(&self.epoll, call.fd());
                    call.finish();
                }
            }
        }
    }
}
