//! The ElevenLabs adapter against the ElevenLabs test server, on a compio runtime: audio and
//! the end of a sentence, the handshake and messages, pre-opened sockets, cancelling, and
//! every way the server can fail.

use std::future::Future;
use std::time::Duration;

use cxb_pipeline::provider::{Event, Events, TtsEvent, TtsProvider};
use cxb_pipeline::providers::elevenlabs::{self, ElevenLabs};
use cxb_pipeline::testkit::elevenlabs::{ElevenLabsConfig, ElevenLabsFault, ElevenLabsServer, expected_audio};
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

fn bot(server: &ElevenLabsServer, key: &str, options: Value) -> BotConfig {
    serde_json::from_value(json!({
        "voice": "voice-1",
        "tts": { "provider": "elevenlabs", "base_url": server.url(), "secrets": { "api_key": key },
                 "options": options },
    }))
    .expect("bot")
}

fn server(config: ElevenLabsConfig) -> ElevenLabsServer {
    ElevenLabsServer::start(config).expect("server")
}

/// The next event for sentence `sentence`, within [`WAIT`].
async fn next(events: &Events, sentence: u64) -> TtsEvent {
    compio::time::timeout(WAIT, events.ready()).await.expect("no event in time");
    match events.pop() {
        Some((_, Event::Tts { sentence: s, event })) if s == sentence => event,
        other => panic!("expected a TTS event for sentence {sentence}, got {other:?}"),
    }
}

/// The sentence's audio, joined, and how many pieces it came in; panics on an error.
async fn audio_until_done(events: &Events, sentence: u64) -> (Vec<u8>, usize) {
    let (mut audio, mut pieces) = (Vec::new(), 0);
    loop {
        match next(events, sentence).await {
            TtsEvent::Audio(bytes) => {
                audio.extend(bytes);
                pieces += 1;
            }
            TtsEvent::Done => return (audio, pieces),
            TtsEvent::Error(e) => panic!("sentence {sentence} failed: {e}"),
        }
    }
}

/// Audio pieces until the error; panics on `Done`.
async fn audio_until_error(events: &Events, sentence: u64) -> (Vec<u8>, String) {
    let mut audio = Vec::new();
    loop {
        match next(events, sentence).await {
            TtsEvent::Audio(bytes) => audio.extend(bytes),
            TtsEvent::Done => panic!("expected an error"),
            TtsEvent::Error(e) => return (audio, e),
        }
    }
}

async fn quiet(events: &Events) {
    let more = compio::time::timeout(Duration::from_millis(100), events.ready()).await;
    assert!(more.is_err(), "unexpected event {:?}", events.pop());
}

#[test]
fn a_sentence_streams_its_audio_then_done() {
    run(async {
        let server = server(ElevenLabsConfig { api_key: Some("xi".into()), ..ElevenLabsConfig::default() });
        let options = json!({ "prewarm": false, "voice_settings": { "stability": 0.5, "similarity_boost": 0.8 } });
        let tts = ElevenLabs::from_config(&bot(&server, "xi", options)).expect("config");
        assert_eq!(tts.output_format(), AudioFormat::Mulaw8k);
        let events = Events::new();
        let _job = tts.synthesize(7, "  Hello there.".into(), events.clone());
        let (audio, pieces) = audio_until_done(&events, 7).await;
        assert_eq!(audio, expected_audio("Hello there.", 80));
        assert_eq!(pieces, 3);
        quiet(&events).await;

        assert!(server.wait_until(WAIT, |c| c.len() == 1 && !c[0].open).await, "the socket closes");
        let c = &server.connections()[0];
        assert_eq!(c.voice_id, "voice-1");
        assert_eq!(c.handshake.header("xi-api-key"), Some("xi"));
        assert_eq!(c.handshake.param("model_id"), Some("eleven_flash_v2_5"));
        assert_eq!(c.handshake.param("output_format"), Some("ulaw_8000"));
        assert_eq!(
            c.messages,
            [
                json!({ "text": " ", "voice_settings": { "stability": 0.5, "similarity_boost": 0.8 } }),
                json!({ "text": "Hello there. ", "flush": true }),
                json!({ "text": "" }),
            ]
        );
        assert_eq!(c.audio_bytes, audio.len());
    });
}

#[test]
fn model_and_pcm_output_reach_the_query() {
    run(async {
        let server = server(ElevenLabsConfig::default());
        let mut bot = bot(&server, "k", json!({ "prewarm": false, "output_format": "pcm_16000" }));
        bot.tts.model = Some("eleven_turbo_v2_5".into());
        let tts = ElevenLabs::from_config(&bot).expect("config");
        assert_eq!(tts.output_format(), AudioFormat::Pcm16(16000));
        let events = Events::new();
        let _job = tts.synthesize(1, "Hi".into(), events.clone());
        let (audio, _) = audio_until_done(&events, 1).await;
        assert_eq!(audio, expected_audio("Hi", 80));
        let c = &server.connections()[0];
        assert_eq!(c.handshake.param("output_format"), Some("pcm_16000"));
        assert_eq!(c.handshake.param("model_id"), Some("eleven_turbo_v2_5"));
        assert_eq!(c.messages[0], json!({ "text": " " }), "no voice settings: the voice's own apply");
    });
}

#[test]
fn a_pre_opened_socket_serves_the_next_sentence() {
    run(async {
        let server = server(ElevenLabsConfig::default());
        let tts = ElevenLabs::from_config(&bot(&server, "k", json!({}))).expect("config");
        let events = Events::new();
        let first = tts.synthesize(1, "One.".into(), events.clone());
        assert_eq!(audio_until_done(&events, 1).await.0, expected_audio("One.", 80));
        drop(first);
        let deadline = std::time::Instant::now() + WAIT;
        while !tts.prewarmed() {
            assert!(std::time::Instant::now() < deadline, "no socket was pre-opened");
            compio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(server.wait_until(WAIT, |c| c.len() == 2).await, "the sentence's socket and the next one's");
        let opened_before = 2;

        let _second = tts.synthesize(2, "Two.".into(), events.clone());
        assert_eq!(audio_until_done(&events, 2).await.0, expected_audio("Two.", 80));
        let connections = server.connections();
        let spoke_two = connections.iter().position(|c| c.text == "Two.").expect("sentence two was spoken");
        assert!(spoke_two < opened_before, "sentence two used the socket opened before it was asked for");
        assert_eq!(server.spoken().len(), 2);
    });
}

#[test]
fn a_dead_pre_opened_socket_is_replaced() {
    run(async {
        let config = ElevenLabsConfig { inactivity_timeout: Some(Duration::from_millis(30)), ..ElevenLabsConfig::default() };
        let server = server(config);
        let tts = ElevenLabs::from_config(&bot(&server, "k", json!({}))).expect("config");
        let events = Events::new();
        let _first = tts.synthesize(1, "One.".into(), events.clone());
        audio_until_done(&events, 1).await;
        let deadline = std::time::Instant::now() + WAIT;
        while !tts.prewarmed() {
            assert!(std::time::Instant::now() < deadline, "no socket was pre-opened");
            compio::time::sleep(Duration::from_millis(1)).await;
        }
        // The server gives up on the idle socket.
        assert!(server.wait_until(WAIT, |c| c.len() == 2 && c.iter().all(|c| !c.open)).await);

        let _second = tts.synthesize(2, "Two.".into(), events.clone());
        assert_eq!(audio_until_done(&events, 2).await.0, expected_audio("Two.", 80));
        assert_eq!(server.spoken().len(), 2);
    });
}

#[test]
fn dropping_the_job_closes_the_socket() {
    run(async {
        let server = server(ElevenLabsConfig { fault: Some(ElevenLabsFault::Silent), ..ElevenLabsConfig::default() });
        let tts = ElevenLabs::from_config(&bot(&server, "k", json!({ "prewarm": false }))).expect("config");
        let events = Events::new();
        let job = tts.synthesize(3, "Never mind.".into(), events.clone());
        assert!(server.wait_until(WAIT, |c| c.len() == 1 && c[0].messages.len() == 3).await);
        assert!(server.connections()[0].open);
        drop(job);
        assert!(server.wait_until(WAIT, |c| !c[0].open).await, "cancelling closes the socket");
        assert!(events.is_empty(), "a cancelled sentence reports nothing");
    });
}

#[test]
fn a_malformed_message_is_an_error() {
    run(async {
        let server = server(ElevenLabsConfig { fault: Some(ElevenLabsFault::Malformed), ..ElevenLabsConfig::default() });
        let tts = ElevenLabs::from_config(&bot(&server, "k", json!({ "prewarm": false }))).expect("config");
        let events = Events::new();
        let _job = tts.synthesize(4, "Hello.".into(), events.clone());
        let (audio, error) = audio_until_error(&events, 4).await;
        assert!(audio.is_empty());
        assert!(error.contains("malformed"), "{error}");
        quiet(&events).await;
    });
}

#[test]
fn an_error_message_is_an_error() {
    run(async {
        let server = server(ElevenLabsConfig { fault: Some(ElevenLabsFault::ErrorMessage), ..ElevenLabsConfig::default() });
        let tts = ElevenLabs::from_config(&bot(&server, "k", json!({ "prewarm": false }))).expect("config");
        let events = Events::new();
        let _job = tts.synthesize(5, "Hello.".into(), events.clone());
        let (_, error) = audio_until_error(&events, 5).await;
        assert!(error.contains("quota_exceeded"), "{error}");
        quiet(&events).await;
    });
}

#[test]
fn a_hang_up_mid_sentence_is_an_error_after_the_audio_so_far() {
    run(async {
        let server = server(ElevenLabsConfig { fault: Some(ElevenLabsFault::HangUp), ..ElevenLabsConfig::default() });
        let tts = ElevenLabs::from_config(&bot(&server, "k", json!({}))).expect("config");
        let events = Events::new();
        let _job = tts.synthesize(6, "abcdef".into(), events.clone());
        let (audio, _) = audio_until_error(&events, 6).await;
        assert_eq!(audio, expected_audio("ab", 80), "the first of three chunks arrived");
        quiet(&events).await;
    });
}

#[test]
fn a_wrong_key_is_an_error() {
    run(async {
        let server = server(ElevenLabsConfig { api_key: Some("right".into()), ..ElevenLabsConfig::default() });
        let tts = ElevenLabs::from_config(&bot(&server, "wrong", json!({ "prewarm": false }))).expect("config");
        let events = Events::new();
        let _job = tts.synthesize(8, "Hello.".into(), events.clone());
        let (_, error) = audio_until_error(&events, 8).await;
        assert!(error.contains("invalid_api_key"), "{error}");
    });
}

#[test]
fn an_empty_sentence_is_done_without_a_connection() {
    run(async {
        let server = server(ElevenLabsConfig::default());
        let tts = ElevenLabs::from_config(&bot(&server, "k", json!({ "prewarm": false }))).expect("config");
        let events = Events::new();
        let _job = tts.synthesize(9, "   ".into(), events.clone());
        assert_eq!(next(&events, 9).await, TtsEvent::Done);
        assert!(server.connections().is_empty());
    });
}

#[test]
fn concurrent_sentences_on_one_server() {
    run(async {
        let server = server(ElevenLabsConfig { bytes_per_char: 8, ..ElevenLabsConfig::default() });
        let tts = ElevenLabs::from_config(&bot(&server, "k", json!({ "prewarm": false }))).expect("config");
        let events: Vec<Events> = (0..50).map(|_| Events::new()).collect();
        let jobs: Vec<_> =
            (0u64..).zip(&events).map(|(i, e)| tts.synthesize(i, format!("Sentence {i}."), e.clone())).collect();
        for (i, e) in (0u64..).zip(&events) {
            assert_eq!(audio_until_done(e, i).await.0, expected_audio(&format!("Sentence {i}."), 8));
        }
        drop(jobs);
        assert_eq!(server.spoken().len(), 50);
    });
}

#[test]
fn malformed_messages_never_panic_the_parser() {
    let inputs = [
        "",
        "null",
        "[]",
        "{}",
        "{\"audio\":",
        "{\"audio\":\"====\"}",
        "{\"audio\":\"AA\"}",
        "{\"audio\":[1,2]}",
        "{\"isFinal\":\"true\"}",
        "{\"message\":7}",
        "{\"error\":\"x\"}",
        "\u{0}",
    ];
    for input in inputs {
        let _ = elevenlabs::parse_message(input);
    }
    assert!(elevenlabs::parse_message("{\"audio\":\"====\"}").is_err());
    assert_eq!(
        elevenlabs::parse_message("{}"),
        Ok(elevenlabs::ServerMessage::Output { audio: Vec::new(), is_final: false }),
        "a message with nothing in it is ignorable"
    );
    assert_eq!(elevenlabs::parse_message("{\"error\":\"x\"}"), Ok(elevenlabs::ServerMessage::Error("x".into())));
}
