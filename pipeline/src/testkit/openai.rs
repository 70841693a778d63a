//! A local OpenAI-compatible server: `POST …/chat/completions` streamed as server-sent
//! events and `POST …/audio/speech` streamed as raw PCM, over HTTP/1.1 with keep-alive.
//!
//! It speaks what OpenAI's API reference documents ("Create chat completion" with
//! `stream: true`, "The chat completion chunk object", "Create speech", "Error codes"): a
//! `200` with `content-type: text/event-stream` and chunked transfer encoding, one
//! `data: {chat.completion.chunk}\n\n` event per HTTP chunk: first a delta with only the role
//! (`{"role": "assistant", "content": "", "refusal": null}`), then one delta per word of text,
//! then each tool call as a first fragment with `index`, `id`, `type` and `function.name`
//! (empty `arguments`) followed by the arguments in 8-character pieces, then an empty delta
//! with `finish_reason` (`stop` or `tool_calls`), then (when the request asked for
//! `stream_options.include_usage`, in which case every earlier chunk carries `"usage": null`)
//! a chunk with empty `choices` and the `usage`, then `data: [DONE]`. Errors are
//! `{"error": {"message", "type", "param", "code"}}` with the status OpenAI uses (401 for a
//! missing or wrong key, 400 for a bad body, 404 for an unknown path). Speech answers
//! `application/octet-stream` in HTTP chunks of an odd number of bytes (so clients must keep
//! 16-bit samples whole themselves) holding [`speech_pcm`] of the input.
//!
//! The server runs on its own thread with a compio runtime, one task per connection, so one
//! thread serves many concurrent calls (the load benchmark's 500). It stops when the
//! [`OpenAiServer`] is dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use serde_json::{Value, json};

use crate::provider::{TokenUsage, ToolCall};

/// The longest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// The longest request body read.
const MAX_BODY: usize = 8 << 20;
/// Characters of tool-call arguments per streamed fragment.
const ARGUMENT_PIECE: usize = 8;
/// Bytes of speech per HTTP chunk: odd, so samples straddle chunks.
pub const SPEECH_CHUNK: usize = 4095;
/// Milliseconds of speech made per character of input.
pub const SPEECH_MS_PER_CHAR: usize = 40;
/// The `created` time in every chunk (fixed, so streams are reproducible).
const CREATED: u64 = 1_700_000_000;

/// What the server answers to one chat request.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatReply {
    /// A streamed reply.
    Stream {
        /// The text, streamed a word per chunk.
        text: String,
        /// Tool calls, streamed after the text.
        tool_calls: Vec<ToolCall>,
        /// The usage to report; `None`: a quarter of the request's bytes read, one token per
        /// streamed delta written.
        usage: Option<TokenUsage>,
    },
    /// An error status with OpenAI's error JSON.
    Error {
        /// The HTTP status.
        status: u16,
        /// `error.message`.
        message: String,
    },
    /// A `200` event stream whose body is these bytes as they are (for malformed streams).
    Raw(Vec<u8>),
    /// The role chunk and this text, then nothing until the client goes away.
    Hang(String),
}

impl ChatReply {
    /// A text reply.
    pub fn text(text: impl Into<String>) -> ChatReply {
        ChatReply::Stream { text: text.into(), tool_calls: Vec::new(), usage: None }
    }

    /// A reply that calls tools (with no text).
    pub fn tools(tool_calls: Vec<ToolCall>) -> ChatReply {
        ChatReply::Stream { text: String::new(), tool_calls, usage: None }
    }
}

/// How the server behaves.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// When set, requests must carry `Authorization: Bearer <key>` (else 401, as OpenAI).
    pub api_key: Option<String>,
    /// Pause before the first streamed chunk (a model's time to first token).
    pub first_chunk_after: Duration,
    /// Pause between streamed chunks.
    pub chunk_interval: Duration,
    /// Do not keep received requests (long load runs).
    pub no_recording: bool,
    /// The reply when none is queued (default: `ChatReply::text("Hello from the test server.")`).
    pub default_reply: Option<ChatReply>,
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `POST`, ...
    pub method: String,
    /// The request target.
    pub path: String,
    /// Header names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Debug)]
struct Shared {
    options: ServerOptions,
    replies: Mutex<VecDeque<ChatReply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    connections: AtomicUsize,
    aborts: (flume::Sender<()>, flume::Receiver<()>),
    next_id: AtomicUsize,
}

/// Locks a mutex; a thread that panicked while holding it left data that is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running server; dropping it stops it.
#[derive(Debug)]
pub struct OpenAiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<flume::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OpenAiServer {
    /// Starts a server with default options on 127.0.0.1 and a free port.
    pub fn start() -> std::io::Result<OpenAiServer> {
        OpenAiServer::start_with(ServerOptions::default())
    }

    /// Starts a server with `options`.
    pub fn start_with(options: ServerOptions) -> std::io::Result<OpenAiServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            replies: Mutex::default(),
            requests: Mutex::default(),
            connections: AtomicUsize::new(0),
            aborts: flume::unbounded(),
            next_id: AtomicUsize::new(0),
        });
        let (stop, stopped) = flume::bounded::<()>(1);
        let state = shared.clone();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("openai-testkit".into()).spawn(move || {
            let runtime = match compio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let _ = ready_tx.send(Ok(()));
                let accept = std::pin::pin!(accept_loop(listener, state));
                futures_util::future::select(accept, stopped.recv_async()).await;
            });
        })?;
        ready.recv().map_err(|_| std::io::Error::other("the server thread ended"))??;
        Ok(OpenAiServer { addr, shared, stop: Some(stop), thread: Some(thread) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `base_url` to configure: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues the reply to the next chat request (replies are used in order; when none is
    /// queued the default reply answers).
    pub fn push_reply(&self, reply: ChatReply) {
        lock(&self.shared.replies).push_back(reply);
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Waits until a client has gone away in the middle of a streamed answer (one per call).
    pub async fn aborted(&self) {
        let _ = self.shared.aborts.1.recv_async().await;
    }
}

impl Drop for OpenAiServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                compio::runtime::spawn(serve(stream, shared.clone())).detach();
            }
            // Out of descriptors, most likely: let connections finish.
            Err(_) => compio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// A parsed request.
pub(crate) struct Request {
    pub(crate) recorded: RecordedRequest,
    pub(crate) close: bool,
}

/// The client went away.
pub(crate) struct Gone;

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut pending = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut pending).await {
        let close = request.close;
        if respond(&mut stream, &shared, request.recorded).await.is_err() {
            let _ = shared.aborts.0.send(());
            return;
        }
        if close {
            return;
        }
    }
}

/// Reads one request; `None` when the client closed or sent something unreadable (answered
/// with 400).
pub(crate) async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Request> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(pending) {
            Ok(httparse::Status::Complete(head)) => {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
                if value("transfer-encoding").is_some() {
                    let _ = send_error(stream, 411, "chunked request bodies are not supported").await;
                    return None;
                }
                let length = match value("content-length").map(|v| v.trim().parse::<usize>()) {
                    None => 0,
                    Some(Ok(n)) if n <= MAX_BODY => n,
                    Some(_) => {
                        let _ = send_error(stream, 400, "bad content-length").await;
                        return None;
                    }
                };
                let close = value("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    || parsed.version == Some(0);
                let method = parsed.method.unwrap_or_default().to_string();
                let path = parsed.path.unwrap_or_default().to_string();
                while pending.len() < head + length {
                    if !read_more(stream, pending).await {
                        return None;
                    }
                }
                let rest = pending.split_off(head + length);
                let body = pending.split_off(head);
                *pending = rest;
                return Some(Request { recorded: RecordedRequest { method, path, headers, body }, close });
            }
            Ok(httparse::Status::Partial) if pending.len() < MAX_HEAD => {
                if !read_more(stream, pending).await {
                    return None;
                }
            }
            _ => {
                let _ = send_error(stream, 400, "malformed request").await;
                return None;
            }
        }
    }
}

/// Appends what the socket has; false at its end.
async fn read_more(stream: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
    let BufResult(read, buf) = stream.read(Vec::with_capacity(16 * 1024)).await;
    match read {
        Ok(n) if n > 0 => {
            pending.extend_from_slice(buf.get(..n).unwrap_or_default());
            true
        }
        _ => false,
    }
}

pub(crate) async fn write(stream: &mut TcpStream, bytes: Vec<u8>) -> Result<(), Gone> {
    let BufResult(result, _) = stream.write_all(bytes).await;
    result.map_err(|_| Gone)
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        411 => "Length Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// OpenAI's error body.
fn error_json(status: u16, message: &str) -> Vec<u8> {
    let (kind, code) = match status {
        401 => ("invalid_request_error", json!("invalid_api_key")),
        429 => ("rate_limit_exceeded", json!("rate_limit_exceeded")),
        500.. => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string().into_bytes()
}

async fn send_error(stream: &mut TcpStream, status: u16, message: &str) -> Result<(), Gone> {
    let body = error_json(status, message);
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    write(stream, out).await
}

/// Sends `chunks` as a chunked `200` of `content_type`, pausing as the options say; `hang`
/// then waits for the client to go away.
async fn stream_chunks(
    stream: &mut TcpStream,
    options: &ServerOptions,
    content_type: &str,
    chunks: Vec<Vec<u8>>,
    hang: bool,
) -> Result<(), Gone> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\
         cache-control: no-cache\r\n\r\n"
    );
    write(stream, head.into_bytes()).await?;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let pause = if i == 0 { options.first_chunk_after } else { options.chunk_interval };
        if !pause.is_zero() {
            compio::time::sleep(pause).await;
        }
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        write(stream, framed).await?;
    }
    if hang {
        let mut rest = Vec::new();
        while read_more(stream, &mut rest).await {}
        return Err(Gone);
    }
    write(stream, b"0\r\n\r\n".to_vec()).await
}

async fn respond(stream: &mut TcpStream, shared: &Shared, request: RecordedRequest) -> Result<(), Gone> {
    let options = &shared.options;
    let authorized = match &options.api_key {
        None => Ok(()),
        Some(key) => match request.header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
            Some(given) if given == key => Ok(()),
            Some(given) => Err(format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                redact(given)
            )),
            None => Err("You didn't provide an API key. You need to provide your API key in an \
                         Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .to_string()),
        },
    };
    let json = request.json();
    let route = (request.method.as_str(), request.path.rsplit('/').next().unwrap_or_default());
    let body_len = request.body.len();
    if !options.no_recording {
        lock(&shared.requests).push(request.clone());
    }
    if let Err(message) = authorized {
        return send_error(stream, 401, &message).await;
    }
    match (route, json) {
        (("POST", "completions"), Some(json)) if request.path.ends_with("/chat/completions") => {
            if json.get("stream") != Some(&Value::Bool(true)) {
                return send_error(stream, 400, "this test server only streams: set stream to true").await;
            }
            let reply = lock(&shared.replies).pop_front();
            let reply = reply.or_else(|| options.default_reply.clone());
            let reply = reply.unwrap_or_else(|| ChatReply::text("Hello from the test server."));
            let model = json.get("model").and_then(Value::as_str).unwrap_or("gpt-4o-mini");
            let include_usage = json.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
            let id = format!("chatcmpl-cxbtest{}", shared.next_id.fetch_add(1, Ordering::Relaxed));
            let stream_head = ChunkHead { id: &id, model, include_usage };
            match reply {
                ChatReply::Stream { text, tool_calls, usage } => {
                    let events = chat_events(&stream_head, &text, &tool_calls, usage, body_len as u64 / 4);
                    stream_chunks(stream, options, "text/event-stream; charset=utf-8", events, false).await
                }
                ChatReply::Error { status, message } => send_error(stream, status, &message).await,
                ChatReply::Raw(body) => {
                    stream_chunks(stream, options, "text/event-stream; charset=utf-8", vec![body], false).await
                }
                ChatReply::Hang(text) => {
                    let events = vec![
                        stream_head.event(json!({"role": "assistant", "content": "", "refusal": null}), None),
                        stream_head.event(json!({"content": text}), None),
                    ];
                    stream_chunks(stream, options, "text/event-stream; charset=utf-8", events, true).await
                }
            }
        }
        (("POST", "speech"), Some(json)) if request.path.ends_with("/audio/speech") => {
            let field = |name: &str| json.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
            let (Some(_), Some(_), Some(input)) = (field("model"), field("voice"), field("input")) else {
                return send_error(stream, 400, "model, voice and input are required").await;
            };
            if field("response_format") != Some("pcm") {
                return send_error(stream, 400, "this test server only makes response_format pcm").await;
            }
            let chunks = speech_pcm(input).chunks(SPEECH_CHUNK).map(<[u8]>::to_vec).collect();
            stream_chunks(stream, options, "application/octet-stream", chunks, false).await
        }
        (("POST", _), None) => {
            send_error(
                stream,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
                 using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
                 sent was not valid JSON.",
            )
            .await
        }
        ((method, _), _) => {
            let message = format!("Invalid URL ({method} {})", request.path);
            send_error(stream, 404, &message).await
        }
    }
}

/// A key shown as OpenAI shows it: the first three and last four characters.
fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars.iter().take(3).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// What every chunk of one stream shares.
struct ChunkHead<'a> {
    id: &'a str,
    model: &'a str,
    include_usage: bool,
}

impl ChunkHead<'_> {
    /// One `data:` event with `delta` in `choices[0]`.
    fn event(&self, delta: Value, finish_reason: Option<&str>) -> Vec<u8> {
        let choice = json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason});
        self.data(json!([choice]), None)
    }

    fn data(&self, choices: Value, usage: Option<Value>) -> Vec<u8> {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": CREATED,
            "model": self.model, "system_fingerprint": "fp_cxbtest", "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        format!("data: {chunk}\n\n").into_bytes()
    }
}

/// The events of a streamed reply, as OpenAI sends them.
/// `usage: None` reports `prompt_tokens` as given and one completion token per delta.
fn chat_events(
    head: &ChunkHead<'_>,
    text: &str,
    tool_calls: &[ToolCall],
    usage: Option<TokenUsage>,
    prompt_tokens: u64,
) -> Vec<Vec<u8>> {
    let content = if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!("") };
    let mut events = vec![head.event(json!({"role": "assistant", "content": content, "refusal": null}), None)];
    for word in text.split_inclusive(' ') {
        events.push(head.event(json!({"content": word}), None));
    }
    for (index, call) in tool_calls.iter().enumerate() {
        let first = json!({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                            "function": {"name": call.name, "arguments": ""}}]});
        events.push(head.event(first, None));
        let chars: Vec<char> = call.arguments.chars().collect();
        for piece in chars.chunks(ARGUMENT_PIECE) {
            let piece: String = piece.iter().collect();
            events.push(head.event(json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), None));
        }
    }
    let finish = if tool_calls.is_empty() { "stop" } else { "tool_calls" };
    events.push(head.event(json!({}), Some(finish)));
    if head.include_usage {
        let deltas = events.len() as u64 - 2;
        let usage = usage.unwrap_or(TokenUsage { prompt_tokens, completion_tokens: deltas, ..TokenUsage::default() });
        let usage = json!({
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        });
        events.push(head.data(json!([]), Some(usage)));
    }
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

/// The PCM the server speaks for `input`: [`SPEECH_MS_PER_CHAR`] ms of 24 kHz 16-bit LE mono
/// per character, a sawtooth whose sample `i` is `(i % 200 - 100) * 100`.
pub fn speech_pcm(input: &str) -> Vec<u8> {
    let samples = input.chars().count() * SPEECH_MS_PER_CHAR * 24;
    (0..samples).flat_map(|i| (((i % 200) as i16 - 100) * 100).to_le_bytes()).collect()
}
