//! A whole AI phone call through a running engine: a test carrier speaks recorded caller
//! audio over Twilio's media-stream protocol to a bot whose providers are local servers
//! speaking Deepgram's and ElevenLabs' protocols, with the `script` language model. The test
//! checks what the caller hears (greeting, answers), barge-in (`clear`, the reply cut short),
//! the bot hanging up through `end_call`, and the result and recording written to the
//! outbox before the slot is freed. Answering-machine detection: the greeting is held until
//! the verdict; a machine is hung up on, or gets the voicemail message after its beep; a
//! person gets the greeting.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Captured, connect, engine, tempdir};
use cxb_contract::call_token::Direction;
use cxb_contract::ids::{CallId, CampaignId};
use cxb_pipeline::testkit::deepgram::{DeepgramConfig, DeepgramServer, Reply, Step};
use cxb_pipeline::testkit::elevenlabs::{ElevenLabsConfig, ElevenLabsServer, expected_audio};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tungstenite::Message;


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
/// `limit`): media bytes (and the audio), whether a `clear` came, and the close frame if the call ended.
struct Heard {
    bytes: usize,
    audio: Vec<u8>,
    cleared: bool,
    closed: Option<(u16, String)>,
}

fn listen(call: &mut common::Carrier, quiet: Duration, limit: Duration) -> Heard {
    let mut heard = Heard { bytes: 0, audio: Vec::new(), cleared: false, closed: None };
    let (end, mut last) = (Instant::now() + limit, None::<Instant>);
    let _ = call.ws.get_ref().set_read_timeout(Some(Duration::from_millis(50)));
    while Instant::now() < end && last.is_none_or(|t| t.elapsed() < quiet) {
        match call.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON from the engine");
                match v["event"].as_str() {
                    Some("media") => {
                        let audio = STANDARD.decode(v["media"]["payload"].as_str().unwrap_or("")).expect("base64");
                        heard.bytes += audio.len();
                        heard.audio.extend(audio);
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
    let path = format!("/ws/support?token={}", common::token(&common::claims("support")));
    let mut call = connect(e.local_addr(), &path).expect("upgrade");
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
    // A key pressed, as Twilio reports it, reaches the conversation.
    call.send(json!({"event":"dtmf","streamSid":"MZ1","sequenceNumber":"900","dtmf":{"track":"inbound_track","digit":"7"}}));

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
    assert_eq!(lines[3], ("dtmf".into(), "7".into(), false), "the key, after the answer it followed");
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

#[test]
fn an_acknowledgement_over_the_answer_neither_stops_it_nor_is_answered() {
    const PER_CHAR: usize = 160;
    let stt = DeepgramServer::start(DeepgramConfig {
        script: vec![
            Step::on_finalize(Reply::Final { text: "tell me about the menu".into(), speech_final: false }),
            Step::on_finalize(Reply::Final { text: "Mm-hmm.".into(), speech_final: false }),
        ],
        ..DeepgramConfig::default()
    })
    .expect("stt server");
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: PER_CHAR, ..ElevenLabsConfig::default() }).expect("tts server");
    let bots = tempdir();
    let menu = "We have soups and stews. We have salads of every kind.";
    let bot = json!({
        "name": "Support",
        "stt": { "provider": "deepgram", "base_url": stt.url(), "secrets": { "api_key": "dg" } },
        "llm": { "provider": "script", "options": { "script": { "intents": [{ "name": "menu", "keywords": ["menu"], "reply": menu }], "fallback": "Sorry?" } } },
        "tts": { "provider": "elevenlabs", "base_url": tts.url(), "secrets": { "api_key": "xi" } },
        "voice": "voice1",
    });
    std::fs::write(bots.join("support.json"), bot.to_string()).expect("bot file");
    let results = Arc::new(Captured::default());
    let sink = results.clone();
    let e = engine(move |c| {
        c.bots.dir = Some(bots);
        c.results = Some(sink);
    });
    let path = format!("/ws/support?token={}", common::token(&common::claims("support")));
    let mut call = connect(e.local_addr(), &path).expect("upgrade");
    call.start();
    for f in speech_frames() {
        call.media(&f);
    }
    let _ = call.ws.get_ref().set_read_timeout(Some(Duration::from_secs(5)));
    while call.next_json().expect("the answer starts")["event"] != "media" {}
    // 200 ms into the answer, "mm-hmm": 280 ms of audio (180 ms voiced), then silence.
    std::thread::sleep(Duration::from_millis(200));
    let speech = speech_frames();
    for f in speech.iter().take(14).chain(std::iter::repeat_n(&vec![0xFF; 160], 60)) {
        call.media(f);
    }
    let rest = listen(&mut call, Duration::from_millis(600), Duration::from_secs(10));
    assert!(!rest.cleared, "the answer was not stopped");
    // The whole answer was heard (less the first frame read above), sentence by sentence.
    let frames: usize = menu.split_inclusive(". ").map(|s| (s.trim().len() * PER_CHAR).div_ceil(160)).sum();
    assert_eq!((rest.bytes + 160).div_ceil(160), frames, "{} bytes", rest.bytes);
    drop(call);
    assert!(common::eventually(Duration::from_secs(5), || results.0.lock().expect("lock").len() == 1));
    let results = results.0.lock().expect("lock");
    let result = &results[0].0;
    let lines: Vec<(&str, &str)> = result["transcript"].as_array().expect("transcript").iter().map(|l| (l["role"].as_str().unwrap_or(""), l["text"].as_str().unwrap_or(""))).collect();
    assert_eq!(lines, [("caller", "tell me about the menu"), ("bot", menu), ("caller", "Mm-hmm.")], "{result}");
    let m = &result["metrics"];
    assert_eq!((m["barge_ins"].as_u64(), m["backchannels"].as_u64(), m["false_barge_ins"].as_u64()), (Some(0), Some(1), Some(0)), "{m}");
    assert_eq!(m["llm_requests"], 1, "the acknowledgement was not answered");
}

/// One question to a bot whose turns end by the turn model, judged by `judge`; the result.
fn model_turn_call(judge: Option<f32>) -> Value {
    let stt = DeepgramServer::start(DeepgramConfig {
        script: vec![Step::on_finalize(Reply::Final { text: "what are your opening hours".into(), speech_final: false })],
        ..DeepgramConfig::default()
    })
    .expect("stt server");
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: 160, ..ElevenLabsConfig::default() }).expect("tts server");
    let bots = tempdir();
    let bot = json!({
        "name": "Support",
        "stt": { "provider": "deepgram", "base_url": stt.url(), "secrets": { "api_key": "dg" } },
        "llm": { "provider": "script", "options": { "script": { "intents": [{ "name": "hours", "keywords": ["hours"], "reply": "Nine to five." }], "fallback": "Sorry?" } } },
        "tts": { "provider": "elevenlabs", "base_url": tts.url(), "secrets": { "api_key": "xi" } },
        "voice": "voice1",
        "turn_detection": { "mode": "model", "model_after_ms": 200, "max_silence_ms": 2500 },
    });
    std::fs::write(bots.join("support.json"), bot.to_string()).expect("bot file");
    let results = Arc::new(Captured::default());
    let sink = results.clone();
    let e = engine(move |c| {
        c.bots.dir = Some(bots);
        c.results = Some(sink);
        c.turn_model = Some(Arc::new(cxb_engine::turn_model::FixedJudge(judge)));
    });
    let path = format!("/ws/support?token={}", common::token(&common::claims("support")));
    let mut call = connect(e.local_addr(), &path).expect("upgrade");
    call.start();
    for f in speech_frames() {
        call.media(&f);
    }
    let answer = listen(&mut call, Duration::from_millis(400), Duration::from_secs(8));
    assert!(answer.bytes > 0, "the question was answered");
    drop(call);
    assert!(common::eventually(Duration::from_secs(5), || results.0.lock().expect("lock").len() == 1));
    let results = results.0.lock().expect("lock");
    results[0].0.clone()
}

#[test]
fn the_turn_model_ends_a_turn_it_judges_done_and_a_pause_it_judges_unfinished_waits_for_the_cap() {
    let done = model_turn_call(Some(0.9));
    let m = &done["metrics"];
    assert_eq!(m["turn_detection"], "model", "{m}");
    assert_eq!((m["turn_model"]["decisions"].as_u64(), m["turn_model"]["ended_turns"].as_u64()), (Some(1), Some(1)), "{m}");
    let waited = m["turn_latency_ms"][0]["final_transcript_ms"].as_u64().expect("a turn's latency");
    assert!(waited < 2_500, "ended by the model, not the 2.5 s cap: {waited} ms");

    let unfinished = model_turn_call(Some(0.1));
    let m = &unfinished["metrics"];
    assert_eq!((m["turn_model"]["decisions"].as_u64(), m["turn_model"]["ended_turns"].as_u64()), (Some(1), Some(0)), "{m}");
    let waited = m["turn_latency_ms"][0]["final_transcript_ms"].as_u64().expect("a turn's latency");
    assert!(waited >= 2_500, "the caller was judged unfinished: the turn ended at the cap ({waited} ms)");
}

/// 8 kHz 16-bit samples from a fixture file.
fn samples(path: &str) -> Vec<i16> {
    std::fs::read(path).expect("fixture").chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// "Hi, you've reached Sam. Please leave a message after the tone." (espeak-ng, 3.3 s)
fn machine_greeting() -> Vec<i16> {
    samples(concat!(env!("CARGO_MANIFEST_DIR"), "/../media/tests/data/voicemail-greeting-8k.s16"))
}

/// "Hello?" (espeak-ng, 0.4 s)
fn hello() -> Vec<i16> {
    samples(concat!(env!("CARGO_MANIFEST_DIR"), "/../media/tests/data/hello-8k.s16"))
}

fn quiet(ms: usize) -> Vec<i16> {
    vec![0; ms * 8]
}

fn beep(hz: f64, ms: usize) -> Vec<i16> {
    (0..ms * 8).map(|n| (8_000.0 * (2.0 * std::f64::consts::PI * hz * n as f64 / 8_000.0).sin()) as i16).collect()
}

/// Sends audio as 20 ms mu-law frames, as fast as the socket takes them (detection counts
/// samples, not the clock), until the engine ends the call.
fn send_audio(call: &mut common::Carrier, audio: &[i16]) {
    for frame in audio.chunks(160) {
        if !call.try_media(&frame.iter().map(|&s| cxb_codecs::g711::encode_mulaw(s)).collect::<Vec<u8>>()) {
            return;
        }
    }
}

const AMD_PER_CHAR: usize = 160; // 20 ms of mu-law per character
const AMD_GREETING: &str = "Hello, thanks for calling.";
const VOICEMAIL: &str = "Please call us back.";

/// An engine with one AI bot (`am`; `answering_machine` as given), its providers local test
/// servers; what the outbox gets.
struct AmdRig {
    engine: cxb_engine::Engine,
    results: Arc<Captured>,
    tts: ElevenLabsServer,
    _stt: DeepgramServer,
}

fn amd_rig(answering_machine: Value) -> AmdRig {
    bot_rig(json!({ "answering_machine": answering_machine }))
}

/// [`amd_rig`] with these bot settings added.
fn bot_rig(settings: Value) -> AmdRig {
    let stt = DeepgramServer::start(DeepgramConfig::default()).expect("stt server");
    let tts = ElevenLabsServer::start(ElevenLabsConfig { bytes_per_char: AMD_PER_CHAR, ..ElevenLabsConfig::default() })
        .expect("tts server");
    let bots = tempdir();
    let bot = json!({
        "name": "Outreach",
        "greeting": AMD_GREETING,
        "stt": { "provider": "deepgram", "base_url": stt.url(), "secrets": { "api_key": "dg" } },
        "llm": { "provider": "script", "options": { "script": { "intents": [], "fallback": "Sorry?" } } },
        "tts": { "provider": "elevenlabs", "base_url": tts.url(), "secrets": { "api_key": "xi" } },
        "voice": "voice1",
    });
    let mut bot = bot;
    for (key, value) in settings.as_object().expect("bot settings") {
        bot[key] = value.clone();
    }
    std::fs::write(bots.join("am.json"), bot.to_string()).expect("bot file");
    let results = Arc::new(Captured::default());
    let sink = results.clone();
    let engine = engine(move |c| {
        c.bots.dir = Some(bots);
        c.results = Some(sink);
    });
    AmdRig { engine, results, tts, _stt: stt }
}

impl AmdRig {
    /// A call whose token carries these claims (`call_id`, `campaign_id`, `amd`, `direction`);
    /// the carrier's `customParameters` try to claim other ids, which the engine must ignore.
    /// Returns once the greeting is synthesised (so a greeting not held would be playing).
    fn call(&self, parameters: Value) -> common::Carrier {
        let mut claims = common::claims("am");
        let text = |k: &str| parameters[k].as_str().map(str::to_string);
        claims.call_id = text("call_id").map_or(claims.call_id, CallId::from);
        claims.campaign_id = text("campaign_id").map(CampaignId::from);
        claims.amd = text("amd");
        claims.direction = if parameters["direction"] == "outbound" { Direction::Outbound } else { Direction::Inbound };
        let path = format!("/ws/am?token={}", common::token(&claims));
        let mut call = connect(self.engine.local_addr(), &path).expect("upgrade");
        let spoofed = json!({"call_id": "spoofed", "campaign_id": "spoofed", "contact_id": "spoofed", "direction": "outbound", "amd": "hangup"});
        call.send(json!({"event":"connected","protocol":"Call","version":"1.0.0"}));
        call.send(json!({"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","streamSid":"MZ1",
            "callSid":"CA1","tracks":["inbound"],"customParameters":spoofed,
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}));
        let synthesised = common::eventually(Duration::from_secs(5), || {
            self.tts.connections().iter().any(|c| c.text == AMD_GREETING && c.audio_bytes == AMD_GREETING.len() * AMD_PER_CHAR)
        });
        assert!(synthesised, "the greeting is synthesised at once");
        call
    }

    /// The call's result, once the call is over and its slot free.
    fn result(&self) -> Value {
        assert!(common::eventually(Duration::from_secs(5), || common::health(self.engine.local_addr())["live_calls"] == 0));
        let results = self.results.0.lock().expect("lock");
        assert_eq!(results.len(), 1);
        results[0].0.clone()
    }
}

#[test]
fn amd_hangup_ends_a_machine_call_without_a_word_from_the_bot() {
    let rig = amd_rig(json!({}));
    let mut call = rig.call(json!({"amd": "hangup", "call_id": "call-42", "campaign_id": "camp-1", "direction": "outbound"}));
    let held = listen(&mut call, Duration::from_millis(300), Duration::from_millis(300));
    assert_eq!((held.bytes, held.closed), (0, None), "the greeting is held while detection runs");
    send_audio(&mut call, &machine_greeting());
    let heard = listen(&mut call, Duration::from_secs(1), Duration::from_secs(5));
    assert_eq!(heard.closed, Some((1000, "call ended by the bot".to_string())));
    assert_eq!(heard.bytes, 0, "no bot audio before or after the verdict");
    let result = rig.result();
    assert_eq!(result["call_id"], "call-42", "the token's call id, not the carrier's parameter");
    assert_eq!(result["campaign_id"], "camp-1");
    assert_eq!(result.get("contact_id"), None, "no contact in the token: none from the carrier either");
    assert_eq!((&result["outcome"], &result["end_reason"]), (&json!("voicemail"), &json!("machine_detected")));
    assert_eq!(
        result["metrics"]["amd"],
        json!({"result": "MACHINE", "cause": "MAXWORDS", "decided_ms": 1760, "action": "hangup"})
    );
    assert_eq!(result["transcript"], json!([]), "the caller heard nothing");
}

#[test]
fn amd_leave_voicemail_speaks_the_message_after_the_beep_then_hangs_up() {
    let rig = amd_rig(json!({ "voicemail_message": VOICEMAIL }));
    let mut call = rig.call(json!({"amd": "leave_voicemail", "direction": "outbound"}));
    let greeting = machine_greeting();
    send_audio(&mut call, &greeting);
    // A machine: the voicemail message is synthesised but waits for the beep.
    assert!(common::eventually(Duration::from_secs(5), || rig.tts.connections().iter().any(|c| c.text == VOICEMAIL)));
    let waiting = listen(&mut call, Duration::from_millis(500), Duration::from_millis(500));
    assert_eq!((waiting.bytes, waiting.closed), (0, None), "nothing before the beep");
    send_audio(&mut call, &[quiet(300), beep(1_000.0, 500), quiet(200)].concat());
    let heard = listen(&mut call, Duration::from_secs(2), Duration::from_secs(5));
    assert_eq!(heard.closed, Some((1000, "call ended by the bot".to_string())));
    let expected = expected_audio(VOICEMAIL, AMD_PER_CHAR);
    assert_eq!(heard.bytes.div_ceil(160), expected.len().div_ceil(160), "the message, once, and no greeting");
    assert_eq!(heard.audio.get(..expected.len()), Some(&expected[..]), "the voicemail message's audio");
    let result = rig.result();
    assert_eq!((&result["outcome"], &result["end_reason"]), (&json!("voicemail"), &json!("voicemail_left")));
    let amd = &result["metrics"]["amd"];
    assert_eq!((&amd["result"], &amd["action"]), (&json!("MACHINE"), &json!("leave_voicemail")), "{amd}");
    let beep_end = (greeting.len() / 8 + 800) as i64;
    assert!(amd["beep_ms"].as_i64().is_some_and(|ms| (ms - beep_end).abs() <= 20), "beep ended at {beep_end}: {amd}");
    let lines = result["transcript"].as_array().expect("transcript");
    let bot_lines: Vec<&str> = lines.iter().filter(|l| l["role"] == "bot").filter_map(|l| l["text"].as_str()).collect();
    assert_eq!(bot_lines, [VOICEMAIL]);
}

#[test]
fn amd_leave_voicemail_without_a_beep_speaks_in_the_silence_after_20_s() {
    let rig = amd_rig(json!({ "voicemail_message": VOICEMAIL }));
    let mut call = rig.call(json!({"amd": "leave_voicemail"}));
    send_audio(&mut call, &[machine_greeting(), quiet(15_000)].concat());
    let waiting = listen(&mut call, Duration::from_millis(300), Duration::from_millis(300));
    assert_eq!(waiting.bytes, 0, "still waiting for a beep");
    send_audio(&mut call, &quiet(7_000));
    let heard = listen(&mut call, Duration::from_secs(2), Duration::from_secs(5));
    assert_eq!(heard.closed, Some((1000, "call ended by the bot".to_string())));
    assert_eq!(heard.bytes.div_ceil(160), VOICEMAIL.len() * AMD_PER_CHAR / 160);
    let amd = &rig.result()["metrics"]["amd"];
    assert_eq!((&amd["result"], amd.get("beep_ms")), (&json!("MACHINE"), None), "{amd}");
}

#[test]
fn amd_continue_greets_a_machine_after_the_verdict() {
    let rig = amd_rig(json!({}));
    let mut call = rig.call(json!({"amd": "continue"}));
    send_audio(&mut call, &machine_greeting());
    let greeting = listen(&mut call, Duration::from_millis(400), Duration::from_secs(5));
    assert_eq!(greeting.bytes.div_ceil(160), (AMD_GREETING.len() * AMD_PER_CHAR).div_ceil(160));
    call.stop();
    let result = rig.result();
    assert_eq!(result["outcome"], "completed");
    let amd = &result["metrics"]["amd"];
    assert_eq!((&amd["result"], &amd["action"]), (&json!("MACHINE"), &json!("continue")), "{amd}");
}

#[test]
fn amd_from_the_bot_settings_hears_a_person_and_greets_them_after_the_verdict() {
    let rig = amd_rig(json!({ "detect": true, "action": "hangup" }));
    let mut call = rig.call(json!({"direction": "outbound"}));
    let held = listen(&mut call, Duration::from_millis(300), Duration::from_millis(300));
    assert_eq!(held.bytes, 0, "the greeting is held while detection runs");
    // "Hello?" and 0.8 s of silence: a person. The greeting follows the verdict at once.
    send_audio(&mut call, &[quiet(300), hello()].concat());
    let before = listen(&mut call, Duration::from_millis(200), Duration::from_millis(200));
    assert_eq!(before.bytes, 0, "no greeting before the verdict");
    send_audio(&mut call, &quiet(1_000));
    let greeting = listen(&mut call, Duration::from_millis(400), Duration::from_secs(5));
    let expected = (AMD_GREETING.len() * AMD_PER_CHAR).div_ceil(160);
    assert_eq!(greeting.bytes.div_ceil(160), expected, "{} bytes", greeting.bytes);
    call.stop();
    let result = rig.result();
    assert_eq!((&result["call_id"], &result["direction"]), (&json!("cl-test"), &json!("outbound")), "from the token");
    assert_eq!((&result["outcome"], &result["end_reason"]), (&json!("completed"), &json!("stopped")));
    let amd = json!({"result": "HUMAN", "cause": "HUMAN", "decided_ms": 1520, "action": "hangup"});
    assert_eq!(result["metrics"]["amd"], amd);
}

#[test]
fn after_hello_the_outbound_greeting_waits_for_the_callees_hello_and_a_pause() {
    // The offline STT turns every turn into "bye", which the script answers: the hello must
    // not become a turn.
    let rig = bot_rig(json!({ "outbound_greeting": "after_hello", "stt": {"provider": "none", "options": {"placeholder": "hello"}} }));
    let mut call = rig.call(json!({"direction": "outbound"}));
    let held = listen(&mut call, Duration::from_millis(300), Duration::from_millis(300));
    assert_eq!(held.bytes, 0, "the greeting waits for the callee");
    send_audio(&mut call, &[quiet(300), hello(), quiet(300)].concat());
    let during = listen(&mut call, Duration::from_millis(200), Duration::from_millis(200));
    assert_eq!(during.bytes, 0, "not while they speak, nor 300 ms after");
    send_audio(&mut call, &quiet(400));
    let greeting = listen(&mut call, Duration::from_millis(400), Duration::from_secs(5));
    let expected = (AMD_GREETING.len() * AMD_PER_CHAR).div_ceil(160);
    assert_eq!(greeting.bytes.div_ceil(160), expected, "the whole greeting, uninterrupted");
    assert!(!greeting.cleared);
    // The hello's turn ends after the greeting began; it is not the conversation's.
    send_audio(&mut call, &quiet(2_000));
    let after = listen(&mut call, Duration::from_millis(500), Duration::from_millis(800));
    assert_eq!(after.bytes, 0, "nothing answers the hello");
    call.stop();
    let result = rig.result();
    let lines: Vec<(String, String, bool)> = result["transcript"]
        .as_array()
        .expect("transcript")
        .iter()
        .map(|l| (l["role"].as_str().unwrap_or("").into(), l["text"].as_str().unwrap_or("").into(), l["interrupted"] == true))
        .collect();
    assert_eq!(lines, [("bot".to_string(), AMD_GREETING.to_string(), false)]);
    // The hello's last voiced block ends at 720 ms (answering-machine detection's HUMAN verdict
    // on the same audio comes 800 ms later, at 1520); the greeting follows 500 ms after it.
    assert_eq!(result["metrics"]["greeting_wait_ms"], 1_220, "{}", result["metrics"]);
    assert_eq!(result["metrics"]["barge_ins"], 0);
    assert_eq!(result["metrics"]["amd"], Value::Null, "no detection was asked for");
}

#[test]
fn after_hello_a_silent_callee_is_greeted_after_a_second_and_inbound_calls_at_once() {
    let rig = bot_rig(json!({ "outbound_greeting": "after_hello" }));
    let mut call = rig.call(json!({"direction": "outbound"}));
    send_audio(&mut call, &quiet(960));
    let held = listen(&mut call, Duration::from_millis(300), Duration::from_millis(300));
    assert_eq!(held.bytes, 0, "0.96 s of silence: still waiting");
    send_audio(&mut call, &quiet(40));
    let greeting = listen(&mut call, Duration::from_millis(400), Duration::from_secs(5));
    assert_eq!(greeting.bytes.div_ceil(160), (AMD_GREETING.len() * AMD_PER_CHAR).div_ceil(160));
    call.stop();
    assert_eq!(rig.result()["metrics"]["greeting_wait_ms"], 1_000);

    // An inbound call is greeted at once: the caller called and waits to hear the bot.
    let rig = bot_rig(json!({ "outbound_greeting": "after_hello" }));
    let mut call = rig.call(json!({}));
    let greeting = listen(&mut call, Duration::from_millis(400), Duration::from_secs(5));
    assert_eq!(greeting.bytes.div_ceil(160), (AMD_GREETING.len() * AMD_PER_CHAR).div_ceil(160));
    call.stop();
    assert_eq!(rig.result()["metrics"]["greeting_wait_ms"], Value::Null);
}
