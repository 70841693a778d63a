//! A Wyoming server for tests and the load benchmark: speech-to-text that answers each
//! utterance's `audio-stop` with a `transcript`, and text-to-speech that answers
//! `synthesize` with deterministic PCM ([`tts_audio`]).
//!
//! It follows the `wyoming` Python package (1.10.2) and the servers built on it
//! (`wyoming-faster-whisper` 3.8.1, `wyoming-piper` 2.5.2): events are framed by
//! [`crate::providers::wyoming::Frame`] (header line, data bytes, payload bytes); `describe`
//! gets an `info` listing one `asr` and one `tts` program; the speech-to-text side closes
//! the connection after its transcript, as faster-whisper's handler does by returning
//! `False` on `audio-stop`; the text-to-speech side sends `audio-start`, `audio-chunk`s of
//! 1,024 samples (Piper's default `--samples-per-chunk`) repeating the format, and
//! `audio-stop`, then waits for more requests on the same connection as Piper does.
//!
//! All connections are served by one compio runtime on its own thread; [`start`] returns
//! once the listener is bound, and dropping the [`WyomingServer`] stops it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use compio::net::{TcpListener, TcpStream};
use futures_util::future::select;
use serde_json::{Value, json};

use crate::providers::wyoming::{Connection, Frame};

/// What the speech-to-text side says for an utterance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transcript {
    /// Always this text.
    Fixed(String),
    /// `heard N milliseconds`, N from the audio received (16-bit mono at its announced rate).
    AudioLength,
}

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The transcript for each utterance.
    pub transcript: Transcript,
    /// The rate the text-to-speech side announces and produces.
    pub tts_rate: u32,
    /// Instead of its answer to `audio-stop` or `synthesize`, send these bytes and close
    /// (for malformed-input tests; `describe` is still answered properly).
    pub raw_answer: Option<Vec<u8>>,
}

impl Default for Options {
    fn default() -> Options {
        Options { transcript: Transcript::AudioLength, tts_rate: 22_050, raw_answer: None }
    }
}

/// One utterance the speech-to-text side received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Utterance {
    /// The connection it came on, counting accepted connections from 1.
    pub connection: usize,
    /// `transcribe`'s language.
    pub language: Option<String>,
    /// `audio-start`'s rate, width and channels.
    pub format: Option<(u32, u32, u32)>,
    /// Payload bytes of each `audio-chunk`.
    pub chunks: Vec<usize>,
    /// A few bytes of audio kept for checking: the first 64.
    pub head: Vec<u8>,
    /// Whether `audio-stop` arrived.
    pub stopped: bool,
}

/// One `synthesize` the text-to-speech side received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthesis {
    /// The text.
    pub text: String,
    /// The voice's name, if one was asked for.
    pub voice: Option<String>,
}

/// Everything the server has received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Log {
    /// Connections accepted.
    pub connections: usize,
    /// `describe` events.
    pub describes: usize,
    /// Utterances, in the order their connections were accepted.
    pub utterances: Vec<Utterance>,
    /// Synthesis requests, in order.
    pub syntheses: Vec<Synthesis>,
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct WyomingServer {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WyomingServer {
    /// The bound address (127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as a bot config's `base_url`: `tcp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// A copy of what has been received so far.
    pub fn log(&self) -> Log {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // Connections are served concurrently: a later one may be read first.
        log.utterances.sort_by_key(|u| u.connection);
        log
    }
}

impl Drop for WyomingServer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a server on 127.0.0.1 with an ephemeral port.
pub fn start(options: Options) -> std::io::Result<WyomingServer> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let log = Arc::new(Mutex::new(Log::default()));
    let (stop, stopped) = flume::bounded::<()>(1);
    let shared = log.clone();
    let thread = std::thread::Builder::new().name("wyoming-testkit".into()).spawn(move || {
        let Ok(runtime) = compio::runtime::Runtime::new() else { return };
        runtime.block_on(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            let options = Arc::new(options);
            let accept = std::pin::pin!(async {
                while let Ok((stream, _)) = listener.accept().await {
                    compio::runtime::spawn(serve(stream, options.clone(), shared.clone())).detach();
                }
            });
            let _ = select(accept, stopped.recv_async()).await;
        });
    })?;
    Ok(WyomingServer { addr, log, stop: Some(stop), thread: Some(thread) })
}

/// The audio the text-to-speech side makes for `text` at `rate`: 60 ms per character of a
/// sawtooth whose step depends on the character, as 16-bit little-endian mono PCM.
pub fn tts_audio(text: &str, rate: u32) -> Vec<u8> {
    let per_char = (rate as usize * 60) / 1000;
    let mut out = Vec::with_capacity(text.chars().count() * per_char * 2);
    for c in text.chars() {
        let step = (u32::from(c) % 50 + 1) as i32 * 100;
        for i in 0..per_char as i32 {
            let sample = ((i * step) % 16_000 - 8_000) as i16;
            out.extend_from_slice(&sample.to_le_bytes());
        }
    }
    out
}

/// Bytes per `audio-chunk` the text-to-speech side sends: 1,024 samples.
const TTS_CHUNK: usize = 2048;

fn record(log: &Mutex<Log>, f: impl FnOnce(&mut Log)) {
    f(&mut log.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Connection `connection`'s utterance in the log, added on first use.
fn slot(log: &mut Log, connection: usize, utterance: &mut Option<usize>) -> usize {
    *utterance.get_or_insert_with(|| {
        log.utterances.push(Utterance { connection, ..Utterance::default() });
        log.utterances.len() - 1
    })
}

async fn serve(stream: TcpStream, options: Arc<Options>, log: Arc<Mutex<Log>>) {
    let mut connection = 0;
    record(&log, |l| {
        l.connections += 1;
        connection = l.connections;
    });
    let mut conn = Connection::new(stream);
    // Index of this connection's utterance in the log, once it has one.
    let mut utterance: Option<usize> = None;
    let mut audio_bytes = 0usize;
    let mut rate = 16_000u32;
    // Malformed input or a closed connection ends the conversation; nothing here panics.
    while let Ok(Some(frame)) = conn.recv().await {
        match frame.kind.as_str() {
            "describe" => {
                record(&log, |l| l.describes += 1);
                if conn.send(&[info()]).await.is_err() {
                    return;
                }
            }
            "transcribe" => {
                let language = frame.str_field("language").map(str::to_string);
                record(&log, |l| {
                    let i = slot(l, connection, &mut utterance);
                    l.utterances[i].language = language;
                });
            }
            "audio-start" => {
                let format = (frame.u32_field("rate"), frame.u32_field("width"), frame.u32_field("channels"));
                if let (Some(r), Some(w), Some(c)) = format {
                    rate = r.max(1);
                    record(&log, |l| {
                        let i = slot(l, connection, &mut utterance);
                        l.utterances[i].format = Some((r, w, c));
                    });
                }
            }
            "audio-chunk" => {
                audio_bytes += frame.payload.len();
                record(&log, |l| {
                    let i = slot(l, connection, &mut utterance);
                    let u = &mut l.utterances[i];
                    u.chunks.push(frame.payload.len());
                    let room = 64usize.saturating_sub(u.head.len());
                    u.head.extend(frame.payload.iter().take(room));
                });
            }
            "audio-stop" => {
                record(&log, |l| {
                    let i = slot(l, connection, &mut utterance);
                    l.utterances[i].stopped = true;
                });
                if let Some(raw) = &options.raw_answer {
                    let _ = conn.send_raw(raw.clone()).await;
                    return;
                }
                let text = match &options.transcript {
                    Transcript::Fixed(text) => text.clone(),
                    Transcript::AudioLength => {
                        format!("heard {} milliseconds", audio_bytes as u64 * 1000 / (2 * u64::from(rate)))
                    }
                };
                let _ = conn.send(&[Frame::with_data("transcript", json!({ "text": text }))]).await;
                return;
            }
            "synthesize" => {
                let text = frame.str_field("text").unwrap_or_default().to_string();
                let voice =
                    frame.data.get("voice").and_then(|v| v.get("name")).and_then(Value::as_str).map(str::to_string);
                record(&log, |l| l.syntheses.push(Synthesis { text: text.clone(), voice }));
                if let Some(raw) = &options.raw_answer {
                    let _ = conn.send_raw(raw.clone()).await;
                    return;
                }
                let audio = tts_audio(&text, options.tts_rate);
                let mut frames = vec![Frame::audio("audio-start", options.tts_rate, Vec::new())];
                frames
                    .extend(audio.chunks(TTS_CHUNK).map(|c| Frame::audio("audio-chunk", options.tts_rate, c.to_vec())));
                frames.push(Frame::new("audio-stop"));
                if conn.send(&frames).await.is_err() {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// `info` as the real servers shape it, trimmed to what clients read.
fn info() -> Frame {
    let attribution = json!({ "name": "cxb testkit", "url": "" });
    Frame::with_data(
        "info",
        json!({
            "asr": [{
                "name": "testkit-asr", "description": "transcript from the audio's length",
                "attribution": attribution, "installed": true, "version": "1",
                "models": [{ "name": "test", "description": "test", "attribution": attribution,
                             "installed": true, "languages": ["en"], "version": "1" }],
                "supports_transcript_streaming": false,
            }],
            "tts": [{
                "name": "testkit-tts", "description": "deterministic PCM",
                "attribution": attribution, "installed": true, "version": "1",
                "voices": [{ "name": "test-voice", "description": "test", "attribution": attribution,
                             "installed": true, "languages": ["en"], "version": "1" }],
                "supports_synthesize_streaming": false,
            }],
        }),
    )
}
