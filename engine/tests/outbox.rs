//! The engine and its result sink (the outbox): no new AI call is admitted while the sink
//! cannot write (503 `outbox_unavailable` before the upgrade, counted in `/metrics`), calls
//! already running still hand over their results, other bots are not affected; and an AI
//! call's recording streams into the sink while the call runs, in bounded chunks, instead of
//! being handed over whole at the end.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, engine, eventually, get, tempdir};
use cxb_engine::{Engine, ResultSink};
use cxb_codecs::wav::{RecordingSink, RecordingSummary};
use serde_json::{Value, json};

/// Chunks a test stream received: (first frame, interleaved bytes).
type Chunks = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// A result sink that can be full, and that streams recordings when asked to.
#[derive(Debug, Default)]
struct Sink {
    full: AtomicBool,
    streams: bool,
    chunks: Chunks,
    /// Results handed over whole (the recording's bytes, if any).
    whole: Mutex<Vec<(Value, Option<Vec<u8>>)>>,
    /// Results whose recording was streamed.
    streamed: Mutex<Vec<(Value, RecordingSummary)>>,
}

impl ResultSink for Sink {
    fn submit(&self, result: cxb_engine::results::CallResult, recording: Option<Vec<u8>>) -> flume::Receiver<Result<(), String>> {
        let result = serde_json::to_value(&result).expect("a result is JSON");
        self.whole.lock().expect("lock").push((result, recording));
        done()
    }

    fn writable(&self) -> bool {
        !self.full.load(Ordering::Relaxed)
    }

    fn recording_stream(&self) -> Option<Box<dyn RecordingSink>> {
        self.streams.then(|| Box::new(Stream { chunks: self.chunks.clone(), spare: None }) as Box<dyn RecordingSink>)
    }

    fn submit_streamed(&self, result: cxb_engine::results::CallResult, recording: Box<dyn RecordingSink>, summary: RecordingSummary) -> flume::Receiver<Result<(), String>> {
        let result = serde_json::to_value(&result).expect("a result is JSON");
        let recording: Box<dyn std::any::Any> = recording;
        assert!(recording.downcast::<Stream>().is_ok(), "the stream this sink made comes back");
        self.streamed.lock().expect("lock").push((result, summary));
        done()
    }
}

fn done() -> flume::Receiver<Result<(), String>> {
    let (tx, rx) = flume::bounded(1);
    let _ = tx.send(Ok(()));
    rx
}

/// A recording stream that keeps copies of its chunks and hands its buffer back at once.
#[derive(Debug)]
struct Stream {
    chunks: Chunks,
    spare: Option<Vec<u8>>,
}

impl RecordingSink for Stream {
    fn write(&mut self, frame: u64, data: Vec<u8>) {
        self.chunks.lock().expect("lock").push((frame, data.clone()));
        self.spare = Some(data);
    }

    fn spare(&mut self) -> Option<Vec<u8>> {
        Some(self.spare.take().unwrap_or_default())
    }
}

/// An engine serving one offline AI bot `ai` (unsigned inbound calls allowed) into `sink`.
fn ai_engine(recording: bool, sink: Arc<Sink>) -> Engine {
    let bots = tempdir();
    let bot = json!({
        "name": "Recorder",
        "org_id": "org-test",
        "stt": { "provider": "none" },
        "llm": { "provider": "script", "options": { "script": { "fallback": "ok" } } },
        "tts": { "provider": "espeak" },
        "recording": recording,
        "inbound": { "allow_unsigned": true },
    });
    std::fs::write(bots.join("ai.json"), bot.to_string()).expect("bot file");
    engine(move |c| {
        c.bots.dir = Some(bots);
        c.results = Some(sink);
    })
}

/// An upgrade request; the status, the head and the body of the answer (empty for 101).
fn upgrade(addr: SocketAddr, path: &str) -> (u16, String, String) {
    common::upgrade(addr, path, &[])
}

fn refused_for_outbox(addr: SocketAddr) -> u64 {
    let metrics = get(addr, "/metrics").1;
    let line = metrics.lines().find(|l| l.starts_with("cxb_rejected_outbox_total{worker=\"0\"}")).expect("the counter is exported");
    line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count")
}

#[test]
fn ai_calls_are_refused_while_the_outbox_cannot_write() {
    let sink = Arc::new(Sink::default());
    let e = ai_engine(false, sink.clone());
    let addr = e.local_addr();
    assert_eq!(refused_for_outbox(addr), 0);

    // A call admitted while the outbox could write.
    let mut running = connect(addr, "/ws/ai").expect("admitted");
    running.start();
    running.media(&common::mulaw_frame());

    sink.full.store(true, Ordering::Relaxed);
    let (status, head, body) = upgrade(addr, "/ws/ai");
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    let v: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(v["error"]["code"], "outbox_unavailable", "{body}");
    assert_eq!(upgrade(addr, "/exotel/ai").0, 503);
    assert_eq!(refused_for_outbox(addr), 2);
    assert_eq!(common::health(addr)["outbox_writable"], false, "/health says so");
    assert_eq!(upgrade(addr, "/ws/echo").0, 101, "a demo bot has no result to store");

    // The running call ends: its result is still handed over.
    running.stop();
    assert!(eventually(Duration::from_secs(10), || sink.whole.lock().expect("lock").len() == 1));
    assert_eq!(sink.whole.lock().expect("lock")[0].0["bot_id"], "ai");

    sink.full.store(false, Ordering::Relaxed);
    assert_eq!(common::health(addr)["outbox_writable"], true);
    assert_eq!(upgrade(addr, "/ws/ai").0, 101, "admitted again once the outbox can write");
    assert_eq!(refused_for_outbox(addr), 2);
    e.shutdown();
}

#[test]
fn a_recording_streams_into_the_sink_while_the_call_runs() {
    let sink = Arc::new(Sink { streams: true, ..Sink::default() });
    let e = ai_engine(true, sink.clone());
    let addr = e.local_addr();
    let mut call = connect(addr, "/ws/ai").expect("admitted");
    call.start();
    // 20 s of caller audio, each 20 ms frame one mu-law code (a level the test can find).
    let code = |i: usize| 0x10 + (i % 96) as u8;
    for i in 0..1000 {
        call.media(&[code(i); 160]);
    }
    // The call is still running, and most of it is with the sink already.
    assert!(
        eventually(Duration::from_secs(10), || sink.chunks.lock().expect("lock").iter().map(|(_, d)| d.len() / 4).sum::<usize>() >= 18 * 8_000),
        "chunks: {}",
        sink.chunks.lock().expect("lock").len()
    );
    assert!(sink.streamed.lock().expect("lock").is_empty() && sink.whole.lock().expect("lock").is_empty(), "nothing handed over yet");
    call.stop();
    assert!(eventually(Duration::from_secs(10), || sink.streamed.lock().expect("lock").len() == 1));
    assert!(sink.whole.lock().expect("lock").is_empty(), "the recording was not kept in memory and handed over whole");
    let (result, summary) = sink.streamed.lock().expect("lock")[0].clone();
    assert_eq!(result["bot_id"], "ai");
    assert!(summary.frames >= 1000 * 160, "{summary:?}");

    // The chunks: in order, at most half a second each, the caller's audio where it belongs.
    let chunks = sink.chunks.lock().expect("lock").clone();
    let mut left = Vec::new();
    for (frame, data) in &chunks {
        assert_eq!(*frame, left.len() as u64, "contiguous");
        assert!(data.len() <= 4_000 * 4, "{} bytes", data.len());
        left.extend(data.chunks_exact(4).map(|f| i16::from_le_bytes([f[0], f[1]])));
    }
    assert_eq!(left.len() as u64, summary.frames);
    for i in 0..990 {
        let want = cxb_codecs::g711::decode_mulaw(code(i));
        assert!(left[i * 160..(i + 1) * 160].iter().all(|&s| s == want), "caller frame {i}");
    }
    e.shutdown();
}
