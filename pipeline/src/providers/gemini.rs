//! Google's Gemini API, streamed, with function calling and cached content.
//!
//! Follows the Gemini API reference: "Generating content" (`POST
//! /v1beta/models/{model}:streamGenerateContent?alt=sse` with the key in `x-goog-api-key`):
//! the request has `contents` (turns of role `user` or `model`, each a list of `parts`:
//! `text`, `functionCall` `{name, args}`, `functionResponse` `{name, response}`), a
//! `systemInstruction`, `tools` (`functionDeclarations`) and a `generationConfig`; the answer
//! is server-sent events whose `data` is a `GenerateContentResponse` (`candidates[0].content
//! .parts`, `candidates[0].finishReason`, `usageMetadata` with `promptTokenCount`,
//! `candidatesTokenCount` and `cachedContentTokenCount`, `promptFeedback.blockReason` when the
//! prompt was refused). Errors are a non-2xx status with `{"error": {"code", "message",
//! "status"}}`.
//!
//! "Context caching": with the bot's prompt cache on, the system instruction and the tools
//! are put in a cached content (`POST /v1beta/cachedContents` with `model`,
//! `systemInstruction`, `tools` and a `ttl`), and requests name it (`cachedContent`) and carry
//! neither (the API refuses a request that sets both). One cached content serves every call
//! of the bot on this host (the same model, prompt and tools): the first call that needs it
//! makes it, and it is made again before it expires. A bot whose prompt is too small for the
//! API's minimum, or any other refusal, is served without the cache for a while.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::BotConfig;
use crate::provider::{ChatRequest, Events, Job, LlmEvent, LlmProvider, Message, ProviderError, Role, TokenUsage, ToolCall, ToolSpec};
use crate::providers::anthropic::CALL_CONNECTED;
use crate::providers::openai::{Endpoint, MAX_TOOL_CALLS, ReplyDecoder, ReplyEvents, message_in, prompt_cache, read_limited, stream_reply};
use crate::providers::sse::SseParser;

/// Where the Gemini API is when the config names no `base_url`.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";
/// The model when the config names none.
pub const DEFAULT_MODEL: &str = "gemini-2.0-flash";
/// How long a cached content lives.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);
/// A cached content this close to its expiry is made again.
const CACHE_RENEW: Duration = Duration::from_secs(300);
/// How long a bot whose cached content was refused goes without one.
const CACHE_REFUSED_FOR: Duration = Duration::from_secs(600);
/// `llm.options` mapped into `generationConfig`.
const OPTIONS: &[(&str, &str)] =
    &[("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("max_tokens", "maxOutputTokens"), ("stop", "stopSequences")];

/// Cached contents of this host, by what they hold.
static CACHES: Mutex<Option<HashMap<String, Cached>>> = Mutex::new(None);

#[derive(Debug, Clone)]
enum Cached {
    /// The cached content's name and when it is to be made again.
    Ready { name: String, renew_at: Instant },
    /// The API refused one; ask again after this.
    Refused { until: Instant },
}

/// Streaming content from the Gemini API (or a server that speaks it).
#[derive(Debug)]
pub struct Gemini {
    endpoint: Rc<Endpoint>,
    base: String,
    model: String,
    generation: Map<String, Value>,
    cache: bool,
}

impl Gemini {
    /// From `bot.llm`: `base_url` (default Google's, which needs `secrets.api_key`), `model`
    /// (default `gemini-2.0-flash`), `options` (`temperature`, `top_p`, `top_k`,
    /// `max_tokens`, `stop` into `generationConfig`; `prompt_cache`).
    pub fn from_config(bot: &BotConfig) -> Result<Gemini, ProviderError> {
        let model = bot.llm.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_string());
        if model.is_empty() || !model.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err(ProviderError::invalid("llm.model", "a Gemini model name such as gemini-2.0-flash"));
        }
        let (base, key) = Endpoint::resolve(&bot.llm, "llm", GEMINI_BASE_URL, "")?;
        let url = format!("{base}/models/{model}:streamGenerateContent?alt=sse");
        let mut generation = Map::new();
        for (from, to) in OPTIONS {
            if let Some(v) = bot.llm.options.get(*from) {
                generation.insert((*to).to_string(), v.clone());
            }
        }
        Ok(Gemini {
            endpoint: Rc::new(Endpoint::with_headers(url, key.map(|k| ("x-goog-api-key", k)).into_iter().collect())),
            base,
            model,
            generation,
            cache: prompt_cache(bot),
        })
    }

    /// The JSON body of a streaming request for `request`; with `cached`, the cached
    /// content's name stands for the system instruction and tools.
    pub fn request_body(&self, request: &ChatRequest, cached: Option<&str>) -> Value {
        let mut body = Map::new();
        body.insert("contents".into(), Value::Array(contents(&request.messages)));
        match cached {
            Some(name) => {
                body.insert("cachedContent".into(), json!(name));
            }
            None => body.extend(static_part(&request.messages, &request.tools)),
        }
        if !self.generation.is_empty() {
            body.insert("generationConfig".into(), Value::Object(self.generation.clone()));
        }
        Value::Object(body)
    }

    /// The body that makes a cached content of the request's static part.
    pub fn cache_body(&self, request: &ChatRequest) -> Value {
        let mut body = static_part(&request.messages, &request.tools);
        body.insert("model".into(), json!(format!("models/{}", self.model)));
        body.insert("ttl".into(), json!(format!("{}s", CACHE_TTL.as_secs())));
        Value::Object(body)
    }

    /// The cached content for `request`'s static part: this host's, or a new one; `None`
    /// when the API will not make one (then the request carries the static part itself).
    async fn cached_content(&self, request: &ChatRequest) -> Option<String> {
        let body = self.cache_body(request);
        let key = format!("{}\n{}", self.base, body);
        let now = Instant::now();
        match caches(|c| c.get(&key).cloned()) {
            Some(Cached::Ready { name, renew_at }) if now < renew_at => return Some(name),
            Some(Cached::Refused { until }) if now < until => return None,
            _ => {}
        }
        let made = match self.endpoint.post_to(&format!("{}/cachedContents", self.base), "application/json", body.to_string().into_bytes()).await {
            Ok(response) => {
                let answer: Option<Value> = serde_json::from_slice(&read_limited(response, 64 * 1024).await).ok();
                answer.and_then(|a| a["name"].as_str().map(str::to_string)).ok_or_else(|| "no name in the answer".to_string())
            }
            Err(e) => Err(e),
        };
        let entry = match &made {
            Ok(name) => Cached::Ready { name: name.clone(), renew_at: now + CACHE_TTL - CACHE_RENEW },
            Err(e) => {
                tracing::warn!("gemini: no cached content for the bot's prompt ({e}); sending it with each request");
                Cached::Refused { until: now + CACHE_REFUSED_FOR }
            }
        };
        caches(|c| c.insert(key, entry));
        made.ok()
    }
}

/// Runs `f` on this host's cached contents.
fn caches<T>(f: impl FnOnce(&mut HashMap<String, Cached>) -> T) -> T {
    let mut guard = CACHES.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(HashMap::new))
}

/// The system instruction and tools: what a cached content holds.
fn static_part(messages: &[Message], tools: &[ToolSpec]) -> Map<String, Value> {
    let mut out = Map::new();
    let system: Vec<&str> = messages.iter().filter(|m| m.role == Role::System).map(|m| m.content.as_str()).collect();
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": [{"text": system.join("\n\n")}]}));
    }
    if !tools.is_empty() {
        let declarations: Vec<Value> = tools.iter().map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters})).collect();
        out.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    out
}

/// The conversation as Gemini's contents: `user` and `model` turns, tool calls as
/// `functionCall` parts, their results as `functionResponse` parts named after the call;
/// consecutive turns of one role are joined, and a user turn opens them.
fn contents(messages: &[Message]) -> Vec<Value> {
    let names: HashMap<&str, &str> = messages.iter().flat_map(|m| &m.tool_calls).map(|c| (c.id.as_str(), c.name.as_str())).collect();
    let mut out: Vec<(&str, Vec<Value>)> = Vec::new();
    if messages.iter().find(|m| m.role != Role::System).is_some_and(|m| m.role == Role::Assistant) {
        out.push(("user", vec![json!({"text": CALL_CONNECTED})]));
    }
    for m in messages {
        let (role, parts) = match m.role {
            Role::System => continue,
            Role::User => ("user", vec![json!({"text": m.content})]),
            Role::Tool => {
                let name = m.tool_call_id.as_deref().and_then(|id| names.get(id)).copied().unwrap_or("tool");
                ("user", vec![json!({"functionResponse": {"name": name, "response": {"content": m.content}}})])
            }
            Role::Assistant => {
                let mut parts = Vec::new();
                if !m.content.is_empty() {
                    parts.push(json!({"text": m.content}));
                }
                for call in &m.tool_calls {
                    let args: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
                    parts.push(json!({"functionCall": {"name": call.name, "args": args}}));
                }
                ("model", parts)
            }
        };
        match out.last_mut() {
            Some((last, p)) if *last == role => p.extend(parts),
            _ => out.push((role, parts)),
        }
    }
    out.into_iter().filter(|(_, p)| !p.is_empty()).map(|(role, parts)| json!({"role": role, "parts": parts})).collect()
}

impl LlmProvider for Rc<Gemini> {
    fn complete(&self, turn: u64, request: ChatRequest, events: Events) -> Job {
        let this = self.clone();
        compio::runtime::spawn(async move {
            let emit = |event| events.push(crate::provider::Event::Llm { turn, event });
            let cached = if this.cache { this.cached_content(&request).await } else { None };
            let body = this.request_body(&request, cached.as_deref()).to_string().into_bytes();
            match this.endpoint.post("text/event-stream", body).await {
                Ok(response) => stream_reply(response, GeminiDecoder::new(turn), emit).await,
                Err(message) => emit(LlmEvent::Error(message)),
            }
        })
    }
}

/// Turns a `streamGenerateContent` event stream into [`LlmEvent`]s, sans-IO: text as it
/// arrives, each function call as it comes (Gemini sends them whole; ids are made per
/// request, `call_{turn}_{n}`), `Done` with the last usage at the end of the body once a
/// `finishReason` came. An error object, a refused prompt, malformed JSON or a body that ends
/// early give one `Error` and nothing after it.
#[derive(Debug)]
pub struct GeminiDecoder {
    sse: SseParser,
    turn: u64,
    calls: usize,
    usage: TokenUsage,
    finish_seen: bool,
    out: ReplyEvents,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    candidates: Option<Vec<Candidate>>,
    usage_metadata: Option<UsageMetadata>,
    prompt_feedback: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    parts: Option<Vec<Part>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    text: Option<String>,
    function_call: Option<FunctionCall>,
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
struct FunctionCall {
    id: Option<String>,
    name: Option<String>,
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
}

impl GeminiDecoder {
    /// A decoder for the answer to request `turn`.
    pub fn new(turn: u64) -> GeminiDecoder {
        GeminiDecoder { sse: SseParser::new(), turn, calls: 0, usage: TokenUsage::default(), finish_seen: false, out: ReplyEvents::default() }
    }

    fn on_data(&mut self, data: &str) {
        let response: Response = match serde_json::from_str(data) {
            Ok(r) => r,
            Err(e) => return self.fail_with(format!("malformed chunk: {e}")),
        };
        if let Some(error) = response.error {
            let message = message_in(&json!({ "error": error })).map_or_else(|| error.to_string(), str::to_string);
            return self.fail_with(format!("server error: {message}"));
        }
        if let Some(reason) = response.prompt_feedback.as_ref().and_then(|f| f["blockReason"].as_str()) {
            return self.fail_with(format!("the prompt was blocked: {reason}"));
        }
        if let Some(u) = response.usage_metadata {
            self.usage = TokenUsage {
                prompt_tokens: u.prompt_token_count.unwrap_or(0),
                completion_tokens: u.candidates_token_count.unwrap_or(0),
                cached_tokens: u.cached_content_token_count.unwrap_or(0),
                cache_write_tokens: 0,
            };
        }
        let Some(candidate) = response.candidates.and_then(|c| c.into_iter().next()) else { return };
        for part in candidate.content.and_then(|c| c.parts).unwrap_or_default() {
            if part.thought {
                continue;
            }
            if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                self.out.push(LlmEvent::Token(text));
            }
            if let Some(call) = part.function_call {
                let Some(name) = call.name.filter(|n| !n.is_empty()) else { return self.fail_with("a function call has no name".to_string()) };
                if self.calls >= MAX_TOOL_CALLS {
                    return self.fail_with(format!("more than {MAX_TOOL_CALLS} tool calls"));
                }
                let id = call.id.filter(|i| !i.is_empty()).unwrap_or_else(|| format!("call_{}_{}", self.turn, self.calls));
                self.calls += 1;
                let arguments = call.args.filter(|a| a.is_object()).unwrap_or_else(|| json!({})).to_string();
                self.out.push(LlmEvent::ToolCall(ToolCall { id, name, arguments }));
            }
        }
        if candidate.finish_reason.is_some_and(|r| !r.is_empty()) {
            self.finish_seen = true;
        }
    }

    fn fail_with(&mut self, reason: String) {
        self.out.fail(reason);
    }
}

impl ReplyDecoder for GeminiDecoder {
    fn push(&mut self, bytes: &[u8]) {
        if self.out.is_finished() {
            return;
        }
        if let Err(e) = self.sse.push(bytes) {
            return self.fail_with(e.to_string());
        }
        while !self.out.is_finished() {
            let Some(event) = self.sse.next_event() else { break };
            if event.event == "message" {
                self.on_data(&event.data);
            }
        }
    }

    fn end(&mut self) {
        if self.finish_seen {
            self.out.done(self.usage);
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

    fn decode(chunks: &[Value]) -> Vec<LlmEvent> {
        let mut d = GeminiDecoder::new(4);
        let stream: String = chunks.iter().map(|c| format!("data: {c}\r\n\r\n")).collect();
        for piece in stream.as_bytes().chunks(5) {
            d.push(piece);
        }
        d.end();
        std::iter::from_fn(|| d.next_event()).collect()
    }

    #[test]
    fn text_function_calls_and_cached_usage_are_decoded() {
        let events = decode(&[
            json!({"candidates": [{"content": {"parts": [{"text": "Let me "}], "role": "model"}, "index": 0}]}),
            json!({"candidates": [{"content": {"parts": [{"text": "check."}, {"functionCall": {"name": "lookup", "args": {"order": "A12"}}}], "role": "model"},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 2100, "candidatesTokenCount": 9, "cachedContentTokenCount": 2048, "totalTokenCount": 2109}}),
        ]);
        assert_eq!(
            events,
            [
                LlmEvent::Token("Let me ".into()),
                LlmEvent::Token("check.".into()),
                LlmEvent::ToolCall(ToolCall { id: "call_4_0".into(), name: "lookup".into(), arguments: r#"{"order":"A12"}"#.into() }),
                LlmEvent::Done { usage: TokenUsage { prompt_tokens: 2100, completion_tokens: 9, cached_tokens: 2048, cache_write_tokens: 0 } },
            ]
        );
    }

    #[test]
    fn errors_refusals_and_cut_streams_end_in_one_error() {
        let error = decode(&[json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}})]);
        assert_eq!(error, [LlmEvent::Error("server error: Resource has been exhausted".into())]);
        let blocked = decode(&[json!({"promptFeedback": {"blockReason": "SAFETY"}})]);
        assert!(matches!(blocked.as_slice(), [LlmEvent::Error(e)] if e.contains("SAFETY")));
        let cut = decode(&[json!({"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]})]);
        assert!(matches!(cut.as_slice(), [LlmEvent::Token(_), LlmEvent::Error(e)] if e.contains("ended before")));
        let nameless = decode(&[json!({"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}, "finishReason": "STOP"}]})]);
        assert!(matches!(nameless.as_slice(), [LlmEvent::Error(e)] if e.contains("no name")));
    }

    #[test]
    fn requests_name_the_cached_content_instead_of_carrying_the_prompt_and_tools() {
        let bot = BotConfig::from_json(br#"{"llm": {"provider": "gemini", "base_url": "http://127.0.0.1:9/v1beta", "model": "gemini-2.0-flash", "options": {"temperature": 0.2, "max_tokens": 200}}}"#).expect("bot");
        let g = Gemini::from_config(&bot).expect("provider");
        assert_eq!(g.endpoint.url, "http://127.0.0.1:9/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse");
        let mut asked = Message::text(Role::Assistant, "");
        asked.tool_calls.push(ToolCall { id: "call_2_0".into(), name: "lookup".into(), arguments: r#"{"order":"A12"}"#.into() });
        let mut answer = Message::text(Role::Tool, "shipped");
        answer.tool_call_id = Some("call_2_0".into());
        let request = ChatRequest {
            messages: vec![Message::text(Role::System, "Be brief."), Message::text(Role::Assistant, "Hello!"), Message::text(Role::User, "Where is it?"), asked, answer],
            tools: vec![ToolSpec { name: "lookup".into(), description: "Finds an order.".into(), parameters: json!({"type": "object"})}],
        };
        let plain = g.request_body(&request, None);
        assert_eq!(plain["systemInstruction"], json!({"parts": [{"text": "Be brief."}]}));
        assert_eq!(plain["tools"][0]["functionDeclarations"][0]["name"], "lookup");
        assert_eq!(plain["generationConfig"], json!({"temperature": 0.2, "maxOutputTokens": 200}));
        assert_eq!(
            plain["contents"],
            json!([
                {"role": "user", "parts": [{"text": CALL_CONNECTED}]},
                {"role": "model", "parts": [{"text": "Hello!"}]},
                {"role": "user", "parts": [{"text": "Where is it?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"order": "A12"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"content": "shipped"}}}]},
            ])
        );
        let cached = g.request_body(&request, Some("cachedContents/abc"));
        assert_eq!(cached["cachedContent"], "cachedContents/abc");
        assert!(cached.get("systemInstruction").is_none() && cached.get("tools").is_none(), "the API refuses both with a cached content");
        let cache = g.cache_body(&request);
        assert_eq!((cache["model"].as_str(), cache["ttl"].as_str()), (Some("models/gemini-2.0-flash"), Some("3600s")));
        assert_eq!(cache["systemInstruction"], plain["systemInstruction"]);
        let bad = BotConfig::from_json(br#"{"llm": {"provider": "gemini", "base_url": "http://127.0.0.1:9", "model": "../x"}}"#).expect("bot");
        assert!(Gemini::from_config(&bad).is_err());
    }
}
