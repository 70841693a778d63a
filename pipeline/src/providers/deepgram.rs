//! Deepgram live speech-to-text: one WebSocket per call to `/v1/listen`, the carrier's mu-law
//! passed through unconverted.
//!
//! Follows Deepgram's documentation (developers.deepgram.com): the "Live Audio" API reference
//! (`GET /v1/listen`, header `Authorization: Token <key>`, the query parameters below);
//! "Audio Keep Alive" (`{"type":"KeepAlive"}`; the server closes a socket that carries nothing
//! for 10 s); "Finalize" (`{"type":"Finalize"}`, answered by `Results` with `from_finalize`);
//! "Close Stream" (`{"type":"CloseStream"}`, answered by the last results, a `Metadata`
//! summary and a close); "Interim Results" and "Endpointing" (`is_final`, `speech_final`);
//! "Utterance End" and "Speech Started" for those messages' shapes; error frames
//! (`{"type":"Error","description":…,"message":…,"variant":…}`) as Deepgram's SDKs read them.
//!
//! The socket opens when the session does, at call setup; audio that arrives first waits in a
//! bounded buffer (the last [`EARLY_AUDIO_MS`]) and goes out as soon as the socket is up.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use compio::ws::tungstenite::Message;
use futures_util::StreamExt;
use futures_util::future::Either;
use serde::Deserialize;
use serde_json::Value;

use super::ws::{self, Request, Socket};
use crate::config::{BotConfig, ProviderConfig};
use crate::provider::{
    AudioFormat, Event, Events, ProviderError, SttCommand, SttEvent, SttProvider, SttReceiver, SttSession, stt_channel,
};

/// Deepgram's hosted API.
const DEFAULT_ORIGIN: &str = "wss://api.deepgram.com";
/// The live endpoint's path.
const LISTEN_PATH: &str = "/v1/listen";
/// Audio kept while the socket connects, in milliseconds.
pub const EARLY_AUDIO_MS: u32 = 5000;
/// How long the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session waits for the last results and the `Metadata` summary.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

const KEEPALIVE: &str = r#"{"type":"KeepAlive"}"#;
const FINALIZE: &str = r#"{"type":"Finalize"}"#;
const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;

/// Deepgram live transcription, configured from a bot.
///
/// Settings: `stt.model` (default `nova-3`), the bot's `language`, `stt.base_url` (a server
/// root such as `wss://api.deepgram.com` or a self-hosted `http://host:8080`; `/v1/listen`
/// is appended unless present), `stt.secrets.api_key` (required for the hosted API), and the
/// options `endpointing` (ms of silence that end an utterance, or `false`; default 300),
/// `utterance_end_ms` (default 1000) and `keepalive_ms` (how long the socket may go without
/// audio before a `KeepAlive`; default 5000).
#[derive(Debug, Clone)]
pub struct Deepgram {
    url: String,
    api_key: Option<String>,
    keepalive: Duration,
}

impl Deepgram {
    /// From the bot's config.
    pub fn from_config(bot: &BotConfig) -> Result<Deepgram, ProviderError> {
        let stt = &bot.stt;
        let origin = match stt.base_url.as_deref() {
            Some(base) => ws::ws_origin(base).ok_or_else(|| {
                ProviderError::invalid("stt.base_url", "must be a ws://, wss://, http:// or https:// URL")
            })?,
            None => DEFAULT_ORIGIN.to_string(),
        };
        let api_key = stt.api_key().filter(|k| !k.is_empty()).map(str::to_string);
        if api_key.as_deref().is_some_and(|k| !ws::is_header_token(k)) {
            return Err(ProviderError::invalid("stt.secrets.api_key", "must be printable ASCII without spaces"));
        }
        if api_key.is_none() && stt.base_url.is_none() {
            return Err(ProviderError::invalid("stt.secrets.api_key", "required for Deepgram's hosted API"));
        }
        let model = stt.model.as_deref().filter(|m| !m.is_empty()).unwrap_or("nova-3");
        let endpointing = match stt.options.get("endpointing") {
            Some(Value::Bool(false)) => "false".to_string(),
            _ => ms_option(stt, "endpointing", 300)?.to_string(),
        };
        let utterance_end = ms_option(stt, "utterance_end_ms", 1000)?;
        let keepalive = ms_option(stt, "keepalive_ms", 5000)?.max(1);
        let path = if origin.ends_with(LISTEN_PATH) { "" } else { LISTEN_PATH };
        let url = format!(
            "{origin}{path}?encoding=mulaw&sample_rate=8000&channels=1&model={}&language={}\
             &interim_results=true&endpointing={endpointing}&utterance_end_ms={utterance_end}\
             &vad_events=true&smart_format=true&punctuate=true",
            ws::escape(model),
            ws::escape(&bot.language),
        );
        let deepgram = Deepgram { url, api_key, keepalive: Duration::from_millis(keepalive) };
        deepgram.request().map_err(|e| ProviderError::invalid("stt.base_url", e))?;
        Ok(deepgram)
    }

    /// The URL sessions connect to, query included.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn request(&self) -> Result<Request, String> {
        let auth = self.api_key.as_ref().map(|key| format!("Token {key}"));
        let headers: Vec<(&'static str, &str)> =
            auth.as_deref().map(|a| ("Authorization", a)).into_iter().collect();
        ws::request(&self.url, &headers)
    }
}

/// A non-negative whole number of milliseconds from option `name`, or `default`.
fn ms_option(config: &ProviderConfig, name: &str, default: u64) -> Result<u64, ProviderError> {
    match config.options.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .filter(|ms| *ms <= 3_600_000)
            .ok_or_else(|| ProviderError::invalid(format!("stt.options.{name}"), "must be a whole number of ms")),
    }
}

impl SttProvider for Deepgram {
    fn input_format(&self) -> AudioFormat {
        AudioFormat::Mulaw8k
    }

    fn open(&self, events: Events) -> SttSession {
        let (commands, incoming) = stt_channel();
        let request = self.request();
        let keepalive = self.keepalive;
        let task = compio::runtime::spawn(async move {
            let outcome = match request {
                Ok(request) => run(request, keepalive, incoming, &events).await,
                Err(e) => Err(e),
            };
            if let Err(reason) = outcome {
                events.push(Event::Stt(SttEvent::Error(format!("Deepgram: {reason}"))));
            }
        });
        SttSession::new(commands, task)
    }
}

/// What woke a connected session.
enum Wake {
    Server(Option<Result<Message, compio::ws::tungstenite::Error>>),
    Command(Option<SttCommand>),
    KeepAlive,
}

/// One session: connect (buffering early audio), stream, close. `Err` is a failure the call
/// hears about; `Ok` an ending it asked for.
async fn run(
    request: Request,
    keepalive: Duration,
    incoming: SttReceiver,
    events: &Events,
) -> Result<(), String> {
    let mut early = EarlyAudio::new(AudioFormat::Mulaw8k.bytes_per_ms(EARLY_AUDIO_MS));
    let mut connect = pin!(ws::connect(request, CONNECT_TIMEOUT));
    let mut socket = loop {
        let wake = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = connect.as_mut().poll(cx) {
                return Poll::Ready(Either::Left(r));
            }
            incoming.poll_recv(cx).map(Either::Right)
        })
        .await;
        match wake {
            Either::Left(socket) => break socket?,
            Either::Right(Some(SttCommand::Close) | None) => return Ok(()),
            Either::Right(Some(command)) => early.push(command),
        }
    };
    for command in early.drain() {
        if let Err(e) = send_command(&mut socket, command, &incoming).await {
            return Err(why_closed(&mut socket, events, e).await);
        }
    }

    let mut last_sent = Instant::now();
    let mut tick = pin!(compio::time::sleep_until(last_sent + keepalive));
    loop {
        let wake = std::future::poll_fn(|cx| {
            if let Poll::Ready(m) = socket.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Server(m));
            }
            if let Poll::Ready(c) = incoming.poll_recv(cx) {
                return Poll::Ready(Wake::Command(c));
            }
            tick.as_mut().poll(cx).map(|()| Wake::KeepAlive)
        })
        .await;
        match wake {
            Wake::Server(None) => return Err("the server closed the connection".into()),
            Wake::Server(Some(Err(e))) => return Err(ws::describe_error(&e)),
            Wake::Server(Some(Ok(message))) => {
                on_message(message, events)?;
            }
            Wake::Command(None) => return Ok(()),
            Wake::Command(Some(SttCommand::Close)) => {
                close(socket, events).await;
                return Ok(());
            }
            Wake::Command(Some(command)) => {
                if let Err(e) = send_command(&mut socket, command, &incoming).await {
                    return Err(why_closed(&mut socket, events, e).await);
                }
                last_sent = Instant::now();
            }
            Wake::KeepAlive => {
                if last_sent.elapsed() >= keepalive {
                    if let Err(e) = send(&mut socket, Message::text(KEEPALIVE)).await {
                        return Err(why_closed(&mut socket, events, e).await);
                    }
                    last_sent = Instant::now();
                }
                tick.set(compio::time::sleep_until(last_sent + keepalive));
            }
        }
    }
}

async fn send(socket: &mut Socket, message: Message) -> Result<(), String> {
    socket.send(message).await.map_err(|e| ws::describe_error(&e))
}

/// Sends audio as a binary frame (its buffer goes back to the call), `Finalize` as its
/// control message.
async fn send_command(socket: &mut Socket, command: SttCommand, incoming: &SttReceiver) -> Result<(), String> {
    match command {
        SttCommand::Audio(audio) => {
            let sent = if audio.is_empty() { Ok(()) } else { send(socket, Message::binary(audio.clone())).await };
            incoming.recycle(audio);
            sent
        }
        SttCommand::Finalize => send(socket, Message::text(FINALIZE)).await,
        SttCommand::Close => Ok(()),
    }
}

/// Passes a server message's meaning to the call. `Ok(true)`: it was the closing `Metadata`.
fn on_message(message: Message, events: &Events) -> Result<bool, String> {
    match message {
        Message::Text(text) => match parse_message(text.as_str()).map_err(|e| e.to_string())? {
            ServerMessage::Error(reason) => Err(reason),
            ServerMessage::Metadata { .. } => Ok(true),
            other => {
                if let Some(event) = other.event() {
                    events.push(Event::Stt(event));
                }
                Ok(false)
            }
        },
        Message::Close(frame) => Err(ws::describe_close(frame.as_ref())),
        Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(false),
    }
}

/// After a failed send (the server has closed): the server's own reason, if it gave one
/// before closing (results it sent first still reach the call), else the send's error.
async fn why_closed(socket: &mut Socket, events: &Events, send_error: String) -> String {
    let deadline = Instant::now() + CLOSE_WAIT;
    while let Ok(Some(Ok(message))) = compio::time::timeout_at(deadline, socket.next()).await {
        match on_message(message, events) {
            Ok(_) => {}
            Err(reason) => return reason,
        }
    }
    send_error
}

/// Asks for the last results, passes them on, and closes. Failures here are not reported:
/// the call is already over.
async fn close(mut socket: Socket, events: &Events) {
    if send(&mut socket, Message::text(CLOSE_STREAM)).await.is_ok() {
        let deadline = Instant::now() + CLOSE_WAIT;
        while let Ok(Some(Ok(message))) = compio::time::timeout_at(deadline, socket.next()).await {
            if !matches!(on_message(message, events), Ok(false)) {
                break;
            }
        }
    }
    let _ = socket.close(None).await;
}

/// Commands that arrived before the socket was up, keeping at most `limit` bytes of the most
/// recent audio (older audio is dropped from the front, byte by byte: mu-law has no frames).
#[derive(Debug)]
struct EarlyAudio {
    queue: VecDeque<SttCommand>,
    audio_bytes: usize,
    limit: usize,
}

impl EarlyAudio {
    fn new(limit: usize) -> EarlyAudio {
        EarlyAudio { queue: VecDeque::new(), audio_bytes: 0, limit }
    }

    fn push(&mut self, command: SttCommand) {
        if let SttCommand::Audio(audio) = &command {
            self.audio_bytes += audio.len();
        }
        self.queue.push_back(command);
        while self.audio_bytes > self.limit {
            let excess = self.audio_bytes - self.limit;
            match self.queue.front_mut() {
                Some(SttCommand::Audio(audio)) if audio.len() > excess => {
                    audio.drain(..excess);
                    self.audio_bytes -= excess;
                }
                Some(SttCommand::Audio(audio)) => {
                    self.audio_bytes -= audio.len();
                    self.queue.pop_front();
                }
                Some(_) => {
                    self.queue.pop_front();
                }
                None => break,
            }
        }
    }

    /// The queued commands in order, consecutive audio joined into one chunk.
    fn drain(&mut self) -> Vec<SttCommand> {
        let mut out: Vec<SttCommand> = Vec::new();
        for command in self.queue.drain(..) {
            match (out.last_mut(), command) {
                (Some(SttCommand::Audio(joined)), SttCommand::Audio(audio)) => joined.extend_from_slice(&audio),
                (_, command) => out.push(command),
            }
        }
        self.audio_bytes = 0;
        out
    }
}

/// A message from Deepgram's live endpoint, as far as a call cares.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// `Results`: a transcript of the first alternative.
    Results(Transcript),
    /// `UtteranceEnd`: a gap after the last finalised word.
    UtteranceEnd,
    /// `SpeechStarted`: the voice activity detector heard speech.
    SpeechStarted,
    /// `Metadata`: the summary sent when the stream closes.
    Metadata {
        /// Deepgram's id for the stream.
        request_id: String,
        /// Seconds of audio received.
        duration: f64,
    },
    /// `Error`: the server gave up (it closes the socket next).
    Error(String),
    /// A message type this adapter does not use.
    Unknown(String),
}

/// The first alternative of a `Results` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The words.
    pub text: String,
    /// The words for this stretch of audio will not change.
    pub is_final: bool,
    /// Deepgram's endpointing decided the speaker finished.
    pub speech_final: bool,
    /// The answer to a `Finalize`.
    pub from_finalize: bool,
}

impl ServerMessage {
    /// What the call hears of this message. Empty transcripts are not reported, except that an
    /// empty `speech_final` result (the end of a turn whose words were already final) is
    /// reported as [`SttEvent::UtteranceEnd`].
    pub fn event(&self) -> Option<SttEvent> {
        match self {
            ServerMessage::Results(t) => {
                let text = t.text.trim();
                if text.is_empty() {
                    t.speech_final.then_some(SttEvent::UtteranceEnd)
                } else if t.is_final {
                    Some(SttEvent::Final { text: text.to_string(), end_of_turn: t.speech_final })
                } else {
                    Some(SttEvent::Interim { text: text.to_string() })
                }
            }
            ServerMessage::UtteranceEnd => Some(SttEvent::UtteranceEnd),
            _ => None,
        }
    }
}

/// A server message that is not what Deepgram documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct ParseError(String);

impl From<serde_json::Error> for ParseError {
    fn from(e: serde_json::Error) -> ParseError {
        ParseError(e.to_string())
    }
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Results {
    channel: Channel,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    #[serde(default)]
    from_finalize: bool,
}

#[derive(Deserialize)]
struct Channel {
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    transcript: String,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    duration: f64,
}

#[derive(Deserialize)]
struct ErrorFrame {
    description: Option<String>,
    message: Option<String>,
    variant: Option<String>,
}

/// Parses one text message from the live endpoint.
pub fn parse_message(text: &str) -> Result<ServerMessage, ParseError> {
    let kind: Kind<'_> = serde_json::from_str(text)?;
    Ok(match kind.kind.as_deref() {
        Some("Results") => {
            let r: Results = serde_json::from_str(text)?;
            let text = r.channel.alternatives.into_iter().next().map(|a| a.transcript).unwrap_or_default();
            ServerMessage::Results(Transcript {
                text,
                is_final: r.is_final,
                speech_final: r.speech_final,
                from_finalize: r.from_finalize,
            })
        }
        Some("UtteranceEnd") => ServerMessage::UtteranceEnd,
        Some("SpeechStarted") => ServerMessage::SpeechStarted,
        Some("Metadata") => {
            let m: Metadata = serde_json::from_str(text)?;
            ServerMessage::Metadata { request_id: m.request_id, duration: m.duration }
        }
        Some("Error") => {
            let e: ErrorFrame = serde_json::from_str(text)?;
            let reason = e.description.or(e.message).unwrap_or_else(|| "unspecified error".into());
            ServerMessage::Error(match e.variant {
                Some(variant) => format!("{reason} ({variant})"),
                None => reason,
            })
        }
        Some(other) => ServerMessage::Unknown(other.to_string()),
        None => return Err(ParseError("no `type`".into())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(n: usize, byte: u8) -> SttCommand {
        SttCommand::Audio(vec![byte; n])
    }

    #[test]
    fn early_audio_keeps_the_most_recent_bytes_in_order() {
        let mut early = EarlyAudio::new(10);
        early.push(audio(4, 1));
        early.push(SttCommand::Finalize);
        early.push(audio(4, 2));
        early.push(audio(4, 3));
        let mut expected = vec![2; 4];
        expected.extend([3; 4]);
        assert_eq!(
            early.drain(),
            vec![SttCommand::Audio(vec![1, 1]), SttCommand::Finalize, SttCommand::Audio(expected)]
        );
        early.push(audio(25, 4));
        assert_eq!(early.drain(), vec![SttCommand::Audio(vec![4; 10])]);
        assert!(early.drain().is_empty());
    }

    #[test]
    fn transcripts_become_events() {
        let results = |text: &str, is_final, speech_final| {
            ServerMessage::Results(Transcript { text: text.into(), is_final, speech_final, from_finalize: false })
        };
        assert_eq!(results(" hi ", false, false).event(), Some(SttEvent::Interim { text: "hi".into() }));
        assert_eq!(
            results("hi", true, true).event(),
            Some(SttEvent::Final { text: "hi".into(), end_of_turn: true })
        );
        assert_eq!(results("", true, false).event(), None);
        assert_eq!(results(" ", true, true).event(), Some(SttEvent::UtteranceEnd));
        assert_eq!(ServerMessage::SpeechStarted.event(), None);
    }

    #[test]
    fn config_builds_the_documented_query() {
        let mut bot: BotConfig = serde_json::from_str(
            r#"{"language":"en-GB","stt":{"provider":"deepgram","secrets":{"api_key":"k"},
                "options":{"endpointing":false,"utterance_end_ms":1500}}}"#,
        )
        .expect("bot");
        let d = Deepgram::from_config(&bot).expect("valid");
        assert_eq!(
            d.url(),
            "wss://api.deepgram.com/v1/listen?encoding=mulaw&sample_rate=8000&channels=1&model=nova-3\
             &language=en-GB&interim_results=true&endpointing=false&utterance_end_ms=1500\
             &vad_events=true&smart_format=true&punctuate=true"
        );
        bot.stt.options.insert("endpointing".into(), Value::from(-1));
        assert!(Deepgram::from_config(&bot).is_err());
        bot.stt.options.clear();
        bot.stt.secrets.clear();
        assert!(Deepgram::from_config(&bot).is_err(), "the hosted API needs a key");
        bot.stt.base_url = Some("http://127.0.0.1:8080/".into());
        assert!(Deepgram::from_config(&bot).expect("self-hosted").url().starts_with("ws://127.0.0.1:8080/v1/listen?"));
        bot.stt.base_url = Some("file:///x".into());
        assert!(Deepgram::from_config(&bot).is_err());
    }
}
