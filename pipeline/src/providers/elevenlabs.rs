//! ElevenLabs streaming text-to-speech: one WebSocket per sentence to
//! `/v1/text-to-speech/{voice_id}/stream-input`, audio in the carrier's format (`ulaw_8000` by
//! default) so it plays without conversion.
//!
//! Follows ElevenLabs' documentation: the API reference page "WebSocket"
//! (elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-stream-input)
//! and its AsyncAPI definition (elevenlabs/elevenlabs-docs, `fern/apis/api/asyncapi.yml`):
//! header `xi-api-key`; query `model_id`, `output_format`, `auto_mode` (whole sentences are
//! sent, so no chunk schedule is wanted) and `inactivity_timeout`; client messages
//! InitializeConnection `{"text":" ","voice_settings":{…}}`, SendText
//! `{"text":"… ","flush":true}` and CloseConnection `{"text":""}`; server messages
//! AudioOutput `{"audio":"<base64>","normalizedAlignment":{…},"alignment":{…}}` and
//! FinalOutput `{"isFinal":true}`. Errors arrive as `{"message":…,"error":…,"code":1008}`
//! and a close (the shape ElevenLabs' maintainers quote in their SDKs' issue trackers).
//!
//! Sentence latency: unless the option `prewarm` is `false`, each sentence opens the socket
//! for the next one while it plays, so the next sentence skips the TCP, TLS and WebSocket
//! handshakes. A pre-opened socket is used only while younger than [`WARM_MAX_AGE`] (the
//! server drops idle sockets after `inactivity_timeout`), and a sentence that fails on a
//! pre-opened socket before any audio came retries once on a fresh one.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use compio::ws::tungstenite::Message;
use cxb_codecs::payload;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ws::{self, Socket};
use crate::config::BotConfig;
use crate::provider::{AudioFormat, Event, Events, Job, ProviderError, TtsEvent, TtsProvider};

/// ElevenLabs' hosted API.
const DEFAULT_ORIGIN: &str = "wss://api.elevenlabs.io";
/// How long the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may stay silent while a sentence is being synthesised.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds of silence after which the server closes a socket (the query's
/// `inactivity_timeout`; ElevenLabs allows up to 180).
const INACTIVITY_TIMEOUT_S: u64 = 60;
/// The oldest pre-opened socket a sentence will use.
pub const WARM_MAX_AGE: Duration = Duration::from_secs(INACTIVITY_TIMEOUT_S - 10);

/// ElevenLabs streaming synthesis, configured from a bot.
///
/// Settings: the voice from the bot's `voice` or the option `voice_id` (required);
/// `tts.model` (default `eleven_flash_v2_5`); the option `output_format` (`ulaw_8000`, the
/// default, or `pcm_8000`, `pcm_16000`, `pcm_22050`, `pcm_24000`, `pcm_44100`, `pcm_48000`);
/// the option `voice_settings` (an object sent as is, e.g. `{"stability":0.5,
/// "similarity_boost":0.8}`; without it the voice's saved settings apply); the option
/// `language_code`; `tts.base_url` (a server root, default `wss://api.elevenlabs.io`);
/// `tts.secrets.api_key` (required for the hosted API); the option `prewarm` (default true).
#[derive(Debug, Clone)]
pub struct ElevenLabs {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    api_key: Option<String>,
    format: AudioFormat,
    /// The InitializeConnection message.
    init: String,
    /// The socket opened for the next sentence, when pre-opening is on.
    warm: Option<Rc<Warm>>,
}

/// A socket opened ahead of the next sentence.
#[derive(Default)]
struct Warm {
    socket: RefCell<Option<(Instant, Socket)>>,
    connecting: Cell<bool>,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("ready", &self.socket.borrow().is_some())
            .field("connecting", &self.connecting.get())
            .finish()
    }
}

impl ElevenLabs {
    /// From the bot's config.
    pub fn from_config(bot: &BotConfig) -> Result<ElevenLabs, ProviderError> {
        let tts = &bot.tts;
        let voice = bot
            .voice
            .as_deref()
            .filter(|v| !v.is_empty())
            .or_else(|| tts.option_str("voice_id").filter(|v| !v.is_empty()))
            .ok_or_else(|| ProviderError::invalid("voice", "ElevenLabs needs a voice id"))?;
        let origin = match tts.base_url.as_deref() {
            Some(base) => ws::ws_origin(base).ok_or_else(|| {
                ProviderError::invalid("tts.base_url", "must be a ws://, wss://, http:// or https:// URL")
            })?,
            None => DEFAULT_ORIGIN.to_string(),
        };
        let api_key = tts.api_key().filter(|k| !k.is_empty()).map(str::to_string);
        if api_key.as_deref().is_some_and(|k| !ws::is_header_token(k)) {
            return Err(ProviderError::invalid("tts.secrets.api_key", "must be printable ASCII without spaces"));
        }
        if api_key.is_none() && tts.base_url.is_none() {
            return Err(ProviderError::invalid("tts.secrets.api_key", "required for ElevenLabs' hosted API"));
        }
        let model = tts.model.as_deref().filter(|m| !m.is_empty()).unwrap_or("eleven_flash_v2_5");
        let output = tts.option_str("output_format").unwrap_or("ulaw_8000");
        let format = output_format(output).ok_or_else(|| {
            ProviderError::invalid("tts.options.output_format", format!("`{output}` is not ulaw_8000 or pcm_RATE"))
        })?;
        let mut url = format!(
            "{origin}/v1/text-to-speech/{}/stream-input?model_id={}&output_format={}&auto_mode=true\
             &inactivity_timeout={INACTIVITY_TIMEOUT_S}",
            ws::escape(voice),
            ws::escape(model),
            ws::escape(output),
        );
        if let Some(language) = tts.option_str("language_code") {
            url.push_str(&format!("&language_code={}", ws::escape(language)));
        }
        let mut init = json!({ "text": " " });
        match tts.options.get("voice_settings") {
            None | Some(Value::Null) => {}
            Some(settings @ Value::Object(_)) => init["voice_settings"] = settings.clone(),
            Some(_) => return Err(ProviderError::invalid("tts.options.voice_settings", "must be an object")),
        }
        let prewarm = match tts.options.get("prewarm") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ProviderError::invalid("tts.options.prewarm", "must be true or false")),
        };
        let inner = Inner {
            url,
            api_key,
            format,
            init: init.to_string(),
            warm: prewarm.then(Rc::default),
        };
        inner.request().map_err(|e| ProviderError::invalid("tts.base_url", e))?;
        Ok(ElevenLabs { inner: Rc::new(inner) })
    }

    /// The URL sentences connect to, query included.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Whether a socket is open and waiting for the next sentence.
    pub fn prewarmed(&self) -> bool {
        self.inner.warm.as_ref().is_some_and(|w| w.socket.borrow().is_some())
    }
}

/// The audio an ElevenLabs `output_format` names, for the raw formats a call can play.
pub fn output_format(name: &str) -> Option<AudioFormat> {
    match name {
        "ulaw_8000" => Some(AudioFormat::Mulaw8k),
        _ => {
            let rate: u32 = name.strip_prefix("pcm_")?.parse().ok()?;
            [8000, 16000, 22050, 24000, 44100, 48000].contains(&rate).then_some(AudioFormat::Pcm16(rate))
        }
    }
}

impl TtsProvider for ElevenLabs {
    fn output_format(&self) -> AudioFormat {
        self.inner.format
    }

    fn synthesize(&self, sentence: u64, text: String, events: Events) -> Job {
        let inner = Rc::clone(&self.inner);
        compio::runtime::spawn(async move {
            if let Err(reason) = inner.speak(sentence, text.trim(), &events).await {
                events.push(Event::Tts { sentence, event: TtsEvent::Error(format!("ElevenLabs: {reason}")) });
            }
        })
    }
}

/// Why a sentence failed; `retry` when no audio had come yet, so another socket may try.
struct Failure {
    reason: String,
    retry: bool,
}

impl Inner {
    fn request(&self) -> Result<ws::Request, String> {
        let headers: Vec<(&'static str, &str)> =
            self.api_key.as_deref().map(|key| ("xi-api-key", key)).into_iter().collect();
        ws::request(&self.url, &headers)
    }

    async fn connect(&self) -> Result<Socket, String> {
        ws::connect(self.request()?, CONNECT_TIMEOUT).await
    }

    /// Synthesises one sentence: audio and `Done` go to `events`, a failure comes back.
    async fn speak(self: Rc<Self>, sentence: u64, text: &str, events: &Events) -> Result<(), String> {
        if text.is_empty() {
            events.push(Event::Tts { sentence, event: TtsEvent::Done });
            return Ok(());
        }
        let warm = self.take_warm();
        self.refill();
        let was_warm = warm.is_some();
        let socket = match warm {
            Some(socket) => socket,
            None => self.connect().await?,
        };
        match self.exchange(socket, sentence, text, events).await {
            Err(Failure { retry: true, .. }) if was_warm => {
                let socket = self.connect().await?;
                self.exchange(socket, sentence, text, events).await.map_err(|f| f.reason)
            }
            outcome => outcome.map_err(|f| f.reason),
        }
    }

    /// The pre-opened socket, if there is one young enough.
    fn take_warm(&self) -> Option<Socket> {
        let (opened, socket) = self.warm.as_ref()?.socket.borrow_mut().take()?;
        (opened.elapsed() < WARM_MAX_AGE).then_some(socket)
    }

    /// Starts opening a socket for the next sentence, unless one is open or opening.
    fn refill(self: &Rc<Self>) {
        let Some(warm) = &self.warm else { return };
        if warm.connecting.get() || warm.socket.borrow().is_some() {
            return;
        }
        warm.connecting.set(true);
        let inner: Weak<Inner> = Rc::downgrade(self);
        compio::runtime::spawn(async move {
            let Some(request) = inner.upgrade().map(|i| i.request()) else { return };
            let socket = match request {
                Ok(request) => ws::connect(request, CONNECT_TIMEOUT).await.ok(),
                Err(_) => None,
            };
            if let Some(warm) = inner.upgrade().and_then(|i| i.warm.clone()) {
                warm.connecting.set(false);
                if let Some(socket) = socket {
                    *warm.socket.borrow_mut() = Some((Instant::now(), socket));
                }
            }
        })
        .detach();
    }

    /// Sends the sentence on `socket` and passes its audio on until the final message.
    async fn exchange(&self, mut socket: Socket, sentence: u64, text: &str, events: &Events) -> Result<(), Failure> {
        let failed = |reason: String, delivered: bool| Failure { reason, retry: !delivered };
        let speak = json!({ "text": format!("{text} "), "flush": true }).to_string();
        // A send fails when the server has closed; what it said before closing, read below,
        // is the better explanation.
        let mut send_error = None;
        for message in [Message::text(self.init.as_str()), Message::text(speak), Message::text(r#"{"text":""}"#)] {
            if let Err(e) = socket.send(message).await {
                send_error = Some(ws::describe_error(&e));
                break;
            }
        }
        let mut delivered = false;
        loop {
            let next = compio::time::timeout(REPLY_TIMEOUT, socket.next()).await.map_err(|_| Failure {
                reason: format!("no reply within {} s", REPLY_TIMEOUT.as_secs()),
                retry: false,
            })?;
            let message = match next {
                None => {
                    let reason = "the server closed the connection before the final message";
                    return Err(failed(send_error.unwrap_or_else(|| reason.into()), delivered));
                }
                Some(Err(e)) => return Err(failed(send_error.unwrap_or_else(|| ws::describe_error(&e)), delivered)),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => {
                    match parse_message(text.as_str()).map_err(|e| failed(e.to_string(), delivered))? {
                        ServerMessage::Error(reason) => return Err(failed(reason, delivered)),
                        ServerMessage::Output { audio, is_final } => {
                            if !audio.is_empty() {
                                delivered = true;
                                events.push(Event::Tts { sentence, event: TtsEvent::Audio(audio) });
                            }
                            if is_final {
                                events.push(Event::Tts { sentence, event: TtsEvent::Done });
                                let _ = socket.close(None).await;
                                return Ok(());
                            }
                        }
                    }
                }
                Message::Close(frame) if ws::is_normal_close(frame.as_ref()) => {
                    events.push(Event::Tts { sentence, event: TtsEvent::Done });
                    return Ok(());
                }
                Message::Close(frame) => return Err(failed(ws::describe_close(frame.as_ref()), delivered)),
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

/// A message from the stream-input endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// AudioOutput or FinalOutput: decoded audio (empty when the message had none) and
    /// whether generation is complete.
    Output {
        /// Audio in the requested `output_format`.
        audio: Vec<u8>,
        /// `isFinal`: no more audio follows.
        is_final: bool,
    },
    /// The server refused or gave up (it closes the socket next).
    Error(String),
}

/// A server message that is not what ElevenLabs documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct ParseError(String);

#[derive(Deserialize)]
struct Raw {
    audio: Option<String>,
    #[serde(rename = "isFinal")]
    is_final: Option<bool>,
    message: Option<String>,
    error: Option<String>,
}

/// Parses one text message from the stream-input endpoint.
pub fn parse_message(text: &str) -> Result<ServerMessage, ParseError> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| ParseError(e.to_string()))?;
    let mut audio = Vec::new();
    if let Some(b64) = raw.audio.as_deref() {
        payload::decode_into(b64, &mut audio).map_err(|e| ParseError(format!("audio: {e}")))?;
    }
    let is_final = raw.is_final.unwrap_or(false);
    if audio.is_empty() && !is_final && (raw.message.is_some() || raw.error.is_some()) {
        let reason = match (raw.message, raw.error) {
            (Some(message), Some(error)) => format!("{message} ({error})"),
            (Some(reason), None) | (None, Some(reason)) => reason,
            (None, None) => String::new(),
        };
        return Ok(ServerMessage::Error(reason));
    }
    Ok(ServerMessage::Output { audio, is_final })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            parse_message(r#"{"audio":"AAEC","isFinal":null,"normalizedAlignment":{"chars":["a"]}}"#),
            Ok(ServerMessage::Output { audio: vec![0, 1, 2], is_final: false })
        );
        assert_eq!(parse_message(r#"{"isFinal":true}"#), Ok(ServerMessage::Output { audio: vec![], is_final: true }));
        assert_eq!(
            parse_message(r#"{"audio":null,"isFinal":true,"alignment":null}"#),
            Ok(ServerMessage::Output { audio: vec![], is_final: true })
        );
        assert_eq!(
            parse_message(r#"{"message":"Have not received a new text input","error":"input_timeout_exceeded","code":1008}"#),
            Ok(ServerMessage::Error("Have not received a new text input (input_timeout_exceeded)".into()))
        );
        assert!(parse_message(r#"{"audio":"not base64!"}"#).is_err());
        assert!(parse_message(r#"{"audio":3}"#).is_err());
        assert!(parse_message("[]").is_err());
        assert!(parse_message("").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(output_format("ulaw_8000"), Some(AudioFormat::Mulaw8k));
        assert_eq!(output_format("pcm_16000"), Some(AudioFormat::Pcm16(16000)));
        assert_eq!(output_format("pcm_12345"), None);
        assert_eq!(output_format("mp3_44100_128"), None);
    }

    #[test]
    fn config() {
        let mut bot: BotConfig = serde_json::from_str(
            r#"{"voice":"v 1","tts":{"provider":"elevenlabs","secrets":{"api_key":"k"},
                "options":{"voice_settings":{"stability":0.5,"similarity_boost":0.8}}}}"#,
        )
        .expect("bot");
        let e = ElevenLabs::from_config(&bot).expect("valid");
        assert_eq!(
            e.url(),
            "wss://api.elevenlabs.io/v1/text-to-speech/v%201/stream-input?model_id=eleven_flash_v2_5\
             &output_format=ulaw_8000&auto_mode=true&inactivity_timeout=60"
        );
        assert_eq!(e.output_format(), AudioFormat::Mulaw8k);
        let init: Value = serde_json::from_str(&e.inner.init).expect("json");
        assert_eq!(init, json!({"text":" ","voice_settings":{"stability":0.5,"similarity_boost":0.8}}));
        bot.tts.options.insert("output_format".into(), "pcm_16000".into());
        assert_eq!(ElevenLabs::from_config(&bot).expect("valid").output_format(), AudioFormat::Pcm16(16000));
        bot.tts.options.insert("output_format".into(), "mp3_44100".into());
        assert!(ElevenLabs::from_config(&bot).is_err());
        bot.tts.options.clear();
        bot.voice = None;
        assert!(ElevenLabs::from_config(&bot).is_err(), "no voice");
        bot.tts.options.insert("voice_id".into(), "abc".into());
        bot.tts.secrets.clear();
        assert!(ElevenLabs::from_config(&bot).is_err(), "the hosted API needs a key");
        bot.tts.base_url = Some("ws://127.0.0.1:9".into());
        assert!(ElevenLabs::from_config(&bot).expect("local").url().starts_with("ws://127.0.0.1:9/v1/text-to-speech/abc/"));
    }
}
