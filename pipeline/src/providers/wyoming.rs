//! Wyoming local speech: speech-to-text and text-to-speech servers such as
//! `wyoming-faster-whisper` and `wyoming-piper`, over plain TCP.
//!
//! The protocol (as the `wyoming` Python package 1.10.2 implements it in `wyoming/event.py`,
//! `asr.py`, `tts.py` and `audio.py`): every event is one JSON header line
//! `{"type":T,"version":V,"data_length":D,"payload_length":P}` and `\n`, then `D` bytes of
//! JSON object (merged over any inline `"data"` of the header), then `P` bytes of binary
//! payload. `data_length` and `payload_length` are left out when zero.
//!
//! - Speech-to-text, one utterance per connection: `transcribe {language}`, `audio-start
//!   {rate,width,channels}`, `audio-chunk`* (each repeating rate/width/channels, PCM in the
//!   payload), `audio-stop`; the server answers `transcript {text}` and closes. There are no
//!   interim results and no endpointing: the call's own turn detection says when to finalize.
//! - Text-to-speech, one sentence per connection: `synthesize {text, voice:{name}}`; the
//!   server answers `audio-start`, `audio-chunk`*, `audio-stop`.
//! - Either side may send `error {text, code}`; `describe` is answered with `info`.
//!
//! [`FrameReader`] is the sans-IO parser (bytes in, [`Frame`]s out, every length bounded);
//! [`Connection`] runs it over a compio TCP stream for the adapters, the test server and the
//! local end-to-end run.

use std::rc::Rc;
use std::time::Duration;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;
use futures_util::future::join;
use serde_json::{Map, Value, json};

use crate::config::{BotConfig, ProviderConfig};
use crate::provider::{
    AudioFormat, Event, Events, Job, ProviderError, SttCommand, SttEvent, SttProvider, SttReceiver, SttSession, TtsEvent,
    TtsProvider, stt_channel,
};

/// The protocol version this side announces (the `wyoming` package release it follows).
pub const PROTOCOL_VERSION: &str = "1.10.2";
/// The longest header line accepted, newline included.
pub const MAX_HEADER: usize = 64 * 1024;
/// The most data bytes accepted in one event.
pub const MAX_DATA: usize = 1 << 20;
/// The most payload bytes accepted in one event.
pub const MAX_PAYLOAD: usize = 4 << 20;

/// One Wyoming event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    /// The event's `type`, e.g. `audio-chunk`.
    pub kind: String,
    /// Its data: the header's inline `data` with the data bytes merged over it.
    pub data: Map<String, Value>,
    /// Its binary payload (audio), empty when there is none.
    pub payload: Vec<u8>,
}

impl Frame {
    /// An event with no data and no payload.
    pub fn new(kind: impl Into<String>) -> Frame {
        Frame { kind: kind.into(), ..Frame::default() }
    }

    /// An event with `data`; anything but a JSON object counts as no data.
    pub fn with_data(kind: impl Into<String>, data: Value) -> Frame {
        let data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Frame { kind: kind.into(), data, payload: Vec::new() }
    }

    /// Adds a payload.
    pub fn with_payload(mut self, payload: Vec<u8>) -> Frame {
        self.payload = payload;
        self
    }

    /// `audio-start` or `audio-chunk` data for 16-bit mono PCM at `rate` Hz.
    pub fn audio(kind: &str, rate: u32, payload: Vec<u8>) -> Frame {
        let data = json!({"rate": rate, "width": 2, "channels": 1, "timestamp": null});
        Frame::with_data(kind, data).with_payload(payload)
    }

    /// A data field as a string.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.data.get(name).and_then(Value::as_str)
    }

    /// A data field as a non-negative integer that fits in a `u32`.
    pub fn u32_field(&self, name: &str) -> Option<u32> {
        self.data.get(name).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok())
    }

    /// Appends the event's bytes: the header line, the data, the payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let data =
            if self.data.is_empty() { Vec::new() } else { Value::Object(self.data.clone()).to_string().into_bytes() };
        out.extend_from_slice(b"{\"type\":");
        out.extend_from_slice(Value::String(self.kind.clone()).to_string().as_bytes());
        out.extend_from_slice(b",\"version\":\"");
        out.extend_from_slice(PROTOCOL_VERSION.as_bytes());
        out.push(b'"');
        if !data.is_empty() {
            out.extend_from_slice(format!(",\"data_length\":{}", data.len()).as_bytes());
        }
        if !self.payload.is_empty() {
            out.extend_from_slice(format!(",\"payload_length\":{}", self.payload.len()).as_bytes());
        }
        out.extend_from_slice(b"}\n");
        out.extend_from_slice(&data);
        out.extend_from_slice(&self.payload);
    }

    /// The event's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Why a byte stream is not Wyoming events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// No newline within [`MAX_HEADER`] bytes.
    #[error("header line longer than {MAX_HEADER} bytes")]
    HeaderTooLong,
    /// The header line is not the JSON object the protocol wants.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// `data_length` is over [`MAX_DATA`].
    #[error("data_length {0} over the limit of {MAX_DATA}")]
    DataTooLong(u64),
    /// `payload_length` is over [`MAX_PAYLOAD`].
    #[error("payload_length {0} over the limit of {MAX_PAYLOAD}")]
    PayloadTooLong(u64),
    /// The data bytes are not a JSON object.
    #[error("bad data: {0}")]
    BadData(String),
    /// The stream ended inside an event.
    #[error("stream ended inside an event")]
    Truncated,
}

/// A parsed header waiting for its data and payload bytes.
#[derive(Debug)]
struct Header {
    kind: String,
    data: Map<String, Value>,
    /// Bytes of the header line, newline included.
    line: usize,
    data_len: usize,
    payload_len: usize,
}

/// The sans-IO event parser: feed it bytes as they arrive, take events out. Every length is
/// bounded ([`MAX_HEADER`], [`MAX_DATA`], [`MAX_PAYLOAD`]); after an error it only repeats
/// that error.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// How much of `buf` has been searched for the header's newline.
    scanned: usize,
    header: Option<Header>,
    failed: Option<FrameError>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Adds bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held that are not yet a whole event.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.parse();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.header = None;
        }
        result
    }

    /// Checks the stream may end here: nothing is held of a partial event.
    pub fn finish(&self) -> Result<(), FrameError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.buf.is_empty() && self.header.is_none() => Ok(()),
            None => Err(FrameError::Truncated),
        }
    }

    fn parse(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.header.is_none() {
            let Some(newline) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                return if self.buf.len() >= MAX_HEADER { Err(FrameError::HeaderTooLong) } else { Ok(None) };
            };
            let line = self.scanned + newline + 1;
            if line > MAX_HEADER {
                return Err(FrameError::HeaderTooLong);
            }
            self.header = Some(parse_header(&self.buf[..line])?);
            self.scanned = 0;
        }
        let Some(header) = &self.header else { return Ok(None) };
        let end = header.line + header.data_len + header.payload_len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let Some(Header { kind, mut data, line, data_len, .. }) = self.header.take() else { return Ok(None) };
        if data_len > 0 {
            match serde_json::from_slice::<Value>(&self.buf[line..line + data_len]) {
                Ok(Value::Object(more)) => data.extend(more),
                Ok(_) => return Err(FrameError::BadData("not a JSON object".into())),
                Err(e) => return Err(FrameError::BadData(e.to_string())),
            }
        }
        let payload = self.buf[line + data_len..end].to_vec();
        self.buf.drain(..end);
        Ok(Some(Frame { kind, data, payload }))
    }
}

fn parse_header(line: &[u8]) -> Result<Header, FrameError> {
    let bad = |m: &str| FrameError::BadHeader(m.to_string());
    let value: Value = serde_json::from_slice(line).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let Value::Object(mut header) = value else { return Err(bad("not a JSON object")) };
    let kind = match header.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(bad("no string `type`")),
    };
    let data = match header.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(_) => return Err(bad("`data` is not an object")),
    };
    let length = |name: &str| match header.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| bad(&format!("`{name}` is not a non-negative integer"))),
    };
    let (data_len, payload_len) = (length("data_length")?, length("payload_length")?);
    if data_len > MAX_DATA as u64 {
        return Err(FrameError::DataTooLong(data_len));
    }
    if payload_len > MAX_PAYLOAD as u64 {
        return Err(FrameError::PayloadTooLong(payload_len));
    }
    // Both fit in usize: they are under the limits above.
    Ok(Header { kind, data, line: line.len(), data_len: data_len as usize, payload_len: payload_len as usize })
}

/// What went wrong talking to a Wyoming server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WyomingError {
    /// Connecting, reading or writing failed.
    #[error("wyoming {0}")]
    Io(String),
    /// The server sent bytes that are not Wyoming events.
    #[error("wyoming: {0}")]
    Frame(#[from] FrameError),
    /// The server closed the connection before answering.
    #[error("wyoming server closed the connection before answering")]
    Closed,
    /// The server took too long.
    #[error("wyoming server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server sent an `error` event.
    #[error("wyoming server error: {0}")]
    Server(String),
    /// The server answered something the adapter cannot use.
    #[error("wyoming: {0}")]
    Unexpected(String),
}

/// A connection to (or from) a Wyoming peer: events out, events in.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    reader: FrameReader,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// Bytes asked of the socket per read.
const READ_BUF: usize = 16 * 1024;

impl Connection {
    /// Connects to `addr` (`host:port`) within `timeout`, through the outbound-request guard.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Connection, WyomingError> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| WyomingError::Io(format!("{addr}: not host:port")))?;
        match compio::time::timeout(timeout, crate::egress::connect(host, port)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(Connection::new(stream))
            }
            Ok(Err(e)) => Err(WyomingError::Io(e)),
            Err(_) => Err(WyomingError::Timeout(timeout)),
        }
    }

    /// Wraps an accepted or connected stream.
    pub fn new(stream: TcpStream) -> Connection {
        Connection { stream, reader: FrameReader::new(), buf: Vec::with_capacity(READ_BUF), out: Vec::new() }
    }

    /// Sends events in one write.
    pub async fn send(&mut self, frames: &[Frame]) -> Result<(), WyomingError> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        for frame in frames {
            frame.encode(&mut out);
        }
        self.send_raw(out).await
    }

    /// Sends bytes as they are (the test server uses it to misbehave).
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), WyomingError> {
        let mut stream = &self.stream;
        let BufResult(result, bytes) = stream.write_all(bytes).await;
        self.out = bytes;
        result.map_err(|e| WyomingError::Io(format!("write: {e}")))
    }

    /// The next event; `None` when the peer closed the connection between events.
    pub async fn recv(&mut self) -> Result<Option<Frame>, WyomingError> {
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                return Ok(Some(frame));
            }
            let mut stream = &self.stream;
            // Taken, so a read cancelled by a timeout leaves an empty buffer, refilled here.
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            buf.reserve(READ_BUF);
            let BufResult(result, buf) = stream.read(buf).await;
            self.buf = buf;
            match result {
                Ok(0) => {
                    self.reader.finish()?;
                    return Ok(None);
                }
                Ok(n) => self.reader.feed(self.buf.get(..n).unwrap_or_default()),
                Err(e) => return Err(WyomingError::Io(format!("read: {e}"))),
            }
        }
    }

    /// The next event within `timeout`; the peer closing first is [`WyomingError::Closed`],
    /// an `error` event is [`WyomingError::Server`].
    pub async fn expect(&mut self, timeout: Duration) -> Result<Frame, WyomingError> {
        compio::time::timeout(timeout, self.next_event()).await.unwrap_or(Err(WyomingError::Timeout(timeout)))
    }

    /// The next event of `kind` within `timeout` in all, skipping others (so a server that
    /// chatters cannot keep the wait going).
    pub async fn expect_kind(&mut self, kind: &str, timeout: Duration) -> Result<Frame, WyomingError> {
        let wait = async {
            loop {
                let frame = self.next_event().await?;
                if frame.kind == kind {
                    return Ok(frame);
                }
            }
        };
        compio::time::timeout(timeout, wait).await.unwrap_or(Err(WyomingError::Timeout(timeout)))
    }

    async fn next_event(&mut self) -> Result<Frame, WyomingError> {
        match self.recv().await? {
            None => Err(WyomingError::Closed),
            Some(frame) if frame.kind == "error" => {
                Err(WyomingError::Server(frame.str_field("text").unwrap_or("(no text)").to_string()))
            }
            Some(frame) => Ok(frame),
        }
    }

    /// Sends `describe` and returns the server's `info` data.
    pub async fn describe(&mut self, timeout: Duration) -> Result<Map<String, Value>, WyomingError> {
        self.send(&[Frame::new("describe")]).await?;
        Ok(self.expect_kind("info", timeout).await?.data)
    }
}

/// Whether an `info` answer lists an installed service of `kind` (`asr`, `tts`).
pub fn offers(info: &Map<String, Value>, kind: &str) -> bool {
    let installed = |p: &Value| p.get("installed").and_then(Value::as_bool).unwrap_or(true);
    info.get(kind).and_then(Value::as_array).is_some_and(|programs| programs.iter().any(installed))
}

/// `tcp://host:port` as `host:port`.
fn address(url: Option<&str>, field: &str) -> Result<String, ProviderError> {
    let url = url.ok_or_else(|| ProviderError::invalid(field, "the Wyoming server's tcp://host:port is required"))?;
    let rest = url
        .strip_prefix("tcp://")
        .ok_or_else(|| ProviderError::invalid(field, format!("`{url}` is not tcp://host:port")))?
        .trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(rest.to_string()),
        _ => Err(ProviderError::invalid(field, format!("`{url}` is not tcp://host:port"))),
    }
}

/// A timeout option in milliseconds, or the default.
fn timeout_option(provider: &ProviderConfig, field: &str, default: Duration) -> Result<Duration, ProviderError> {
    match provider.options.get("timeout_ms") {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            Some(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(ProviderError::invalid(field, "timeout_ms must be a positive integer")),
        },
    }
}

/// How long a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait for the server's next event (a transcript, the next audio).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Audio batched into each `audio-chunk`.
const CHUNK_MS: u32 = 100;
/// The most audio one sentence may bring: a server that does not stop is an error.
const MAX_SENTENCE_MS: u32 = 120_000;
/// The rate speech-to-text takes.
const STT_RATE: u32 = 16_000;

/// Speech-to-text from a Wyoming server (e.g. `wyoming-faster-whisper`).
///
/// Config: `stt.base_url` = `tcp://host:port`; option `timeout_ms` (default 15000) bounds
/// the wait for each transcript; the bot's `language` (its primary subtag) goes in
/// `transcribe`.
#[derive(Debug, Clone)]
pub struct WyomingStt(Rc<SttSettings>);

#[derive(Debug)]
struct SttSettings {
    addr: String,
    language: String,
    timeout: Duration,
}

impl WyomingStt {
    /// From the bot's config.
    pub fn from_config(bot: &BotConfig) -> Result<WyomingStt, ProviderError> {
        let addr = address(bot.stt.base_url.as_deref(), "stt.base_url")?;
        let timeout = timeout_option(&bot.stt, "stt.options.timeout_ms", DEFAULT_TIMEOUT)?;
        let language = bot.language.split(['-', '_']).next().unwrap_or_default().to_ascii_lowercase();
        Ok(WyomingStt(Rc::new(SttSettings { addr, language, timeout })))
    }
}

impl SttProvider for WyomingStt {
    fn input_format(&self) -> AudioFormat {
        AudioFormat::Pcm16(STT_RATE)
    }

    fn open(&self, events: Events) -> SttSession {
        let (commands, rx) = stt_channel();
        let settings = self.0.clone();
        let task = compio::runtime::spawn(async move {
            if let Err(e) = transcribe_utterances(&settings, &rx, &events).await {
                events.push(Event::Stt(SttEvent::Error(e.to_string())));
            }
        });
        SttSession::new(commands, task)
    }
}

/// Connects and starts an utterance: `transcribe` and `audio-start`. The session's first
/// connection also asks `describe`, so a wrong address fails at the call's start rather
/// than at the end of the caller's first turn.
async fn start_utterance(settings: &SttSettings, check: bool) -> Result<Connection, WyomingError> {
    let mut conn = Connection::connect(&settings.addr, CONNECT_TIMEOUT).await?;
    if check {
        let info = conn.describe(settings.timeout).await?;
        if !offers(&info, "asr") {
            return Err(WyomingError::Unexpected(format!("{} offers no speech-to-text (asr)", settings.addr)));
        }
    }
    let mut transcribe = Map::new();
    if !settings.language.is_empty() {
        transcribe.insert("language".into(), settings.language.clone().into());
    }
    let start =
        [Frame::with_data("transcribe", Value::Object(transcribe)), Frame::audio("audio-start", STT_RATE, Vec::new())];
    conn.send(&start).await?;
    Ok(conn)
}

/// The session: one connection per utterance, each opened before it is needed.
async fn transcribe_utterances(
    settings: &SttSettings,
    commands: &SttReceiver,
    events: &Events,
) -> Result<(), WyomingError> {
    let chunk = AudioFormat::Pcm16(STT_RATE).bytes_per_ms(CHUNK_MS);
    let mut conn = start_utterance(settings, true).await?;
    let mut pending = Vec::with_capacity(chunk * 2);
    loop {
        let mut sent = false;
        loop {
            match commands.recv().await {
                Some(SttCommand::Audio(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    commands.recycle(bytes);
                    if pending.len() >= chunk {
                        let frames: Vec<Frame> = pending
                            .chunks_exact(chunk)
                            .map(|c| Frame::audio("audio-chunk", STT_RATE, c.to_vec()))
                            .collect();
                        pending.drain(..frames.len() * chunk);
                        conn.send(&frames).await?;
                        sent = true;
                    }
                }
                Some(SttCommand::Finalize) => break,
                Some(SttCommand::Close) | None => return Ok(()),
            }
        }
        // An odd trailing byte is half a sample: dropped.
        pending.truncate(pending.len() & !1);
        if !sent && pending.is_empty() {
            // Nothing was said: the open connection waits for the next utterance.
            events.push(Event::Stt(SttEvent::Final { text: String::new(), end_of_turn: true }));
            continue;
        }
        let mut last = Vec::new();
        if !pending.is_empty() {
            last.push(Frame::audio("audio-chunk", STT_RATE, std::mem::take(&mut pending)));
        }
        last.push(Frame::new("audio-stop"));
        conn.send(&last).await?;
        // The next utterance's connection opens while this one is transcribed.
        let transcript = async {
            let text = read_transcript(&mut conn, settings.timeout).await?;
            events.push(Event::Stt(SttEvent::Final { text, end_of_turn: true }));
            Ok::<(), WyomingError>(())
        };
        let (done, next) = join(transcript, start_utterance(settings, false)).await;
        done?;
        conn = next?;
    }
}

/// Waits for `transcript`, skipping anything else (a streaming server's chunks).
async fn read_transcript(conn: &mut Connection, timeout: Duration) -> Result<String, WyomingError> {
    let frame = conn.expect_kind("transcript", timeout).await?;
    match frame.str_field("text") {
        Some(text) => Ok(text.trim().to_string()),
        None => Err(WyomingError::Unexpected("transcript without text".into())),
    }
}

/// Text-to-speech from a Wyoming server (e.g. `wyoming-piper`).
///
/// Config: `tts.base_url` = `tcp://host:port`; the bot's `voice` is asked for by name;
/// option `sample_rate` (default 22050, what Piper's medium voices produce) is the rate the
/// server must announce, since the output format is fixed before the first sentence; option
/// `timeout_ms` (default 15000) bounds the wait for each event.
#[derive(Debug, Clone)]
pub struct WyomingTts(Rc<TtsSettings>);

#[derive(Debug)]
struct TtsSettings {
    addr: String,
    voice: Option<String>,
    rate: u32,
    timeout: Duration,
}

impl WyomingTts {
    /// From the bot's config.
    pub fn from_config(bot: &BotConfig) -> Result<WyomingTts, ProviderError> {
        let addr = address(bot.tts.base_url.as_deref(), "tts.base_url")?;
        let timeout = timeout_option(&bot.tts, "tts.options.timeout_ms", DEFAULT_TIMEOUT)?;
        let rate = match bot.tts.options.get("sample_rate") {
            None => 22_050,
            Some(v) => {
                v.as_u64().and_then(|r| u32::try_from(r).ok()).filter(|r| (8_000..=48_000).contains(r)).ok_or_else(
                    || ProviderError::invalid("tts.options.sample_rate", "must be an integer from 8000 to 48000"),
                )?
            }
        };
        let voice = bot.voice.clone().filter(|v| !v.is_empty());
        Ok(WyomingTts(Rc::new(TtsSettings { addr, voice, rate, timeout })))
    }
}

impl TtsProvider for WyomingTts {
    fn output_format(&self) -> AudioFormat {
        AudioFormat::Pcm16(self.0.rate)
    }

    fn synthesize(&self, sentence: u64, text: String, events: Events) -> Job {
        let settings = self.0.clone();
        compio::runtime::spawn(async move {
            let event = match synthesize(&settings, sentence, text, &events).await {
                Ok(()) => TtsEvent::Done,
                Err(e) => TtsEvent::Error(e.to_string()),
            };
            events.push(Event::Tts { sentence, event });
        })
    }
}

/// One sentence: `synthesize`, then audio until `audio-stop`.
async fn synthesize(settings: &TtsSettings, sentence: u64, text: String, events: &Events) -> Result<(), WyomingError> {
    let mut conn = Connection::connect(&settings.addr, CONNECT_TIMEOUT).await?;
    let mut data = json!({ "text": text });
    if let Some(voice) = &settings.voice {
        data["voice"] = json!({ "name": voice });
    }
    conn.send(&[Frame::with_data("synthesize", data)]).await?;
    // An odd byte at the end of a chunk waits for the rest of its sample.
    let mut carry: Option<u8> = None;
    let (mut total, limit) = (0usize, AudioFormat::Pcm16(settings.rate).bytes_per_ms(MAX_SENTENCE_MS));
    loop {
        let frame = conn.expect(settings.timeout).await?;
        match frame.kind.as_str() {
            "audio-start" => check_format(&frame, settings.rate, true)?,
            "audio-chunk" => {
                check_format(&frame, settings.rate, false)?;
                total += frame.payload.len();
                if total > limit {
                    return Err(WyomingError::Unexpected(format!(
                        "over {} s of audio for one sentence",
                        MAX_SENTENCE_MS / 1000
                    )));
                }
                let mut audio = Vec::with_capacity(frame.payload.len() + 1);
                audio.extend(carry.take());
                audio.extend_from_slice(&frame.payload);
                if audio.len() % 2 == 1 {
                    carry = audio.pop();
                }
                if !audio.is_empty() {
                    events.push(Event::Tts { sentence, event: TtsEvent::Audio(audio) });
                }
            }
            "audio-stop" => return Ok(()),
            _ => {}
        }
    }
}

/// Checks an event's rate/width/channels against what the call expects; `required` when
/// they must be present (audio-start).
fn check_format(frame: &Frame, rate: u32, required: bool) -> Result<(), WyomingError> {
    let fields = (frame.u32_field("rate"), frame.u32_field("width"), frame.u32_field("channels"));
    match fields {
        (Some(r), Some(2), Some(1)) if r == rate => Ok(()),
        (None, None, None) if !required => Ok(()),
        (r, w, c) => Err(WyomingError::Unexpected(format!(
            "server sends audio as rate {r:?}, width {w:?}, channels {c:?}; expected {rate} Hz 16-bit mono \
             (set tts.options.sample_rate to the voice's rate)"
        ))),
    }
}
