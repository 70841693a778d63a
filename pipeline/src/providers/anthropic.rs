//! Anthropic's Messages API, streamed, with tools and prompt caching.
//!
//! Follows Anthropic's API reference "Messages" (`POST /v1/messages` with `x-api-key` and
//! `anthropic-version: 2023-06-01`), "Streaming Messages" and "Prompt caching". The request
//! carries the system prompt apart from the turns (`system`), turns alternate `user` and
//! `assistant`, an assistant's tool calls are `tool_use` content blocks and their results
//! `tool_result` blocks in the next user turn; `max_tokens` is required. The reply is a
//! stream of server-sent events, each named by its `event:` line: `message_start` (the
//! message, with the prompt's `usage`: `input_tokens`, `cache_creation_input_tokens`,
//! `cache_read_input_tokens`), then per content block `content_block_start` (a `text` block,
//! or a `tool_use` block with `id` and `name`), `content_block_delta` (`text_delta` with
//! `text`, or `input_json_delta` with a piece of the tool input as `partial_json`) and
//! `content_block_stop`, then `message_delta` (`stop_reason`, output `usage`) and
//! `message_stop`; `ping` events may come anywhere, and an `error` event
//! (`{"type":"error","error":{"type","message"}}`) ends the stream. Errors before the
//! stream are a non-2xx status with the same error object.
//!
//! With the bot's prompt cache on, the system prompt and the tool definitions are marked
//! with `cache_control: {"type": "ephemeral"}` breakpoints (the system block, and the last
//! tool, which caches all tools before it): Anthropic keeps that prefix for five minutes from
//! its last use, so every call of the bot reads it from the cache.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::BotConfig;
use crate::provider::{ChatRequest, Events, Job, LlmEvent, LlmProvider, Message, ProviderError, Role, TokenUsage, ToolCall};
use crate::providers::openai::{Endpoint, MAX_ARGUMENTS, MAX_TOOL_CALLS, ReplyDecoder, ReplyEvents, message_in, pass_options, prompt_cache, stream_reply};
use crate::providers::sse::SseParser;

/// Where Anthropic's API is when the config names no `base_url`.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";
/// The model when the config names none.
pub const DEFAULT_MODEL: &str = "claude-3-5-haiku-latest";
/// The API version this adapter speaks.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the options set none (a spoken reply is short).
const DEFAULT_MAX_TOKENS: u64 = 1024;
/// `llm.options` copied into the request as they are.
const OPTIONS: &[&str] = &["temperature", "top_p", "top_k", "max_tokens", "stop_sequences"];

/// Streaming messages from Anthropic's API (or a server that speaks it).
#[derive(Debug)]
pub struct AnthropicMessages {
    endpoint: Rc<Endpoint>,
    model: String,
    options: Map<String, Value>,
    cache: bool,
}

impl AnthropicMessages {
    /// From `bot.llm`: `base_url` (default Anthropic's, which needs `secrets.api_key`),
    /// `model` (default `claude-3-5-haiku-latest`), `options` (`max_tokens` default 1,024,
    /// `temperature`, `top_p`, `top_k`, `stop_sequences` passed through; `prompt_cache`).
    pub fn from_config(bot: &BotConfig) -> Result<AnthropicMessages, ProviderError> {
        let (url, key) = Endpoint::resolve(&bot.llm, "llm", ANTHROPIC_BASE_URL, "/messages")?;
        let mut headers = vec![("anthropic-version", API_VERSION.to_string())];
        headers.extend(key.map(|k| ("x-api-key", k)));
        Ok(AnthropicMessages {
            endpoint: Rc::new(Endpoint::with_headers(url, headers)),
            model: bot.llm.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            options: bot.llm.options.clone(),
            cache: prompt_cache(bot),
        })
    }

    /// The JSON body of a streaming request for `request`.
    pub fn request_body(&self, request: &ChatRequest) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("max_tokens".into(), json!(DEFAULT_MAX_TOKENS));
        let system: Vec<&str> = request.messages.iter().filter(|m| m.role == Role::System).map(|m| m.content.as_str()).collect();
        if !system.is_empty() {
            let mut block = json!({"type": "text", "text": system.join("\n\n")});
            if self.cache {
                block["cache_control"] = json!({"type": "ephemeral"});
            }
            body.insert("system".into(), json!([block]));
        }
        body.insert("messages".into(), Value::Array(turns(&request.messages)));
        if !request.tools.is_empty() {
            let mut tools: Vec<Value> =
                request.tools.iter().map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters})).collect();
            if let (true, Some(last)) = (self.cache, tools.last_mut()) {
                last["cache_control"] = json!({"type": "ephemeral"});
            }
            body.insert("tools".into(), Value::Array(tools));
        }
        body.insert("stream".into(), json!(true));
        pass_options(&mut body, &self.options, OPTIONS);
        Value::Object(body)
    }
}

/// What opens the turns when the bot spoke first (its greeting): the API wants a user turn
/// first.
pub const CALL_CONNECTED: &str = "(The call is connected.)";

/// The conversation as Anthropic's alternating turns: tool calls as `tool_use` blocks of the
/// assistant's turn, their results as `tool_result` blocks of one user turn; consecutive
/// turns of one role are joined (the API requires alternation, starting with the user).
fn turns(messages: &[Message]) -> Vec<Value> {
    let mut out: Vec<(&str, Vec<Value>)> = Vec::new();
    if messages.iter().find(|m| m.role != Role::System).is_some_and(|m| m.role == Role::Assistant) {
        out.push(("user", vec![json!({"type": "text", "text": CALL_CONNECTED})]));
    }
    for m in messages {
        let (role, blocks) = match m.role {
            Role::System => continue,
            Role::User => ("user", vec![json!({"type": "text", "text": m.content})]),
            Role::Tool => ("user", vec![json!({"type": "tool_result", "tool_use_id": m.tool_call_id.clone().unwrap_or_default(), "content": m.content})]),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for call in &m.tool_calls {
                    let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
                }
                ("assistant", blocks)
            }
        };
        match out.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    out.into_iter().filter(|(_, c)| !c.is_empty()).map(|(role, content)| json!({"role": role, "content": content})).collect()
}

impl LlmProvider for AnthropicMessages {
    fn complete(&self, turn: u64, request: ChatRequest, events: Events) -> Job {
        let body = self.request_body(&request).to_string().into_bytes();
        let endpoint = self.endpoint.clone();
        compio::runtime::spawn(async move {
            let emit = |event| events.push(crate::provider::Event::Llm { turn, event });
            match endpoint.post("text/event-stream", body).await {
                Ok(response) => stream_reply(response, MessagesDecoder::new(), emit).await,
                Err(message) => emit(LlmEvent::Error(message)),
            }
        })
    }
}

/// Turns a Messages stream into [`LlmEvent`]s, sans-IO: text as it arrives, each tool call
/// at its block's end, `Done` with the usage at `message_stop` (or at the body's end after a
/// `stop_reason`). An `error` event, malformed JSON, a body that ends early, a tool call
/// without a name or an oversized one give one `Error` and nothing after it.
#[derive(Debug, Default)]
pub struct MessagesDecoder {
    sse: SseParser,
    calls: BTreeMap<u64, ToolCall>,
    usage: TokenUsage,
    stopped: bool,
    out: ReplyEvents,
}

#[derive(Deserialize)]
struct Data {
    message: Option<MessageStart>,
    index: Option<u64>,
    content_block: Option<Block>,
    delta: Option<Delta>,
    usage: Option<Usage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct MessageStart {
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    name: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    text: Option<String>,
    partial_json: Option<String>,
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl MessagesDecoder {
    /// A decoder at the start of a response body.
    pub fn new() -> MessagesDecoder {
        MessagesDecoder::default()
    }

    fn on_event(&mut self, name: &str, data: &str) {
        if name == "ping" {
            return;
        }
        let data: Data = match serde_json::from_str(data) {
            Ok(d) => d,
            Err(e) => return self.fail_with(format!("malformed {name} event: {e}")),
        };
        match name {
            "error" => {
                let error = data.error.unwrap_or(Value::Null);
                let message = message_in(&json!({ "error": error })).map_or_else(|| error.to_string(), str::to_string);
                self.fail_with(format!("server error: {message}"));
            }
            "message_start" => {
                if let Some(u) = data.message.and_then(|m| m.usage) {
                    self.add_usage(&u);
                }
            }
            "content_block_start" => {
                let (Some(index), Some(block)) = (data.index, data.content_block) else { return };
                match block.kind.as_str() {
                    "tool_use" => {
                        if self.calls.len() >= MAX_TOOL_CALLS {
                            return self.fail_with(format!("more than {MAX_TOOL_CALLS} tool calls"));
                        }
                        let call = ToolCall { id: block.id.unwrap_or_else(|| format!("call_{index}")), name: block.name.unwrap_or_default(), arguments: String::new() };
                        self.calls.insert(index, call);
                    }
                    "text" => {
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            self.out.push(LlmEvent::Token(text));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let Some(delta) = data.delta else { return };
                if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                    self.out.push(LlmEvent::Token(text));
                }
                if let (Some(piece), Some(call)) = (delta.partial_json, data.index.and_then(|i| self.calls.get_mut(&i))) {
                    if call.arguments.len() + piece.len() > MAX_ARGUMENTS {
                        return self.fail_with(format!("tool call arguments longer than {MAX_ARGUMENTS} bytes"));
                    }
                    call.arguments.push_str(&piece);
                }
            }
            "content_block_stop" => {
                if let Some(call) = data.index.and_then(|i| self.calls.remove(&i)) {
                    if call.name.is_empty() {
                        return self.fail_with(format!("tool call {} has no name", call.id));
                    }
                    let arguments = if call.arguments.trim().is_empty() { "{}".to_string() } else { call.arguments };
                    self.out.push(LlmEvent::ToolCall(ToolCall { arguments, ..call }));
                }
            }
            "message_delta" => {
                if let Some(u) = data.usage {
                    self.usage.completion_tokens = u.output_tokens.unwrap_or(self.usage.completion_tokens);
                }
                if data.delta.and_then(|d| d.stop_reason).is_some() {
                    self.stopped = true;
                }
            }
            "message_stop" => self.done(),
            _ => {}
        }
    }

    fn add_usage(&mut self, u: &Usage) {
        let (fresh, written, read) = (u.input_tokens.unwrap_or(0), u.cache_creation_input_tokens.unwrap_or(0), u.cache_read_input_tokens.unwrap_or(0));
        // `input_tokens` counts only what came after the last cache breakpoint.
        self.usage.prompt_tokens = fresh + written + read;
        self.usage.cached_tokens = read;
        self.usage.cache_write_tokens = written;
        self.usage.completion_tokens = u.output_tokens.unwrap_or(0);
    }

    fn done(&mut self) {
        self.out.done(self.usage);
    }

    fn fail_with(&mut self, reason: String) {
        self.calls.clear();
        self.out.fail(reason);
    }
}

impl ReplyDecoder for MessagesDecoder {
    fn push(&mut self, bytes: &[u8]) {
        if self.out.is_finished() {
            return;
        }
        if let Err(e) = self.sse.push(bytes) {
            return self.fail_with(e.to_string());
        }
        while !self.out.is_finished() {
            let Some(event) = self.sse.next_event() else { break };
            self.on_event(&event.event, &event.data);
        }
    }

    fn end(&mut self) {
        if self.stopped && self.calls.is_empty() {
            self.done();
        } else {
            self.fail_with("the stream ended before the reply was complete".to_string());
        }
    }

    fn fail(&mut self, reason: String) {
        self.fail_with(reason);
    }

    fn is_finished(&self) -> bool {
        self.out.is_finished()
    }

    fn next_event(&mut self) -> Option<LlmEvent> {
        self.out.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ToolSpec;

    fn decode(stream: &str) -> Vec<LlmEvent> {
        let mut d = MessagesDecoder::new();
        // Fed in 7-byte pieces, as a network might.
        for piece in stream.as_bytes().chunks(7) {
            d.push(piece);
        }
        d.end();
        std::iter::from_fn(|| d.next_event()).collect()
    }

    fn event(name: &str, data: Value) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    #[test]
    fn text_tool_calls_and_cache_usage_are_decoded_from_the_stream() {
        let stream = [
            event("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1800, "output_tokens": 1}}})),
            event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            event("ping", json!({"type": "ping"})),
            event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}})),
            event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}})),
            event("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            event("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}})),
            event("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"order\": "}})),
            event("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"A12\"}"}})),
            event("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
            event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 21}})),
            event("message_stop", json!({"type": "message_stop"})),
        ]
        .concat();
        assert_eq!(
            decode(&stream),
            [
                LlmEvent::Token("Let me ".into()),
                LlmEvent::Token("check.".into()),
                LlmEvent::ToolCall(ToolCall { id: "toolu_1".into(), name: "lookup".into(), arguments: r#"{"order": "A12"}"#.into() }),
                LlmEvent::Done { usage: TokenUsage { prompt_tokens: 1812, completion_tokens: 21, cached_tokens: 1800, cache_write_tokens: 0 } },
            ]
        );
    }

    #[test]
    fn errors_and_broken_streams_end_in_one_error() {
        let overloaded = event("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
        assert_eq!(decode(&overloaded), [LlmEvent::Error("server error: Overloaded".into())]);
        let cut = event("message_start", json!({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}));
        assert!(matches!(decode(&cut).as_slice(), [LlmEvent::Error(e)] if e.contains("ended before")));
        assert!(matches!(decode("event: content_block_delta\ndata: {nope\n\n").as_slice(), [LlmEvent::Error(e)] if e.contains("malformed")));
        let nameless = [
            event("content_block_start", json!({"index": 0, "content_block": {"type": "tool_use", "id": "t"}})),
            event("content_block_stop", json!({"index": 0})),
        ]
        .concat();
        assert!(matches!(decode(&nameless).as_slice(), [LlmEvent::Error(e)] if e.contains("no name")));
    }

    #[test]
    fn requests_put_the_system_prompt_apart_and_tool_turns_in_blocks_with_cache_breakpoints() {
        let mut bot = BotConfig::from_json(br#"{"llm": {"provider": "anthropic", "base_url": "http://127.0.0.1:9/v1", "options": {"prompt_cache": true, "temperature": 0.3}}}"#).expect("bot");
        bot.id = "bot_1".into();
        let provider = AnthropicMessages::from_config(&bot).expect("provider");
        let mut asked = Message::text(Role::Assistant, "");
        asked.tool_calls.push(ToolCall { id: "toolu_1".into(), name: "lookup".into(), arguments: r#"{"order":"A12"}"#.into() });
        let mut answer = Message::text(Role::Tool, "shipped");
        answer.tool_call_id = Some("toolu_1".into());
        let request = ChatRequest {
            messages: vec![Message::text(Role::System, "Be brief."), Message::text(Role::Assistant, "Hello!"), Message::text(Role::User, "Where is my order?"), asked, answer],
            tools: vec![ToolSpec { name: "lookup".into(), description: "Finds an order.".into(), parameters: json!({"type": "object"}) }],
        };
        let body = provider.request_body(&request);
        assert_eq!(body["system"], json!([{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]));
        assert_eq!(body["tools"][0]["cache_control"], json!({"type": "ephemeral"}));
        assert_eq!((body["max_tokens"].as_u64(), body["temperature"].as_f64(), body.get("prompt_cache")), (Some(1024), Some(0.3), None));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": CALL_CONNECTED}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
                {"role": "user", "content": [{"type": "text", "text": "Where is my order?"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"order": "A12"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "shipped"}]},
            ])
        );
        // Without the cache, no breakpoints; Anthropic's own API needs a key.
        bot.llm.options.remove("prompt_cache");
        let plain = AnthropicMessages::from_config(&bot).expect("provider").request_body(&request);
        assert!(!plain.to_string().contains("cache_control"));
        bot.llm.base_url = None;
        assert!(AnthropicMessages::from_config(&bot).is_err());
    }
}
