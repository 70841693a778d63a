//! The slot registry: one record per call slot in a shared-memory segment, so that other
//! processes on the host (`cxb core status`, later `cxb api` and `cxb dialler`) see every
//! slot's state without asking the engine and without locks.
//!
//! # Layout (version 1)
//!
//! The segment is a file (by default in `/dev/shm`) of little-endian 64-bit words, each
//! accessed only as an `AtomicU64`:
//!
//! | words | what |
//! |---|---|
//! | 0 | magic `b"CXBSLOT1"` |
//! | 1 | layout version (1) |
//! | 2, 3 | workers, slots per worker |
//! | 4 | words per record (16) |
//! | 5 | engine process id |
//! | 6 | engine start, Unix ms |
//! | 7 | heartbeat, Unix ms (every second; a stale heartbeat means the engine is gone) |
//! | 8..16 | reserved |
//! | 16 + 8w .. | worker `w`: driver (1 io_uring, 2 epoll), draining, live calls, free slots, 4 reserved |
//! | then | `workers x slots` records of 16 words |
//!
//! A record: 0 sequence (odd while being written), 1 state (0 free, 1 reserved, 2 active,
//! 3 draining), 2 start (Unix ms), 3 reservation expiry (Unix ms), 4 frames in, 5 frames out,
//! 6..10 call id (32 bytes, NUL-padded), 10..14 bot id (32 bytes), 14 reservation token,
//! 15 reserved.
//!
//! Each record is written only by the worker that owns the slot, as a seqlock: the sequence
//! goes odd, the fields are stored, the sequence goes even. Readers retry while it is odd or
//! changed. Frame counters are single words written outside the seqlock. A reader that sees
//! another magic or version refuses the segment; new fields go into reserved words and bump
//! the version only when an old reader would misread them.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use memmap2::{MmapOptions, MmapRaw};

const MAGIC: u64 = u64::from_le_bytes(*b"CXBSLOT1");
const VERSION: u64 = 1;
const HEADER_WORDS: usize = 16;
const WORKER_WORDS: usize = 8;
const RECORD_WORDS: usize = 16;
const ID_WORDS: usize = 4;

/// A slot's state as other processes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Free for a call.
    Free,
    /// Held for a call that is coming (expires on its own).
    Reserved,
    /// Carrying a call.
    Active,
    /// Carrying a call on a worker that takes no new ones.
    Draining,
}

impl SlotState {
    fn from_word(w: u64) -> SlotState {
        match w {
            1 => SlotState::Reserved,
            2 => SlotState::Active,
            3 => SlotState::Draining,
            _ => SlotState::Free,
        }
    }

    fn word(self) -> u64 {
        match self {
            SlotState::Free => 0,
            SlotState::Reserved => 1,
            SlotState::Active => 2,
            SlotState::Draining => 3,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Reserved => "reserved",
            SlotState::Active => "active",
            SlotState::Draining => "draining",
        }
    }
}

/// One slot record, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRecord {
    /// Its state.
    pub state: SlotState,
    /// The call's start (or the reservation's), Unix ms.
    pub started_ms: u64,
    /// When a reservation lapses, Unix ms.
    pub reserved_until_ms: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// The call id.
    pub call_id: String,
    /// The bot id.
    pub bot_id: String,
}

/// What a worker writes into one of its slot records.
#[derive(Debug, Clone, Copy)]
pub struct SlotUpdate<'a> {
    /// The new state.
    pub state: SlotState,
    /// When the call (or reservation) began, Unix ms.
    pub started_ms: u64,
    /// When a reservation lapses, Unix ms (0 otherwise).
    pub until_ms: u64,
    /// The call id (truncated to 32 bytes).
    pub call_id: &'a str,
    /// The bot id (truncated to 32 bytes).
    pub bot_id: &'a str,
}

impl SlotUpdate<'_> {
    /// A free slot.
    pub const FREE: SlotUpdate<'static> = SlotUpdate { state: SlotState::Free, started_ms: 0, until_ms: 0, call_id: "", bot_id: "" };
}

/// A worker's summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerRecord {
    /// 1 for io_uring, 2 for epoll.
    pub driver: u64,
    /// True while draining.
    pub draining: bool,
    /// Live calls.
    pub live: u64,
    /// Free slots.
    pub free: u64,
}

/// The segment's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Worker threads.
    pub workers: usize,
    /// Slots per worker.
    pub slots_per_worker: usize,
    /// The engine's process id.
    pub pid: u64,
    /// When the engine started, Unix ms.
    pub started_ms: u64,
    /// The engine's last heartbeat, Unix ms.
    pub heartbeat_ms: u64,
}

/// A mapped registry segment.
#[derive(Debug)]
pub struct Segment {
    map: MmapRaw,
    words: usize,
    workers: usize,
    slots: usize,
}

impl Segment {
    fn words_for(workers: usize, slots: usize) -> usize {
        HEADER_WORDS + workers * WORKER_WORDS + workers * slots * RECORD_WORDS
    }

    /// Creates (or replaces) the segment at `path`, all slots free.
    pub fn create(path: &Path, workers: usize, slots_per_worker: usize, pid: u64, now_ms: u64) -> io::Result<Segment> {
        let words = Self::words_for(workers, slots_per_worker);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len((words * 8) as u64)?;
        let map = MmapOptions::new().map_raw(&file)?;
        let seg = Segment { map, words, workers, slots: slots_per_worker };
        for (i, v) in [MAGIC, VERSION, workers as u64, slots_per_worker as u64, RECORD_WORDS as u64, pid, now_ms, now_ms]
            .into_iter()
            .enumerate()
        {
            seg.word(i).store(v, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        Ok(seg)
    }

    /// Maps an existing segment for reading, checking its magic and version.
    pub fn open(path: &Path) -> io::Result<Segment> {
        let file = OpenOptions::new().read(true).open(path)?;
        let len = file.metadata()?.len() as usize;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
        if len < HEADER_WORDS * 8 {
            return Err(bad("too short to be a slot registry"));
        }
        let map = MmapOptions::new().map_raw_read_only(&file)?;
        let mut seg = Segment { map, words: len / 8, workers: 0, slots: 0 };
        if seg.word(0).load(Ordering::Acquire) != MAGIC {
            return Err(bad("not a CX Bridge slot registry"));
        }
        let version = seg.word(1).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(bad(&format!("layout version {version}, this build reads {VERSION}")));
        }
        let (workers, slots) = (seg.word(2).load(Ordering::Relaxed) as usize, seg.word(3).load(Ordering::Relaxed) as usize);
        if seg.word(4).load(Ordering::Relaxed) as usize != RECORD_WORDS
            || workers.checked_mul(slots).is_none_or(|_| Self::words_for(workers, slots) > seg.words)
        {
            return Err(bad("header does not match the file size"));
        }
        (seg.workers, seg.slots) = (workers, slots);
        Ok(seg)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words, "registry word {i} out of range");
        let base = self.map.as_ptr().cast::<AtomicU64>();
        #[allow(unsafe_code)]
        // SAFETY: the mapping is page-aligned and `words * 8` bytes long, so word `i` is an
        // aligned, in-bounds u64 that lives as long as `self.map`; `AtomicU64` has the layout
        // of `u64` and every bit pattern is valid; the segment is only ever accessed through
        // atomics (by us and by other processes), so there are no non-atomic data races.
        unsafe {
            &*base.add(i)
        }
    }

    fn worker_word(&self, worker: usize, field: usize) -> &AtomicU64 {
        self.word(HEADER_WORDS + worker * WORKER_WORDS + field)
    }

    fn record_word(&self, worker: usize, slot: usize, field: usize) -> &AtomicU64 {
        let base = HEADER_WORDS + self.workers * WORKER_WORDS + (worker * self.slots + slot) * RECORD_WORDS;
        self.word(base + field)
    }

    /// The header.
    pub fn header(&self) -> Header {
        Header {
            workers: self.workers,
            slots_per_worker: self.slots,
            pid: self.word(5).load(Ordering::Relaxed),
            started_ms: self.word(6).load(Ordering::Relaxed),
            heartbeat_ms: self.word(7).load(Ordering::Relaxed),
        }
    }

    /// Updates the heartbeat.
    pub fn beat(&self, now_ms: u64) {
        self.word(7).store(now_ms, Ordering::Relaxed);
    }

    /// Publishes a worker's summary (by that worker).
    pub fn write_worker(&self, worker: usize, w: WorkerRecord) {
        self.worker_word(worker, 0).store(w.driver, Ordering::Relaxed);
        self.worker_word(worker, 1).store(u64::from(w.draining), Ordering::Relaxed);
        self.worker_word(worker, 2).store(w.live, Ordering::Relaxed);
        self.worker_word(worker, 3).store(w.free, Ordering::Relaxed);
    }

    /// Reads a worker's summary.
    pub fn worker(&self, worker: usize) -> WorkerRecord {
        WorkerRecord {
            driver: self.worker_word(worker, 0).load(Ordering::Relaxed),
            draining: self.worker_word(worker, 1).load(Ordering::Relaxed) != 0,
            live: self.worker_word(worker, 2).load(Ordering::Relaxed),
            free: self.worker_word(worker, 3).load(Ordering::Relaxed),
        }
    }

    /// Writes a slot record (only by the slot's worker).
    pub fn write_slot(&self, worker: usize, slot: usize, update: SlotUpdate<'_>) {
        let SlotUpdate { state, started_ms, until_ms, call_id, bot_id } = update;
        let seq = self.record_word(worker, slot, 0);
        seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.record_word(worker, slot, 1).store(state.word(), Ordering::Relaxed);
        self.record_word(worker, slot, 2).store(started_ms, Ordering::Relaxed);
        self.record_word(worker, slot, 3).store(until_ms, Ordering::Relaxed);
        for (field, text) in [(6, call_id), (10, bot_id)] {
            let mut bytes = [0u8; ID_WORDS * 8];
            let n = text.len().min(bytes.len());
            bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
            for (i, chunk) in bytes.chunks_exact(8).enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                self.record_word(worker, slot, field + i).store(u64::from_le_bytes(w), Ordering::Relaxed);
            }
        }
        seq.fetch_add(1, Ordering::Release);
    }

    /// Sets a slot's state alone (by the slot's worker), keeping its other fields.
    pub fn set_state(&self, worker: usize, slot: usize, state: SlotState) {
        let seq = self.record_word(worker, slot, 0);
        seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.record_word(worker, slot, 1).store(state.word(), Ordering::Relaxed);
        seq.fetch_add(1, Ordering::Release);
    }

    /// Publishes a slot's frame counters (by the slot's worker).
    pub fn count_frames(&self, worker: usize, slot: usize, frames_in: u64, frames_out: u64) {
        self.record_word(worker, slot, 4).store(frames_in, Ordering::Relaxed);
        self.record_word(worker, slot, 5).store(frames_out, Ordering::Relaxed);
    }

    /// Reads a slot record consistently, retrying while its worker is writing it.
    pub fn slot(&self, worker: usize, slot: usize) -> SlotRecord {
        loop {
            let before = self.record_word(worker, slot, 0).load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let w = |f| self.record_word(worker, slot, f).load(Ordering::Relaxed);
            let id = |f: usize| {
                let bytes: Vec<u8> = (0..ID_WORDS).flat_map(|i| w(f + i).to_le_bytes()).collect();
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                String::from_utf8_lossy(&bytes[..end]).into_owned()
            };
            let record = SlotRecord {
                state: SlotState::from_word(w(1)),
                started_ms: w(2),
                reserved_until_ms: w(3),
                frames_in: w(4),
                frames_out: w(5),
                call_id: id(6),
                bot_id: id(10),
            };
            fence(Ordering::Acquire);
            if self.record_word(worker, slot, 0).load(Ordering::Relaxed) == before {
                return record;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_mapping_reads_what_the_first_wrote() {
        let path = std::env::temp_dir().join(format!("cxb-registry-test-{}", std::process::id()));
        let writer = Segment::create(&path, 2, 3, 42, 1_000).expect("create");
        writer.write_slot(1, 2, SlotUpdate { state: SlotState::Active, started_ms: 1_500, until_ms: 0, call_id: "call-abc", bot_id: "echo" });
        writer.count_frames(1, 2, 10, 9);
        writer.write_worker(1, WorkerRecord { driver: 1, draining: false, live: 1, free: 2 });
        let reader = Segment::open(&path).expect("open");
        assert_eq!(reader.header().workers, 2);
        assert_eq!(reader.header().pid, 42);
        let r = reader.slot(1, 2);
        assert_eq!((r.state, r.call_id.as_str(), r.bot_id.as_str(), r.frames_in, r.frames_out), (SlotState::Active, "call-abc", "echo", 10, 9));
        assert_eq!(reader.slot(0, 0).state, SlotState::Free);
        assert_eq!(reader.worker(1).free, 2);
        std::fs::write(&path, b"not a registry, just some bytes that are long enough to be read.........................................................................................").expect("write");
        assert!(Segment::open(&path).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
