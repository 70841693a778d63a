//! Limits against exhaustion decided per client address before any upgrade: how many of one
//! address's connections may be waiting for their request head at once, and a back-off for
//! an address whose call admissions keep failing. Sans-IO: `now` is an argument, so the
//! limits are tested on a virtual clock.
//!
//! One table per engine, shared by the workers (touched when a connection opens, when its
//! head is read and when an admission fails; never on the media path).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressLimitConfig {
    /// Connections one address may have waiting for their request head.
    pub pending_per_address: u32,
    /// Failed admissions (401) one address may have in `failure_window` before it backs off.
    pub failures_allowed: u32,
    pub failure_window: Duration,
    /// The first back-off; each further one doubles, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for AddressLimitConfig {
    fn default() -> AddressLimitConfig {
        AddressLimitConfig {
            pending_per_address: 64,
            failures_allowed: 20,
            failure_window: Duration::from_secs(60),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Whether a new connection may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// The address already has too many connections waiting for their heads.
    TooManyPending,
    /// The address failed too many admissions; it may try again after this long.
    BackOff(Duration),
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    pending: u32,
    failures: u32,
    window_start: Option<Instant>,
    strikes: u32,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.pending == 0
            && self.blocked_until.is_none_or(|t| t <= now)
            && self.window_start.is_none_or(|t| now.duration_since(t) >= window)
            && self.strikes == 0
    }
}

/// Addresses tracked at most; beyond, idle ones are dropped first and new addresses are
/// refused while none is idle.
const MAX_ADDRESSES: usize = 65_536;

/// The per-address table.
#[derive(Debug)]
pub struct AddressLimits {
    config: AddressLimitConfig,
    table: HashMap<IpAddr, Entry>,
}

impl AddressLimits {
    pub fn new(config: AddressLimitConfig) -> AddressLimits {
        AddressLimits { config, table: HashMap::new() }
    }

    pub fn config(&self) -> AddressLimitConfig {
        self.config
    }

    /// A connection from `ip` begins; on [`Verdict::Proceed`] call [`AddressLimits::head_done`]
    /// once its head is read (or it is dropped).
    pub fn open(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if !self.table.contains_key(&ip) && self.table.len() >= MAX_ADDRESSES {
            let window = self.config.failure_window;
            self.table.retain(|_, e| !e.idle(now, window));
            if self.table.len() >= MAX_ADDRESSES {
                return Verdict::TooManyPending;
            }
        }
        let entry = self.table.entry(ip).or_default();
        if let Some(until) = entry.blocked_until.filter(|t| *t > now) {
            return Verdict::BackOff(until - now);
        }
        if entry.pending >= self.config.pending_per_address {
            return Verdict::TooManyPending;
        }
        entry.pending += 1;
        Verdict::Proceed
    }

    /// A connection from `ip` that [`AddressLimits::open`] let in has its head (or is gone).
    pub fn head_done(&mut self, ip: IpAddr) {
        if let Some(e) = self.table.get_mut(&ip) {
            e.pending = e.pending.saturating_sub(1);
        }
    }

    /// An admission from `ip` failed (a 401). Past the allowance in the window the address
    /// backs off, twice as long each time.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let c = self.config;
        let entry = self.table.entry(ip).or_default();
        match entry.window_start {
            Some(start) if now.duration_since(start) < c.failure_window => entry.failures += 1,
            _ => {
                // A quiet window forgives one earlier back-off.
                if entry.window_start.is_some() && entry.blocked_until.is_none_or(|t| t <= now) {
                    entry.strikes = entry.strikes.saturating_sub(1);
                }
                entry.window_start = Some(now);
                entry.failures = 1;
            }
        }
        if entry.failures > c.failures_allowed {
            let backoff = c.first_backoff.saturating_mul(1 << entry.strikes.min(20)).min(c.max_backoff);
            entry.blocked_until = Some(now + backoff);
            entry.strikes += 1;
            entry.failures = 0;
            entry.window_start = Some(now);
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn an_address_may_hold_only_so_many_connections_before_their_heads() {
        let t0 = Instant::now();
        let mut l = AddressLimits::new(AddressLimitConfig { pending_per_address: 2, ..AddressLimitConfig::default() });
        assert_eq!(l.open(ip(1), t0), Verdict::Proceed);
        assert_eq!(l.open(ip(1), t0), Verdict::Proceed);
        assert_eq!(l.open(ip(1), t0), Verdict::TooManyPending);
        assert_eq!(l.open(ip(2), t0), Verdict::Proceed, "other addresses are not affected");
        l.head_done(ip(1));
        assert_eq!(l.open(ip(1), t0), Verdict::Proceed);
    }

    #[test]
    fn failing_admissions_back_off_doubling_and_are_forgiven_after_quiet() {
        let t0 = Instant::now();
        let config = AddressLimitConfig { failures_allowed: 3, ..AddressLimitConfig::default() };
        let mut l = AddressLimits::new(config);
        for _ in 0..3 {
            l.failed(ip(1), t0);
        }
        assert_eq!(l.open(ip(1), t0), Verdict::Proceed, "within the allowance");
        l.head_done(ip(1));
        l.failed(ip(1), t0);
        assert_eq!(l.open(ip(1), t0), Verdict::BackOff(Duration::from_secs(1)));
        assert_eq!(l.open(ip(2), t0), Verdict::Proceed);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.open(ip(1), t1), Verdict::Proceed, "the back-off is over");
        l.head_done(ip(1));
        for _ in 0..4 {
            l.failed(ip(1), t1);
        }
        assert_eq!(l.open(ip(1), t1), Verdict::BackOff(Duration::from_secs(2)), "doubled");
        let t2 = t1 + Duration::from_secs(2);
        for _ in 0..4 {
            l.failed(ip(1), t2);
        }
        assert_eq!(l.open(ip(1), t2), Verdict::BackOff(Duration::from_secs(4)));
        // A quiet minute forgives a strike.
        let t3 = t2 + Duration::from_secs(120);
        for _ in 0..4 {
            l.failed(ip(1), t3);
        }
        assert_eq!(l.open(ip(1), t3), Verdict::BackOff(Duration::from_secs(4)));
    }

    #[test]
    fn the_back_off_is_capped() {
        let t0 = Instant::now();
        let config = AddressLimitConfig { failures_allowed: 0, max_backoff: Duration::from_secs(5), ..AddressLimitConfig::default() };
        let mut l = AddressLimits::new(config);
        let mut now = t0;
        for _ in 0..10 {
            l.failed(ip(1), now);
            match l.open(ip(1), now) {
                Verdict::BackOff(d) => {
                    assert!(d <= Duration::from_secs(5));
                    now += d;
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
