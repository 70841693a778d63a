//! The Wyoming adapters against the test server: framing, transcripts per utterance,
//! synthesis, and malformed or hostile answers turned into error events without panics.

mod common;

use common::{audio, next, sentence};
use std::future::Future;
use std::time::Duration;

use cxb_pipeline::provider::{SttCommand, SttProvider, TtsProvider};
use cxb_pipeline::providers::wyoming::{
    Frame, FrameError, FrameReader, MAX_DATA, MAX_HEADER, MAX_PAYLOAD, WyomingStt, WyomingTts,
};
use cxb_pipeline::testkit::wyoming::{self as server, Options, Transcript, tts_audio};
use cxb_pipeline::{AudioFormat, BotConfig, Event, Events, SttEvent, TtsEvent};
use serde_json::json;

fn run<F: Future>(f: F) -> F::Output {
    // The test servers listen on loopback, which the outbound-request guard refuses unless allowed.
    cxb_pipeline::egress::set_policy(cxb_contract::egress::EgressPolicy::with_loopback());
    compio::runtime::Runtime::new().expect("a compio runtime").block_on(f)
}

fn bot(url: &str, extra: serde_json::Value) -> BotConfig {
    let mut config = json!({
        "language": "en-GB",
        "voice": "en_US-joe-medium",
        "stt": { "provider": "wyoming", "base_url": url },
        "tts": { "provider": "wyoming", "base_url": url },
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    BotConfig::from_json(config.to_string().as_bytes()).expect("a valid bot")
}

/// `ms` milliseconds of 16 kHz PCM in 20 ms frames, each sample its index.
fn frames(ms: usize) -> Vec<Vec<u8>> {
    (0..ms / 20).map(|f| (0..320).flat_map(|i| ((f * 320 + i) as i16).to_le_bytes()).collect()).collect()
}

/// The server's log once `done` holds of it (polled for at most 2 s, without blocking the
/// runtime the adapters run on).
async fn settled(srv: &server::WyomingServer, done: impl Fn(&server::Log) -> bool) -> server::Log {
    for _ in 0..200 {
        let log = srv.log();
        if done(&log) {
            return log;
        }
        compio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.log()
}

// ---- framing ----

#[test]
fn frames_round_trip_in_pieces_of_any_size() {
    let frames = vec![
        Frame::new("describe"),
        Frame::with_data("transcript", json!({ "text": "héllo\nthere" })),
        Frame::audio("audio-chunk", 22_050, (0..=255).collect()),
        Frame::new("audio-stop").with_payload(vec![1, 2, 3]),
    ];
    let mut bytes = Vec::new();
    for f in &frames {
        f.encode(&mut bytes);
    }
    for piece in [1, 2, 7, 64, bytes.len()] {
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(piece) {
            reader.feed(chunk);
            while let Some(f) = reader.next_frame().expect("valid frames") {
                got.push(f);
            }
        }
        assert_eq!(got, frames, "pieces of {piece}");
        assert_eq!(reader.finish(), Ok(()));
    }
}

#[test]
fn header_fields_follow_the_python_package() {
    let bytes = Frame::audio("audio-chunk", 16_000, vec![0; 4]).to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let (header, rest) = text.split_once('\n').expect("a header line");
    let header: serde_json::Value = serde_json::from_str(header).expect("JSON header");
    let data_len = header["data_length"].as_u64().expect("data_length") as usize;
    assert_eq!(header["type"], "audio-chunk");
    assert_eq!(header["version"], "1.10.2");
    assert_eq!(header["payload_length"], 4);
    let data: serde_json::Value = serde_json::from_str(&rest[..data_len]).expect("JSON data");
    assert_eq!(data, json!({ "rate": 16000, "width": 2, "channels": 1, "timestamp": null }));
    assert_eq!(rest.len(), data_len + 4);
    // No data, no payload: neither length is written.
    assert_eq!(Frame::new("describe").to_bytes(), b"{\"type\":\"describe\",\"version\":\"1.10.2\"}\n");
}

#[test]
fn inline_data_is_merged_under_data_bytes() {
    let mut reader = FrameReader::new();
    reader.feed(b"{\"type\":\"info\",\"data\":{\"a\":1,\"b\":2},\"data_length\":8}\n{\"b\":3}");
    assert_eq!(reader.next_frame(), Ok(None), "one data byte short");
    reader.feed(b" ");
    let frame = reader.next_frame().expect("valid").expect("a frame");
    assert_eq!(serde_json::Value::Object(frame.data), json!({ "a": 1, "b": 3 }));
    // A header with nulls and no version, as hand-written clients send.
    reader.feed(b"{\"type\":\"audio-stop\",\"data\":null,\"payload_length\":null}\n");
    assert_eq!(reader.next_frame(), Ok(Some(Frame::new("audio-stop"))));
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    let header = FrameError::BadHeader(String::new());
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (b"not json\n".to_vec(), header.clone()),
        (b"\n".to_vec(), header.clone()),
        (b"[1,2]\n".to_vec(), header.clone()),
        (b"{\"data\":{}}\n".to_vec(), header.clone()),
        (b"{\"type\":5}\n".to_vec(), header.clone()),
        (b"{\"type\":\"x\",\"data\":[1]}\n".to_vec(), header.clone()),
        (b"{\"type\":\"x\",\"data_length\":-1}\n".to_vec(), header.clone()),
        (b"{\"type\":\"x\",\"payload_length\":1.5}\n".to_vec(), header.clone()),
        (b"{\"type\":\"x\",\"payload_length\":\"9\"}\n".to_vec(), header.clone()),
        (format!("{{\"type\":\"x\",\"data_length\":{}}}\n", MAX_DATA + 1).into_bytes(), FrameError::DataTooLong(0)),
        (b"{\"type\":\"x\",\"payload_length\":18446744073709551615}\n".to_vec(), FrameError::PayloadTooLong(0)),
        (
            format!("{{\"type\":\"x\",\"payload_length\":{}}}\n", MAX_PAYLOAD + 1).into_bytes(),
            FrameError::PayloadTooLong(0),
        ),
        (b"{\"type\":\"x\",\"data_length\":3}\n[1]".to_vec(), FrameError::BadData(String::new())),
        (b"{\"type\":\"x\",\"data_length\":3}\n{{{".to_vec(), FrameError::BadData(String::new())),
        (vec![b' '; MAX_HEADER], FrameError::HeaderTooLong),
    ];
    for (bytes, expected) in cases {
        let mut reader = FrameReader::new();
        reader.feed(&bytes);
        let err = reader.next_frame().expect_err("malformed");
        assert_eq!(
            std::mem::discriminant(&err),
            std::mem::discriminant(&expected),
            "{:?} gave {err:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
        // The reader stays failed.
        reader.feed(&Frame::new("describe").to_bytes());
        assert_eq!(reader.next_frame(), Err(err));
    }
    // A header line just under the limit is fine.
    let mut line = b"{\"type\":\"x\"}".to_vec();
    line.resize(MAX_HEADER - 1, b' ');
    line.push(b'\n');
    let mut reader = FrameReader::new();
    reader.feed(&line);
    assert_eq!(reader.next_frame(), Ok(Some(Frame::new("x"))));
    // A stream cut inside an event.
    let mut reader = FrameReader::new();
    reader.feed(b"{\"type\":\"audio-chunk\",\"payload_length\":10}\nabc");
    assert_eq!(reader.next_frame(), Ok(None));
    assert_eq!(reader.finish(), Err(FrameError::Truncated));
}

// ---- config ----

#[test]
fn config_needs_a_tcp_address() {
    for url in [
        None,
        Some("http://127.0.0.1:1"),
        Some("tcp://127.0.0.1"),
        Some("tcp://:10300"),
        Some("tcp://h:0"),
        Some("tcp://h:x"),
    ] {
        let mut b = bot("tcp://127.0.0.1:1", json!({}));
        b.stt.base_url = url.map(str::to_string);
        b.tts.base_url = url.map(str::to_string);
        assert!(WyomingStt::from_config(&b).is_err(), "{url:?}");
        assert!(WyomingTts::from_config(&b).is_err(), "{url:?}");
    }
    let b = bot("tcp://localhost:10300/", json!({}));
    assert_eq!(WyomingStt::from_config(&b).expect("valid").input_format(), AudioFormat::Pcm16(16_000));
    assert_eq!(WyomingTts::from_config(&b).expect("valid").output_format(), AudioFormat::Pcm16(22_050));
    let b = bot(
        "tcp://localhost:10300",
        json!({ "tts": { "base_url": "tcp://h:1", "options": { "sample_rate": 16000 } } }),
    );
    assert_eq!(WyomingTts::from_config(&b).expect("valid").output_format(), AudioFormat::Pcm16(16_000));
    let b = bot(
        "tcp://localhost:10300",
        json!({ "tts": { "base_url": "tcp://h:1", "options": { "sample_rate": "fast" } } }),
    );
    assert!(WyomingTts::from_config(&b).is_err());
    let b = bot("tcp://localhost:10300", json!({ "stt": { "base_url": "tcp://h:1", "options": { "timeout_ms": 0 } } }));
    assert!(WyomingStt::from_config(&b).is_err());
}

// ---- speech-to-text ----

#[test]
fn each_utterance_gets_its_own_connection_and_transcript() {
    let srv = server::start(Options::default()).expect("server");
    let stt = WyomingStt::from_config(&bot(&srv.url(), json!({}))).expect("config");
    let log = run(async {
        let events = Events::new();
        let session = stt.open(events.clone());
        // 500 ms in 20 ms frames, then 460 ms: batched into 100 ms chunks.
        for f in frames(500) {
            session.send(SttCommand::Audio(f));
        }
        session.send(SttCommand::Finalize);
        assert_eq!(
            next(&events).await,
            Event::Stt(SttEvent::Final { text: "heard 500 milliseconds".into(), end_of_turn: true })
        );
        for f in frames(460) {
            session.send(SttCommand::Audio(f));
        }
        session.send(SttCommand::Finalize);
        assert_eq!(
            next(&events).await,
            Event::Stt(SttEvent::Final { text: "heard 460 milliseconds".into(), end_of_turn: true })
        );
        // The next utterance's connection opens while the transcript is awaited.
        let log = settled(&srv, |log| log.utterances.len() == 3 && log.utterances[2].format.is_some()).await;
        session.send(SttCommand::Close);
        log
    });
    assert_eq!(log.describes, 1, "only the session's first connection asks describe");
    assert_eq!(log.utterances.len(), 3, "two utterances and the next one pre-opened: {log:?}");
    let [first, second, third] = &log.utterances[..] else { unreachable!() };
    assert_eq!((first.connection, second.connection, third.connection), (1, 2, 3));
    assert_eq!(first.language.as_deref(), Some("en"));
    assert_eq!(first.format, Some((16_000, 2, 1)));
    assert_eq!(first.chunks, vec![3200; 5]);
    assert_eq!(first.head, frames(20)[0][..64].to_vec(), "audio passes through unchanged");
    assert_eq!(second.chunks, vec![3200, 3200, 3200, 3200, 1920]);
    assert!(first.stopped && second.stopped);
    assert!(!third.stopped && third.chunks.is_empty() && third.format == Some((16_000, 2, 1)));
}

#[test]
fn finalize_with_no_audio_is_an_empty_final_without_a_round_trip() {
    let srv =
        server::start(Options { transcript: Transcript::Fixed("never".into()), ..Options::default() }).expect("server");
    let stt = WyomingStt::from_config(&bot(&srv.url(), json!({}))).expect("config");
    run(async {
        let events = Events::new();
        let session = stt.open(events.clone());
        session.send(SttCommand::Finalize);
        assert_eq!(next(&events).await, Event::Stt(SttEvent::Final { text: String::new(), end_of_turn: true }));
        // An odd byte is half a sample: still nothing to send.
        session.send(SttCommand::Audio(vec![1]));
        session.send(SttCommand::Finalize);
        assert_eq!(next(&events).await, Event::Stt(SttEvent::Final { text: String::new(), end_of_turn: true }));
        session.send(SttCommand::Audio(vec![1, 2]));
        session.send(SttCommand::Finalize);
        assert_eq!(next(&events).await, Event::Stt(SttEvent::Final { text: "never".into(), end_of_turn: true }));
    });
    let log = srv.log();
    assert_eq!(log.utterances[0].chunks, vec![2]);
    assert!(log.utterances[0].stopped);
}

/// The error text an STT session reports when the server answers its audio with `raw`.
fn stt_error_for(raw: &[u8]) -> String {
    let srv = server::start(Options { raw_answer: Some(raw.to_vec()), ..Options::default() }).expect("server");
    let stt = WyomingStt::from_config(&bot(&srv.url(), json!({}))).expect("config");
    run(async {
        let events = Events::new();
        let session = stt.open(events.clone());
        for f in frames(100) {
            session.send(SttCommand::Audio(f));
        }
        session.send(SttCommand::Finalize);
        match next(&events).await {
            Event::Stt(SttEvent::Error(e)) => e,
            other => panic!("expected an error for {raw:?}, got {other:?}"),
        }
    })
}

#[test]
fn malformed_transcripts_are_session_errors() {
    assert!(stt_error_for(b"").contains("closed"));
    assert!(stt_error_for(b"{\"type\":\"transcript\"\n").contains("bad header"));
    assert!(stt_error_for(b"{\"type\":\"transcript\",\"data_length\":99999999}\n").contains("data_length"));
    assert!(stt_error_for(b"{\"type\":\"transcript\",\"data_length\":20}\n{\"te").contains("inside an event"));
    assert!(stt_error_for(b"{\"type\":\"transcript\",\"data\":{\"text\":5}}\n").contains("without text"));
    let err = stt_error_for(&Frame::with_data("error", json!({ "text": "model exploded" })).to_bytes());
    assert!(err.contains("model exploded"), "{err}");
}

#[test]
fn an_unreachable_server_is_a_session_error() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let stt = WyomingStt::from_config(&bot(&format!("tcp://{addr}"), json!({}))).expect("config");
    let event = run(async {
        let events = Events::new();
        let _session = stt.open(events.clone());
        next(&events).await
    });
    assert!(matches!(&event, Event::Stt(SttEvent::Error(e)) if e.contains("connect")), "{event:?}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("tcp://{}", listener.local_addr().expect("addr"));
    let b = bot(&url, json!({ "stt": { "base_url": url, "options": { "timeout_ms": 100 } } }));
    let stt = WyomingStt::from_config(&b).expect("config");
    let event = run(async {
        let events = Events::new();
        let _session = stt.open(events.clone());
        next(&events).await
    });
    assert!(matches!(&event, Event::Stt(SttEvent::Error(e)) if e.contains("did not answer")), "{event:?}");
    drop(listener);
}

// ---- text-to-speech ----

#[test]
fn synthesis_delivers_the_servers_pcm_then_done() {
    let srv = server::start(Options::default()).expect("server");
    let tts = WyomingTts::from_config(&bot(&srv.url(), json!({}))).expect("config");
    let text = "Hello there, how can I help?";
    let out = run(async {
        let events = Events::new();
        let _job = tts.synthesize(7, text.into(), events.clone());
        sentence(&events).await
    });
    assert_eq!(out.last(), Some(&TtsEvent::Done));
    assert!(out.iter().all(|e| !matches!(e, TtsEvent::Audio(a) if a.len() % 2 == 1)));
    assert_eq!(audio(&out), tts_audio(text, 22_050));
    assert_eq!(
        srv.log().syntheses,
        vec![server::Synthesis { text: text.into(), voice: Some("en_US-joe-medium".into()) }]
    );
}

#[test]
fn a_rate_other_than_the_configured_one_is_an_error_not_garbled_audio() {
    let srv = server::start(Options { tts_rate: 16_000, ..Options::default() }).expect("server");
    let tts = WyomingTts::from_config(&bot(&srv.url(), json!({}))).expect("config");
    let out = run(async {
        let events = Events::new();
        let _job = tts.synthesize(7, "Hi.".into(), events.clone());
        sentence(&events).await
    });
    assert!(matches!(&out[..], [TtsEvent::Error(e)] if e.contains("sample_rate")), "{out:?}");
}

/// The events of one sentence when the server answers `synthesize` with `raw`.
fn tts_answer(raw: Vec<u8>) -> Vec<TtsEvent> {
    let srv = server::start(Options { raw_answer: Some(raw), ..Options::default() }).expect("server");
    let tts = WyomingTts::from_config(&bot(&srv.url(), json!({}))).expect("config");
    run(async {
        let events = Events::new();
        let _job = tts.synthesize(7, "Hi.".into(), events.clone());
        sentence(&events).await
    })
}

#[test]
fn odd_sized_chunks_come_out_sample_aligned() {
    let mut raw = Frame::audio("audio-start", 22_050, Vec::new()).to_bytes();
    raw.extend(Frame::audio("audio-chunk", 22_050, vec![1, 2, 3]).to_bytes());
    raw.extend(Frame::new("audio-chunk").with_payload(vec![4]).to_bytes());
    raw.extend(Frame::audio("audio-chunk", 22_050, vec![5]).to_bytes());
    raw.extend(Frame::new("audio-stop").to_bytes());
    let out = tts_answer(raw);
    assert_eq!(out, vec![TtsEvent::Audio(vec![1, 2]), TtsEvent::Audio(vec![3, 4]), TtsEvent::Done]);
}

#[test]
fn malformed_synthesis_answers_are_errors() {
    let start = Frame::audio("audio-start", 22_050, Vec::new()).to_bytes();
    let with_start = |tail: &[u8]| [start.as_slice(), tail].concat();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "closed"),
        (start.clone(), "closed"),
        (b"garbage\n".to_vec(), "bad header"),
        (with_start(b"{\"type\":\"audio-chunk\",\"payload_length\":4194305}\n"), "payload_length"),
        (with_start(b"{\"type\":\"audio-chunk\",\"payload_length\":100}\n\x01\x02"), "inside an event"),
        (with_start(&vec![b'{'; MAX_HEADER + 10]), "header line longer"),
        (Frame::with_data("audio-start", json!({ "rate": 22050, "width": 1, "channels": 1 })).to_bytes(), "width"),
        (Frame::new("audio-start").to_bytes(), "rate None"),
        (with_start(&Frame::audio("audio-chunk", 44_100, vec![0; 4]).to_bytes()), "44100"),
        (
            Frame::with_data("error", json!({ "text": "no such voice", "code": "ValueError" })).to_bytes(),
            "no such voice",
        ),
    ];
    for (raw, expected) in cases {
        let out = tts_answer(raw);
        assert!(
            matches!(out.last(), Some(TtsEvent::Error(e)) if e.contains(expected)),
            "expected an error with `{expected}`, got {out:?}"
        );
        assert!(out[..out.len() - 1].iter().all(|e| matches!(e, TtsEvent::Audio(_))));
    }
}

#[test]
fn the_test_server_survives_malformed_clients() {
    use std::io::{Read, Write};
    let srv = server::start(Options::default()).expect("server");
    for garbage in
        [&b"{\"type\":\"describe\",\"payload_length\":99999999999}\n"[..], b"\xff\xfe\n", b"{\"type\":\"synthesize\"\n"]
    {
        let mut s = std::net::TcpStream::connect(srv.addr()).expect("connect");
        s.write_all(garbage).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("the server closes the connection");
        assert!(rest.is_empty(), "no answer to {garbage:?}");
    }
    let tts = WyomingTts::from_config(&bot(&srv.url(), json!({}))).expect("config");
    let out = run(async {
        let events = Events::new();
        let _job = tts.synthesize(7, "Still here.".into(), events.clone());
        sentence(&events).await
    });
    assert_eq!(out.last(), Some(&TtsEvent::Done));
}

#[test]
fn a_streaming_servers_extra_events_are_skipped_for_the_transcript() {
    let mut raw = Frame::new("transcript-start").to_bytes();
    raw.extend(Frame::with_data("transcript-chunk", json!({ "text": "hel" })).to_bytes());
    raw.extend(Frame::with_data("transcript", json!({ "text": " hello \n" })).to_bytes());
    raw.extend(Frame::new("transcript-stop").to_bytes());
    let srv = server::start(Options { raw_answer: Some(raw), ..Options::default() }).expect("server");
    let stt = WyomingStt::from_config(&bot(&srv.url(), json!({}))).expect("config");
    let event = run(async {
        let events = Events::new();
        let session = stt.open(events.clone());
        session.send(SttCommand::Audio(vec![0; 640]));
        session.send(SttCommand::Finalize);
        next(&events).await
    });
    assert_eq!(event, Event::Stt(SttEvent::Final { text: "hello".into(), end_of_turn: true }));
}

#[test]
fn a_sentence_that_never_ends_is_cut_off() {
    let mut raw = Frame::audio("audio-start", 22_050, Vec::new()).to_bytes();
    for _ in 0..3 {
        raw.extend(Frame::audio("audio-chunk", 22_050, vec![0; 2 << 20]).to_bytes());
    }
    let out = tts_answer(raw);
    assert!(matches!(out.last(), Some(TtsEvent::Error(e)) if e.contains("120 s")), "{:?}", out.last());
    assert!(audio(&out).len() <= 22_050 * 2 * 120);
}

#[test]
fn piper_rate_byte_counts_are_whole_samples() {
    assert_eq!(AudioFormat::Pcm16(22_050).bytes_per_ms(20), 882);
    assert_eq!(AudioFormat::Pcm16(22_050).bytes_per_ms(1000), 44_100);
    assert_eq!(AudioFormat::Pcm16(16_000).bytes_per_ms(100), 3_200);
}
