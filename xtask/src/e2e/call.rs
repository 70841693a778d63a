//! The whole phone call of `cargo xtask e2e-local`: a conversation through a real
//! [`Engine`] whose bot hears with Whisper and speaks with Piper (the Wyoming adapters, the
//! servers of [`LocalSpeech`]) and thinks with the `script` language model.
//!
//! This program is the carrier. It speaks Twilio's media-stream protocol over a WebSocket:
//! `connected`, `start`, then one `media` message every 20 ms on an absolute clock, mu-law
//! at 8 kHz, with silence between the caller's sentences as a carrier streams it; it echoes
//! the engine's `mark`s as Twilio does once their audio has played (the engine paces its
//! audio, so that is when they arrive). The caller's sentences are Piper's voice resampled
//! to 8 kHz. What the caller hears is kept per turn and transcribed by Whisper afterwards.
//!
//! Checked: the greeting is heard; the question is transcribed inside the engine (the
//! result's transcript) and answered with the script's reply, which is heard; the goodbye
//! makes the bot call `end_call` and the engine close the stream; the result has per-turn
//! latencies and a two-channel recording with both sides in it. The conversation has
//! [`BUDGET`] to happen in; every wait names what did not come.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cxb_codecs::{SampleRate, g711, payload};
use cxb_contract::call_token::{CallClaims, CallKey, KeyRing};
use cxb_engine::{Engine, EngineConfig, ResultSink};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use super::{LocalSpeech, resample, similar};

/// What the bot says first.
const GREETING: &str = "Hello, thanks for calling the diner. How can I help you?";
/// The caller's question.
const QUESTION: &str = "Hi, could you tell me your opening hours this weekend?";
/// The script's reply to it (no numbers: Whisper writes them as words or digits at random).
const ANSWER: &str = "We are open every day from early in the morning until late at night.";
/// The caller's last words.
const GOODBYE: &str = "Perfect, thank you very much for your help. Goodbye.";
/// The script's reply to them, before it hangs up.
const FAREWELL: &str = "Thanks for calling. Have a nice evening.";
/// The whole conversation, from connecting to the engine closing the stream.
const BUDGET: Duration = Duration::from_secs(60);
/// The bot has finished speaking when nothing came for this long.
const QUIET: Duration = Duration::from_millis(800);
/// How long the result may take to reach the sink after the stream closed.
const RESULT_WAIT: Duration = Duration::from_secs(10);
/// Whisper may get one word in this many wrong: the call's audio is narrowband, and the
/// model is tiny.en (e.g. "goodbye" heard as "bye bye", "hours" as "nowers").
const ONE_IN: usize = 4;
/// One carrier frame.
const FRAME: Duration = Duration::from_millis(20);
/// 20 ms of mu-law at 8 kHz.
const FRAME_BYTES: usize = 160;
/// Mu-law silence.
const SILENCE: [u8; FRAME_BYTES] = [0xFF; FRAME_BYTES];

/// The bot: the local speech servers, the greeting, the script.
fn bot(speech: &LocalSpeech) -> Value {
    let mut bot = speech.bot_json();
    bot["id"] = "diner".into();
    bot["name"] = "Diner".into();
    bot["greeting"] = GREETING.into();
    bot["llm"] = json!({ "provider": "script", "options": { "script": {
        "intents": [
            { "name": "hours", "keywords": ["hours", "open", "opening"], "reply": ANSWER },
            { "name": "bye", "keywords": ["bye", "goodbye"], "reply": FAREWELL,
              "tool": { "name": "end_call", "arguments": { "reason": "the caller said goodbye" } } }
        ],
        "fallback": "Sorry, could you say that again?"
    } } });
    bot["tools"] = json!([{ "kind": "end_call" }]);
    bot
}

/// The call's result as the outbox would get it.
#[derive(Debug, Default)]
struct Captured(Mutex<Option<(Value, Option<Vec<u8>>)>>);

impl ResultSink for Captured {
    fn submit(&self, result: cxb_engine::results::CallResult, recording: Option<Vec<u8>>) -> flume::Receiver<Result<(), String>> {
        let result = serde_json::to_value(&result).expect("a result is JSON");
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((result, recording));
        let (tx, rx) = flume::bounded(1);
        let _ = tx.send(Ok(()));
        rx
    }
}

impl Captured {
    /// The result, once it came (polled until `limit`).
    fn wait(&self, limit: Duration) -> Option<(Value, Option<Vec<u8>>)> {
        let end = Instant::now() + limit;
        loop {
            if let Some(r) = self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
                return Some(r);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The call-token key of the engine this run starts (loopback only, gone with the run).
fn call_keys() -> KeyRing {
    KeyRing::new(CallKey::new("e2e", &[0x5a; 32]).into_iter().collect())
}

/// An engine on loopback with one worker and its files in a temporary directory; shut down
/// and cleaned up when dropped.
struct Running {
    engine: Option<Engine>,
    dir: PathBuf,
}

impl Running {
    fn start(bot: &Value, results: Arc<Captured>) -> Result<Running, String> {
        let dir = std::env::temp_dir().join(format!("cxb-e2e-call-{}", std::process::id()));
        let bots = dir.join("bots");
        std::fs::create_dir_all(&bots).map_err(|e| format!("{}: {e}", bots.display()))?;
        std::fs::write(bots.join("diner.json"), bot.to_string()).map_err(|e| format!("bot file: {e}"))?;
        let mut config = EngineConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.workers = 1;
        config.slots_per_worker = 4;
        config.pin = false;
        config.registry = dir.join("slots");
        config.control_socket = dir.join("ctl.sock");
        config.bots.dir = Some(bots);
        config.results = Some(results);
        config.call_keys = call_keys();
        // Whisper and Piper listen on loopback.
        config.egress = cxb_contract::egress::EgressPolicy::with_loopback();
        let engine = Engine::start(config).map_err(|e| format!("the engine does not start: {e}"))?;
        Ok(Running { engine: Some(engine), dir })
    }

    fn addr(&self) -> Option<SocketAddr> {
        self.engine.as_ref().map(Engine::local_addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the caller heard during one wait.
#[derive(Debug, Default)]
struct Heard {
    /// Mu-law at 8 kHz.
    audio: Vec<u8>,
    /// When its first frame arrived.
    first: Option<Instant>,
}

/// The carrier's end of the media stream.
struct Carrier {
    ws: WebSocket<TcpStream>,
    /// When the next frame is due.
    next: Instant,
    chunk: u64,
    heard: Heard,
    last_audio: Option<Instant>,
    clears: u64,
    closed: Option<(u16, String)>,
}

impl Carrier {
    fn connect(addr: SocketAddr, path: &str) -> Result<Carrier, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect to the engine: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let (ws, _) = tungstenite::client::client(format!("ws://{addr}{path}"), stream)
            .map_err(|e| format!("WebSocket upgrade of {path}: {e}"))?;
        ws.get_ref().set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = ws.get_ref().set_nodelay(true);
        let mut carrier = Carrier {
            ws,
            next: Instant::now(),
            chunk: 0,
            heard: Heard::default(),
            last_audio: None,
            clears: 0,
            closed: None,
        };
        // Twilio's first two messages (https://www.twilio.com/docs/voice/media-streams/websocket-messages).
        carrier.send(json!({ "event": "connected", "protocol": "Call", "version": "1.0.0" }))?;
        carrier.send(json!({ "event": "start", "sequenceNumber": "1", "streamSid": "MZe2e", "start": {
            "accountSid": "ACe2e", "streamSid": "MZe2e", "callSid": "CAe2e", "tracks": ["inbound"],
            "customParameters": {}, "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 } } }))?;
        Ok(carrier)
    }

    fn send(&mut self, message: Value) -> Result<(), String> {
        match self.ws.send(Message::text(message.to_string())) {
            Ok(()) => Ok(()),
            // Queued; the next send or read writes it.
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(format!("sending to the engine: {e}")),
        }
    }

    /// Waits for the next 20 ms tick, sends `frame`, then reads what arrived.
    fn tick(&mut self, frame: &[u8]) -> Result<(), String> {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else if now - self.next > Duration::from_millis(200) {
            self.next = now; // this process was starved: no burst to catch up
        }
        self.next += FRAME;
        self.chunk += 1;
        let c = self.chunk;
        let mut b64 = String::new();
        payload::encode_into(frame, &mut b64);
        self.send(json!({ "event": "media", "sequenceNumber": (c + 1).to_string(), "streamSid": "MZe2e",
            "media": { "track": "inbound", "chunk": c.to_string(), "timestamp": (c * 20).to_string(), "payload": b64 } }))?;
        self.drain()
    }

    /// Reads every message that arrived: audio is kept, marks are echoed.
    fn drain(&mut self) -> Result<(), String> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(text.as_str()).map_err(|e| format!("the engine sent bad JSON: {e}"))?;
                    match v["event"].as_str() {
                        Some("media") => {
                            let b64 = v["media"]["payload"].as_str().unwrap_or_default();
                            payload::decode_into(b64, &mut self.heard.audio)
                                .map_err(|e| format!("the engine sent a bad payload: {e:?}"))?;
                            let now = Instant::now();
                            self.heard.first.get_or_insert(now);
                            self.last_audio = Some(now);
                        }
                        Some("mark") => {
                            let name = v["mark"]["name"].clone();
                            let seq = (self.chunk + 1).to_string();
                            self.send(json!({ "event": "mark", "sequenceNumber": seq, "streamSid": "MZe2e", "mark": { "name": name } }))?;
                        }
                        Some("clear") => self.clears += 1,
                        _ => {}
                    }
                }
                Ok(Message::Close(frame)) => {
                    self.closed = Some(frame.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string())));
                    let _ = self.ws.flush(); // the close reply
                    return Ok(());
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if self.closed.is_some() => return Err(format!("after the close: {e}")),
                Err(e) => return Err(format!("the stream broke: {e}")),
            }
        }
    }

    /// Says `frames` in real time.
    fn say(&mut self, frames: &[[u8; FRAME_BYTES]]) -> Result<(), String> {
        frames.iter().try_for_each(|f| self.tick(f))
    }

    /// Streams silence until the bot has spoken and then been quiet for [`QUIET`] (with
    /// `hang_up`: until the engine closes the stream); what the caller heard since the last
    /// wait.
    fn listen(&mut self, what: &str, hang_up: bool, deadline: Instant) -> Result<Heard, String> {
        loop {
            if let Some((code, reason)) = &self.closed {
                if hang_up {
                    break;
                }
                return Err(format!("the engine closed the stream ({code} {reason}) while the caller waited for {what}"));
            }
            let spoke = self.heard.first.is_some() && self.last_audio.is_some_and(|t| t.elapsed() >= QUIET);
            if spoke && !hang_up {
                break;
            }
            if Instant::now() > deadline {
                let ms = self.heard.audio.len() / 8;
                let state = match (self.heard.first, hang_up) {
                    (None, _) => "no bot audio came",
                    (Some(_), false) => "the bot did not stop speaking",
                    (Some(_), true) => "the engine did not close the stream",
                };
                return Err(format!("{what}: {state} within the {BUDGET:?} budget ({ms} ms of bot audio heard for it)"));
            }
            self.tick(&SILENCE)?;
        }
        Ok(std::mem::take(&mut self.heard))
    }
}

/// Piper saying `text` as 20 ms mu-law frames at 8 kHz (the last one padded with silence).
async fn caller_frames(speech: &LocalSpeech, text: &str) -> Result<Vec<[u8; FRAME_BYTES]>, String> {
    let pcm = resample(&speech.speak(text).await?, SampleRate::Hz22050, SampleRate::Hz8000);
    let samples: Vec<i16> = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut mulaw = Vec::new();
    g711::encode_mulaw_into(&samples, &mut mulaw);
    Ok(mulaw
        .chunks(FRAME_BYTES)
        .map(|c| {
            let mut frame = SILENCE;
            frame[..c.len()].copy_from_slice(c);
            frame
        })
        .collect())
}

/// Whisper's transcript of mu-law audio at 8 kHz.
async fn transcribe_mulaw(speech: &LocalSpeech, audio: &[u8]) -> Result<String, String> {
    let mut samples = Vec::new();
    g711::decode_mulaw_into(audio, &mut samples);
    let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    speech.transcribe(&resample(&pcm, SampleRate::Hz8000, SampleRate::Hz16000)).await
}

/// What the carrier saw of the conversation.
struct Conversation {
    greeting: Heard,
    answer: Heard,
    farewell: Heard,
    /// From the last frame of each of the caller's sentences to the first audio heard after it.
    heard_after: [Duration; 2],
    connected: Instant,
    closed: Option<(u16, String)>,
    clears: u64,
}

/// Plays the caller's side of the call.
fn converse(addr: SocketAddr, question: &[[u8; FRAME_BYTES]], goodbye: &[[u8; FRAME_BYTES]]) -> Result<Conversation, String> {
    let deadline = Instant::now() + BUDGET;
    let connected = Instant::now();
    // The call comes as the platform places one: with a call token for the bot.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = CallClaims { jti: "e2e".into(), bot_id: "diner".into(), call_id: "e2e-call".into(), org_id: "e2e".into(), exp: now + 300, ..CallClaims::default() };
    let token = call_keys().sign(&claims).ok_or("no call-token key")?;
    let mut carrier = Carrier::connect(addr, &format!("/ws/diner?token={token}"))?;
    let greeting = carrier.listen("the greeting", false, deadline)?;
    carrier.say(question)?;
    let asked = Instant::now();
    let answer = carrier.listen("the answer to the question", false, deadline)?;
    carrier.say(goodbye)?;
    let said_bye = Instant::now();
    let farewell = carrier.listen("the goodbye and the hang-up", true, deadline)?;
    let after = |heard: &Heard, t: Instant| heard.first.map_or(Duration::ZERO, |f| f.saturating_duration_since(t));
    Ok(Conversation {
        heard_after: [after(&answer, asked), after(&farewell, said_bye)],
        greeting,
        answer,
        farewell,
        connected,
        closed: carrier.closed.clone(),
        clears: carrier.clears,
    })
}

/// The result's transcript as `role: text` lines.
fn transcript(result: &Value) -> Vec<(String, String)> {
    result["transcript"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .map(|l| (l["role"].as_str().unwrap_or("?").to_string(), l["text"].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn show(lines: &[(String, String)]) -> String {
    lines.iter().map(|(role, text)| format!("\n  {role}: {text}")).collect()
}

/// Milliseconds, for printing.
fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The conversation; writes the result and the recording to `dir/call.json` and `dir/call.wav`.
pub(super) fn run(runtime: &compio::runtime::Runtime, speech: &LocalSpeech, dir: &Path) -> Result<(), String> {
    let (question, goodbye) = runtime.block_on(async {
        Ok::<_, String>((caller_frames(speech, QUESTION).await?, caller_frames(speech, GOODBYE).await?))
    })?;
    let results = Arc::new(Captured::default());
    let engine = Running::start(&bot(speech), results.clone())?;
    let addr = engine.addr().ok_or("the engine is gone")?;
    eprintln!("e2e-local: call: engine on {addr}; the caller says \"{QUESTION}\", then \"{GOODBYE}\"");

    let call = match converse(addr, &question, &goodbye) {
        Ok(call) => call,
        Err(e) => {
            // The engine ends the call when the stream drops: show how far it got.
            let lines = results.wait(Duration::from_secs(3)).map(|(r, _)| transcript(&r)).unwrap_or_default();
            return Err(format!("call: {e}; the engine's transcript:{}", show(&lines)));
        }
    };
    let lasted = call.connected.elapsed();
    let (result, recording) =
        results.wait(RESULT_WAIT).ok_or(format!("call: no result reached the sink within {RESULT_WAIT:?} of the close"))?;
    drop(engine);
    let _ = std::fs::write(dir.join("call.json"), serde_json::to_vec_pretty(&result).unwrap_or_default());
    if let Some(wav) = &recording {
        let _ = std::fs::write(dir.join("call.wav"), wav);
    }

    let lines = transcript(&result);
    eprintln!("e2e-local: call: {:.1} s, the engine's transcript:{}", lasted.as_secs_f64(), show(&lines));
    let [greeting, answer, farewell] = runtime.block_on(async {
        Ok::<_, String>([
            transcribe_mulaw(speech, &call.greeting.audio).await?,
            transcribe_mulaw(speech, &call.answer.audio).await?,
            transcribe_mulaw(speech, &call.farewell.audio).await?,
        ])
    })?;
    eprintln!("e2e-local: call: the caller heard\n  \"{greeting}\"\n  \"{answer}\"\n  \"{farewell}\"");

    // What the caller heard, through Whisper.
    similar("call: the greeting as heard", GREETING, &greeting, ONE_IN)?;
    similar("call: the answer as heard", ANSWER, &answer, ONE_IN)?;
    similar("call: the goodbye as heard", FAREWELL, &farewell, ONE_IN)?;
    // What the engine understood and said.
    let role = |i: usize| lines.get(i).map(|l| l.0.as_str());
    let text = |i: usize| lines.get(i).map_or("", |l| l.1.as_str());
    let roles: Vec<Option<&str>> = (0..5).map(role).collect();
    if lines.len() != 5 || roles != [Some("bot"), Some("caller"), Some("bot"), Some("caller"), Some("bot")] {
        return Err(format!("call: expected greeting, question, answer, goodbye, farewell; the transcript:{}", show(&lines)));
    }
    similar("call: the question as the engine transcribed it", QUESTION, text(1), ONE_IN)?;
    similar("call: the goodbye as the engine transcribed it", GOODBYE, text(3), ONE_IN)?;
    for (i, expected) in [(0, GREETING), (2, ANSWER), (4, FAREWELL)] {
        if text(i) != expected {
            return Err(format!("call: line {i} should be \"{expected}\"; the transcript:{}", show(&lines)));
        }
    }
    if call.closed != Some((1000, "call ended by the bot".into())) || result["end_reason"] != "bot_hangup" {
        return Err(format!("call: expected the bot to hang up; close {:?}, end_reason {}", call.closed, result["end_reason"]));
    }
    // The result's measurements and the recording.
    let turns = result["metrics"]["turn_latency_ms"].as_array().cloned().unwrap_or_default();
    if turns.len() != 2 || turns.iter().any(|t| t["first_frame_ms"].as_u64().is_none_or(|ms| ms == 0)) {
        return Err(format!("call: expected two answered turns with latencies: {}", result["metrics"]["turn_latency_ms"]));
    }
    let first_audio = result["metrics"]["answer_to_first_audio_ms"].as_u64().ok_or("call: no answer_to_first_audio_ms")?;
    let sides = recording.as_deref().map(channel_peaks).ok_or("call: no recording")??;
    if sides.0 < 1000 || sides.1 < 1000 {
        return Err(format!("call: the recording should have both sides (peaks: caller {}, bot {})", sides.0, sides.1));
    }

    eprintln!("e2e-local: call: answer to first audio {first_audio} ms; barge-ins (clear) {}", call.clears);
    for (i, t) in turns.iter().enumerate() {
        eprintln!(
            "e2e-local: call: turn {}: end of speech to final transcript {} ms, first token {} ms, first audio {} ms, first frame {} ms; \
             the caller heard the reply {} ms after their last frame",
            i + 1,
            t["final_transcript_ms"],
            t["first_token_ms"],
            t["first_audio_ms"],
            t["first_frame_ms"],
            ms(call.heard_after.get(i).copied().unwrap_or_default()),
        );
    }
    eprintln!("e2e-local: call ok (result and recording in {})", dir.display());
    Ok(())
}

/// The loudest sample of each channel (caller, bot) of a 16-bit stereo WAV.
fn channel_peaks(wav: &[u8]) -> Result<(u16, u16), String> {
    let channels = wav.get(22..24).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let (Some(b"RIFF"), Some(2), Some(data)) = (wav.get(..4), channels, wav.get(44..)) else {
        return Err("call: the recording is not a two-channel WAV".into());
    };
    let peak = |side: usize| {
        data.chunks_exact(4).map(|s| i16::from_le_bytes([s[side * 2], s[side * 2 + 1]]).unsigned_abs()).max().unwrap_or(0)
    };
    Ok((peak(0), peak(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_peaks_reads_each_side() {
        let mut wav = b"RIFF".to_vec();
        wav.resize(44, 0);
        wav[22] = 2;
        for (l, r) in [(100i16, -3000i16), (-200, 5)] {
            wav.extend_from_slice(&l.to_le_bytes());
            wav.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(channel_peaks(&wav), Ok((200, 3000)));
        wav[22] = 1;
        assert!(channel_peaks(&wav).is_err());
        assert!(channel_peaks(b"RIFF").is_err());
    }
}
