//! The outbox's disk: recordings stream into it during the call in bounded memory, a crash
//! leaves at most a partial file that the next start removes, a disk-usage cap makes the
//! outbox say it cannot take new calls while still writing what it is given, and a failed
//! write is an error that loses no earlier entry.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{config, fake_api, files, outbox_dir, result, until};
use cxb_codecs::SampleRate;
use cxb_codecs::wav::{CHUNK, Channel, KEEP, RecordingWriter, WavInfo};
use cxb_outbox::{Outbox, OutboxError, RecordingStream};
use serde_json::Value;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Waits for the outbox's writer thread (not for time): a test makes audio far faster than a
/// call does, so before each write it lets the thread catch up, as it does at a call's pace (a
/// chunk every half second, written in well under a millisecond), until no more than `ahead`
/// chunks are in flight.
fn pace_to(w: &RecordingWriter<RecordingStream>, ahead: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.sink().in_flight() > ahead {
        assert!(Instant::now() < deadline, "the writer thread takes no chunks");
        std::thread::yield_now();
    }
}

fn pace(w: &RecordingWriter<RecordingStream>) {
    pace_to(w, RecordingStream::MAX_BUFFERS - 1);
}

fn partials(spool: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(spool.join("tmp"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.metadata().unwrap().len())
        })
        .collect();
    found.sort();
    found
}

fn caller_value(tick: u64) -> i16 {
    (tick % 20_000) as i16 + 1
}

fn bot_value(tick: u64) -> i16 {
    -((tick % 20_000) as i16) - 1
}

/// The bot talks in 5 s turns every other 5 s.
fn speaking(tick: u64) -> bool {
    (tick / 250) % 2 == 1
}

/// Ten minutes of a call, as the engine records it: 20 ms caller frames appended, the bot's
/// frames placed 300 ms behind (its playout clock against the caller's stream) with a few ms
/// of jitter. The file grows in `tmp/` during the call, the writer's memory stays bounded (the
/// figure is printed: `cargo test -p cxb-outbox --test disk -- --nocapture`), and the WAV
/// beside the entry holds every sample where it belongs.
#[test]
fn a_ten_minute_recording_streams_to_disk_in_bounded_memory() {
    let data = tempfile::tempdir().unwrap();
    let spool = outbox_dir(data.path());
    let (outbox, guard) = Outbox::start(config(data.path(), None)).unwrap();
    let mut w = RecordingWriter::with_sink(SampleRate::Hz8000, Duration::from_secs(3600), outbox.recording_stream());
    const TICKS: u64 = 30_000;
    let (mut peak, mut at_one_minute) = (0, 0);
    for tick in 0..TICKS {
        pace_to(&w, 0);
        w.append(Channel::Caller, &[caller_value(tick); 160]);
        if speaking(tick) {
            let jitter = if speaking(tick.wrapping_sub(1)) { tick % 7 } else { 3 };
            w.write(Channel::Bot, ms(tick * 20 + jitter) - ms(303), &[bot_value(tick); 160]);
        }
        peak = peak.max(w.memory());
        if tick == 3_000 {
            at_one_minute = peak;
            // One minute in, the recording is on disk already, all but the last 1.5 s at most.
            let deadline = Instant::now() + Duration::from_secs(20);
            while partials(&spool).first().is_none_or(|(_, len)| *len < 44 + 58 * 32_000) {
                assert!(Instant::now() < deadline, "{:?}", partials(&spool));
                std::thread::yield_now();
            }
            assert_eq!(partials(&spool).len(), 1);
        }
    }
    assert_eq!((w.dropped(), w.truncated()), (Duration::ZERO, false));
    assert_eq!(w.duration(), Duration::from_secs(600));
    let timeline = 2 * 2 * 8_000 * (KEEP + CHUNK).as_millis() as usize / 1000;
    let buffer = 4 * 8_000 * CHUNK.as_millis() as usize / 1000;
    eprintln!(
        "a 10-minute recording (8 kHz, two channels, 19.2 MB on disk): peak memory {peak} bytes \
         ({at_one_minute} after 1 minute): timeline {timeline} + {} buffers of {buffer}",
        (peak - timeline) / buffer
    );
    assert_eq!(peak, at_one_minute, "no growth after the first minute");
    assert_eq!(peak, timeline + buffer, "the timeline and one buffer, reused");

    outbox.submit_stream(serde_json::json!({"call_id": "long-1", "bot_id": "bot_1"}), w).wait().unwrap();
    assert!(partials(&spool).is_empty(), "moved beside its entry");
    let wav = std::fs::read(spool.join("00000000000000000001.wav")).unwrap();
    assert_eq!(wav.len(), 44 + 600 * 8_000 * 4);
    let info = WavInfo::parse(&wav).unwrap();
    assert_eq!((info.sample_rate, info.channels, info.frames()), (8_000, 2, 4_800_000));
    let (caller, bot) = (info.channel(&wav, 0), info.channel(&wav, 1));
    for tick in 0..TICKS {
        let at = tick as usize * 160;
        assert!(caller[at..at + 160].iter().all(|&s| s == caller_value(tick)), "caller at tick {tick}");
        if speaking(tick) {
            let at = at - 2_400;
            assert!(bot[at..at + 160].iter().all(|&s| s == bot_value(tick)), "bot at tick {tick}");
        }
    }
    let spoken = (0..TICKS).filter(|&t| speaking(t)).count() * 160;
    assert_eq!(bot.iter().filter(|&&s| s != 0).count(), spoken, "silence between turns");
    let entry: Value = serde_json::from_slice(&std::fs::read(spool.join("00000000000000000001.json")).unwrap()).unwrap();
    assert_eq!(entry["recording"], serde_json::json!({"duration_ms": 600_000, "channels": 2}));
    let s = outbox.stats();
    assert_eq!(s.bytes_used, wav.len() as u64 + std::fs::metadata(spool.join("00000000000000000001.json")).unwrap().len());
    assert_eq!((s.pending, s.write_errors, s.recording_bytes_dropped), (1, 0, 0));
    drop(guard);
}

/// The engine dies mid-call: its recording's partial file stays (nothing submitted it, nothing
/// abandoned it) and the next start removes it. A stream dropped without a submission (its call
/// never got going) is removed at once.
#[test]
fn a_crash_mid_call_leaves_only_a_partial_file_that_the_next_start_removes() {
    let data = tempfile::tempdir().unwrap();
    let spool = outbox_dir(data.path());
    let (outbox, guard) = Outbox::start(config(data.path(), None)).unwrap();
    let mut w = RecordingWriter::with_sink(SampleRate::Hz8000, Duration::from_secs(60), outbox.recording_stream());
    for _ in 0..250 {
        pace(&w);
        w.append(Channel::Caller, &[7; 160]);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while partials(&spool).first().is_none_or(|(_, len)| *len < 44 + 3 * 32_000) {
        assert!(Instant::now() < deadline, "{:?}", partials(&spool));
        std::thread::yield_now();
    }
    std::mem::forget(w);
    drop(guard);
    assert_eq!(partials(&spool).len(), 1);

    let (outbox, guard) = Outbox::start(config(data.path(), None)).unwrap();
    assert!(partials(&spool).is_empty(), "removed at start");
    let s = outbox.stats();
    assert_eq!((s.bytes_used, s.pending), (0, 0));

    let mut w = RecordingWriter::with_sink(SampleRate::Hz8000, Duration::from_secs(60), outbox.recording_stream());
    for _ in 0..250 {
        pace(&w);
        w.append(Channel::Caller, &[7; 160]);
    }
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !partials(&spool).is_empty() || outbox.stats().bytes_used != 0 {
        assert!(Instant::now() < deadline, "{:?}", partials(&spool));
        std::thread::yield_now();
    }
    drop(guard);
}

/// A cap of 4 KiB: once the directory holds that much the outbox says it cannot take new calls
/// (the engine then refuses them), yet what calls already running submit is still written:
/// their results, and their recordings up to an eighth over the cap (the rest reads back as
/// silence). Deliveries free the space and the outbox takes calls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_new_calls_are_refused_but_running_ones_are_still_written() {
    let data = tempfile::tempdir().unwrap();
    let spool = outbox_dir(data.path());
    let mut config = config(data.path(), None);
    config.max_bytes = 4096;
    let (outbox, guard) = Outbox::start(config.clone()).unwrap();
    assert!(outbox.writable() && outbox.stats().writable);
    let mut n = 0;
    while outbox.writable() {
        outbox.submit(result(&format!("call-{n}"), "bot_1"), None).await.unwrap();
        n += 1;
        assert!(n < 100);
    }
    let s = outbox.stats();
    assert!(!s.writable && s.bytes_used >= 4096 && s.bytes_used < 4096 + 1024, "{s:?}");
    assert_eq!(s.write_errors, 0);

    // A call admitted before the cap was reached ends now, with 2 s of recording.
    let mut w = RecordingWriter::with_sink(SampleRate::Hz8000, Duration::from_secs(60), outbox.recording_stream());
    for _ in 0..100 {
        pace(&w);
        w.append(Channel::Caller, &[9; 160]);
    }
    outbox.submit_stream(result("running", "bot_1"), w).await.unwrap();
    let s = outbox.stats();
    assert!(s.recording_bytes_dropped >= 32_000, "{s:?}");
    assert_eq!(s.pending, n + 1);
    let wav = std::fs::read(spool.join(format!("{:020}.wav", n + 1))).unwrap();
    assert_eq!(wav.len(), 44 + 2 * 32_000, "the whole length, silent where dropped");
    drop(guard);

    let (api, state) = fake_api().await;
    state.lock().unwrap().down = true;
    config.api = Some(api);
    let (outbox, guard) = Outbox::start(config).unwrap();
    assert!(!outbox.writable(), "counted from the disk at start");
    state.lock().unwrap().down = false;
    let s = until("delivery", || outbox.stats(), |s| s.pending == 0).await;
    assert!(s.writable && s.bytes_used == 0, "{s:?}");
    assert_eq!(state.lock().unwrap().stored.len() as u64, n + 1);
    drop(guard);
}

/// Writes that fail (here a directory where a file must go, or a file where `tmp/` must be:
/// as a full disk would, they fail) are reported and counted, the outbox takes no new calls
/// until a write succeeds again, and nothing written before is lost. A recording that cannot
/// be written costs the recording, not the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_errors_and_lose_no_earlier_entry() {
    let data = tempfile::tempdir().unwrap();
    let spool = outbox_dir(data.path());
    let config = config(data.path(), None);
    let (outbox, guard) = Outbox::start(config.clone()).unwrap();
    outbox.submit(result("kept-1", "bot_1"), None).await.unwrap();
    let first = std::fs::read(spool.join("00000000000000000001.json")).unwrap();

    // Recordings cannot be written: `tmp/` is a file.
    std::fs::remove_dir(spool.join("tmp")).unwrap();
    std::fs::write(spool.join("tmp"), b"in the way").unwrap();
    let mut w = RecordingWriter::with_sink(SampleRate::Hz8000, Duration::from_secs(60), outbox.recording_stream());
    for _ in 0..100 {
        pace(&w);
        w.append(Channel::Caller, &[9; 160]);
    }
    outbox.submit_stream(result("rec-2", "bot_1"), w).await.unwrap();
    let entry: Value = serde_json::from_slice(&std::fs::read(spool.join("00000000000000000002.json")).unwrap()).unwrap();
    assert_eq!(entry["result"]["call_id"], "rec-2");
    assert!(entry.get("recording").is_none(), "kept without its recording: {entry}");
    assert!(files(&spool, ".wav").is_empty());
    let s = outbox.stats();
    assert_eq!(s.write_errors, 1, "{s:?}");
    assert!(s.recording_bytes_dropped >= 32_000, "{s:?}");

    // The next entry cannot be written either: a directory is where its temporary file goes.
    let used = outbox.stats().bytes_used;
    std::fs::create_dir(spool.join("00000000000000000003.json.tmp")).unwrap();
    let failed = outbox.submit(result("lost-3", "bot_1"), Some(common_wav())).await;
    assert!(matches!(failed, Err(OutboxError::Io(_))), "{failed:?}");
    let s = outbox.stats();
    assert_eq!((s.write_errors, s.pending, s.bytes_used), (2, 2, used), "{s:?}");
    assert!(!s.writable && !outbox.writable(), "and the probe fails while tmp/ is a file");
    assert_eq!(std::fs::read(spool.join("00000000000000000001.json")).unwrap(), first, "the earlier entry is intact");
    assert!(files(&spool, ".wav").is_empty(), "no debris of the failed entry");

    // The disk takes writes again: the next probe says so.
    std::fs::remove_dir(spool.join("00000000000000000003.json.tmp")).unwrap();
    std::fs::remove_file(spool.join("tmp")).unwrap();
    std::fs::create_dir(spool.join("tmp")).unwrap();
    until("writable again", || outbox.stats(), |s| s.writable).await;
    outbox.submit(result("kept-4", "bot_1"), None).await.unwrap();
    drop(guard);

    let (api, state) = fake_api().await;
    let mut config = config;
    config.api = Some(api);
    let (outbox, guard) = Outbox::start(config).unwrap();
    until("delivery", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!(state.lock().unwrap().stored, ["kept-1", "rec-2", "kept-4"]);
    drop(guard);
}

/// One second of a WAV file.
fn common_wav() -> Vec<u8> {
    let mut w = RecordingWriter::new(SampleRate::Hz8000, Duration::from_secs(2));
    w.append(Channel::Caller, &[1000; 8000]);
    w.finish()
}
