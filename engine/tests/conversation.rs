//! A whole AI phone call through a running engine: a test carrier speaks recorded caller
//! audio over Twilio's media-stream protocol to a bot whose providers are local servers
//! speaking Deepgram's and ElevenLabs' protocols, with the `script` language model. The test
//! checks what the caller hears (greeting, answers), barge-in (`clear`, the reply cut short),
//! the bot hanging up through `end_call`, and the result and recording written to the
//! outbox before the slot is freed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, engine, tempdir};
use cxb_engine::ResultSink;
use cxb_pipeline::testkit::deepgram::{DeepgramConfig, DeepgramServer, Reply, Step};
use cxb_pipeline::testkit::elevenlabs::{ElevenLabsConfig, ElevenLabsServer};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tungstenite::Message;

/// Results as the outbox would get them.
#[derive(Debug, Default)]
struct Captured(Mutex<Vec<(Value, Option<Vec<u8>>)>>);

impl ResultSink for Captured {
    fn submit(&self, result: Value, recording: Option<Vec<u8>>) -> flume::Receiver<Result<(), String>> {
        self.0.lock().expect("lock").push((result, recording));
        let (tx, rx) = flume::bounded(1);
        let _ = tx.send(Ok(()));
        rx
    }
}

fn speech_frames() -> Vec<Vec<u8>> {
    let pcm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../codecs/tests/fixtures/speech-8k.s16")).expect("fixture");
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    // The first 1.2 s (one utterance with no pause long enough to end the turn), then 300 ms
    // of silence, as a carrier's continuous stream has.
    let mut frames: Vec<Vec<u8>> =
        samples.chunks_exact(160).take(60).map(|f| f.iter().map(|&s| cxb_codecs::g711::encode_mulaw(s)).collect()).collect();
    frames.extend(std::iter::repeat_n(vec![0xFF; 160], 15));
    frames
}

/// What the caller heard until `quiet` passed with no audio after some had come (or
/// `limit`): media bytes, whether a `clear` came, and the close frame if the call ended.
struct Heard {
    bytes: usize,
    cleared: bool,
    closed: Option<(u16, String)>,
}

fn listen(call: &mut common::Carrier, quiet: Duration, limit: Duration) -> Heard {
    let mut heard = Heard { bytes: 0, cleared: false, closed: None };
    let (end, mut last) = (Instant::now() + limit, None::<Instant>);
    let _ = call.ws.get_ref().set_read_timeout(Some(Duration::from_millis(50)));
    while Instant::now() < end && last.is_none_or(|t| t.elapsed() < quiet) {
        match call.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON from the engine");
                match v["event"].as_str() {
                    Some("media") => {
                        heard.bytes += STANDARD.decode(v["media"]["payload"].as_str().unwrap_or("")).expect("base64").len();
                        last = Some(Instant::now());
                    }
                    Some("clear") => heard.cleared = true,
                    _ => {}
                }
            }
            Ok(Message::Close(frame)) => {
                heard.closed = frame.map(|f| (f.code.into(), f.reason.to_string()));
                break;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    heard
}

#[test]
fn an_ai_call_greets_answers_yields_to_barge_in_and_hangs_up() {
    const PER_CHAR: usize = 160; // 20 ms of mu-law per character
    let stt = DeepgramServer::start(DeepgramConfig {
        script: vec![
            Step::on_finalize(Reply::Final { text: "what are your opening hours".into(), speech_final: false }),
            Step::on_finalize(Reply::Final { text: "tell me about the menu".into(), speech_final: false }),
            Step::on_finalize(Reply::Final { text: "ok bye".into(), speech_final: true }),
        ],
        ..DeepgramConfig::default()
    })
    .expect("stt server");
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: PER_CHAR, ..ElevenLabsConfig::default() }).expect("tts server");
    let bots = tempdir();
    let bot = json!({
        "name": "Support",
        "greeting": "Hello, thanks for calling.",
        "stt": { "provider": "deepgram", "base_url": stt.url(), "secrets": { "api_key": "dg" } },
        "llm": { "provider": "script", "options": { "script": {
            "intents": [
                { "name": "hours", "keywords": ["hours"], "reply": "We are open nine to five." },
                { "name": "menu", "keywords": ["menu"], "reply": "We have soups and stews. We have salads of every kind. We have sandwiches on fresh bread. We have cakes and pies." },
                { "name": "bye", "keywords": ["bye"], "reply": "Thanks for calling.", "tool": { "name": "end_call", "arguments": { "reason": "caller said bye" } } }
            ],
            "fallback": "Sorry?"
        } } },
        "tts": { "provider": "elevenlabs", "base_url": tts.url(), "secrets": { "api_key": "xi" } },
        "voice": "voice1",
        "tools": [ { "kind": "end_call" } ],
    });
    std::fs::write(bots.join("support.json"), bot.to_string()).expect("bot file");
    let results = Arc::new(Captured::default());
    let sink = results.clone();
    let e = engine(move |c| {
        c.bots.dir = Some(bots);
        c.results = Some(sink);
    });
    let mut call = connect(e.local_addr(), "/ws/support").expect("upgrade");
    call.start();

    // The greeting: "Hello, thanks for calling." is 26 characters of audio, padded to 20 ms.
    let greeting = listen(&mut call, Duration::from_millis(400), Duration::from_secs(5));
    assert_eq!(greeting.bytes.div_ceil(160), (26 * PER_CHAR).div_ceil(160), "the whole greeting, once ({} bytes)", greeting.bytes);

    // A question; the answer is heard in full.
    for f in speech_frames() {
        call.media(&f);
    }
    let answer = listen(&mut call, Duration::from_millis(400), Duration::from_secs(5));
    assert_eq!(answer.bytes.div_ceil(160), ("We are open nine to five.".len() * PER_CHAR).div_ceil(160), "{} bytes", answer.bytes);

    // Another question; the caller speaks over the long answer once 200 ms of it was heard.
    for f in speech_frames() {
        call.media(&f);
    }
    let _ = call.ws.get_ref().set_read_timeout(Some(Duration::from_secs(5)));
    while call.next_json().expect("the answer starts")["event"] != "media" {}
    std::thread::sleep(Duration::from_millis(200));
    for f in speech_frames() {
        call.media(&f);
    }
    // Then: `clear`, the rest of the long answer never comes, "Thanks for calling." does,
    // and the bot hangs up.
    let rest = listen(&mut call, Duration::from_secs(3), Duration::from_secs(10));
    assert_eq!(rest.closed, Some((1000, "call ended by the bot".to_string())));
    assert!(rest.bytes < 60 * PER_CHAR, "the long answer was cut short ({} bytes after barge-in)", rest.bytes);
    // The result reached the outbox before the slot was freed.
    assert!(common::eventually(Duration::from_secs(5), || common::health(e.local_addr())["live_calls"] == 0));
    let results = results.0.lock().expect("lock");
    assert_eq!(results.len(), 1);
    let (result, recording) = &results[0];
    assert_eq!(result["bot_id"], "support");
    assert_eq!(result["end_reason"], "bot_hangup");
    assert_eq!(result["outcome"], "completed");
    let lines: Vec<(String, String, bool)> = result["transcript"]
        .as_array()
        .expect("transcript")
        .iter()
        .map(|l| (l["role"].as_str().unwrap_or("").to_string(), l["text"].as_str().unwrap_or("").to_string(), l["interrupted"] == true))
        .collect();
    let caller: Vec<&str> = lines.iter().filter(|l| l.0 == "caller").map(|l| l.1.as_str()).collect();
    assert_eq!(caller, ["what are your opening hours", "tell me about the menu", "ok bye"]);
    assert_eq!(lines[0], ("bot".into(), "Hello, thanks for calling.".into(), false));
    assert_eq!(lines[2], ("bot".into(), "We are open nine to five.".into(), false));
    let cut = lines.iter().find(|l| l.2).expect("an interrupted bot line");
    assert!(cut.1.len() < "We have soups and stews. We have salads of every kind.".len(), "only what was heard: {:?}", cut.1);
    assert_eq!(lines.last().map(|l| l.1.as_str()), Some("Thanks for calling."));
    let latency = &result["metrics"]["turn_latency_ms"][0];
    assert!(latency["first_frame_ms"].as_u64().is_some_and(|ms| ms >= latency["first_audio_ms"].as_u64().unwrap_or(u64::MAX)), "{latency}");
    assert!(result["metrics"]["answer_to_first_audio_ms"].as_u64().is_some());
    // Two channels, 8 kHz, 16-bit; the bot's side carries the greeting.
    let wav = recording.as_ref().expect("recorded");
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2);
    let bot_side = wav[44..].chunks_exact(4).filter(|s| i16::from_le_bytes([s[2], s[3]]) != 0).count();
    assert!(bot_side > 8_000 / 2, "bot audio in the right channel ({bot_side} samples)");
    // The speech-to-text stream got the caller's audio as mu-law and was closed politely.
    let conn = &stt.connections()[0];
    assert!(conn.audio_bytes >= 3 * 75 * 160, "{} bytes", conn.audio_bytes);
    assert!(conn.count("Finalize") >= 3);
    assert!(rest.cleared, "barge-in sends clear");
    // The engine's own latency was measured: each answer's audio went into an empty playout.
    let (_, metrics) = common::get(e.local_addr(), "/metrics");
    let count = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name}_count{{worker=\"0\"}} "))).and_then(|v| v.parse::<u64>().ok())
    };
    assert!(count("cxb_agent_wire_seconds").is_some_and(|n| n >= 3), "wire: {:?}", count("cxb_agent_wire_seconds"));
    assert!(count("cxb_agent_dispatch_seconds").is_some_and(|n| n >= 3), "dispatch: {:?}", count("cxb_agent_dispatch_seconds"));
}
