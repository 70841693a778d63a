//! Local servers speaking Anthropic's Messages API and Google's Gemini API, as their API
//! references document them, over HTTP/1.1 with keep-alive.
//!
//! Anthropic: `POST /v1/messages` needs `x-api-key` (401 `authentication_error` otherwise)
//! and `anthropic-version`, `max_tokens` and turns that start with `user` and alternate (400
//! `invalid_request_error` otherwise); the reply streams `message_start` (with the prompt's
//! usage), a `text` block word by word (`text_delta`), each tool call as a `tool_use` block
//! whose input comes in 8-byte `input_json_delta` pieces, `message_delta` (`stop_reason`,
//! `output_tokens`) and `message_stop`, with a `ping` after the start. A request with
//! `cache_control` breakpoints caches its prefix (system prompt and tools): the first such
//! request reports it in `cache_creation_input_tokens`, later ones in
//! `cache_read_input_tokens`.
//!
//! Gemini: `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` and `POST
//! /v1beta/cachedContents` need `x-goog-api-key` (403 `PERMISSION_DENIED` otherwise). A
//! cached content smaller than [`GEMINI_MIN_CACHE_TOKENS`] is refused (400), as the API
//! refuses small ones; a request naming a cached content must not also carry
//! `systemInstruction` or `tools` (400), and one naming an unknown one gets 404. The reply
//! streams one `GenerateContentResponse` per word, then the function calls, then a chunk with
//! `finishReason: STOP` and the `usageMetadata` (with `cachedContentTokenCount` when a cached
//! content was used).
//!
//! Tokens are counted as bytes / 4. The server runs on its own thread and stops when dropped.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use compio::net::{TcpListener, TcpStream};
use serde_json::{Value, json};

use crate::testkit::openai::{Gone, RecordedRequest, lock, read_request, reason, write};

/// The smallest cached content the Gemini server makes, in tokens.
pub const GEMINI_MIN_CACHE_TOKENS: u64 = 64;

/// Which API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API.
    Gemini,
}

/// One reply: text, then tool calls (name and arguments).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    /// Streamed a word at a time.
    pub text: String,
    /// Tool calls after the text.
    pub tool_calls: Vec<(String, Value)>,
}

impl Reply {
    /// A text reply.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply { text: text.into(), tool_calls: Vec::new() }
    }
}

#[derive(Debug, Default)]
struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Anthropic: prefixes cached so far. Gemini: cached contents, by index in the name.
    prefixes: Mutex<HashSet<String>>,
    contents: Mutex<Vec<Value>>,
}

/// The running server; dropping it stops it.
#[derive(Debug)]
pub struct VendorServer {
    addr: SocketAddr,
    vendor: Vendor,
    shared: Arc<Shared>,
    stop: Option<flume::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The key both servers take.
pub const KEY: &str = "test-key";

impl VendorServer {
    /// Starts a server for `vendor` on 127.0.0.1 and a free port.
    pub fn start(vendor: Vendor) -> std::io::Result<VendorServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = flume::bounded::<()>(1);
        let state = shared.clone();
        let thread = std::thread::Builder::new().name("vendor-testkit".into()).spawn(move || {
            let Ok(runtime) = compio::runtime::Runtime::new() else { return };
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else { return };
                let accept = std::pin::pin!(async {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => compio::runtime::spawn(serve(stream, vendor, state.clone())).detach(),
                            Err(_) => compio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                });
                futures_util::future::select(accept, stopped.recv_async()).await;
            });
        })?;
        Ok(VendorServer { addr, vendor, shared, stop: Some(stop), thread: Some(thread) })
    }

    /// The `base_url` to configure.
    pub fn base_url(&self) -> String {
        match self.vendor {
            Vendor::Anthropic => format!("http://{}/v1", self.addr),
            Vendor::Gemini => format!("http://{}/v1beta", self.addr),
        }
    }

    /// Queues the reply to the next request (the default: "Hello from the test server.").
    pub fn push_reply(&self, reply: Reply) {
        lock(&self.shared.replies).push_back(reply);
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Gemini: the cached contents made so far.
    pub fn cached_contents(&self) -> Vec<Value> {
        lock(&self.shared.contents).clone()
    }
}

impl Drop for VendorServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(mut stream: TcpStream, vendor: Vendor, shared: Arc<Shared>) {
    let mut pending = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut pending).await {
        lock(&shared.requests).push(request.recorded.clone());
        let answer = match vendor {
            Vendor::Anthropic => anthropic(&shared, &request.recorded),
            Vendor::Gemini => gemini(&shared, &request.recorded),
        };
        if send(&mut stream, answer).await.is_err() || request.close {
            return;
        }
    }
}

/// A status, a content type and a body (events are sent as they are, chunked).
struct Answer {
    status: u16,
    content_type: &'static str,
    chunks: Vec<String>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer { status, content_type: "application/json", chunks: vec![body.to_string()] }
    }
    fn events(chunks: Vec<String>) -> Answer {
        Answer { status: 200, content_type: "text/event-stream", chunks }
    }
}

async fn send(stream: &mut TcpStream, answer: Answer) -> Result<(), Gone> {
    write(stream, format!("HTTP/1.1 {} {}\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\r\n", answer.status, reason(answer.status), answer.content_type).into_bytes()).await?;
    for chunk in answer.chunks {
        write(stream, format!("{:x}\r\n{chunk}\r\n", chunk.len()).into_bytes()).await?;
    }
    write(stream, b"0\r\n\r\n".to_vec()).await
}

fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

fn next_reply(shared: &Shared) -> Reply {
    lock(&shared.replies).pop_front().unwrap_or_else(|| Reply::text("Hello from the test server."))
}

fn words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_string).collect()
}

fn anthropic(shared: &Shared, request: &RecordedRequest) -> Answer {
    let error = |status: u16, kind: &str, message: &str| Answer::json(status, json!({"type": "error", "error": {"type": kind, "message": message}}));
    if request.path != "/v1/messages" {
        return error(404, "not_found_error", "Not found");
    }
    if request.header("x-api-key") != Some(KEY) {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    if request.header("anthropic-version").is_none() {
        return error(400, "invalid_request_error", "anthropic-version: header is required");
    }
    let Some(body) = request.json() else { return error(400, "invalid_request_error", "invalid JSON") };
    if !body["max_tokens"].is_u64() {
        return error(400, "invalid_request_error", "max_tokens: Field required");
    }
    let turns = body["messages"].as_array().cloned().unwrap_or_default();
    let roles: Vec<&str> = turns.iter().map(|t| t["role"].as_str().unwrap_or("")).collect();
    if roles.first() != Some(&"user") || roles.windows(2).any(|w| w[0] == w[1]) {
        return error(400, "invalid_request_error", "messages: roles must alternate between \"user\" and \"assistant\", starting with \"user\"");
    }
    // The cached prefix: everything up to the last breakpoint (tools come first, then system).
    let (tools, system) = (body["tools"].to_string(), body["system"].to_string());
    let breakpoint = tools.contains("cache_control") || system.contains("cache_control");
    let prefix = tokens(&tools) + tokens(&system);
    let (written, read) = match breakpoint {
        false => (0, 0),
        true if lock(&shared.prefixes).insert(format!("{tools}{system}")) => (prefix, 0),
        true => (0, prefix),
    };
    let input = tokens(&body["messages"].to_string()) + if breakpoint { 0 } else { prefix };
    let reply = next_reply(shared);
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = vec![
        event("message_start", json!({"type": "message_start", "message": {"id": "msg_test", "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": null, "usage": {"input_tokens": input, "cache_creation_input_tokens": written, "cache_read_input_tokens": read, "output_tokens": 1}}})),
        event("ping", json!({"type": "ping"})),
    ];
    let mut index = 0;
    let mut output = 0;
    if !reply.text.is_empty() {
        out.push(event("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
        for w in words(&reply.text) {
            output += tokens(&w);
            out.push(event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": w}})));
        }
        out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    for (n, (name, args)) in reply.tool_calls.iter().enumerate() {
        out.push(event("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": format!("toolu_{n}"), "name": name, "input": {}}})));
        let args = args.to_string();
        for piece in args.as_bytes().chunks(8) {
            out.push(event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": String::from_utf8_lossy(piece)}})));
        }
        out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    let stop = if reply.tool_calls.is_empty() { "end_turn" } else { "tool_use" };
    out.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output.max(1)}})));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    Answer::events(out)
}

fn gemini(shared: &Shared, request: &RecordedRequest) -> Answer {
    let error = |status: u16, kind: &str, message: &str| Answer::json(status, json!({"error": {"code": status, "message": message, "status": kind}}));
    if request.header("x-goog-api-key") != Some(KEY) {
        return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.");
    }
    let Some(body) = request.json() else { return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.") };
    if request.path == "/v1beta/cachedContents" {
        let size = tokens(&body["systemInstruction"].to_string()) + tokens(&body["tools"].to_string());
        if size < GEMINI_MIN_CACHE_TOKENS {
            return error(400, "INVALID_ARGUMENT", &format!("Cached content is too small. total_token_count={size}, min_total_token_count={GEMINI_MIN_CACHE_TOKENS}"));
        }
        let mut contents = lock(&shared.contents);
        let name = format!("cachedContents/c{}", contents.len());
        contents.push(json!({"name": name, "body": body, "tokens": size}));
        return Answer::json(200, json!({"name": name, "model": body["model"], "expireTime": "2030-01-01T00:00:00Z", "usageMetadata": {"totalTokenCount": size}}));
    }
    let Some(model) = request.path.strip_prefix("/v1beta/models/").and_then(|p| p.strip_suffix(":streamGenerateContent?alt=sse")) else {
        return error(404, "NOT_FOUND", "Requested entity was not found.");
    };
    let mut cached = 0;
    if let Some(name) = body["cachedContent"].as_str() {
        if body.get("systemInstruction").is_some() || body.get("tools").is_some() {
            return error(400, "INVALID_ARGUMENT", "CachedContent can not be used with GenerateContent request setting system_instruction, tools or tool_config.");
        }
        let contents = lock(&shared.contents);
        let Some(found) = contents.iter().find(|c| c["name"] == name) else { return error(404, "NOT_FOUND", "CachedContent not found.") };
        if found["body"]["model"] != format!("models/{model}") {
            return error(400, "INVALID_ARGUMENT", "Model does not match the cached content's model.");
        }
        cached = found["tokens"].as_u64().unwrap_or(0);
    }
    let turns = body["contents"].as_array().cloned().unwrap_or_default();
    if turns.first().is_none_or(|t| t["role"] != "user") {
        return error(400, "INVALID_ARGUMENT", "Please ensure that multiturn requests alternate between user and model, starting with user.");
    }
    let prompt = cached + tokens(&body["contents"].to_string()) + tokens(&body["systemInstruction"].to_string()) + tokens(&body["tools"].to_string());
    let reply = next_reply(shared);
    let chunk = |parts: Value| format!("data: {}\r\n\r\n", json!({"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}], "modelVersion": model}));
    let mut out: Vec<String> = words(&reply.text).iter().map(|w| chunk(json!([{"text": w}]))).collect();
    let calls: Vec<Value> = reply.tool_calls.iter().map(|(name, args)| json!({"functionCall": {"name": name, "args": args}})).collect();
    if !calls.is_empty() {
        out.push(chunk(Value::Array(calls)));
    }
    let mut usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": tokens(&reply.text).max(1), "totalTokenCount": prompt + tokens(&reply.text).max(1)});
    if cached > 0 {
        usage["cachedContentTokenCount"] = json!(cached);
    }
    out.push(format!(
        "data: {}\r\n\r\n",
        json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP", "index": 0}], "usageMetadata": usage, "modelVersion": model})
    ));
    Answer::events(out)
}
