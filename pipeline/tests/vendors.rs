//! The Anthropic and Gemini adapters against local servers speaking those APIs, over loopback
//! HTTP: streamed text and tool calls, errors, and the prompt cache shared by a bot's calls.

use std::future::Future;
use std::time::Duration;

use cxb_pipeline::BotConfig;
use cxb_pipeline::provider::{ChatRequest, Event, Events, LlmEvent, Message, Role, TokenUsage, ToolCall, ToolSpec};
use cxb_pipeline::testkit::vendors::{KEY, Reply, Vendor, VendorServer};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn run<F: Future>(test: F) -> F::Output {
    cxb_pipeline::egress::set_policy(cxb_contract::egress::EgressPolicy::with_loopback());
    compio::runtime::Runtime::new().expect("a compio runtime").block_on(test)
}

fn bot(provider: &str, server: &VendorServer, key: &str, cache: bool) -> BotConfig {
    let bot = json!({"id": "bot_v", "llm": {"provider": provider, "base_url": server.base_url(), "model": "model-test",
        "options": {"prompt_cache": cache, "temperature": 0.2}, "secrets": {"api_key": key}}});
    BotConfig::from_json(bot.to_string().as_bytes()).expect("a valid bot")
}

/// A request with a system prompt of `prompt_words` words, a greeting, a question and a tool.
fn request(prompt_words: usize) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::text(Role::System, vec!["Answer briefly and politely."; prompt_words].join(" ")),
            Message::text(Role::Assistant, "Hello!"),
            Message::text(Role::User, "Where is my order?"),
        ],
        tools: vec![ToolSpec { name: "lookup".into(), description: "Finds an order.".into(), parameters: json!({"type": "object", "properties": {"order": {"type": "string"}}}) }],
    }
}

/// Runs one completion on a fresh provider (a call of its own) and collects its events.
async fn complete(bot: &BotConfig, request: ChatRequest) -> Vec<LlmEvent> {
    let provider = cxb_pipeline::providers::llm(bot).expect("the adapter");
    let events = Events::new();
    let _job = provider.complete(3, request, events.clone());
    let mut out = Vec::new();
    loop {
        compio::time::timeout(WAIT, events.ready()).await.expect("an event within the wait");
        while let Some((_, Event::Llm { event, .. })) = events.pop() {
            let end = matches!(event, LlmEvent::Done { .. } | LlmEvent::Error(_));
            out.push(event);
            if end {
                return out;
            }
        }
    }
}

fn usage(events: &[LlmEvent]) -> TokenUsage {
    match events.last() {
        Some(LlmEvent::Done { usage }) => *usage,
        other => panic!("no Done: {other:?} in {events:?}"),
    }
}

fn body(server: &VendorServer, n: usize) -> Value {
    server.requests()[n].json().expect("a JSON body")
}

#[test]
fn anthropic_streams_text_and_tool_calls_and_its_calls_read_the_cached_prompt() {
    let server = VendorServer::start(Vendor::Anthropic).expect("server");
    server.push_reply(Reply { text: "Let me check.".into(), tool_calls: vec![("lookup".into(), json!({"order": "A12"}))] });
    let bot = bot("anthropic", &server, KEY, true);
    let first = run(complete(&bot, request(40)));
    assert_eq!(first[..3], [LlmEvent::Token("Let ".into()), LlmEvent::Token("me ".into()), LlmEvent::Token("check.".into())]);
    assert_eq!(first[3], LlmEvent::ToolCall(ToolCall { id: "toolu_0".into(), name: "lookup".into(), arguments: r#"{"order":"A12"}"#.into() }));
    let (one, two) = (usage(&first), usage(&run(complete(&bot, request(40)))));
    assert!(one.cache_write_tokens > 0 && one.cached_tokens == 0, "the first call writes the cache: {one:?}");
    assert!(two.cached_tokens == one.cache_write_tokens && two.cache_write_tokens == 0, "the second reads it: {two:?}");
    assert!(two.prompt_tokens > two.cached_tokens);
    let sent = &server.requests()[0];
    assert_eq!((sent.header("x-api-key"), sent.header("anthropic-version")), (Some(KEY), Some("2023-06-01")));
    let b = body(&server, 0);
    assert_eq!(b["system"][0]["cache_control"], json!({"type": "ephemeral"}));
    assert_eq!((b["stream"].as_bool(), b["messages"][0]["role"].as_str()), (Some(true), Some("user")));

    // A wrong key is the API's refusal, once.
    let refused = run(complete(&bot_with_key("anthropic", &server, "wrong"), request(1)));
    assert!(matches!(refused.as_slice(), [LlmEvent::Error(e)] if e.contains("401") && e.contains("invalid x-api-key")), "{refused:?}");
}

fn bot_with_key(provider: &str, server: &VendorServer, key: &str) -> BotConfig {
    bot(provider, server, key, false)
}

#[test]
fn gemini_calls_of_a_bot_share_one_cached_content_and_small_prompts_go_without() {
    let server = VendorServer::start(Vendor::Gemini).expect("server");
    server.push_reply(Reply { text: "Checking.".into(), tool_calls: vec![("lookup".into(), json!({"order": "A12"}))] });
    let bot = bot("gemini", &server, KEY, true);
    let first = run(complete(&bot, request(40)));
    assert_eq!(first[0], LlmEvent::Token("Checking.".into()));
    assert!(matches!(&first[1], LlmEvent::ToolCall(c) if c.name == "lookup" && c.arguments == r#"{"order":"A12"}"# && c.id == "call_3_0"), "{first:?}");
    let second = run(complete(&bot, request(40)));
    assert_eq!(server.cached_contents().len(), 1, "one cached content for both calls");
    let made = &server.cached_contents()[0];
    assert_eq!((made["body"]["model"].as_str(), made["body"]["ttl"].as_str()), (Some("models/model-test"), Some("3600s")));
    for n in [1, 2] {
        let b = body(&server, n);
        assert_eq!(b["cachedContent"], "cachedContents/c0");
        assert!(b.get("systemInstruction").is_none() && b.get("tools").is_none(), "{b}");
    }
    assert!(usage(&first).cached_tokens > 0 && usage(&second).cached_tokens == usage(&first).cached_tokens);
    assert_eq!(server.requests()[1].header("x-goog-api-key"), Some(KEY));

    // A prompt too small for a cached content: refused once, then sent with each request.
    let small = BotConfig::from_json(json!({"llm": {"provider": "gemini", "base_url": server.base_url(), "model": "small-test", "options": {"prompt_cache": true}, "secrets": {"api_key": KEY}}}).to_string().as_bytes()).expect("bot");
    let tiny = ChatRequest { messages: vec![Message::text(Role::System, "Hi."), Message::text(Role::User, "Hello?")], tools: Vec::new() };
    let before = server.requests().len();
    assert!(matches!(run(complete(&small, tiny.clone())).last(), Some(LlmEvent::Done { .. })));
    assert!(matches!(run(complete(&small, tiny)).last(), Some(LlmEvent::Done { .. })));
    let paths: Vec<String> = server.requests()[before..].iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.iter().filter(|p| p.ends_with("/cachedContents")).count(), 1, "asked once: {paths:?}");
    let last = body(&server, server.requests().len() - 1);
    assert_eq!(last["systemInstruction"]["parts"][0]["text"], "Hi.");

    // A wrong key is the API's refusal.
    let refused = run(complete(&bot_with_key("gemini", &server, "wrong"), request(1)));
    assert!(matches!(refused.as_slice(), [LlmEvent::Error(e)] if e.contains("403")), "{refused:?}");
}
