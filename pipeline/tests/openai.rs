//! The OpenAI-compatible adapters against the local OpenAI test server, over loopback HTTP.

use std::future::Future;
use std::time::Duration;

use cxb_pipeline::provider::{
    ChatRequest, Event, Events, LlmEvent, LlmProvider, Message, Role, TokenUsage, ToolCall, ToolSpec,
    TtsEvent, TtsProvider,
};
use cxb_pipeline::providers::openai::{OpenAiChat, OpenAiSpeech};
use cxb_pipeline::testkit::openai::{ChatReply, OpenAiServer, SPEECH_CHUNK, ServerOptions, speech_pcm};
use cxb_pipeline::{AudioFormat, BotConfig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn run<F: Future>(test: F) -> F::Output {
    // The test servers listen on loopback, which the outbound-request guard refuses unless allowed.
    cxb_pipeline::egress::set_policy(cxb_contract::egress::EgressPolicy::with_loopback());
    compio::runtime::Runtime::new().expect("a compio runtime").block_on(test)
}

fn bot(base_url: &str, api_key: Option<&str>) -> BotConfig {
    let secrets = match api_key {
        Some(key) => json!({"api_key": key}),
        None => json!({}),
    };
    let bot = json!({
        "llm": {"provider": "openai", "base_url": base_url, "model": "gpt-test",
                "options": {"temperature": 0.5, "max_tokens": 200}, "secrets": secrets},
        "tts": {"provider": "openai", "base_url": base_url, "secrets": secrets},
        "voice": "nova",
    });
    BotConfig::from_json(bot.to_string().as_bytes()).expect("a valid bot")
}

fn chat(server: &OpenAiServer) -> OpenAiChat {
    OpenAiChat::from_config(&bot(&server.base_url(), Some("sk-test"))).expect("valid config")
}

fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Role::System, "Be brief."), Message::text(Role::User, "Hi")],
        tools: Vec::new(),
    }
}

/// The events of one completion, up to and including `Done` or `Error`.
async fn reply(events: &Events, turn: u64) -> Vec<LlmEvent> {
    let mut out = Vec::new();
    loop {
        compio::time::timeout(WAIT, events.ready()).await.expect("an event within the wait");
        while let Some((_, event)) = events.pop() {
            let Event::Llm { turn: t, event } = event else { panic!("not an LLM event: {event:?}") };
            assert_eq!(t, turn);
            let end = matches!(event, LlmEvent::Done { .. } | LlmEvent::Error(_));
            out.push(event);
            if end {
                return out;
            }
        }
    }
}

/// The events of one synthesis, up to and including `Done` or `Error`.
async fn speech(events: &Events, sentence: u64) -> Vec<TtsEvent> {
    let mut out = Vec::new();
    loop {
        compio::time::timeout(WAIT, events.ready()).await.expect("an event within the wait");
        while let Some((_, event)) = events.pop() {
            let Event::Tts { sentence: s, event } = event else { panic!("not a TTS event: {event:?}") };
            assert_eq!(s, sentence);
            let end = matches!(event, TtsEvent::Done | TtsEvent::Error(_));
            out.push(event);
            if end {
                return out;
            }
        }
    }
}

fn only_error(events: &[LlmEvent]) -> &str {
    match events {
        [.., LlmEvent::Error(message)] => {
            let errors = events.iter().filter(|e| matches!(e, LlmEvent::Error(_))).count();
            assert_eq!(errors, 1, "{events:?}");
            message
        }
        _ => panic!("expected an error at the end: {events:?}"),
    }
}

#[test]
fn tokens_stream_then_done_with_usage() {
    let server = OpenAiServer::start().expect("server");
    server.push_reply(ChatReply::Stream {
        text: "Hello there, caller.".into(),
        tool_calls: Vec::new(),
        usage: Some(TokenUsage { prompt_tokens: 12, completion_tokens: 5, ..TokenUsage::default() }),
    });
    let events = Events::new();
    let got = run(async {
        let _job = chat(&server).complete(7, hello(), events.clone());
        reply(&events, 7).await
    });
    assert_eq!(
        got,
        [
            LlmEvent::Token("Hello ".into()),
            LlmEvent::Token("there, ".into()),
            LlmEvent::Token("caller.".into()),
            LlmEvent::Done { usage: TokenUsage { prompt_tokens: 12, completion_tokens: 5, ..TokenUsage::default() } },
        ]
    );
}

#[test]
fn request_body_and_headers_follow_the_api() {
    let server = OpenAiServer::start().expect("server");
    let call = ToolCall { id: "call_1".into(), name: "lookup".into(), arguments: r#"{"q":"hours"}"#.into() };
    let request = ChatRequest {
        messages: vec![
            Message::text(Role::System, "Be brief."),
            Message::text(Role::User, "When are you open?"),
            Message { role: Role::Assistant, content: String::new(), tool_calls: vec![call], tool_call_id: None },
            Message { role: Role::Tool, content: "9-5".into(), tool_calls: Vec::new(), tool_call_id: Some("call_1".into()) },
        ],
        tools: vec![ToolSpec {
            name: "lookup".into(),
            description: "Look something up".into(),
            parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        }],
    };
    let events = Events::new();
    let got = run(async {
        let _job = chat(&server).complete(1, request, events.clone());
        reply(&events, 1).await
    });
    assert!(matches!(got.last(), Some(LlmEvent::Done { .. })), "{got:?}");
    let requests = server.requests();
    let [sent] = requests.as_slice() else { panic!("one request: {requests:?}") };
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
    assert_eq!(
        sent.json().expect("a JSON body"),
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "When are you open?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"hours\"}"}}]},
                {"role": "tool", "content": "9-5", "tool_call_id": "call_1"},
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look something up",
                       "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.5,
            "max_tokens": 200,
        })
    );
}

#[test]
fn parallel_tool_calls_are_assembled_from_fragments() {
    let server = OpenAiServer::start().expect("server");
    let calls = vec![
        ToolCall { id: "call_a".into(), name: "transfer_call".into(), arguments: r#"{"to":"+15551234567","reason":"sales"}"#.into() },
        ToolCall { id: "call_b".into(), name: "search_knowledge".into(), arguments: r#"{"query":"opening hours on Sunday"}"#.into() },
    ];
    server.push_reply(ChatReply::tools(calls.clone()));
    let events = Events::new();
    let got = run(async {
        let _job = chat(&server).complete(2, hello(), events.clone());
        reply(&events, 2).await
    });
    let [LlmEvent::ToolCall(a), LlmEvent::ToolCall(b), LlmEvent::Done { usage }] = got.as_slice() else {
        panic!("two tool calls then Done: {got:?}")
    };
    assert_eq!([a, b], [&calls[0], &calls[1]]);
    // The server's default usage: one completion token per streamed delta (2 names, then 5 +
    // 5 argument pieces of 8 characters): the arguments really came in fragments.
    assert_eq!(usage.completion_tokens, 2 + 5 + 5);
    assert!(usage.prompt_tokens > 0);
}

#[test]
fn no_key_no_authorization_header() {
    let server = OpenAiServer::start().expect("server");
    let llm = OpenAiChat::from_config(&bot(&server.base_url(), None)).expect("valid config");
    let events = Events::new();
    let got = run(async {
        let _job = llm.complete(1, hello(), events.clone());
        reply(&events, 1).await
    });
    assert_eq!(got.first(), Some(&LlmEvent::Token("Hello ".into())));
    assert_eq!(server.requests()[0].header("authorization"), None);
}

#[test]
fn http_401_reports_the_servers_message() {
    let options = ServerOptions { api_key: Some("sk-right-key-0000".into()), ..ServerOptions::default() };
    let server = OpenAiServer::start_with(options).expect("server");
    let llm = OpenAiChat::from_config(&bot(&server.base_url(), Some("sk-wrong-key-1234"))).expect("valid config");
    let events = Events::new();
    let got = run(async {
        let _job = llm.complete(3, hello(), events.clone());
        reply(&events, 3).await
    });
    let message = only_error(&got);
    assert!(message.starts_with("HTTP 401 Unauthorized: Incorrect API key provided: sk-*"), "{message}");
    assert!(!message.contains("sk-wrong-key-1234"), "the key leaked: {message}");
    assert_eq!(got.len(), 1);
}

#[test]
fn other_error_statuses_carry_their_message() {
    let server = OpenAiServer::start().expect("server");
    server.push_reply(ChatReply::Error { status: 429, message: "Rate limit reached for gpt-test".into() });
    let events = Events::new();
    let got = run(async {
        let _job = chat(&server).complete(1, hello(), events.clone());
        reply(&events, 1).await
    });
    assert_eq!(only_error(&got), "HTTP 429 Too Many Requests: Rate limit reached for gpt-test");
}

#[test]
fn malformed_streams_end_in_an_error_without_panicking() {
    let server = OpenAiServer::start().expect("server");
    let bodies: [&[u8]; 6] = [
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {oops\n\n",
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"cut off\"}}]}\n\n",
        b"data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n",
        b"data: [1,2,3]\n\n",
        b"\xFF\xFE\x00garbage without newlines",
        b"",
    ];
    for body in bodies {
        server.push_reply(ChatReply::Raw(body.to_vec()));
    }
    let llm = chat(&server);
    let events = Events::new();
    let replies = run(async {
        let mut replies = Vec::new();
        for turn in 0..bodies.len() as u64 {
            let _job = llm.complete(turn, hello(), events.clone());
            replies.push(reply(&events, turn).await);
        }
        replies
    });
    assert_eq!(replies[0][0], LlmEvent::Token("Hi".into()));
    assert!(only_error(&replies[0]).starts_with("malformed chunk"));
    assert_eq!(only_error(&replies[1]), "the stream ended before the reply was complete");
    assert_eq!(only_error(&replies[2]), "server error: The server had an error");
    for got in &replies[3..] {
        only_error(got);
    }
}

#[test]
fn dropping_the_job_cancels_the_request() {
    let server = OpenAiServer::start().expect("server");
    server.push_reply(ChatReply::Hang("Hel".into()));
    let events = Events::new();
    run(async {
        let job = chat(&server).complete(4, hello(), events.clone());
        compio::time::timeout(WAIT, events.ready()).await.expect("the first token");
        let first = events.pop().map(|(_, e)| e);
        assert_eq!(first, Some(Event::Llm { turn: 4, event: LlmEvent::Token("Hel".into()) }));
        drop(job);
        compio::time::timeout(WAIT, server.aborted()).await.expect("the server sees the client go");
        assert!(events.is_empty(), "nothing after the cancel");
    });
}

#[test]
fn connections_are_kept_alive_and_served_concurrently() {
    let server = OpenAiServer::start().expect("server");
    let llm = chat(&server);
    let events = Events::new();
    run(async {
        for turn in 0..3 {
            let _job = llm.complete(turn, hello(), events.clone());
            assert!(matches!(reply(&events, turn).await.last(), Some(LlmEvent::Done { .. })));
        }
        assert_eq!(server.connections(), 1, "one pooled connection for sequential requests");
        // Fifty at once, each on its own queue.
        let queues: Vec<Events> = (0..50).map(|_| Events::new()).collect();
        let _jobs: Vec<_> = queues.iter().map(|q| llm.complete(9, hello(), q.clone())).collect();
        for queue in &queues {
            assert!(matches!(reply(queue, 9).await.last(), Some(LlmEvent::Done { .. })));
        }
    });
    assert_eq!(server.requests().len(), 53);
}

#[test]
fn unreachable_server_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let llm = OpenAiChat::from_config(&bot(&format!("http://{port}/v1"), None)).expect("valid config");
    let events = Events::new();
    let got = run(async {
        let _job = llm.complete(1, hello(), events.clone());
        reply(&events, 1).await
    });
    assert!(only_error(&got).starts_with(&format!("POST http://{port}/v1/chat/completions: ")), "{got:?}");
}

#[test]
fn speech_arrives_sample_aligned() {
    let server = OpenAiServer::start().expect("server");
    let tts = OpenAiSpeech::from_config(&bot(&server.base_url(), Some("sk-test"))).expect("valid config");
    assert_eq!(tts.output_format(), AudioFormat::Pcm16(24_000));
    let text = "Thanks for calling, how can I help you today?";
    let events = Events::new();
    let got = run(async {
        let _job = tts.synthesize(5, text.to_string(), events.clone());
        speech(&events, 5).await
    });
    let (done, audio) = got.split_last().expect("events");
    assert_eq!(done, &TtsEvent::Done);
    let mut all = Vec::new();
    for event in audio {
        let TtsEvent::Audio(bytes) = event else { panic!("audio before Done: {event:?}") };
        assert_eq!(bytes.len() % 2, 0, "a split sample");
        all.extend_from_slice(bytes);
    }
    let expected = speech_pcm(text);
    assert!(expected.len() > 4 * SPEECH_CHUNK, "the answer spans several odd-sized chunks");
    assert_eq!(all, expected);
    let requests = server.requests();
    let [sent] = requests.as_slice() else { panic!("one request: {requests:?}") };
    assert_eq!(sent.path, "/v1/audio/speech");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(
        sent.json().expect("JSON"),
        json!({"model": "gpt-4o-mini-tts", "voice": "nova", "input": text, "response_format": "pcm"})
    );
}

#[test]
fn speech_errors_are_reported() {
    let options = ServerOptions { api_key: Some("sk-right-key-0000".into()), ..ServerOptions::default() };
    let server = OpenAiServer::start_with(options).expect("server");
    let tts = OpenAiSpeech::from_config(&bot(&server.base_url(), None)).expect("valid config");
    let events = Events::new();
    let got = run(async {
        let _job = tts.synthesize(1, "Hi".into(), events.clone());
        speech(&events, 1).await
    });
    let [TtsEvent::Error(message)] = got.as_slice() else { panic!("one error: {got:?}") };
    assert!(message.starts_with("HTTP 401 Unauthorized: You didn't provide an API key."), "{message}");
}

#[test]
fn the_registry_builds_both() {
    let bot = bot("http://127.0.0.1:1/v1", None);
    assert!(cxb_pipeline::providers::llm(&bot).is_ok());
    assert_eq!(cxb_pipeline::providers::tts(&bot).map(|t| t.output_format()).ok(), Some(AudioFormat::Pcm16(24_000)));
}
