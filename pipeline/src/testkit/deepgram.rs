//! A local server speaking Deepgram's live transcription protocol (`/v1/listen`), with
//! transcripts from a script instead of a model.
//!
//! Message shapes follow Deepgram's documentation (developers.deepgram.com): the "Live Audio"
//! reference for `Results` (`type`, `channel_index`, `duration`, `start`, `is_final`,
//! `speech_final`, `from_finalize`, `channel.alternatives[].{transcript,confidence,words}`,
//! `metadata.{request_id,model_info,model_uuid}`) and `Metadata`; the "Utterance End",
//! "Speech Started", "Finalize", "Close Stream" and "Audio Keep Alive" pages for those
//! messages and for the close after 10 s without data (code 1011, `NET-0001`); refused
//! credentials are a 401 with Deepgram's error body (`err_code`, `err_msg`, `request_id`).
//!
//! Every connection plays the same [`DeepgramConfig::script`], so one server serves a whole
//! load test; each connection's handshake, audio and control messages are recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use compio::net::TcpStream;
use compio::ws::tungstenite::Message;
use compio::ws::tungstenite::protocol::CloseFrame;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::ws::{self, Handshake, Records, Refusal, Server, Socket};

/// When a scripted reply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// As soon as the connection is up.
    Connected,
    /// Once this many milliseconds of mu-law audio (8 bytes a millisecond) have arrived.
    AudioMs(u32),
    /// When the client sends `Finalize`.
    Finalize,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `Results` with `is_final: false`.
    Interim(String),
    /// `Results` with `is_final: true`.
    Final {
        /// The transcript.
        text: String,
        /// Deepgram's endpointing decided the speaker finished.
        speech_final: bool,
    },
    /// `SpeechStarted`.
    SpeechStarted,
    /// `UtteranceEnd`.
    UtteranceEnd,
    /// An `Error` message, then a close (1011).
    Error {
        /// What went wrong.
        description: String,
    },
    /// This text frame, as is (e.g. malformed JSON).
    Raw(String),
    /// A close frame with this code and reason; the connection ends.
    Close {
        /// The close code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// The TCP connection is dropped without a close frame.
    Hangup,
}

/// One scripted reply and its trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// When.
    pub when: When,
    /// What.
    pub reply: Reply,
}

impl Step {
    /// `reply` once `ms` of audio have arrived.
    pub fn after_audio_ms(ms: u32, reply: Reply) -> Step {
        Step { when: When::AudioMs(ms), reply }
    }

    /// `reply` when the client sends `Finalize`.
    pub fn on_finalize(reply: Reply) -> Step {
        Step { when: When::Finalize, reply }
    }

    /// `reply` as soon as the connection is up.
    pub fn on_connect(reply: Reply) -> Step {
        Step { when: When::Connected, reply }
    }
}

/// How the server behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepgramConfig {
    /// The replies each connection gets, in order: a step waits for its trigger, and the
    /// steps after it wait for it. Each `Finalize` takes one `Finalize` step; a `Finalize`
    /// with no `Finalize` step next is answered with an empty final result marked
    /// `from_finalize`.
    pub script: Vec<Step>,
    /// When set, a handshake without `Authorization: Token <this>` is refused with 401.
    pub api_key: Option<String>,
    /// A connection that sends nothing for this long is closed (Deepgram: 10 s).
    pub idle_timeout: Duration,
}

impl Default for DeepgramConfig {
    fn default() -> DeepgramConfig {
        DeepgramConfig { script: Vec::new(), api_key: None, idle_timeout: Duration::from_secs(10) }
    }
}

impl DeepgramConfig {
    /// A caller who says `turns` in order, one per `ms_per_turn` of audio: for each turn
    /// `SpeechStarted`, an interim result with the first half of the words halfway through,
    /// then the final result with `speech_final` and an `UtteranceEnd` at the turn's end.
    pub fn turns(turns: &[&str], ms_per_turn: u32) -> DeepgramConfig {
        let ms_per_turn = ms_per_turn.max(4);
        let mut script = Vec::new();
        for (i, text) in (0u32..).zip(turns) {
            let start = i * ms_per_turn;
            let end = start + ms_per_turn;
            let words: Vec<&str> = text.split_whitespace().collect();
            script.push(Step::after_audio_ms(start + ms_per_turn / 4, Reply::SpeechStarted));
            if words.len() > 1 {
                let half = words[..words.len() / 2].join(" ");
                script.push(Step::after_audio_ms(end - ms_per_turn / 2, Reply::Interim(half)));
            }
            script.push(Step::after_audio_ms(end, Reply::Final { text: text.to_string(), speech_final: true }));
            script.push(Step::after_audio_ms(end, Reply::UtteranceEnd));
        }
        DeepgramConfig { script, ..DeepgramConfig::default() }
    }
}

/// What one connection sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeepgramConnection {
    /// The handshake: path, query, `Authorization`.
    pub handshake: Handshake,
    /// Bytes of audio received.
    pub audio_bytes: usize,
    /// Text messages received: the `type` of each control message (`KeepAlive`, `Finalize`,
    /// `CloseStream`), or the whole text when it has none.
    pub controls: Vec<String>,
    /// Whether the connection is still open.
    pub open: bool,
}

impl DeepgramConnection {
    /// How many control messages of type `kind` arrived.
    pub fn count(&self, kind: &str) -> usize {
        self.controls.iter().filter(|c| *c == kind).count()
    }
}

/// A running Deepgram test server; dropping it stops it.
#[derive(Debug)]
pub struct DeepgramServer {
    server: Server,
    records: Records<DeepgramConnection>,
}

impl DeepgramServer {
    /// Starts a server on 127.0.0.1 on its own thread.
    pub fn start(config: DeepgramConfig) -> std::io::Result<DeepgramServer> {
        let records = Records::new();
        let config = Arc::new(config);
        let shared = records.clone();
        let server = Server::start("deepgram-test", move |stream| {
            connection(stream, Arc::clone(&config), shared.clone())
        })?;
        Ok(DeepgramServer { server, records })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Its root as a URL, for `stt.base_url`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every connection so far, oldest first.
    pub fn connections(&self) -> Vec<DeepgramConnection> {
        self.records.snapshot()
    }

    /// Waits until `done` holds for the connections or `within` passes; whether it held.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[DeepgramConnection]) -> bool) -> bool {
        self.records.wait_until(within, done).await
    }
}

/// The per-connection state that shapes replies.
struct Session {
    id: usize,
    audio_bytes: usize,
    /// Where the last final result ended, in seconds of audio.
    finalized: f64,
}

impl Session {
    fn now(&self) -> f64 {
        self.audio_bytes as f64 / 8000.0
    }

    fn request_id(&self) -> String {
        format!("00000000-0000-4000-8000-{:012x}", self.id)
    }

    fn results(&mut self, text: &str, is_final: bool, speech_final: bool, from_finalize: bool) -> String {
        let start = self.finalized;
        let duration = (self.now() - start).max(0.0);
        let words: Vec<&str> = text.split_whitespace().collect();
        let step = duration / words.len().max(1) as f64;
        let words: Vec<Value> = (0u32..)
            .zip(&words)
            .map(|(i, w)| {
                let bare: String = w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect();
                json!({
                    "word": bare.to_lowercase(), "start": start + f64::from(i) * step,
                    "end": start + f64::from(i + 1) * step, "confidence": 0.99, "punctuated_word": w,
                })
            })
            .collect();
        if is_final {
            self.finalized = self.now();
        }
        json!({
            "type": "Results",
            "channel_index": [0, 1],
            "duration": duration,
            "start": start,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": { "alternatives": [{ "transcript": text, "confidence": 0.99, "words": words }] },
            "metadata": {
                "request_id": self.request_id(),
                "model_info": { "name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3" },
                "model_uuid": "00000000-0000-4000-8000-000000000003",
            },
        })
        .to_string()
    }

    fn metadata(&self) -> String {
        json!({
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id(),
            "sha256": "0".repeat(64),
            "created": "2025-01-01T00:00:00.000Z",
            "duration": self.now(),
            "channels": 1,
            "models": ["00000000-0000-4000-8000-000000000003"],
            "model_info": { "00000000-0000-4000-8000-000000000003":
                { "name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3" } },
        })
        .to_string()
    }
}

/// Whether the connection goes on after a reply.
enum Flow {
    Continue,
    End,
}

async fn connection(stream: TcpStream, config: Arc<DeepgramConfig>, records: Records<DeepgramConnection>) {
    let check = |h: &Handshake| match &config.api_key {
        Some(key) if h.header("authorization") != Some(format!("Token {key}").as_str()) => Err(Refusal {
            status: 401,
            body: json!({ "err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.",
                "request_id": "00000000-0000-4000-8000-000000000000" })
            .to_string(),
        }),
        _ => Ok(()),
    };
    let Some((mut socket, handshake)) = ws::accept(stream, check).await else { return };
    let id = records.add(DeepgramConnection { handshake, open: true, ..DeepgramConnection::default() });
    let mut session = Session { id, audio_bytes: 0, finalized: 0.0 };
    let mut script = config.script.iter().peekable();
    'conn: loop {
        // Every step that is due, in order.
        while let Some(step) = script.next_if(|s| match s.when {
            When::Connected => true,
            When::AudioMs(ms) => session.audio_bytes >= ms as usize * 8,
            When::Finalize => false,
        }) {
            if let Flow::End = reply(&mut socket, &mut session, &step.reply, false).await {
                break 'conn;
            }
        }
        let message = match compio::time::timeout(config.idle_timeout, socket.next()).await {
            Err(_) => {
                let reason = "Deepgram did not receive audio data or a text message within the timeout window. \
                              See https://dpgr.am/net0001";
                ws::close(&mut socket, Some(CloseFrame { code: 1011.into(), reason: reason.into() })).await;
                break;
            }
            Ok(Some(Ok(message))) => message,
            Ok(_) => break,
        };
        match message {
            Message::Binary(audio) => {
                session.audio_bytes += audio.len();
                records.update(id, |c| c.audio_bytes = session.audio_bytes);
            }
            Message::Text(text) => {
                let kind = serde_json::from_str::<Value>(text.as_str())
                    .ok()
                    .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| text.to_string());
                records.update(id, |c| c.controls.push(kind.clone()));
                match kind.as_str() {
                    "Finalize" => {
                        let mut answered = false;
                        // One final result per Finalize, as Deepgram answers.
                        if let Some(step) = script.next_if(|s| s.when == When::Finalize) {
                            answered = true;
                            if let Flow::End = reply(&mut socket, &mut session, &step.reply, true).await {
                                break 'conn;
                            }
                        }
                        if !answered {
                            let empty = session.results("", true, false, true);
                            if socket.send(Message::text(empty)).await.is_err() {
                                break;
                            }
                        }
                    }
                    "CloseStream" => {
                        let _ = socket.send(Message::text(session.metadata())).await;
                        ws::close(&mut socket, None).await;
                        break;
                    }
                    _ => {}
                }
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    records.update(id, |c| c.open = false);
}

/// Sends one scripted reply.
async fn reply(socket: &mut Socket, session: &mut Session, reply: &Reply, from_finalize: bool) -> Flow {
    let text = match reply {
        Reply::Interim(text) => session.results(text, false, false, from_finalize),
        Reply::Final { text, speech_final } => session.results(text, true, *speech_final, from_finalize),
        Reply::SpeechStarted => {
            json!({ "type": "SpeechStarted", "channel": [0, 1], "timestamp": session.now() }).to_string()
        }
        Reply::UtteranceEnd => {
            json!({ "type": "UtteranceEnd", "channel": [0, 1], "last_word_end": session.finalized }).to_string()
        }
        Reply::Error { description } => {
            let error = json!({ "type": "Error", "description": description, "message": "",
                "variant": "DATA-0000" });
            let _ = socket.send(Message::text(error.to_string())).await;
            ws::close(socket, Some(CloseFrame { code: 1011.into(), reason: "DATA-0000".into() })).await;
            return Flow::End;
        }
        Reply::Raw(text) => text.clone(),
        Reply::Close { code, reason } => {
            ws::close(socket, Some(CloseFrame { code: (*code).into(), reason: reason.as_str().into() })).await;
            return Flow::End;
        }
        Reply::Hangup => return Flow::End,
    };
    match socket.send(Message::text(text)).await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::End,
    }
}
