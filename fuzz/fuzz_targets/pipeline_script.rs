//! The script language model on any config and any caller text: never a panic; a config is
//! accepted or rejected with a field under `llm.options.script`; an accepted script answers
//! every request with tokens that join into one of its texts, at most one tool call, and
//! `Done` last.
//!
//! Input: the script's JSON, a newline, then what the caller said (a leading `TOOL:` adds a
//! tool result after it).
#![no_main]

use cxb_pipeline::provider::{ChatRequest, LlmEvent, Message, ProviderError, Role};
use cxb_pipeline::providers::script::Script;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (config, said) = text.rsplit_once('\n').unwrap_or((&text, ""));
    let Ok(config) = serde_json::from_str::<serde_json::Value>(config) else { return };
    let script = match Script::from_json(&config) {
        Ok(script) => script,
        Err(ProviderError::Invalid { field, .. }) => {
            assert!(field.starts_with("llm.options.script"), "{field}");
            return;
        }
        Err(e) => panic!("not an Invalid error: {e:?}"),
    };
    let (tool, said) = match said.strip_prefix("TOOL:") {
        Some(rest) => (true, rest),
        None => (false, said),
    };
    let mut messages = vec![Message::text(Role::System, "system"), Message::text(Role::User, said)];
    if tool {
        messages.push(Message::text(Role::Tool, "result"));
    }
    let request = ChatRequest { messages, tools: Vec::new() };
    let events = script.respond(1, &request);
    assert!(matches!(events.last(), Some(LlmEvent::Done { .. })));
    let calls = events.iter().filter(|e| matches!(e, LlmEvent::ToolCall(_))).count();
    assert!(calls <= 1 && !(tool && calls == 1), "{events:?}");
    assert_eq!(script.respond(1, &request), events, "deterministic");
    let said_back: String =
        events.iter().filter_map(|e| if let LlmEvent::Token(t) = e { Some(t.as_str()) } else { None }).collect();
    let mut texts = vec![config["fallback"].as_str(), config["greeting"].as_str()];
    for intent in config["intents"].as_array().into_iter().flatten() {
        texts.extend([intent["reply"].as_str(), intent["after_tool"].as_str()]);
    }
    assert!(said_back.is_empty() || texts.contains(&Some(said_back.as_str())), "{said_back:?}");
    if let Some(i) = script.intent_for(said) {
        assert!(config["intents"][i].is_object());
    }
});
