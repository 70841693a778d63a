//! Inbound jitter handling for transports that number their frames.
//!
//! Frames are put back in sequence order, duplicates are dropped, and a missing frame is
//! given up on (played as silence, counted lost) once `depth` newer frames are waiting behind
//! it. A frame that arrives after its turn has passed is counted late and dropped. A jump of
//! more than `window` frames (a stream restart) resynchronises instead of inventing seconds
//! of silence. Buffers are recycled, so a steady stream does not allocate.

use std::collections::VecDeque;

/// Counters kept by the jitter buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Frames accepted into the buffer.
    pub received: u64,
    /// Frames that arrived after their turn (or after being given up on), dropped.
    pub late: u64,
    /// Frames received twice, dropped.
    pub duplicate: u64,
    /// Frames never received, played as silence (or skipped by a resync).
    pub lost: u64,
    /// Times the stream jumped beyond the window and the buffer resynchronised.
    pub resyncs: u64,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Buffered for playing in order.
    Accepted,
    /// Its turn had passed; dropped.
    Late,
    /// Already buffered; dropped.
    Duplicate,
}

/// A frame taken out of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Popped {
    /// Its sequence number.
    pub seq: u64,
    /// True when the frame never arrived and silence stands in for it.
    pub lost: bool,
}

/// Reorders numbered frames of units `T`.
#[derive(Debug)]
pub struct JitterBuffer<T: Copy> {
    depth: usize,
    window: usize,
    silence: T,
    /// Frame `next + i` sits at index `i`.
    slots: VecDeque<Option<Vec<T>>>,
    /// Frames already in order after a resync, before `next`.
    ready: VecDeque<(u64, Vec<T>)>,
    next: Option<u64>,
    frame_len: usize,
    spare: Vec<Vec<T>>,
    stats: JitterStats,
}

impl<T: Copy> JitterBuffer<T> {
    /// A buffer that waits for `depth` newer frames before giving up on a missing one, and
    /// resynchronises on jumps of `window` frames or more. `silence` fills lost frames.
    pub fn new(depth: usize, window: usize, silence: T) -> Self {
        let window = window.max(depth + 1);
        JitterBuffer {
            depth,
            window,
            silence,
            slots: VecDeque::with_capacity(window),
            ready: VecDeque::new(),
            next: None,
            frame_len: 0,
            spare: Vec::new(),
            stats: JitterStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    fn buffer_of(&mut self, units: &[T]) -> Vec<T> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(units);
        buf
    }

    /// Offers frame `seq` carrying `units`.
    pub fn push(&mut self, seq: u64, units: &[T]) -> Arrival {
        let next = *self.next.get_or_insert(seq);
        if seq < next {
            self.stats.late += 1;
            return Arrival::Late;
        }
        let mut offset = (seq - next) as usize;
        if offset >= self.window {
            self.resync(seq);
            offset = 0;
        }
        if self.slots.len() <= offset {
            self.slots.resize_with(offset + 1, || None);
        }
        if self.slots[offset].is_some() {
            self.stats.duplicate += 1;
            return Arrival::Duplicate;
        }
        self.frame_len = units.len();
        let buf = self.buffer_of(units);
        self.slots[offset] = Some(buf);
        self.stats.received += 1;
        Arrival::Accepted
    }

    /// Moves what is buffered to `ready` in order, counts the holes lost, and restarts at `seq`.
    fn resync(&mut self, seq: u64) {
        self.stats.resyncs += 1;
        let base = self.next.unwrap_or(seq);
        let skipped = seq.saturating_sub(base + self.slots.len() as u64);
        for (i, slot) in self.slots.drain(..).enumerate() {
            match slot {
                Some(buf) => self.ready.push_back((base + i as u64, buf)),
                None => self.stats.lost += 1,
            }
        }
        self.stats.lost += skipped;
        self.next = Some(seq);
    }

    /// Appends the next frame in order to `out`, if it is here or has been given up on.
    pub fn pop(&mut self, out: &mut Vec<T>) -> Option<Popped> {
        if let Some((seq, buf)) = self.ready.pop_front() {
            out.extend_from_slice(&buf);
            self.spare.push(buf);
            return Some(Popped { seq, lost: false });
        }
        let seq = self.next?;
        let waiting_behind = self.slots.len().checked_sub(1)?;
        match self.slots.front_mut()?.take() {
            Some(buf) => {
                out.extend_from_slice(&buf);
                self.spare.push(buf);
                self.slots.pop_front();
                self.next = Some(seq + 1);
                Some(Popped { seq, lost: false })
            }
            None if waiting_behind >= self.depth.max(1) => {
                out.extend(std::iter::repeat_n(self.silence, self.frame_len));
                self.slots.pop_front();
                self.next = Some(seq + 1);
                self.stats.lost += 1;
                Some(Popped { seq, lost: true })
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(jb: &mut JitterBuffer<u8>) -> Vec<(u64, bool, Vec<u8>)> {
        let mut got = Vec::new();
        loop {
            let mut out = Vec::new();
            match jb.pop(&mut out) {
                Some(p) => got.push((p.seq, p.lost, out)),
                None => return got,
            }
        }
    }

    #[test]
    fn in_order_frames_flow_straight_through() {
        let mut jb = JitterBuffer::new(3, 16, 0xFF);
        for seq in 1..=3 {
            assert_eq!(jb.push(seq, &[seq as u8; 2]), Arrival::Accepted);
            assert_eq!(drain(&mut jb), vec![(seq, false, vec![seq as u8; 2])]);
        }
    }

    #[test]
    fn reorders_and_drops_duplicates() {
        let mut jb = JitterBuffer::new(3, 16, 0xFF);
        jb.push(1, &[1]);
        jb.push(3, &[3]);
        assert_eq!(jb.push(3, &[3]), Arrival::Duplicate);
        let first = drain(&mut jb);
        assert_eq!(first, vec![(1, false, vec![1])], "2 is still awaited");
        jb.push(2, &[2]);
        assert_eq!(drain(&mut jb), vec![(2, false, vec![2]), (3, false, vec![3])]);
        assert_eq!(jb.stats().duplicate, 1);
    }

    #[test]
    fn gaps_become_silence_then_stragglers_are_late() {
        let mut jb = JitterBuffer::new(2, 16, 0xFF);
        jb.push(10, &[1, 1]);
        jb.push(12, &[3, 3]);
        assert_eq!(drain(&mut jb), vec![(10, false, vec![1, 1])]);
        jb.push(13, &[4, 4]);
        assert_eq!(drain(&mut jb), vec![(11, true, vec![0xFF, 0xFF]), (12, false, vec![3, 3]), (13, false, vec![4, 4])]);
        assert_eq!(jb.push(11, &[2, 2]), Arrival::Late);
        assert_eq!(jb.stats(), JitterStats { received: 3, late: 1, duplicate: 0, lost: 1, resyncs: 0 });
    }

    #[test]
    fn a_big_jump_resyncs_without_inventing_silence() {
        let mut jb = JitterBuffer::new(2, 8, 0);
        jb.push(1, &[1]);
        jb.push(3, &[3]);
        jb.push(1000, &[9]);
        let got: Vec<u64> = drain(&mut jb).into_iter().map(|(s, _, _)| s).collect();
        assert_eq!(got, vec![1, 3, 1000]);
        assert_eq!(jb.stats().resyncs, 1);
        assert_eq!(jb.stats().lost, 1 + (1000 - 4));
    }

    proptest! {
        /// Any arrival order: frames come out in strictly increasing order, each at most once,
        /// and every accepted frame comes out unless it was given up on first.
        #[test]
        fn output_is_ordered_and_unique(arrivals in proptest::collection::vec(0u64..40, 1..120)) {
            let mut jb = JitterBuffer::new(3, 64, 0u8);
            let mut out_seqs = Vec::new();
            for seq in &arrivals {
                jb.push(*seq, &[*seq as u8]);
                out_seqs.extend(drain(&mut jb).into_iter().filter(|(_, lost, _)| !lost).map(|(s, _, d)| {
                    assert_eq!(d, vec![s as u8], "frame carries its own payload");
                    s
                }));
            }
            prop_assert!(out_seqs.windows(2).all(|w| w[0] < w[1]));
            let s = jb.stats();
            prop_assert_eq!(s.received + s.late + s.duplicate, arrivals.len() as u64);
        }
    }
}
