//! The playout clock: an outbound queue that releases 20 ms frames on an absolute schedule.
//!
//! Frame `k` of a run is due at `t0 + k * period`. A tick that comes late (the worker was busy,
//! the process was descheduled) releases every frame that has fallen due, at most `max_burst`
//! at once, and the schedule stays where it was: one stall costs the frames it delayed, not
//! every frame after it. When the queue runs dry the run ends: the slots that pass are never
//! owed back as a burst, and the next audio starts a new run at once instead of waiting for
//! the old grid.
//!
//! `clear` drops everything queued (barge-in). Marks are points in the queued audio; each is
//! reported once, as played when the audio before it has been released, or as cleared when a
//! clear drops it first, which is what the carriers' `mark` events need.
//!
//! The audio itself sits in a `ringbuf` ring: a fixed allocation per call, filled by the
//! producer side (echo, text-to-speech) and drained by the clock.

use std::collections::VecDeque;
use std::time::Duration;

use ringbuf::HeapRb;
use ringbuf::traits::Observer;

use crate::Timestamp;

/// Something the playout clock reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayoutEvent<M> {
    /// All audio queued before the mark has been released.
    MarkPlayed(M),
    /// A clear dropped audio before the mark, so it will never play.
    MarkCleared(M),
}

/// Frames released by one [`Playout::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// How many whole frames were appended to the output.
    pub frames: usize,
    /// When the first of them was due.
    pub first_due: Timestamp,
    /// The period between frames.
    pub period: Duration,
}

impl Released {
    /// How late frame `i` of this release went out, for a tick at `now`.
    pub fn lateness(&self, now: Timestamp, i: usize) -> Duration {
        now.saturating_since(self.first_due + self.period * i as u32)
    }
}

/// Settings of a playout queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig<T> {
    /// Units (samples or encoded bytes) in one frame.
    pub frame_len: usize,
    /// Time between frames.
    pub period: Duration,
    /// Most units the queue holds; pushes beyond are refused.
    pub capacity: usize,
    /// Most frames released by one tick when catching up.
    pub max_burst: usize,
    /// The unit that sounds like silence (0 for PCM, 0xFF for mu-law).
    pub silence: T,
    /// Most frames allowed to wait ahead of the schedule. Audio that arrives in a burst
    /// (network jitter in front of an echo) beyond this depth counts as late and goes out in
    /// bounded bursts, instead of adding its length to every later frame's latency. `None`
    /// paces everything (text-to-speech output, a recorded turn).
    pub max_lead: Option<usize>,
}

/// An outbound audio queue with an absolute 20 ms clock. `T` is a sample or encoded byte;
/// `M` names marks.
pub struct Playout<T: Copy, M> {
    queue: HeapRb<T>,
    config: PlayoutConfig<T>,
    next_due: Option<Timestamp>,
    /// The queue ran dry: the next audio starts a new run.
    dry: bool,
    written: u64,
    played: u64,
    marks: VecDeque<(u64, M)>,
    events: VecDeque<PlayoutEvent<M>>,
}

impl<T: Copy, M> std::fmt::Debug for Playout<T, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playout")
            .field("queued", &self.queue.occupied_len())
            .field("next_due", &self.next_due)
            .field("marks", &self.marks.len())
            .finish()
    }
}

impl<T: Copy, M> Playout<T, M> {
    /// An empty queue.
    ///
    /// # Panics
    /// If `frame_len`, `capacity` or `max_burst` is zero: a configuration bug, not an input.
    pub fn new(config: PlayoutConfig<T>) -> Self {
        assert!(config.frame_len > 0 && config.capacity > 0 && config.max_burst > 0, "playout config must be non-zero");
        Playout {
            queue: HeapRb::new(config.capacity),
            config,
            next_due: None,
            dry: true,
            written: 0,
            played: 0,
            marks: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Queues `units`; returns how many fit (the rest are refused, never overwritten).
    pub fn push(&mut self, units: &[T]) -> usize {
        let n = self.queue.push_slice(units);
        self.written += n as u64;
        n
    }

    /// Pads the queued audio with silence to a whole frame, so that its tail plays.
    pub fn pad_to_frame(&mut self) {
        let partial = self.queue.occupied_len() % self.config.frame_len;
        if partial != 0 {
            let pad = self.config.frame_len - partial;
            let n = self.queue.push_iter(std::iter::repeat_n(self.config.silence, pad));
            self.written += n as u64;
        }
    }

    /// Places a mark after the audio queued so far.
    pub fn mark(&mut self, mark: M) {
        if self.written == self.played {
            self.events.push_back(PlayoutEvent::MarkPlayed(mark));
        } else {
            self.marks.push_back((self.written, mark));
        }
    }

    /// Drops all queued audio; pending marks are reported as cleared. Returns the units dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queue.clear();
        self.played = self.written;
        self.events.extend(self.marks.drain(..).map(|(_, m)| PlayoutEvent::MarkCleared(m)));
        dropped
    }

    /// Units waiting to play.
    pub fn queued(&self) -> usize {
        self.queue.occupied_len()
    }

    /// Room left, in units.
    pub fn room(&self) -> usize {
        self.queue.vacant_len()
    }

    /// When the next frame falls due, if one is queued.
    pub fn deadline(&self) -> Option<Timestamp> {
        if self.queue.occupied_len() < self.config.frame_len {
            return None;
        }
        Some(self.next_due.unwrap_or(Timestamp::ZERO))
    }

    /// Appends the frames due at `now` to `out`.
    pub fn tick(&mut self, now: Timestamp, out: &mut Vec<T>) -> Released {
        let period = self.config.period;
        let mut due = *self.next_due.get_or_insert(now);
        let ready = self.queue.occupied_len() / self.config.frame_len;
        if ready == 0 {
            self.dry = true;
        } else if self.dry && due > now {
            due = now; // a new run starts with its first frame
        }
        if let Some(lead) = self.config.max_lead
            && ready > lead
        {
            // Frames beyond the allowed lead are treated as overdue.
            let back = period * (ready - lead) as u32;
            due = Timestamp::from_micros(due.as_micros().saturating_sub(back.as_micros() as u64));
        }
        let none = Released { frames: 0, first_due: due, period };
        if now < due {
            return none;
        }
        let slots = (now.saturating_since(due).as_micros() / period.as_micros().max(1)) as usize + 1;
        let frames = slots.min(ready).min(self.config.max_burst);
        // Ran dry: the remaining due slots pass unused. Otherwise the schedule stays put.
        let advance = if frames < slots.min(self.config.max_burst) { slots } else { frames };
        self.next_due = Some(due + period * advance as u32);
        if frames == 0 {
            return none;
        }
        self.dry = ready == frames;
        let units = frames * self.config.frame_len;
        let start = out.len();
        out.resize(start + units, self.config.silence);
        let popped = self.queue.pop_slice(&mut out[start..]);
        debug_assert_eq!(popped, units, "whole frames were counted as ready");
        self.played += units as u64;
        while let Some((at, _)) = self.marks.front() {
            if *at > self.played {
                break;
            }
            if let Some((_, m)) = self.marks.pop_front() {
                self.events.push_back(PlayoutEvent::MarkPlayed(m));
            }
        }
        Released { frames, first_due: due, period }
    }

    /// The next mark report, if any.
    pub fn poll_event(&mut self) -> Option<PlayoutEvent<M>> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: Duration = Duration::from_millis(20);

    fn queue(max_burst: usize) -> Playout<u32, u32> {
        Playout::new(PlayoutConfig { frame_len: 2, period: P, capacity: 1024, max_burst, silence: 0, max_lead: None })
    }

    #[test]
    fn a_burst_beyond_the_lead_drains_instead_of_adding_latency() {
        let mut q: Playout<u32, u32> =
            Playout::new(PlayoutConfig { frame_len: 1, period: P, capacity: 64, max_burst: 3, silence: 0, max_lead: Some(2) });
        let mut out = Vec::new();
        q.push(&[0]);
        q.tick(ms(0), &mut out);
        q.push(&(1..11).collect::<Vec<_>>()); // ten frames at once
        let mut t = 20;
        for _ in 0..5 {
            q.push(&[100 + t as u32]); // and the steady stream goes on
            q.tick(ms(t), &mut out);
            t += 20;
        }
        assert!(q.queued() <= 3, "the queue is back within the lead: {}", q.queued());
        let mut paced = queue(3);
        paced.push(&(0..22).collect::<Vec<_>>());
        for t in 0..6 {
            paced.tick(ms(t * 20), &mut Vec::new());
        }
        assert_eq!(paced.queued(), 10, "without a lead everything waits its turn");
    }

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_millis(n)
    }

    #[test]
    fn releases_one_frame_per_period_on_time() {
        let mut q = queue(4);
        q.push(&[1, 2, 3, 4, 5, 6]);
        let mut out = Vec::new();
        assert_eq!(q.tick(ms(1000), &mut out).frames, 1);
        assert_eq!(q.tick(ms(1010), &mut out).frames, 0, "not yet due");
        assert_eq!(q.tick(ms(1020), &mut out).frames, 1);
        assert_eq!(q.tick(ms(1045), &mut out).frames, 1);
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_stall_is_caught_up_in_bounded_bursts_without_shifting_the_schedule() {
        let mut q = queue(3);
        q.push(&(0..40).collect::<Vec<_>>()); // 20 frames
        let mut out = Vec::new();
        q.tick(ms(0), &mut out);
        // Stalled for 200 ms: frames due at 20..=200 (10 of them) are late.
        let r = q.tick(ms(200), &mut out);
        assert_eq!((r.frames, r.first_due), (3, ms(20)));
        assert_eq!(r.lateness(ms(200), 0), Duration::from_millis(180));
        let r = q.tick(ms(220), &mut out);
        assert_eq!((r.frames, r.first_due), (3, ms(80)));
        let r = q.tick(ms(240), &mut out);
        assert_eq!((r.frames, r.first_due), (3, ms(140)));
        let r = q.tick(ms(260), &mut out);
        assert_eq!((r.frames, r.first_due), (3, ms(200)), "caught up: 200, 220, 240 were due");
        let r = q.tick(ms(280), &mut out);
        assert_eq!((r.frames, r.first_due), (2, ms(260)), "260 and 280 were due");
        let r = q.tick(ms(300), &mut out);
        assert_eq!((r.frames, r.first_due), (1, ms(300)), "back on the original 20 ms grid");
    }

    #[test]
    fn idle_slots_are_not_owed_and_a_new_run_starts_at_once() {
        let mut q = queue(5);
        let mut out = Vec::new();
        q.tick(ms(0), &mut out);
        q.tick(ms(500), &mut out);
        q.push(&[1, 2, 3, 4]);
        let r = q.tick(ms(510), &mut out);
        assert_eq!((r.frames, r.first_due), (1, ms(510)), "one frame: no burst for the idle time");
        assert_eq!(q.deadline(), Some(ms(530)), "the rest of the run on its own 20 ms grid");
        assert_eq!(q.tick(ms(525), &mut out).frames, 0);
        assert_eq!(q.tick(ms(530), &mut out).frames, 1);
        // An echo: one frame in, one out, each run starting when its frame arrives.
        q.push(&[5, 6]);
        assert_eq!(q.tick(ms(549), &mut out).frames, 1, "not held back to 550");
    }

    #[test]
    fn marks_report_played_or_cleared_once() {
        let mut q = queue(5);
        let mut out = Vec::new();
        q.mark(1); // nothing queued: played at once
        q.push(&[1, 2, 3, 4]);
        q.mark(2);
        q.push(&[5, 6]);
        q.mark(3);
        assert_eq!(q.poll_event(), Some(PlayoutEvent::MarkPlayed(1)));
        q.tick(ms(0), &mut out);
        assert_eq!(q.poll_event(), None, "only half of the audio before mark 2 played");
        q.tick(ms(20), &mut out);
        assert_eq!(q.poll_event(), Some(PlayoutEvent::MarkPlayed(2)));
        assert_eq!(q.clear(), 2);
        assert_eq!(q.poll_event(), Some(PlayoutEvent::MarkCleared(3)));
        assert_eq!(q.poll_event(), None);
    }

    #[test]
    fn full_queue_refuses_and_padding_completes_a_frame() {
        let mut q: Playout<u8, ()> =
            Playout::new(PlayoutConfig { frame_len: 4, period: P, capacity: 6, max_burst: 1, silence: 0xFF, max_lead: None });
        assert_eq!(q.push(&[1, 2, 3, 4, 5, 6, 7]), 6);
        let mut out = Vec::new();
        q.tick(ms(0), &mut out);
        q.pad_to_frame();
        q.tick(ms(20), &mut out);
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 0xFF, 0xFF]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        Clear,
        Mark,
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..12).prop_map(Op::Push),
            1 => Just(Op::Clear),
            1 => Just(Op::Mark),
            4 => (0u16..90).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Whatever the sequence of pushes, clears, marks and ticks: audio queued before a
        /// clear never comes out after it, audio comes out in order, no tick releases more
        /// than the burst or anything not yet due, and every mark is reported exactly once
        /// (after the remaining audio drains).
        #[test]
        fn clears_marks_and_schedule_hold(ops in proptest::collection::vec(op(), 1..200)) {
            let mut q = queue(3);
            let (mut tag, mut cleared_below, mut marks, mut now) = (0u32, 0u32, 0u32, 0u64);
            let mut last_out = 0u32;
            let mut reported = Vec::new();
            for op in ops {
                match op {
                    Op::Push(frames) => {
                        let units: Vec<u32> = (0..u32::from(frames) * 2).map(|i| tag + i + 1).collect();
                        tag += q.push(&units) as u32;
                    }
                    Op::Clear => { q.clear(); cleared_below = tag; }
                    Op::Mark => { q.mark(marks); marks += 1; }
                    Op::Tick(dt) => {
                        now += u64::from(dt);
                        let mut out = Vec::new();
                        let r = q.tick(ms(now), &mut out);
                        prop_assert!(r.frames <= 3);
                        prop_assert_eq!(out.len(), r.frames * 2);
                        if r.frames > 0 {
                            prop_assert!(r.first_due + P * (r.frames as u32 - 1) <= ms(now), "released early");
                        }
                        for u in out {
                            prop_assert!(u > cleared_below, "unit {} was queued before a clear", u);
                            prop_assert!(u > last_out, "out of order");
                            last_out = u;
                        }
                    }
                }
                while let Some(e) = q.poll_event() { reported.push(e); }
            }
            // Drain: everything left plays, then every mark has been reported once.
            let mut out = Vec::new();
            for _ in 0..1024 {
                if q.queued() < 2 { break; }
                now += 20;
                q.tick(ms(now), &mut out);
            }
            q.pad_to_frame();
            q.tick(ms(now + 20), &mut out);
            while let Some(e) = q.poll_event() { reported.push(e); }
            let mut ids: Vec<u32> = reported.iter().map(|e| match e {
                PlayoutEvent::MarkPlayed(m) | PlayoutEvent::MarkCleared(m) => *m,
            }).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, (0..marks).collect::<Vec<_>>());
        }
    }
}
