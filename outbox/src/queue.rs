//! The order of deliveries, sans-IO: which entry the sender tries next and when, from what
//! became of the attempts so far. Time is an argument (an offset from when the sender began).
//!
//! Entries are tried in submission order: the front one until the API settles it (stores it,
//! or rejects it for good), with a jittered exponential backoff between failures. An entry
//! that keeps failing (5xx, connection errors) must not hold back the entries behind it, and an
//! API that is down for everyone must not get every entry parked. The two look alike from one
//! entry's failures, so they are told apart by asking the API: after `park_after` failures in
//! a row, with entries waiting behind, the sender sends a **probe** that changes nothing (the
//! last result it delivered in the past ten minutes, again: the API stores a call id once and
//! answers 200, so this runs its whole result path; else `GET /health`, which checks the API's
//! database).
//!
//! - The probe fails: the API is down for everyone. Nothing is parked; the front entry keeps
//!   its place and its backoff, and order is kept.
//! - The probe succeeds: the front entry is tried again at once. If it fails right after the
//!   API showed that it takes results, the failure is the entry's own: it is **parked**. If it
//!   succeeds (the API had just come back), nothing is parked.
//!
//! We chose a probe that changes nothing over trying the entry behind (which would deliver it
//! first): an API that comes back between two attempts would then break the order of entries
//! that were never at fault. Parked entries are tried again on their own, slower backoff
//! (`park_retry`, minutes), beside the queue; entries that are not parked keep their order. The
//! front is tried alone (no probe) when nothing waits behind it: it holds nothing back.

use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::time::Duration;

use crate::RetryPolicy;

/// When to park and how to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueuePolicy {
    /// Failures in a row of the front entry after which the API is probed.
    pub(crate) park_after: u32,
    /// Waits between attempts of the front entry.
    pub(crate) retry: RetryPolicy,
    /// Waits between attempts of a parked entry.
    pub(crate) park: RetryPolicy,
}

/// What the sender does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try to deliver this entry.
    Attempt(u64),
    /// Ask the API whether it takes results at all (see the module's documentation).
    Probe,
    /// Nothing until then (or until a new entry comes).
    Wait(Duration),
    /// Nothing until a new entry comes.
    Idle,
}

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The entry is gone from the queue: delivered, rejected for good, or unreadable.
    Settled,
    /// Try again later.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Attempts of the front on its backoff.
    Normal,
    /// The front has failed `park_after` times: probe the API next.
    Probe,
    /// The probe succeeded: try the front again at once.
    Confirm,
}

#[derive(Debug, Clone, Copy)]
struct Parked {
    due: Duration,
    step: Duration,
}

/// The entries waiting for delivery, in order, and those parked.
#[derive(Debug)]
pub(crate) struct Queue {
    policy: QueuePolicy,
    active: VecDeque<u64>,
    /// Failed attempts of the front entry in a row.
    failures: u32,
    phase: Phase,
    /// The front is not tried before then.
    not_before: Duration,
    backoff: Backoff,
    parked: BTreeMap<u64, Parked>,
}

impl Queue {
    /// The entries `queued`, in order; those of them in `parked` were parked before (by an
    /// earlier run) and start parked, first tried again one parking interval from now.
    pub(crate) fn new(policy: QueuePolicy, queued: impl IntoIterator<Item = u64>, parked: &[u64]) -> Queue {
        let park = policy.park;
        let step = park.initial.saturating_mul(2).min(park.max);
        Queue {
            policy,
            active: queued.into_iter().filter(|seq| !parked.contains(seq)).collect(),
            failures: 0,
            phase: Phase::Normal,
            not_before: Duration::ZERO,
            backoff: Backoff::new(policy.retry),
            parked: parked.iter().map(|&seq| (seq, Parked { due: park.initial, step })).collect(),
        }
    }

    /// A new entry, behind the others.
    pub(crate) fn push(&mut self, seq: u64) {
        self.active.push_back(seq);
    }

    /// Entries parked now.
    pub(crate) fn parked(&self) -> usize {
        self.parked.len()
    }

    /// What to do at `now`.
    pub(crate) fn next(&self, now: Duration) -> Next {
        let front = self.active.front().copied();
        match (self.phase, front) {
            (Phase::Probe, Some(_)) => return Next::Probe,
            (Phase::Confirm, Some(seq)) => return Next::Attempt(seq),
            _ => {}
        }
        if let Some((&seq, _)) = self.parked.iter().find(|(_, p)| p.due <= now) {
            return Next::Attempt(seq);
        }
        match front {
            Some(seq) if now >= self.not_before => Next::Attempt(seq),
            _ => {
                let parked = self.parked.values().map(|p| p.due).min();
                let front = front.map(|_| self.not_before);
                front.into_iter().chain(parked).min().map_or(Next::Idle, Next::Wait)
            }
        }
    }

    /// Records an attempt of `seq` that ended at `now`; returns `true` when it parked `seq`.
    pub(crate) fn attempted(&mut self, seq: u64, now: Duration, outcome: Outcome) -> bool {
        if let Some(parked) = self.parked.get_mut(&seq) {
            match outcome {
                Outcome::Settled => {
                    self.parked.remove(&seq);
                }
                Outcome::Failed => {
                    parked.due = now + parked.step;
                    parked.step = parked.step.saturating_mul(2).min(self.policy.park.max);
                }
            }
            return false;
        }
        if self.active.front() != Some(&seq) {
            return false;
        }
        match (outcome, self.phase) {
            (Outcome::Settled, _) => {
                self.active.pop_front();
                self.front_done(now);
                false
            }
            (Outcome::Failed, Phase::Confirm) => {
                // It failed right after the API showed it takes results: the entry's own.
                self.active.pop_front();
                let park = self.policy.park;
                self.parked.insert(seq, Parked { due: now + park.initial, step: park.initial.saturating_mul(2).min(park.max) });
                self.front_done(now);
                true
            }
            (Outcome::Failed, _) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.policy.park_after && self.active.len() > 1 {
                    self.phase = Phase::Probe;
                } else {
                    self.phase = Phase::Normal;
                    self.not_before = now + self.backoff.next();
                }
                false
            }
        }
    }

    /// Records the probe's answer at `now`: whether the API takes results.
    pub(crate) fn probed(&mut self, now: Duration, api_up: bool) {
        if self.phase != Phase::Probe {
            return;
        }
        if api_up {
            self.phase = Phase::Confirm;
        } else {
            self.phase = Phase::Normal;
            self.not_before = now + self.backoff.next();
        }
    }

    /// The front entry left the queue: the next one goes at once.
    fn front_done(&mut self, now: Duration) {
        self.failures = 0;
        self.phase = Phase::Normal;
        self.backoff.reset();
        self.not_before = now;
    }
}

/// Exponential backoff with jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Backoff {
        Backoff { policy, next: policy.initial }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.policy.initial;
    }

    /// The next wait: the current step jittered into [d/2, d]; the step doubles up to `max`.
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = d.saturating_mul(2).min(self.policy.max);
        let random = std::collections::hash_map::RandomState::new().hash_one(d) as f64 / u64::MAX as f64;
        d.mul_f64(0.5 + 0.5 * random)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn policy() -> QueuePolicy {
        QueuePolicy {
            park_after: 5,
            retry: RetryPolicy { initial: SEC, max: 8 * SEC },
            park: RetryPolicy { initial: 120 * SEC, max: 1800 * SEC },
        }
    }

    /// Runs the queue on a virtual clock against an API: `fails(seq)` says whether an attempt
    /// of `seq` fails, `up()` whether a probe succeeds. Returns the settled entries in order
    /// and the clock when `until` held or after `steps`.
    struct Sim {
        queue: Queue,
        now: Duration,
        delivered: Vec<u64>,
        attempts: Vec<u64>,
        probes: u32,
        parks: Vec<u64>,
    }

    impl Sim {
        fn new(entries: impl IntoIterator<Item = u64>) -> Sim {
            Sim { queue: Queue::new(policy(), entries, &[]), now: Duration::ZERO, delivered: Vec::new(), attempts: Vec::new(), probes: 0, parks: Vec::new() }
        }

        /// One step; `false` when idle.
        fn step(&mut self, fails: &dyn Fn(u64, Duration) -> bool, up: &dyn Fn(Duration) -> bool) -> bool {
            match self.queue.next(self.now) {
                Next::Attempt(seq) => {
                    self.attempts.push(seq);
                    let outcome = if fails(seq, self.now) { Outcome::Failed } else { Outcome::Settled };
                    if outcome == Outcome::Settled {
                        self.delivered.push(seq);
                    }
                    if self.queue.attempted(seq, self.now, outcome) {
                        self.parks.push(seq);
                    }
                    // Each request takes a few milliseconds.
                    self.now += Duration::from_millis(5);
                }
                Next::Probe => {
                    self.probes += 1;
                    self.queue.probed(self.now, up(self.now));
                    self.now += Duration::from_millis(5);
                }
                Next::Wait(at) => {
                    assert!(at > self.now, "a wait is in the future");
                    self.now = at;
                }
                Next::Idle => return false,
            }
            true
        }

        fn run(&mut self, until: Duration, fails: &dyn Fn(u64, Duration) -> bool, up: &dyn Fn(Duration) -> bool) {
            while self.now < until && self.step(fails, up) {}
        }
    }

    #[test]
    fn a_failing_entry_is_parked_and_the_rest_go_in_order() {
        let mut sim = Sim::new(1..=5);
        // Entry 2 fails until minute 10; the API takes everything else.
        let fails = |seq: u64, now: Duration| seq == 2 && now < 600 * SEC;
        sim.run(3600 * SEC, &fails, &|_| true);
        assert_eq!(sim.parks, [2]);
        assert_eq!(sim.delivered, [1, 3, 4, 5, 2], "the others in order, the parked one later");
        // Five failures on its backoff (1, 2, 4, 8 s), the probe, one more failure: parked
        // (at most 15 s in). Then tried 2, 6 and 14 minutes later: the third try succeeds.
        assert_eq!(sim.attempts.iter().filter(|&&s| s == 2).count(), 6 + 3, "{:?}", sim.attempts);
        assert_eq!(sim.probes, 1);
        assert_eq!(sim.queue.parked(), 0);
    }

    #[test]
    fn an_api_down_for_everyone_parks_nothing_and_keeps_order() {
        let mut sim = Sim::new(1..=20);
        // Down for an hour: every attempt and every probe fails; then up.
        let down = |now: Duration| now < 3600 * SEC;
        sim.run(7200 * SEC, &|_, now| down(now), &|now| !down(now));
        assert!(sim.parks.is_empty(), "{:?}", sim.parks);
        assert_eq!(sim.delivered, (1..=20).collect::<Vec<_>>());
        assert!(sim.probes > 100, "probed while down: {}", sim.probes);
        // Only the front was ever attempted while down, on its backoff (at most 8 s apart).
        assert!(sim.attempts.iter().take_while(|&&s| s == 1).count() > 400);
    }

    #[test]
    fn an_api_that_comes_back_between_the_failure_and_the_probe_parks_nothing() {
        let mut queue = Queue::new(policy(), [1, 2, 3], &[]);
        let mut now = Duration::ZERO;
        for _ in 0..5 {
            assert_eq!(queue.next(now), Next::Attempt(1));
            queue.attempted(1, now, Outcome::Failed);
            if let Next::Wait(at) = queue.next(now) {
                now = at;
            }
        }
        // The API comes back now: the probe succeeds, and so does the confirming attempt.
        assert_eq!(queue.next(now), Next::Probe);
        queue.probed(now, true);
        assert_eq!(queue.next(now), Next::Attempt(1));
        assert!(!queue.attempted(1, now, Outcome::Settled));
        assert_eq!((queue.parked(), queue.next(now)), (0, Next::Attempt(2)));

        // Coming back at any moment of an outage parks nothing and keeps the order.
        for back in [3, 7, 15, 16, 20, 31, 64] {
            let mut sim = Sim::new(1..=3);
            let down = move |now: Duration| now < back * SEC;
            sim.run(600 * SEC, &|_, now| down(now), &|now| !down(now));
            assert!(sim.parks.is_empty(), "back at {back} s: {:?}", sim.parks);
            assert_eq!(sim.delivered, [1, 2, 3]);
        }
    }

    #[test]
    fn a_lone_entry_is_never_probed_or_parked() {
        let mut sim = Sim::new([7]);
        sim.run(600 * SEC, &|_, _| true, &|_| true);
        assert_eq!((sim.probes, sim.parks.len()), (0, 0));
        assert!(sim.delivered.is_empty());
        // A second entry arrives: the next failure of the first probes, then parks it.
        sim.queue.push(8);
        sim.run(1200 * SEC, &|seq, _| seq == 7, &|_| true);
        assert_eq!(sim.parks, [7]);
        assert_eq!(sim.delivered, [8]);
    }

    #[test]
    fn parked_entries_back_off_on_their_own() {
        let mut queue = Queue::new(policy(), [1, 2], &[]);
        let mut now = Duration::ZERO;
        for _ in 0..5 {
            let Next::Attempt(1) = queue.next(now) else { panic!("front") };
            assert!(!queue.attempted(1, now, Outcome::Failed));
            if let Next::Wait(at) = queue.next(now) {
                now = at;
            }
        }
        assert_eq!(queue.next(now), Next::Probe);
        queue.probed(now, true);
        assert_eq!(queue.next(now), Next::Attempt(1));
        assert!(queue.attempted(1, now, Outcome::Failed));
        assert_eq!(queue.next(now), Next::Attempt(2), "the next entry goes at once");
        queue.attempted(2, now, Outcome::Settled);
        let parked_at = now;
        assert_eq!(queue.next(now), Next::Wait(parked_at + 120 * SEC));
        let mut dues = Vec::new();
        for _ in 0..6 {
            let Next::Wait(at) = queue.next(now) else { panic!("waits") };
            now = at;
            assert_eq!(queue.next(now), Next::Attempt(1));
            queue.attempted(1, now, Outcome::Failed);
            dues.push((now - parked_at).as_secs());
        }
        assert_eq!(dues, [120, 360, 840, 1800, 3600, 5400], "2, 4, 8, 16 min, then every 30");
        queue.attempted(1, now, Outcome::Settled);
        assert_eq!((queue.parked(), queue.next(now)), (0, Next::Idle));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(RetryPolicy::default());
        let waits: Vec<Duration> = (0..9).map(|_| b.next()).collect();
        for (wait, step) in waits.iter().zip([1u64, 2, 4, 8, 16, 32, 60, 60, 60]) {
            let step = Duration::from_secs(step);
            assert!(*wait >= step / 2 && *wait <= step, "{wait:?} for a {step:?} step");
        }
        b.reset();
        assert!(b.next() <= SEC);
    }
}
