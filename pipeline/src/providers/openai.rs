//! OpenAI-compatible chat completions (streamed, with tools) and speech synthesis: OpenAI
//! itself and self-hosted servers that copy its API (vLLM, llama.cpp's `llama-server`).
//!
//! Chat follows OpenAI's API reference "Create chat completion" with `stream: true` and
//! "The chat completion chunk object": the reply arrives as server-sent events, each `data:`
//! a `chat.completion.chunk` whose `choices[0].delta` carries text (`content`) or tool-call
//! fragments (`tool_calls[]`, merged by `index`: `id` and `function.name` come first, then
//! `function.arguments` in pieces), a chunk with `finish_reason`, then (with
//! `stream_options.include_usage`) a chunk with empty `choices` and the `usage`, then
//! `data: [DONE]`. Errors are a non-2xx status with `{"error": {"message", "type", "param",
//! "code"}}` (vLLM answers `{"object": "error", "message", ...}`; both are read). Servers
//! vary: usage may never come, `content` may be `null`, the first delta may carry only the
//! role, `choices` may be `null` on the usage chunk; all are accepted.
//!
//! Speech follows "Create speech" (`POST /audio/speech`, `{"model", "voice", "input",
//! "response_format": "pcm"}`): the answer is the raw audio, sent with chunked transfer
//! encoding as it is made; `pcm` is 24 kHz 16-bit signed little-endian mono with no header.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::{BotConfig, ProviderConfig};
use crate::provider::{
    AudioFormat, ChatRequest, Event, Events, Job, LlmEvent, LlmProvider, Message, ProviderError,
    TokenUsage, ToolCall, TtsEvent, TtsProvider,
};
use crate::providers::sse::SseParser;

/// Where OpenAI's API is when the config names no `base_url`.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The chat model when the config names none.
pub const DEFAULT_CHAT_MODEL: &str = "gpt-4o-mini";
/// The speech model when the config names none.
pub const DEFAULT_SPEECH_MODEL: &str = "gpt-4o-mini-tts";
/// The voice when the bot names none.
pub const DEFAULT_VOICE: &str = "alloy";

/// `llm.options` copied into the chat request as they are.
const CHAT_OPTIONS: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
];
/// `tts.options` copied into the speech request as they are.
const SPEECH_OPTIONS: &[&str] = &["speed", "instructions"];
/// The most of an error body read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most bytes read after `[DONE]` to keep a connection for the next request.
const DRAIN_LIMIT: usize = 4096;
/// How long to wait for the end of a body after `[DONE]` (a server that keeps the body open
/// delays `Done` by this much and loses its connection).
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(200);
/// The most tool calls one reply may make.
pub(crate) const MAX_TOOL_CALLS: usize = 128;
/// The most bytes of arguments one tool call may have.
pub(crate) const MAX_ARGUMENTS: usize = 1 << 20;

/// An API endpoint and the headers that authenticate to it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) url: String,
    headers: Vec<(&'static str, String)>,
}

impl Endpoint {
    /// `path` under the config's `base_url` (OpenAI's when unset, which then needs a key);
    /// the key goes as a bearer token.
    fn new(config: &ProviderConfig, kind: &str, path: &str) -> Result<Endpoint, ProviderError> {
        let (url, key) = Endpoint::resolve(config, kind, OPENAI_BASE_URL, path)?;
        Ok(Endpoint { url, headers: key.map(|k| ("authorization", format!("Bearer {k}"))).into_iter().collect() })
    }

    /// `path` under the config's `base_url` or `default_base`, and the config's key, which
    /// the default (a vendor's own service) requires.
    pub(crate) fn resolve(config: &ProviderConfig, kind: &str, default_base: &str, path: &str) -> Result<(String, Option<String>), ProviderError> {
        let base = config.base_url.as_deref().unwrap_or(default_base).trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ProviderError::invalid(format!("{kind}.base_url"), "must be an http:// or https:// URL"));
        }
        let api_key = config.api_key().filter(|k| !k.is_empty()).map(str::to_string);
        if config.base_url.is_none() && api_key.is_none() {
            let host = default_base.split('/').nth(2).unwrap_or(default_base);
            return Err(ProviderError::invalid(format!("{kind}.secrets.api_key"), format!("required for {host}")));
        }
        Ok((format!("{base}{path}"), api_key))
    }

    /// An endpoint at `url` sending `headers` with every request.
    pub(crate) fn with_headers(url: String, headers: Vec<(&'static str, String)>) -> Endpoint {
        Endpoint { url, headers }
    }

    /// POSTs `body` (JSON); a non-2xx answer becomes its error message.
    pub(crate) async fn post(&self, accept: &str, body: Vec<u8>) -> Result<cyper::Response, String> {
        self.post_to(&self.url, accept, body).await
    }

    /// POSTs `body` (JSON) to `url` with this endpoint's headers.
    pub(crate) async fn post_to(&self, url: &str, accept: &str, body: Vec<u8>) -> Result<cyper::Response, String> {
        let client = crate::egress::http()?;
        let mut request = client
            .post(url)
            .and_then(|r| r.header("content-type", "application/json"))
            .and_then(|r| r.header("accept", accept))
            .map_err(|e| crate::egress::error_chain(&e))?;
        for (name, value) in &self.headers {
            request = request.header(*name, value.as_str()).map_err(|e| crate::egress::error_chain(&e))?;
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", crate::egress::error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = read_limited(response, ERROR_BODY_LIMIT).await;
        Err(format!("HTTP {status}: {}", error_message(&body)))
    }
}

/// An error and its causes, on one line.
/// Up to `limit` bytes of a response's body (less if reading it fails).
pub(crate) async fn read_limited(response: cyper::Response, limit: usize) -> Vec<u8> {
    read_limited_stream(std::pin::pin!(response.bytes_stream()), limit).await
}

/// Up to `limit` bytes of the rest of a body.
pub(crate) async fn read_limited_stream<S, B, E>(mut body: std::pin::Pin<&mut S>, limit: usize) -> Vec<u8>
where
    S: futures_util::Stream<Item = Result<B, E>> + ?Sized,
    B: AsRef<[u8]>,
{
    let mut out = Vec::new();
    while let Some(Ok(bytes)) = body.next().await {
        let bytes = bytes.as_ref();
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(bytes.get(..room).unwrap_or(bytes));
        if out.len() >= limit {
            break;
        }
    }
    out
}

/// The message in an error body: OpenAI's `error.message`, vLLM's `message`, a bare
/// `error` string, or the start of the body itself.
pub fn error_message(body: &[u8]) -> String {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if let Some(message) = json.as_ref().and_then(message_in) {
        return message.to_string();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None if text.is_empty() => "(no body)".to_string(),
        None => text.to_string(),
    }
}

/// The human-readable message in an error object, in the shapes servers use.
pub(crate) fn message_in(error: &Value) -> Option<&str> {
    error
        .pointer("/error/message")
        .or_else(|| error.get("message"))
        .or_else(|| error.get("error"))
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
}

/// Whether the bot turned the prompt cache on (`llm.options.prompt_cache: true`): its static
/// system prompt and tool definitions are served from the provider's cache.
pub(crate) fn prompt_cache(bot: &BotConfig) -> bool {
    bot.llm.options.get("prompt_cache").and_then(Value::as_bool).unwrap_or(false)
}

/// Copies the `allowed` options that are set.
pub(crate) fn pass_options(into: &mut Map<String, Value>, options: &Map<String, Value>, allowed: &[&str]) {
    for name in allowed {
        if let Some(value) = options.get(*name) {
            into.insert((*name).to_string(), value.clone());
        }
    }
}

/// Streaming chat completions from an OpenAI-compatible server.
#[derive(Debug)]
pub struct OpenAiChat {
    endpoint: Rc<Endpoint>,
    model: String,
    options: Map<String, Value>,
    /// `prompt_cache_key` when the bot turned the prompt cache on: one per bot, so its calls
    /// share the cached prefix (system prompt and tools).
    cache_key: Option<String>,
}

impl OpenAiChat {
    /// From `bot.llm`: `base_url` (default OpenAI's), `model` (default `gpt-4o-mini`),
    /// `secrets.api_key` (sent as a bearer token when set; needed by OpenAI, not by most
    /// self-hosted servers), `options` (`temperature`, `max_tokens`, `top_p`, `seed`, `stop`,
    /// ... passed through).
    pub fn from_config(bot: &BotConfig) -> Result<OpenAiChat, ProviderError> {
        let llm = &bot.llm;
        Ok(OpenAiChat {
            endpoint: Rc::new(Endpoint::new(llm, "llm", "/chat/completions")?),
            model: llm.model.clone().unwrap_or_else(|| DEFAULT_CHAT_MODEL.to_string()),
            options: llm.options.clone(),
            cache_key: prompt_cache(bot).then(|| format!("cxb-{}", if bot.id.is_empty() { &bot.name } else { &bot.id })),
        })
    }

    /// The JSON body of a streaming request for `request`.
    pub fn request_body(&self, request: &ChatRequest) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("messages".into(), request.messages.iter().map(message_json).collect());
        if !request.tools.is_empty() {
            let tools = request.tools.iter().map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            });
            body.insert("tools".into(), tools.collect());
        }
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
        if let Some(key) = &self.cache_key {
            body.insert("prompt_cache_key".into(), json!(key));
        }
        pass_options(&mut body, &self.options, CHAT_OPTIONS);
        Value::Object(body)
    }
}

/// A message in OpenAI's shape: an assistant's tool calls as `{"id", "type": "function",
/// "function": {"name", "arguments"}}`, its `content` null when it only called tools.
fn message_json(message: &Message) -> Value {
    let mut m = Map::new();
    m.insert("role".into(), json!(message.role));
    let content = if message.content.is_empty() && !message.tool_calls.is_empty() {
        Value::Null
    } else {
        json!(message.content)
    };
    m.insert("content".into(), content);
    if !message.tool_calls.is_empty() {
        let calls = message.tool_calls.iter().map(|c| {
            json!({"id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        });
        m.insert("tool_calls".into(), calls.collect());
    }
    if let Some(id) = &message.tool_call_id {
        m.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(m)
}

impl LlmProvider for OpenAiChat {
    fn complete(&self, turn: u64, request: ChatRequest, events: Events) -> Job {
        let body = self.request_body(&request).to_string().into_bytes();
        let endpoint = self.endpoint.clone();
        compio::runtime::spawn(async move {
            let emit = |event| events.push(Event::Llm { turn, event });
            match endpoint.post("text/event-stream", body).await {
                Ok(response) => stream_reply(response, ChatDecoder::new(), emit).await,
                Err(message) => emit(LlmEvent::Error(message)),
            }
        })
    }
}

/// A sans-IO decoder of a streamed language-model reply: body bytes in, [`LlmEvent`]s out,
/// ending with one `Done` or `Error`.
pub trait ReplyDecoder {
    /// Takes the next bytes of the body.
    fn push(&mut self, bytes: &[u8]);
    /// The body ended.
    fn end(&mut self);
    /// The request failed for `reason` (reported unless the reply already ended).
    fn fail(&mut self, reason: String);
    /// Whether the reply has ended (`Done` or `Error` queued); later input is ignored.
    fn is_finished(&self) -> bool;
    /// The next event to report.
    fn next_event(&mut self) -> Option<LlmEvent>;
}

/// A decoder's events not yet taken, and whether its reply ended (after which nothing more
/// is queued).
#[derive(Debug, Default)]
pub(crate) struct ReplyEvents {
    finished: bool,
    out: VecDeque<LlmEvent>,
}

impl ReplyEvents {
    /// Queues a token or a tool call, unless the reply ended.
    pub(crate) fn push(&mut self, event: LlmEvent) {
        if !self.finished {
            self.out.push_back(event);
        }
    }

    /// Ends the reply with `Done` with `usage` (once).
    pub(crate) fn done(&mut self, usage: TokenUsage) {
        self.end_with(LlmEvent::Done { usage });
    }

    /// Ends the reply with an error (once).
    pub(crate) fn fail(&mut self, reason: String) {
        self.end_with(LlmEvent::Error(reason));
    }

    fn end_with(&mut self, event: LlmEvent) {
        if !self.finished {
            self.finished = true;
            self.out.push_back(event);
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    pub(crate) fn next(&mut self) -> Option<LlmEvent> {
        self.out.pop_front()
    }
}

/// Reads a streamed reply's body through `decoder`, reporting its events with `emit`.
pub(crate) async fn stream_reply(response: cyper::Response, mut decoder: impl ReplyDecoder, emit: impl Fn(LlmEvent)) {
    let mut body = std::pin::pin!(response.bytes_stream());
    let mut ended = false;
    while !decoder.is_finished() {
        match body.next().await {
            Some(Ok(bytes)) => decoder.push(&bytes),
            Some(Err(e)) => decoder.fail(format!("reading the stream: {}", crate::egress::error_chain(&e))),
            None => {
                ended = true;
                decoder.end();
            }
        }
        while let Some(event) = decoder.next_event() {
            if matches!(event, LlmEvent::Done { .. }) && !ended {
                // The chunked body's end follows the last event at once: read it, so the
                // connection is back in the pool before the turn is reported done.
                let rest = read_limited_stream(body.as_mut(), DRAIN_LIMIT);
                let _ = compio::time::timeout(DRAIN_TIME, rest).await;
            }
            emit(event);
        }
    }
}

impl ReplyDecoder for ChatDecoder {
    fn push(&mut self, bytes: &[u8]) {
        ChatDecoder::push(self, bytes);
    }
    fn end(&mut self) {
        ChatDecoder::end(self);
    }
    fn fail(&mut self, reason: String) {
        ChatDecoder::fail(self, reason);
    }
    fn is_finished(&self) -> bool {
        ChatDecoder::is_finished(self)
    }
    fn next_event(&mut self) -> Option<LlmEvent> {
        ChatDecoder::next_event(self)
    }
}

/// Turns a chat completion's event stream into [`LlmEvent`]s, sans-IO: body bytes in as
/// they arrive ([`ChatDecoder::push`]), then [`ChatDecoder::end`] when the body ends.
///
/// Emits `Token`s as text arrives; each tool call once complete (at `finish_reason`, or at
/// `[DONE]` if none came); then `Done` with the usage (zero when the server sent none) at
/// `[DONE]`, or at the end of the body after a `finish_reason`. A body that ends before
/// either, a chunk that is not JSON, an error object in the stream, a tool call without a
/// name or an oversized one give one `Error` instead, and nothing after it.
#[derive(Debug, Default)]
pub struct ChatDecoder {
    sse: SseParser,
    calls: BTreeMap<u64, PartialCall>,
    usage: Option<TokenUsage>,
    finish_seen: bool,
    finished: bool,
    out: VecDeque<LlmEvent>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct Chunk {
    choices: Option<Vec<Choice>>,
    usage: Option<Usage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    index: Option<u64>,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    index: Option<u64>,
    id: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

impl ChatDecoder {
    /// A decoder at the start of a response body.
    pub fn new() -> ChatDecoder {
        ChatDecoder::default()
    }

    /// Takes the next bytes of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.finished {
            return;
        }
        if let Err(e) = self.sse.push(bytes) {
            return self.fail(e.to_string());
        }
        while !self.finished {
            let Some(event) = self.sse.next_event() else { break };
            if event.event == "message" {
                self.on_data(&event.data);
            }
        }
    }

    /// The body ended.
    pub fn end(&mut self) {
        if self.finished {
            return;
        }
        if self.finish_seen {
            self.done();
        } else {
            self.fail("the stream ended before the reply was complete".to_string());
        }
    }

    /// The request failed for `reason` (reported unless the reply already ended).
    pub fn fail(&mut self, reason: String) {
        if !self.finished {
            self.finished = true;
            self.calls.clear();
            self.out.push_back(LlmEvent::Error(reason));
        }
    }

    /// Whether the reply has ended (`Done` or `Error` queued); later input is ignored.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next event to report.
    pub fn next_event(&mut self) -> Option<LlmEvent> {
        self.out.pop_front()
    }

    fn on_data(&mut self, data: &str) {
        if data.trim() == "[DONE]" {
            return self.done();
        }
        let chunk: Chunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => return self.fail(format!("malformed chunk: {e}")),
        };
        if let Some(error) = chunk.error {
            let message = message_in(&error).map_or_else(|| error.to_string(), str::to_string);
            return self.fail(format!("server error: {message}"));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(TokenUsage {
                prompt_tokens: usage.prompt_tokens.unwrap_or(0),
                completion_tokens: usage.completion_tokens.unwrap_or(0),
                cached_tokens: usage.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
                cache_write_tokens: 0,
            });
        }
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.out.push_back(LlmEvent::Token(text));
                }
                for fragment in delta.tool_calls.unwrap_or_default() {
                    if let Err(reason) = self.tool_fragment(fragment) {
                        return self.fail(reason);
                    }
                }
            }
            if choice.finish_reason.is_some_and(|r| !r.is_empty()) {
                self.finish_seen = true;
                if let Err(reason) = self.flush_calls() {
                    return self.fail(reason);
                }
            }
        }
    }

    fn tool_fragment(&mut self, fragment: ToolCallDelta) -> Result<(), String> {
        let last = self.calls.keys().next_back().copied();
        // Servers that leave out `index` start a new call with a new `id`.
        let index = match (fragment.index, &fragment.id) {
            (Some(index), _) => index,
            (None, Some(id)) if !self.calls.values().any(|c| &c.id == id) => last.map_or(0, |i| i + 1),
            (None, _) => last.unwrap_or(0),
        };
        if !self.calls.contains_key(&index) && self.calls.len() >= MAX_TOOL_CALLS {
            return Err(format!("more than {MAX_TOOL_CALLS} tool calls"));
        }
        let call = self.calls.entry(index).or_default();
        if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
            call.id = id;
        }
        let Some(function) = fragment.function else { return Ok(()) };
        // OpenAI sends the name once; a server that repeats it in every fragment sends the
        // same name again, which is not appended.
        if let Some(name) = function.name.filter(|n| *n != call.name) {
            call.name.push_str(&name);
        }
        if let Some(arguments) = function.arguments {
            if call.arguments.len() + arguments.len() > MAX_ARGUMENTS {
                return Err(format!("tool call arguments longer than {MAX_ARGUMENTS} bytes"));
            }
            call.arguments.push_str(&arguments);
        }
        Ok(())
    }

    fn flush_calls(&mut self) -> Result<(), String> {
        for (index, call) in std::mem::take(&mut self.calls) {
            if call.name.is_empty() {
                return Err(format!("tool call {index} has no name"));
            }
            self.out.push_back(LlmEvent::ToolCall(ToolCall {
                id: if call.id.is_empty() { format!("call_{index}") } else { call.id },
                name: call.name,
                arguments: if call.arguments.trim().is_empty() { "{}".into() } else { call.arguments },
            }));
        }
        Ok(())
    }

    fn done(&mut self) {
        if let Err(reason) = self.flush_calls() {
            return self.fail(reason);
        }
        self.finished = true;
        self.out.push_back(LlmEvent::Done { usage: self.usage.unwrap_or_default() });
    }
}

/// Speech from an OpenAI-compatible `/audio/speech` endpoint, as raw 24 kHz PCM.
#[derive(Debug)]
pub struct OpenAiSpeech {
    endpoint: Rc<Endpoint>,
    model: String,
    voice: String,
    options: Map<String, Value>,
}

impl OpenAiSpeech {
    /// The audio `response_format: "pcm"` gives.
    pub const FORMAT: AudioFormat = AudioFormat::Pcm16(24_000);

    /// From `bot.tts` (`base_url`, `model` default `gpt-4o-mini-tts`, `secrets.api_key`,
    /// `options.speed` and `options.instructions` passed through) and `bot.voice` (default
    /// `alloy`).
    pub fn from_config(bot: &BotConfig) -> Result<OpenAiSpeech, ProviderError> {
        let tts = &bot.tts;
        Ok(OpenAiSpeech {
            endpoint: Rc::new(Endpoint::new(tts, "tts", "/audio/speech")?),
            model: tts.model.clone().unwrap_or_else(|| DEFAULT_SPEECH_MODEL.to_string()),
            voice: bot.voice.clone().unwrap_or_else(|| DEFAULT_VOICE.to_string()),
            options: tts.options.clone(),
        })
    }

    /// The JSON body of a request to speak `text`.
    pub fn request_body(&self, text: &str) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("voice".into(), json!(self.voice));
        body.insert("input".into(), json!(text));
        body.insert("response_format".into(), json!("pcm"));
        pass_options(&mut body, &self.options, SPEECH_OPTIONS);
        Value::Object(body)
    }
}

impl TtsProvider for OpenAiSpeech {
    fn output_format(&self) -> AudioFormat {
        OpenAiSpeech::FORMAT
    }

    fn synthesize(&self, sentence: u64, text: String, events: Events) -> Job {
        let body = self.request_body(&text).to_string().into_bytes();
        let endpoint = self.endpoint.clone();
        compio::runtime::spawn(async move {
            let emit = |event| events.push(Event::Tts { sentence, event });
            let response = match endpoint.post("application/octet-stream", body).await {
                Ok(response) => response,
                Err(message) => return emit(TtsEvent::Error(message)),
            };
            let mut body = std::pin::pin!(response.bytes_stream());
            let mut aligner = SampleAligner::default();
            while let Some(bytes) = body.next().await {
                match bytes {
                    Ok(bytes) => {
                        let audio = aligner.push(&bytes);
                        if !audio.is_empty() {
                            emit(TtsEvent::Audio(audio));
                        }
                    }
                    Err(e) => return emit(TtsEvent::Error(format!("reading audio: {}", crate::egress::error_chain(&e)))),
                }
            }
            emit(TtsEvent::Done);
        })
    }
}

/// Cuts a byte stream of 16-bit samples into whole samples: a byte left over from one piece
/// is held for the next. A lone byte at the very end is not a sample and is dropped.
#[derive(Debug, Default)]
pub struct SampleAligner {
    held: Option<u8>,
}

impl SampleAligner {
    /// The whole samples `bytes` completes, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 1);
        out.extend(self.held.take());
        out.extend_from_slice(bytes);
        if out.len() % 2 == 1 {
            self.held = out.pop();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Role, ToolSpec};

    fn decode(body: &[u8]) -> Vec<LlmEvent> {
        let mut d = ChatDecoder::new();
        d.push(body);
        d.end();
        std::iter::from_fn(|| d.next_event()).collect()
    }

    #[test]
    fn llama_cpp_and_vllm_variations() {
        // Role-only first delta, `content: null`, no usage, `choices: null`, no [DONE].
        let body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":null,\"usage\":null}\n\n";
        assert_eq!(
            decode(body),
            [LlmEvent::Token("Hi".into()), LlmEvent::Done { usage: TokenUsage::default() }]
        );
    }

    #[test]
    fn tool_calls_without_index_or_id_and_repeated_names() {
        let body = b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\"\"}}]}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\":1}\"}}]}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"b\",\"function\":{\"name\":\"g\"}}]}}]}\n\n\
data: [DONE]\n\n";
        assert_eq!(
            decode(body),
            [
                LlmEvent::ToolCall(ToolCall { id: "a".into(), name: "f".into(), arguments: "{\"x\":1}".into() }),
                LlmEvent::ToolCall(ToolCall { id: "b".into(), name: "g".into(), arguments: "{}".into() }),
                LlmEvent::Done { usage: TokenUsage::default() },
            ]
        );
    }

    #[test]
    fn malformed_streams_end_in_one_error() {
        let cases: &[&[u8]] = &[
            b"data: {not json\n\n",
            b"data: 42\n\n",
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"cut\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"x\"}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            b"",
        ];
        for body in cases {
            let events = decode(body);
            let errors = events.iter().filter(|e| matches!(e, LlmEvent::Error(_))).count();
            assert_eq!(errors, 1, "{events:?}");
            assert!(matches!(events.last(), Some(LlmEvent::Error(_))), "{events:?}");
        }
        let events = decode(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n");
        assert_eq!(events, [LlmEvent::Error("server error: overloaded".into())]);
    }

    #[test]
    fn error_bodies() {
        let openai = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        assert_eq!(error_message(openai), "Incorrect API key provided");
        assert_eq!(error_message(br#"{"object":"error","message":"no model","code":404}"#), "no model");
        assert_eq!(error_message(b"Bad Gateway"), "Bad Gateway");
        assert_eq!(error_message(b""), "(no body)");
        assert_eq!(error_message(&[b'x'; 300]).chars().count(), 201);
    }

    #[test]
    fn assistant_tool_calls_in_openai_shape() {
        let mut bot = BotConfig::from_json(br#"{"llm":{"provider":"openai","base_url":"http://127.0.0.1:9/v1/","options":{"temperature":0.2,"script":1}}}"#)
            .expect("valid bot");
        bot.llm.model = Some("m".into());
        let chat = OpenAiChat::from_config(&bot).expect("valid config");
        let call = ToolCall { id: "c1".into(), name: "end_call".into(), arguments: "{}".into() };
        let request = ChatRequest {
            messages: vec![
                Message { role: Role::Assistant, content: String::new(), tool_calls: vec![call], tool_call_id: None },
                Message { role: Role::Tool, content: "ok".into(), tool_calls: vec![], tool_call_id: Some("c1".into()) },
            ],
            tools: vec![ToolSpec { name: "end_call".into(), description: "Hang up".into(), parameters: json!({"type": "object"}) }],
        };
        let body = chat.request_body(&request);
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "end_call", "arguments": "{}"}}]},
                    {"role": "tool", "content": "ok", "tool_call_id": "c1"},
                ],
                "tools": [{"type": "function", "function": {"name": "end_call", "description": "Hang up", "parameters": {"type": "object"}}}],
                "stream": true,
                "stream_options": {"include_usage": true},
                "temperature": 0.2,
            })
        );
        assert_eq!(chat.endpoint.url, "http://127.0.0.1:9/v1/chat/completions");
    }

    #[test]
    fn config_errors() {
        let bot = BotConfig::from_json(br#"{"llm":{"provider":"openai"}}"#).expect("valid bot");
        assert_eq!(
            OpenAiChat::from_config(&bot).err(),
            Some(ProviderError::invalid("llm.secrets.api_key", "required for api.openai.com"))
        );
        let bot = BotConfig::from_json(br#"{"tts":{"provider":"openai","base_url":"ftp://x"}}"#).expect("valid bot");
        assert_eq!(
            OpenAiSpeech::from_config(&bot).err(),
            Some(ProviderError::invalid("tts.base_url", "must be an http:// or https:// URL"))
        );
    }

    #[test]
    fn sample_aligner_never_splits_a_sample() {
        let mut a = SampleAligner::default();
        assert_eq!(a.push(&[1, 2, 3]), [1, 2]);
        assert_eq!(a.push(&[]), Vec::<u8>::new());
        assert_eq!(a.push(&[4]), [3, 4]);
        assert_eq!(a.push(&[5]), Vec::<u8>::new());
        assert_eq!(a.push(&[6, 7, 8]), [5, 6, 7, 8]);
    }
}
