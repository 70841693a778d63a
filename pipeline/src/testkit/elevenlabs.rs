//! A local server speaking ElevenLabs' stream-input protocol
//! (`/v1/text-to-speech/{voice_id}/stream-input`), with deterministic audio instead of a voice.
//!
//! Message shapes follow ElevenLabs' API reference "WebSocket" and its AsyncAPI definition
//! (elevenlabs/elevenlabs-docs, `fern/apis/api/asyncapi.yml`): the client's
//! InitializeConnection (`text` a single space), SendText (`text`, `flush`,
//! `try_trigger_generation`) and CloseConnection (`text` empty); the server's AudioOutput
//! (`audio` base64, `isFinal` null, `normalizedAlignment` and `alignment` with `chars`,
//! `charStartTimesMs`, `charDurationsMs`) and FinalOutput (`{"isFinal":true}`), then a normal
//! close. Errors are `{"message":…,"error":…,"code":1008}` and a 1008 close, with the messages
//! ElevenLabs sends for unparsable input and bad keys.
//!
//! Audio: [`expected_audio`] of the text, `bytes_per_char` bytes a character, split across
//! `chunks` messages. Each connection's handshake and messages are recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use compio::net::TcpStream;
use compio::ws::tungstenite::Message;
use compio::ws::tungstenite::protocol::CloseFrame;
use cxb_codecs::payload;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::ws::{self, Handshake, Records, Server, Socket};

/// A way for the server to misbehave when it should send audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElevenLabsFault {
    /// Sends a text frame that is not JSON.
    Malformed,
    /// Sends an error message (`quota_exceeded`) and closes with 1008.
    ErrorMessage,
    /// Sends the first audio chunk, then drops the connection without a close frame.
    HangUp,
    /// Never answers (the client has to give up or cancel).
    Silent,
}

/// How the server behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElevenLabsConfig {
    /// Bytes of audio per character of text (80: 10 ms of 8 kHz mu-law).
    pub bytes_per_char: usize,
    /// How many audio messages a generation is split into (at most one per character).
    pub chunks: usize,
    /// When set, connections must present this key (header `xi-api-key`, or `xi_api_key` in the
    /// first message).
    pub api_key: Option<String>,
    /// Misbehaviour, if any.
    pub fault: Option<ElevenLabsFault>,
    /// How long a connection may send nothing before the server gives up on it (error
    /// `input_timeout_exceeded`, then a 1008 close). `None`: the query's `inactivity_timeout`
    /// seconds, or ElevenLabs' default of 20.
    pub inactivity_timeout: Option<Duration>,
}

impl Default for ElevenLabsConfig {
    fn default() -> ElevenLabsConfig {
        ElevenLabsConfig { bytes_per_char: 80, chunks: 3, api_key: None, fault: None, inactivity_timeout: None }
    }
}

/// What one connection sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ElevenLabsConnection {
    /// The handshake: path, query, `xi-api-key`.
    pub handshake: Handshake,
    /// The voice id from the path.
    pub voice_id: String,
    /// The messages received, parsed (an unparsable one is kept as a JSON string).
    pub messages: Vec<Value>,
    /// The text synthesised, as the generations took it (trimmed, joined with spaces).
    pub text: String,
    /// Bytes of audio sent back.
    pub audio_bytes: usize,
    /// Whether the connection is still open.
    pub open: bool,
}

/// The audio the server sends for `text`: for each character, `bytes_per_char` copies of its
/// code's low byte.
pub fn expected_audio(text: &str, bytes_per_char: usize) -> Vec<u8> {
    text.chars().flat_map(|c| std::iter::repeat_n((u32::from(c) & 0xff) as u8, bytes_per_char)).collect()
}

/// A running ElevenLabs test server; dropping it stops it.
#[derive(Debug)]
pub struct ElevenLabsServer {
    server: Server,
    records: Records<ElevenLabsConnection>,
}

impl ElevenLabsServer {
    /// Starts a server on 127.0.0.1 on its own thread.
    pub fn start(config: ElevenLabsConfig) -> std::io::Result<ElevenLabsServer> {
        let records = Records::new();
        let config = Arc::new(config);
        let shared = records.clone();
        let server = Server::start("elevenlabs-test", move |stream| {
            connection(stream, Arc::clone(&config), shared.clone())
        })?;
        Ok(ElevenLabsServer { server, records })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Its root as a URL, for `tts.base_url`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every connection so far, oldest first (pre-opened sockets that never spoke included).
    pub fn connections(&self) -> Vec<ElevenLabsConnection> {
        self.records.snapshot()
    }

    /// The connections that received text to speak.
    pub fn spoken(&self) -> Vec<ElevenLabsConnection> {
        self.connections().into_iter().filter(|c| c.messages.len() > 1).collect()
    }

    /// Waits until `done` holds for the connections or `within` passes; whether it held.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[ElevenLabsConnection]) -> bool) -> bool {
        self.records.wait_until(within, done).await
    }
}

fn error_message(message: &str, error: &str) -> Message {
    Message::text(json!({ "message": message, "error": error, "code": 1008 }).to_string())
}

fn policy_close(reason: &str) -> Option<CloseFrame> {
    Some(CloseFrame { code: 1008.into(), reason: reason.into() })
}

/// Whether the connection goes on.
enum Flow {
    Continue,
    End,
}

async fn connection(stream: TcpStream, config: Arc<ElevenLabsConfig>, records: Records<ElevenLabsConnection>) {
    let Some((mut socket, handshake)) = ws::accept(stream, |_| Ok(())).await else { return };
    let voice_id = handshake
        .path
        .strip_prefix("/v1/text-to-speech/")
        .and_then(|rest| rest.strip_suffix("/stream-input"))
        .unwrap_or_default()
        .to_string();
    let header_key = handshake.header("xi-api-key").map(str::to_string);
    let inactivity = config.inactivity_timeout.unwrap_or_else(|| {
        let seconds = handshake.param("inactivity_timeout").and_then(|s| s.parse().ok()).unwrap_or(20u64);
        Duration::from_secs(seconds)
    });
    let id = records.add(ElevenLabsConnection { handshake, voice_id, open: true, ..ElevenLabsConnection::default() });
    let mut buffer = String::new();
    let mut initialized = false;
    loop {
        let message = match compio::time::timeout(inactivity, socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) => break,
            Err(_) => {
                let message = format!(
                    "Have not received a new text input within the timeout of {:.1} seconds. Streaming input \
                     terminated. Please make sure to either feed the input in the timely manner, or to send the \
                     end of input text (empty string \"\") when done.",
                    inactivity.as_secs_f64()
                );
                let _ = socket.send(error_message(&message, "input_timeout_exceeded")).await;
                ws::close(&mut socket, policy_close("input_timeout_exceeded")).await;
                break;
            }
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
            records.update(id, |c| c.messages.push(Value::String(text.to_string())));
            let message = "Could not parse input message, make sure it is a json and follows the schema outlined in protocol.";
            let _ = socket.send(error_message(message, "invalid_input_message")).await;
            ws::close(&mut socket, policy_close("invalid_input_message")).await;
            break;
        };
        records.update(id, |c| c.messages.push(value.clone()));
        let said = value.get("text").and_then(Value::as_str).unwrap_or_default();
        if !initialized {
            initialized = true;
            let body_key = value.get("xi_api_key").or_else(|| value.get("xi-api-key")).and_then(Value::as_str);
            if let Some(key) = &config.api_key
                && header_key.as_deref() != Some(key.as_str())
                && body_key != Some(key.as_str())
            {
                let _ = socket.send(error_message("Invalid API key", "invalid_api_key")).await;
                ws::close(&mut socket, policy_close("invalid_api_key")).await;
                break;
            }
            continue;
        }
        if said.is_empty() {
            if config.fault == Some(ElevenLabsFault::Silent) {
                continue;
            }
            if let Flow::End = generate(&mut socket, &config, &records, id, &mut buffer).await {
                break;
            }
            let _ = socket.send(Message::text(r#"{"isFinal":true}"#)).await;
            ws::close(&mut socket, None).await;
            break;
        }
        buffer.push_str(said);
        let now = [value.get("flush"), value.get("try_trigger_generation")]
            .iter()
            .any(|v| v.and_then(|v| v.as_bool()) == Some(true));
        if now && let Flow::End = generate(&mut socket, &config, &records, id, &mut buffer).await {
            break;
        }
    }
    records.update(id, |c| c.open = false);
}

/// Sends the audio for the buffered text, as the config says.
async fn generate(
    socket: &mut Socket,
    config: &ElevenLabsConfig,
    records: &Records<ElevenLabsConnection>,
    id: usize,
    buffer: &mut String,
) -> Flow {
    let text = std::mem::take(buffer).trim().to_string();
    if text.is_empty() {
        return Flow::Continue;
    }
    records.update(id, |c| {
        if !c.text.is_empty() {
            c.text.push(' ');
        }
        c.text.push_str(&text);
    });
    match config.fault {
        Some(ElevenLabsFault::Malformed) => {
            let _ = socket.send(Message::text("{\"audio\": <not json>")).await;
            return Flow::Continue;
        }
        Some(ElevenLabsFault::ErrorMessage) => {
            let message = "This request exceeds your quota. You have 0 credits remaining.";
            let _ = socket.send(error_message(message, "quota_exceeded")).await;
            ws::close(socket, policy_close("quota_exceeded")).await;
            return Flow::End;
        }
        Some(ElevenLabsFault::Silent) => return Flow::Continue,
        Some(ElevenLabsFault::HangUp) | None => {}
    }
    let chars: Vec<char> = text.chars().collect();
    let chunks = config.chunks.clamp(1, chars.len());
    let char_ms = (config.bytes_per_char / 8) as u64;
    for k in 0..chunks {
        let part = &chars[k * chars.len() / chunks..(k + 1) * chars.len() / chunks];
        let part_text: String = part.iter().collect();
        let audio = expected_audio(&part_text, config.bytes_per_char);
        let alignment = json!({
            "chars": part.iter().map(char::to_string).collect::<Vec<_>>(),
            "charStartTimesMs": (0..part.len() as u64).map(|i| i * char_ms).collect::<Vec<_>>(),
            "charDurationsMs": vec![char_ms; part.len()],
        });
        let mut b64 = String::new();
        payload::encode_into(&audio, &mut b64);
        let message = json!({
            "audio": b64,
            "isFinal": null,
            "normalizedAlignment": alignment,
            "alignment": alignment,
        });
        if socket.send(Message::text(message.to_string())).await.is_err() {
            return Flow::End;
        }
        records.update(id, |c| c.audio_bytes += audio.len());
        if config.fault == Some(ElevenLabsFault::HangUp) {
            return Flow::End;
        }
    }
    Flow::Continue
}
