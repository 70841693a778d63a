//! The script language model: intents, fallback, tool calls and their follow-up, and config
//! errors with the field's path.

use cxb_pipeline::BotConfig;
use cxb_pipeline::provider::{
    ChatRequest, Event, Events, LlmEvent, Message, ProviderError, Role, TokenUsage,
    ToolCall,
};
use cxb_pipeline::providers::script::Script;
use serde_json::{Value, json};

fn bot_with(script: Value) -> BotConfig {
    let bot = json!({"llm": {"provider": "script", "options": {"script": script}}});
    BotConfig::from_json(bot.to_string().as_bytes()).expect("a valid bot")
}

fn script() -> Script {
    Script::from_config(&bot_with(json!({
        "intents": [
            {"name": "hours", "keywords": ["open", "opening hours"], "reply": "We are open nine to five."},
            {"name": "bye", "keywords": ["bye", "hang up"], "reply": "Thanks for calling.",
             "tool": {"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
             "after_tool": "Goodbye."},
            {"name": "human", "keywords": ["agent", "human"], "tool": {"name": "transfer_call"}},
        ],
        "fallback": "Sorry, I did not catch that.",
        "greeting": "Hello, how can I help?",
    })))
    .expect("a valid script")
}

fn said(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Role::System, "You are a bot."), Message::text(Role::User, text)],
        tools: Vec::new(),
    }
}

fn text_of(events: &[LlmEvent]) -> String {
    events.iter().filter_map(|e| if let LlmEvent::Token(t) = e { Some(t.as_str()) } else { None }).collect()
}

const DONE: LlmEvent = LlmEvent::Done { usage: TokenUsage { prompt_tokens: 0, completion_tokens: 0, cached_tokens: 0, cache_write_tokens: 0 } };

#[test]
fn first_matching_intent_replies_word_by_word() {
    let events = script().respond(1, &said("Are you OPEN on Sunday? Bye for now"));
    assert_eq!(
        events,
        [
            LlmEvent::Token("We ".into()),
            LlmEvent::Token("are ".into()),
            LlmEvent::Token("open ".into()),
            LlmEvent::Token("nine ".into()),
            LlmEvent::Token("to ".into()),
            LlmEvent::Token("five.".into()),
            DONE,
        ]
    );
}

#[test]
fn whole_words_only_and_the_fallback() {
    let s = script();
    for text in ["I reopened the door", "goodbyes", "", "   ", "¿qué?"] {
        let events = s.respond(1, &said(text));
        assert_eq!(text_of(&events), "Sorry, I did not catch that.", "{text:?}");
        assert_eq!(events.last(), Some(&DONE));
    }
    assert_eq!(text_of(&s.respond(1, &said("what are your Opening-Hours"))), "We are open nine to five.");
}

#[test]
fn tool_call_then_after_tool_reply() {
    let s = script();
    let first = s.respond(3, &said("ok bye"));
    let call = ToolCall {
        id: "script_3_1".into(),
        name: "end_call".into(),
        arguments: r#"{"reason":"caller said goodbye"}"#.into(),
    };
    assert_eq!(text_of(&first), "Thanks for calling.");
    assert_eq!(first[first.len() - 2..], [LlmEvent::ToolCall(call.clone()), DONE]);
    // The conversation runs the tool and asks again with its result.
    let mut follow_up = said("ok bye");
    follow_up.messages.push(Message {
        role: Role::Assistant,
        content: "Thanks for calling.".into(),
        tool_calls: vec![call.clone()],
        tool_call_id: None,
    });
    follow_up.messages.push(Message {
        role: Role::Tool,
        content: "ok".into(),
        tool_calls: Vec::new(),
        tool_call_id: Some(call.id),
    });
    assert_eq!(s.respond(4, &follow_up), [LlmEvent::Token("Goodbye.".into()), DONE]);
}

#[test]
fn tool_without_reply_or_after_tool() {
    let s = script();
    let events = s.respond(5, &said("Let me talk to a human"));
    assert_eq!(
        events,
        [
            LlmEvent::ToolCall(ToolCall { id: "script_5_2".into(), name: "transfer_call".into(), arguments: "{}".into() }),
            DONE,
        ]
    );
    let mut follow_up = said("Let me talk to a human");
    follow_up.messages.push(Message { role: Role::Tool, content: "transferred".into(), tool_calls: Vec::new(), tool_call_id: Some("script_5_2".into()) });
    assert_eq!(s.respond(6, &follow_up), [DONE], "no reply after the tool, so no loop");
}

#[test]
fn greeting_when_the_caller_has_said_nothing() {
    let request = ChatRequest { messages: vec![Message::text(Role::System, "You are a bot.")], tools: Vec::new() };
    assert_eq!(text_of(&script().respond(0, &request)), "Hello, how can I help?");
    let plain = Script::from_json(&json!({"fallback": "Hm?"})).expect("valid");
    assert_eq!(text_of(&plain.respond(0, &request)), "Hm?");
    assert_eq!(Script::from_json(&json!({})).expect("valid").respond(0, &request), [DONE]);
}

#[test]
fn complete_streams_through_the_event_queue() {
    let bot = bot_with(json!({"intents": [{"keywords": ["hi"], "reply": "Hello there."}]}));
    let llm = cxb_pipeline::providers::llm(&bot).expect("the registry builds the script");
    let events = Events::new();
    let runtime = compio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let job = llm.complete(8, said("hi"), events.clone());
        job.await.expect("the task finishes");
    });
    let got: Vec<Event> = std::iter::from_fn(|| events.pop().map(|(_, e)| e)).collect();
    let llm = |event| Event::Llm { turn: 8, event };
    assert_eq!(got, [llm(LlmEvent::Token("Hello ".into())), llm(LlmEvent::Token("there.".into())), llm(DONE)]);
}

#[test]
fn invalid_scripts_name_the_field() {
    let invalid = |script: Value| Script::from_config(&bot_with(script)).err();
    let field = |e: Option<ProviderError>| match e {
        Some(ProviderError::Invalid { field, .. }) => field,
        other => panic!("not an Invalid error: {other:?}"),
    };
    let missing = BotConfig::from_json(br#"{"llm":{"provider":"script"}}"#).expect("bot");
    assert_eq!(field(Script::from_config(&missing).err()), "llm.options.script");
    assert_eq!(field(invalid(json!("a string"))), "llm.options.script");
    assert_eq!(field(invalid(json!({"intents": [{"keywords": "open"}]}))), "llm.options.script.intents[0].keywords");
    assert_eq!(field(invalid(json!({"intents": [{"reply": "x"}]}))), "llm.options.script.intents[0]");
    assert_eq!(
        field(invalid(json!({"intents": [{"keywords": ["a"]}, {"keywords": ["b"], "reply": 5}]}))),
        "llm.options.script.intents[1].reply"
    );
    assert_eq!(field(invalid(json!({"intents": [{"keywords": []}]}))), "llm.options.script.intents[0].keywords");
    assert_eq!(
        field(invalid(json!({"intents": [{"keywords": ["ok", "?!"]}]}))),
        "llm.options.script.intents[0].keywords[1]"
    );
    assert_eq!(
        field(invalid(json!({"intents": [{"keywords": ["ok"], "after_tool": "x"}]}))),
        "llm.options.script.intents[0].after_tool"
    );
    assert_eq!(
        field(invalid(json!({"intents": [{"keywords": ["ok"], "tool": {"name": " "}}]}))),
        "llm.options.script.intents[0].tool.name"
    );
    assert_eq!(
        field(invalid(json!({"intents": [{"keywords": ["ok"], "tool": {"name": "t", "arguments": [1]}}]}))),
        "llm.options.script.intents[0].tool.arguments"
    );
    assert_eq!(field(invalid(json!({"fallbak": "typo"}))), "llm.options.script.fallbak");
}

#[test]
fn odd_requests_do_not_panic() {
    let s = script();
    let weird = [
        ChatRequest { messages: Vec::new(), tools: Vec::new() },
        ChatRequest { messages: vec![Message::text(Role::Tool, "orphan result")], tools: Vec::new() },
        ChatRequest { messages: vec![Message::text(Role::User, "\u{0}\u{FFFF}\u{1F600} open \u{202E}")], tools: Vec::new() },
        ChatRequest { messages: vec![Message::text(Role::User, "open ".repeat(10_000))], tools: Vec::new() },
    ];
    for request in &weird {
        let events = s.respond(u64::MAX, request);
        assert_eq!(events.last(), Some(&DONE));
    }
}
