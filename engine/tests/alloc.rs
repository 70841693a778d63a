//! The steady-state media path does not allocate: a thousand 20 ms ticks of an echo call,
//! from the WebSocket bytes a carrier sends to the bytes the engine writes back, and of an AI
//! call hearing its caller (recording, speech-to-text), counted by a global allocator that
//! counts this thread's allocations.

// A counting allocator is the one way to see allocations; it only forwards to the system's.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cxb_engine::bots::BotKind;
use cxb_engine::call::{Call, CallConfig};
use cxb_engine::metrics::WorkerMetrics;
use cxb_engine::protocol::Protocol;
use cxb_engine::ws::{Incoming, WsSocket};
use cxb_media::Timestamp;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// This thread's count: tests run on threads of their own, side by side.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get) - before
}

/// 20 ms of a 1 kHz tone in mu-law, as a carrier's `media` message.
fn media(n: u64) -> String {
    let frame: Vec<u8> = (0..160).map(|i| cxb_codecs::g711::encode_mulaw(((f64::from(i) * std::f64::consts::PI / 4.0).sin() * 8000.0) as i16)).collect();
    format!(
        r#"{{"event":"media","sequenceNumber":"{}","streamSid":"MZ1","media":{{"track":"inbound","chunk":"{n}","timestamp":"{}","payload":"{}"}}}}"#,
        n + 1,
        n * 20,
        STANDARD.encode(frame)
    )
}

/// What a carrier sends, framed and masked beforehand: `start`, then `n` media messages.
fn carrier_wire(n: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut client = WsSocket::client();
    let mut wire = Vec::new();
    for i in 0..n {
        client.send_text(&media(i));
        wire.push(std::mem::take(client.output()));
    }
    client.send_text(r#"{"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#);
    (std::mem::take(client.output()), wire)
}

/// One 20 ms tick at `now`: the carrier's bytes `bytes` in, what is due run, what the call
/// sends framed onto the server's socket (and dropped); returns the messages sent.
fn tick(call: &mut Call, server: &mut WsSocket, bytes: Option<&Vec<u8>>, now: Timestamp, metrics: &WorkerMetrics) -> u64 {
    if let Some(bytes) = bytes {
        server.feed(bytes);
    }
    while let Ok(Some(Incoming::Text(text))) = server.read() {
        call.on_text(now, text, metrics).expect("a valid message");
    }
    if call.deadline().is_some_and(|at| at <= now) {
        call.on_timeout(now, metrics);
    }
    let mut sent = 0;
    while let Some(msg) = call.poll_transmit() {
        server.send_text(&msg);
        call.recycle(msg);
        sent += 1;
    }
    server.output().clear();
    sent
}

/// Lets the runtime's other tasks (the providers') run once.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

#[test]
fn a_thousand_steady_ai_ticks_allocate_nothing() {
    const WARM: u64 = 200;
    const TICKS: u64 = 1_000;
    let runtime = compio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        // An offline bot that listens; its greeting is empty and it does not re-prompt, so the
        // caller's steady speech is all that happens. (Its recording would stream to the
        // outbox in a running engine; kept in memory here, the file would grow.)
        let bot = serde_json::json!({
            "id": "listener",
            "greeting": "",
            "stt": { "provider": "none" },
            "llm": { "provider": "script", "options": { "script": { "fallback": "ok" } } },
            "tts": { "provider": "espeak" },
            "recording": false,
            "max_call_seconds": 60,
            "idle": { "reprompt_after_seconds": 3600 },
        });
        let bot = cxb_pipeline::config::BotConfig::from_json(bot.to_string().as_bytes()).expect("a bot");
        let agent = cxb_engine::agent::Agent::new(std::rc::Rc::new(bot), None, None, Timestamp::ZERO, 0).expect("an agent");
        let metrics = WorkerMetrics::default();
        let mut call = Call::with_agent(CallConfig::new(Protocol::Twilio, BotKind::Agent), agent);
        let (start, wire) = carrier_wire(WARM + TICKS);
        let mut server = WsSocket::new();
        server.feed(&start);
        let mut now = Timestamp::ZERO;
        tick(&mut call, &mut server, None, now, &metrics);
        for bytes in &wire[..WARM as usize] {
            now += Duration::from_millis(20);
            tick(&mut call, &mut server, Some(bytes), now, &metrics);
            yield_now().await;
        }
        let mut counted = 0;
        for bytes in &wire[WARM as usize..] {
            now += Duration::from_millis(20);
            counted += allocations(|| {
                tick(&mut call, &mut server, Some(bytes), now, &metrics);
            });
            // The speech-to-text task takes the audio (not counted: it is the provider's).
            yield_now().await;
        }
        assert_eq!(call.stats().frames_in, WARM + TICKS, "every frame was heard");
        assert_eq!(counted, 0, "allocations in {TICKS} steady AI ticks");
        let (result, _) = call.finish(now, 0, "w0-1", cxb_engine::error::EndReason::Hangup).expect("an AI call has a result");
        assert_eq!(result.bot_id.as_ref().map(|id| id.as_str()), Some("listener"));
    });
}

#[test]
fn a_thousand_steady_echo_ticks_allocate_nothing() {
    const WARM: u64 = 200;
    const TICKS: u64 = 1_000;
    let metrics = WorkerMetrics::default();
    let mut call = Call::new(CallConfig::new(Protocol::Twilio, BotKind::Echo));
    let (start, wire) = carrier_wire(WARM + TICKS);
    let mut server = WsSocket::new();
    server.feed(&start);
    let mut now = Timestamp::ZERO;
    tick(&mut call, &mut server, None, now, &metrics);
    for bytes in &wire[..WARM as usize] {
        now += Duration::from_millis(20);
        tick(&mut call, &mut server, Some(bytes), now, &metrics);
    }
    let mut sent = 0;
    let counted = allocations(|| {
        for bytes in &wire[WARM as usize..] {
            now += Duration::from_millis(20);
            sent += tick(&mut call, &mut server, Some(bytes), now, &metrics);
        }
    });
    assert!(sent >= TICKS - 5, "the echo came back: {sent} frames");
    assert_eq!(counted, 0, "allocations in {TICKS} steady echo ticks");
}
