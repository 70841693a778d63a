//! The Deepgram adapter against the Deepgram test server, on a compio runtime: transcripts,
//! control messages, the handshake, early audio, and every way the server can fail.

use std::future::Future;
use std::time::Duration;

use cxb_pipeline::provider::{Event, Events, SttCommand, SttEvent, SttProvider, SttSession};
use cxb_pipeline::providers::deepgram::{self, Deepgram};
use cxb_pipeline::testkit::deepgram::{DeepgramConfig, DeepgramServer, Reply, Step};
use cxb_pipeline::{AudioFormat, BotConfig};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

/// Runs a test body on a fresh compio runtime, failing it after 20 s.
fn run<F: Future>(body: F) -> F::Output {
    // The test servers listen on loopback, which the outbound-request guard refuses unless allowed.
    cxb_pipeline::egress::set_policy(cxb_contract::egress::EgressPolicy::with_loopback());
    let runtime = compio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async { compio::time::timeout(Duration::from_secs(20), body).await.expect("test timed out") })
}

fn bot(server: &DeepgramServer, key: Option<&str>, options: Value) -> BotConfig {
    let mut stt = json!({ "provider": "deepgram", "base_url": server.url(), "options": options });
    if let Some(key) = key {
        stt["secrets"] = json!({ "api_key": key });
    }
    serde_json::from_value(json!({ "language": "en-GB", "stt": stt })).expect("bot")
}

fn open(bot: &BotConfig) -> (SttSession, Events) {
    let deepgram = Deepgram::from_config(bot).expect("config");
    assert_eq!(deepgram.input_format(), AudioFormat::Mulaw8k);
    let events = Events::new();
    (deepgram.open(events.clone()), events)
}

/// The next speech-to-text event, within [`WAIT`].
async fn next(events: &Events) -> SttEvent {
    compio::time::timeout(WAIT, events.ready()).await.expect("no event in time");
    match events.pop() {
        Some((_, Event::Stt(event))) => event,
        other => panic!("expected an STT event, got {other:?}"),
    }
}

/// Asserts nothing more arrives for a little while.
async fn quiet(events: &Events) {
    let more = compio::time::timeout(Duration::from_millis(100), events.ready()).await;
    assert!(more.is_err(), "unexpected event {:?}", events.pop());
}

/// 20 ms of mu-law silence.
fn frame() -> SttCommand {
    SttCommand::Audio(vec![0xff; 160])
}

fn send_ms(session: &SttSession, ms: u32) {
    for _ in 0..ms / 20 {
        session.send(frame());
    }
}

fn error_text(event: SttEvent) -> String {
    match event {
        SttEvent::Error(text) => text,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn transcripts_flow_and_the_handshake_is_as_documented() {
    run(async {
        let config = DeepgramConfig {
            api_key: Some("secret".into()),
            ..DeepgramConfig::turns(&["Hello there.", "Book a table for two."], 200)
        };
        let server = DeepgramServer::start(config).expect("server");
        let mut bot = bot(&server, Some("secret"), json!({}));
        bot.stt.model = Some("nova-2-phonecall".into());
        let (session, events) = open(&bot);
        send_ms(&session, 400);

        assert_eq!(next(&events).await, SttEvent::Interim { text: "Hello".into() });
        assert_eq!(next(&events).await, SttEvent::Final { text: "Hello there.".into(), end_of_turn: true });
        assert_eq!(next(&events).await, SttEvent::UtteranceEnd);
        assert_eq!(next(&events).await, SttEvent::Interim { text: "Book a".into() });
        assert_eq!(next(&events).await, SttEvent::Final { text: "Book a table for two.".into(), end_of_turn: true });
        assert_eq!(next(&events).await, SttEvent::UtteranceEnd);
        quiet(&events).await;

        let connections = server.connections();
        assert_eq!(connections.len(), 1);
        let c = &connections[0];
        assert_eq!(c.audio_bytes, 3200);
        assert_eq!(c.handshake.path, "/v1/listen");
        assert_eq!(c.handshake.header("authorization"), Some("Token secret"));
        let expected = [
            ("encoding", "mulaw"),
            ("sample_rate", "8000"),
            ("channels", "1"),
            ("model", "nova-2-phonecall"),
            ("language", "en-GB"),
            ("interim_results", "true"),
            ("endpointing", "300"),
            ("utterance_end_ms", "1000"),
            ("vad_events", "true"),
            ("smart_format", "true"),
            ("punctuate", "true"),
        ];
        for (name, value) in expected {
            assert_eq!(c.handshake.param(name), Some(value), "query parameter {name}");
        }
        assert!(c.controls.is_empty(), "no control messages yet: {:?}", c.controls);
    });
}

#[test]
fn options_reach_the_query() {
    run(async {
        let server = DeepgramServer::start(DeepgramConfig::default()).expect("server");
        let (session, _events) = open(&bot(&server, None, json!({ "endpointing": 500, "utterance_end_ms": 1500 })));
        assert!(server.wait_until(WAIT, |c| c.len() == 1).await);
        let c = &server.connections()[0];
        assert_eq!(c.handshake.param("endpointing"), Some("500"));
        assert_eq!(c.handshake.param("utterance_end_ms"), Some("1500"));
        assert_eq!(c.handshake.param("model"), Some("nova-3"));
        assert_eq!(c.handshake.header("authorization"), None, "no key configured, none sent");
        drop(session);
    });
}

#[test]
fn finalize_and_close_stream_are_sent() {
    run(async {
        let script = vec![Step::on_finalize(Reply::Final { text: "Yes please.".into(), speech_final: false })];
        let server = DeepgramServer::start(DeepgramConfig { script, ..DeepgramConfig::default() }).expect("server");
        let (session, events) = open(&bot(&server, Some("k"), json!({})));
        send_ms(&session, 100);
        session.send(SttCommand::Finalize);
        assert_eq!(next(&events).await, SttEvent::Final { text: "Yes please.".into(), end_of_turn: false });
        // A second Finalize is answered with an empty result, which is not reported.
        session.send(SttCommand::Finalize);
        assert!(server.wait_until(WAIT, |c| c[0].count("Finalize") == 2).await);
        session.send(SttCommand::Close);
        assert!(server.wait_until(WAIT, |c| !c[0].open).await, "the stream closes");
        quiet(&events).await;
        let c = &server.connections()[0];
        assert_eq!(c.controls, ["Finalize", "Finalize", "CloseStream"]);
        assert_eq!(c.audio_bytes, 800);
    });
}

#[test]
fn keepalive_is_sent_when_no_audio_flows() {
    run(async {
        let config = DeepgramConfig { idle_timeout: Duration::from_millis(300), ..DeepgramConfig::default() };
        let server = DeepgramServer::start(config).expect("server");
        let (session, events) = open(&bot(&server, None, json!({ "keepalive_ms": 20 })));
        assert!(server.wait_until(WAIT, |c| c.len() == 1 && c[0].count("KeepAlive") >= 3).await);
        let c = &server.connections()[0];
        assert!(c.open, "KeepAlive holds the connection open past the server's idle timeout");
        assert_eq!(c.audio_bytes, 0);
        assert!(events.is_empty());
        drop(session);
    });
}

#[test]
fn a_silent_connection_is_closed_by_the_server_and_reported() {
    run(async {
        let config = DeepgramConfig { idle_timeout: Duration::from_millis(50), ..DeepgramConfig::default() };
        let server = DeepgramServer::start(config).expect("server");
        let (_session, events) = open(&bot(&server, None, json!({ "keepalive_ms": 10_000 })));
        let error = error_text(next(&events).await);
        assert!(error.contains("1011") && error.contains("net0001"), "{error}");
    });
}

#[test]
fn audio_sent_before_the_socket_is_up_is_not_lost() {
    run(async {
        let script = vec![Step::after_audio_ms(1000, Reply::Final { text: "All here.".into(), speech_final: true })];
        let server = DeepgramServer::start(DeepgramConfig { script, ..DeepgramConfig::default() }).expect("server");
        let (session, events) = open(&bot(&server, None, json!({})));
        // Nothing has run yet: the session is still connecting.
        send_ms(&session, 1000);
        session.send(SttCommand::Finalize);
        assert_eq!(next(&events).await, SttEvent::Final { text: "All here.".into(), end_of_turn: true });
        assert!(server.wait_until(WAIT, |c| c[0].count("Finalize") == 1).await);
        assert_eq!(server.connections()[0].audio_bytes, 8000);
    });
}

#[test]
fn early_audio_is_bounded_to_the_most_recent_seconds() {
    run(async {
        let server = DeepgramServer::start(DeepgramConfig::default()).expect("server");
        let (session, _events) = open(&bot(&server, None, json!({})));
        send_ms(&session, deepgram::EARLY_AUDIO_MS + 2000);
        let limit = AudioFormat::Mulaw8k.bytes_per_ms(deepgram::EARLY_AUDIO_MS);
        assert!(server.wait_until(WAIT, |c| c.len() == 1 && c[0].audio_bytes == limit).await);
        send_ms(&session, 40);
        assert!(server.wait_until(WAIT, |c| c[0].audio_bytes == limit + 320).await, "later audio flows");
    });
}

#[test]
fn malformed_json_is_an_error() {
    run(async {
        let script = vec![Step::on_connect(Reply::Raw("{\"type\": \"Results\", \"channel\": ".into()))];
        let server = DeepgramServer::start(DeepgramConfig { script, ..DeepgramConfig::default() }).expect("server");
        let (_session, events) = open(&bot(&server, None, json!({})));
        let error = error_text(next(&events).await);
        assert!(error.contains("malformed"), "{error}");
        assert!(server.wait_until(WAIT, |c| !c[0].open).await, "the adapter hangs up");
        quiet(&events).await;
    });
}

#[test]
fn results_without_a_channel_are_an_error() {
    run(async {
        let script = vec![Step::on_connect(Reply::Raw(r#"{"type":"Results","is_final":true}"#.into()))];
        let server = DeepgramServer::start(DeepgramConfig { script, ..DeepgramConfig::default() }).expect("server");
        let (_session, events) = open(&bot(&server, None, json!({})));
        assert!(error_text(next(&events).await).contains("channel"));
    });
}

#[test]
fn an_early_close_is_an_error() {
    run(async {
        let script = vec![
            Step::after_audio_ms(20, Reply::Interim("one".into())),
            Step::after_audio_ms(40, Reply::Close { code: 1011, reason: "NET-0000".into() }),
        ];
        let server = DeepgramServer::start(DeepgramConfig { script, ..DeepgramConfig::default() }).expect("server");
        let (session, events) = open(&bot(&server, None, json!({})));
        send_ms(&session, 40);
        assert_eq!(next(&events).await, SttEvent::Interim { text: "one".into() });
        let error = error_text(next(&events).await);
        assert!(error.contains("1011") && error.contains("NET-0000"), "{error}");
        quiet(&events).await;
    });
}

#[test]
fn a_dropped_connection_is_an_error() {
    run(async {
        let script = vec![Step::on_connect(Reply::Hangup)];
        let server = DeepgramServer::start(DeepgramConfig { script, ..DeepgramConfig::default() }).expect("server");
        let (_session, events) = open(&bot(&server, None, json!({})));
        assert!(matches!(next(&events).await, SttEvent::Error(_)));
        quiet(&events).await;
    });
}

#[test]
fn a_server_error_message_is_reported() {
    run(async {
        let script = vec![Step::after_audio_ms(20, Reply::Error { description: "Failed to decode audio.".into() })];
        let server = DeepgramServer::start(DeepgramConfig { script, ..DeepgramConfig::default() }).expect("server");
        let (session, events) = open(&bot(&server, None, json!({})));
        send_ms(&session, 20);
        let error = error_text(next(&events).await);
        assert!(error.contains("Failed to decode audio.") && error.contains("DATA-0000"), "{error}");
        quiet(&events).await;
    });
}

#[test]
fn refused_credentials_are_an_error() {
    run(async {
        let config = DeepgramConfig { api_key: Some("right".into()), ..DeepgramConfig::default() };
        let server = DeepgramServer::start(config).expect("server");
        let (_session, events) = open(&bot(&server, Some("wrong"), json!({})));
        let error = error_text(next(&events).await);
        assert!(error.contains("401") && error.contains("INVALID_AUTH"), "{error}");
        assert!(server.connections().is_empty());
    });
}

#[test]
fn an_unreachable_server_is_an_error() {
    run(async {
        // Port 1 (tcpmux) has no listener on a test machine: the connection is refused.
        let bot: BotConfig =
            serde_json::from_value(json!({ "stt": { "provider": "deepgram", "base_url": "ws://127.0.0.1:1" } }))
                .expect("bot");
        let (_session, events) = open(&bot);
        assert!(matches!(next(&events).await, SttEvent::Error(_)));
    });
}

#[test]
fn dropping_the_session_closes_the_socket() {
    run(async {
        let server = DeepgramServer::start(DeepgramConfig::default()).expect("server");
        let (session, events) = open(&bot(&server, None, json!({})));
        send_ms(&session, 20);
        assert!(server.wait_until(WAIT, |c| c.len() == 1 && c[0].audio_bytes == 160).await);
        drop(session);
        assert!(server.wait_until(WAIT, |c| !c[0].open).await);
        assert!(events.is_empty());
    });
}

#[test]
fn one_server_serves_many_concurrent_sessions() {
    run(async {
        let server = DeepgramServer::start(DeepgramConfig::turns(&["Hi."], 100)).expect("server");
        let bot = bot(&server, None, json!({}));
        let sessions: Vec<(SttSession, Events)> = (0..50).map(|_| open(&bot)).collect();
        for (session, _) in &sessions {
            send_ms(session, 100);
        }
        for (_, events) in &sessions {
            assert_eq!(next(events).await, SttEvent::Final { text: "Hi.".into(), end_of_turn: true });
            assert_eq!(next(events).await, SttEvent::UtteranceEnd);
        }
        assert_eq!(server.connections().len(), 50);
        assert!(server.connections().iter().all(|c| c.audio_bytes == 800));
    });
}

#[test]
fn malformed_messages_never_panic_the_parser() {
    let inputs = [
        "",
        "null",
        "[]",
        "{}",
        "{\"type\":5}",
        "{\"type\":\"Results\"}",
        "{\"type\":\"Results\",\"channel\":{}}",
        "{\"type\":\"Results\",\"channel\":{\"alternatives\":[]}}",
        "{\"type\":\"Results\",\"channel\":{\"alternatives\":[{\"transcript\":7}]}}",
        "{\"type\":\"Results\",\"channel\":{\"alternatives\":[{\"transcript\":\"x\"}]},\"is_final\":\"yes\"}",
        "{\"type\":\"Metadata\",\"duration\":\"long\"}",
        "{\"type\":\"Error\"}",
        "{\"type\":\"Unheard-of\"}",
        "{\"type\":\"UtteranceEnd\"",
        "\u{0}\u{ffff}",
    ];
    for input in inputs {
        if let Ok(message) = deepgram::parse_message(input) {
            let _ = message.event();
        }
    }
    assert!(deepgram::parse_message("{}").is_err());
    assert_eq!(
        deepgram::parse_message(r#"{"type":"Results","channel":{"alternatives":[]}}"#).map(|m| m.event()),
        Ok(None),
        "no alternatives: nothing to report"
    );
    assert!(matches!(deepgram::parse_message("{\"type\":\"Unheard-of\"}"), Ok(deepgram::ServerMessage::Unknown(_))));
}
