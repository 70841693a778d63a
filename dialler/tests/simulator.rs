//! The carrier simulator against loopback servers: an engine that speaks the engine's side of
//! Twilio Media Streams (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>:
//! the bot reads `connected`, `start`, `media`, `mark`, `stop` and sends `media` and `mark` with
//! the `streamSid`), a CDR receiver and a voice application, both axum.
//!
//! Ring and talk times are scaled down; the streamed audio runs in real time, so the tests
//! that stream take one to eight seconds.
#![cfg(feature = "runtime")]
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cxb_dialler::carrier::{Answer, CallRequest, CallState, Carrier, CarrierError, Disposition};
use cxb_dialler::simulator::{
    CdrDelivery, Outcome, OutcomeMix, RingTimes, Rule, Simulator, SimulatorConfig, SimulatorStats, Span, parse_cdr,
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

/// Every test finishes well within this.
const LIMIT: Duration = Duration::from_secs(30);

/// A CDR post: its query and its JSON body.
type Posted = (HashMap<String, String>, Value);

/// What the CDR receiver and the voice application saw.
#[derive(Clone, Default)]
struct Seen {
    /// (query, body) of every CDR post that was answered 2xx.
    cdrs: Arc<Mutex<Vec<Posted>>>,
    /// Answered 503 before taking CDRs.
    refuse_first: Arc<AtomicU32>,
    /// Form fields of every voice application request.
    answers: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

async fn cdr(State(seen): State<Seen>, Query(query): Query<HashMap<String, String>>, body: String) -> StatusCode {
    if seen.refuse_first.load(Ordering::SeqCst) > 0 {
        seen.refuse_first.fetch_sub(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // The body must be what the simulator's own parser reads.
    if parse_cdr(body.as_bytes()).is_err() {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    seen.cdrs.lock().unwrap().push((query, value));
    StatusCode::NO_CONTENT
}

/// A voice application: `service` answers a SIP service, `garbage` broken XML, `error` a 500.
async fn answer(State(seen): State<Seen>, Path(kind): Path<String>, body: String) -> (StatusCode, String) {
    let form = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned();
            (k.to_string(), v)
        })
        .collect();
    seen.answers.lock().unwrap().push(form);
    match kind.as_str() {
        "service" => (
            StatusCode::OK,
            r#"<Response><Dial><Service provider="acme">sip:bot@ai.example.com</Service></Dial></Response>"#.into(),
        ),
        "garbage" => (StatusCode::OK, "<Response><Connect>".into()),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "no".into()),
    }
}

/// A simulator and the loopback HTTP side.
struct Harness {
    sim: Arc<Simulator>,
    http_base: String,
    seen: Seen,
}

impl Harness {
    async fn new(config: SimulatorConfig) -> Harness {
        let seen = Seen::default();
        let app = Router::new()
            .route("/cdr", post(cdr))
            .route("/answer/{kind}", post(answer))
            .with_state(seen.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let http = cxb_control_plane::http_client(Duration::from_secs(5)).unwrap();
        Harness { sim: Simulator::start(config, http), http_base: format!("http://{addr}"), seen }
    }

    fn request(&self, session: &str, to: &str, answer: Answer) -> CallRequest {
        CallRequest {
            session: session.into(),
            to: to.into(),
            from: "+15550100000".into(),
            answer,
            ring_timeout: Duration::from_secs(30),
            cdr_url: format!("{}/cdr?token=tok-{session}", self.http_base),
            engine: None,
        }
    }

    async fn place(&self, call: &CallRequest) -> String {
        self.sim.create_call(call).await.expect("the simulator accepts the call").carrier_call_id
    }

    async fn idle(&self) {
        timeout(LIMIT, self.sim.idle()).await.expect("the calls end");
    }

    /// The CDRs received for `session`.
    fn cdrs_for(&self, session: &str) -> Vec<Posted> {
        let cdrs = self.seen.cdrs.lock().unwrap();
        cdrs.iter().filter(|(_, v)| v["session"] == session).cloned().collect()
    }

    /// The one CDR of `session`, its token checked.
    fn cdr(&self, session: &str) -> Value {
        let cdrs = self.cdrs_for(session);
        assert_eq!(cdrs.len(), 1, "one CDR for {session}: {cdrs:?}");
        let (query, body) = cdrs.into_iter().next().unwrap();
        assert_eq!(query.get("token").map(String::as_str), Some(format!("tok-{session}").as_str()));
        body
    }
}

/// Fast rings, so only the streamed audio takes real time.
fn fast(rules: Vec<Rule>) -> SimulatorConfig {
    SimulatorConfig {
        rules,
        time_scale: 0.01,
        ring: RingTimes { answer: Span::ms(1_000, 2_000), ..RingTimes::default() },
        seed: Some(7),
        mix: OutcomeMix::only(Outcome::Answer),
        ..SimulatorConfig::default()
    }
}

fn stream_cxml(addr: SocketAddr) -> Answer {
    Answer::Cxml(format!(
        r#"<Response><Connect><Stream url="ws://{addr}/v1/twilio?bot=echo&amp;x=1">
        <Parameter name="lead" value="Ann &quot;A&quot; &lt;&amp;&gt;"/><Parameter name="id" value="42"/>
        </Stream></Connect></Response>"#
    ))
}

/// What the fake engine saw on one stream.
#[derive(Debug, Default)]
struct EngineLog {
    connected: Value,
    start: Value,
    /// Each media message with its arrival.
    media: Vec<(Instant, Value)>,
    /// Mark echoes with their arrival.
    marks: Vec<(Instant, String)>,
    stop: Option<Value>,
    /// When our mark was sent.
    mark_sent: Option<Instant>,
    /// `sequenceNumber` of every message after `start`, in arrival order.
    numbers: Vec<u64>,
}

impl EngineLog {
    /// The caller's audio, frame by frame, decoded to 16-bit samples.
    fn frames(&self) -> Vec<Vec<i16>> {
        self.media
            .iter()
            .map(|(_, m)| {
                let bytes = BASE64.decode(m["media"]["payload"].as_str().unwrap()).unwrap();
                let mut pcm = Vec::new();
                cxb_codecs::g711::decode_mulaw_into(&bytes, &mut pcm);
                pcm
            })
            .collect()
    }
}

fn level(pcm: &[i16]) -> u64 {
    pcm.iter().map(|s| u64::from(s.unsigned_abs())).sum::<u64>() / pcm.len().max(1) as u64
}

/// The engine's side: `speak_then_close(n)` sends 500 ms of tone and a mark, then closes after
/// `n` caller frames; `None` listens until the caller's `stop`.
fn engine(listener: TcpListener, speak_then_close: Option<usize>) -> JoinHandle<EngineLog> {
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut log = EngineLog::default();
        let mut next = async || -> Option<Value> {
            loop {
                match ws.next().await? {
                    Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        log.connected = next().await.unwrap();
        log.start = next().await.unwrap();
        let sid = log.start["streamSid"].as_str().unwrap().to_string();
        if speak_then_close.is_some() {
            // 500 ms of 440 Hz: the bot's greeting, sent at once as a bot may; then a mark.
            let tone: Vec<u8> = (0..4_000)
                .map(|i| {
                    let s = 8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 8_000.0).sin();
                    cxb_codecs::g711::encode_mulaw(s as i16)
                })
                .collect();
            for chunk in tone.chunks(160) {
                let media = json!({"event": "media", "streamSid": sid, "media": {"payload": BASE64.encode(chunk)}});
                ws.send(Message::text(media.to_string())).await.unwrap();
            }
            ws.send(Message::text(json!({"event": "mark", "streamSid": sid, "mark": {"name": "greeting"}}).to_string()))
                .await
                .unwrap();
            log.mark_sent = Some(Instant::now());
        }
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            log.numbers.push(v["sequenceNumber"].as_str().unwrap().parse().unwrap());
            match v["event"].as_str().unwrap() {
                "media" => log.media.push((Instant::now(), v)),
                "mark" => log.marks.push((Instant::now(), v["mark"]["name"].as_str().unwrap().to_string())),
                "stop" => log.stop = Some(v),
                other => panic!("unexpected event {other}"),
            }
            if speak_then_close.is_some_and(|n| log.media.len() >= n && !log.marks.is_empty()) {
                ws.close(None).await.unwrap();
            }
        }
        log
    })
}

#[tokio::test]
async fn an_answered_call_streams_caller_audio_in_real_time_and_posts_one_cdr() {
    let h = Harness::new(SimulatorConfig {
        talk: Span::ms(1_000_000, 1_000_000), // 10 s scaled: the engine hangs up first
        ..fast(vec![Rule::new("0001", Outcome::Answer)])
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = engine(listener, Some(75));
    let call = h.request("s-answer", "+15550100001", stream_cxml(addr));
    let id = h.place(&call).await;
    assert_eq!(h.sim.call_state(&id).await.unwrap(), CallState::Live);
    let log = timeout(LIMIT, engine).await.unwrap().unwrap();
    h.idle().await;

    // connected and start as Twilio sends them.
    assert_eq!(log.connected, json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}));
    let start = &log.start;
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequenceNumber"], "1");
    let sid = start["streamSid"].as_str().unwrap();
    assert!(sid.starts_with("MZ") && sid.len() == 34, "{sid}");
    assert_eq!(start["start"]["streamSid"], sid);
    assert_eq!(start["start"]["callSid"], id.as_str());
    assert!(start["start"]["accountSid"].as_str().unwrap().starts_with("AC"));
    assert_eq!(start["start"]["tracks"], json!(["inbound"]));
    assert_eq!(start["start"]["mediaFormat"], json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}));
    assert_eq!(start["start"]["customParameters"], json!({"lead": "Ann \"A\" <&>", "id": "42"}));

    // Media: numbered, 160-byte frames of real speech, paced at 50 a second.
    assert!(log.media.len() >= 75, "{} frames", log.media.len());
    let mut numbers: Vec<u64> = log.numbers.clone();
    numbers.sort_unstable();
    assert_eq!(numbers, (2..2 + log.numbers.len() as u64).collect::<Vec<_>>(), "every message after start is numbered");
    assert!(log.numbers.windows(2).all(|w| w[0] < w[1]), "in order");
    for (i, (_, m)) in log.media.iter().enumerate() {
        assert_eq!(m["streamSid"], sid);
        assert_eq!(m["media"]["track"], "inbound");
        assert_eq!(m["media"]["chunk"], (i + 1).to_string().as_str());
        assert_eq!(m["media"]["timestamp"], (i * 20).to_string().as_str());
    }
    let frames = log.frames();
    assert!(frames.iter().all(|f| f.len() == 160));
    let speech = frames.iter().filter(|f| level(f) > 500).count();
    assert!((10..=30).contains(&speech), "\"Hello?\" is about 25 frames of speech, got {speech}");
    let first = log.media.first().unwrap().0;
    let last = log.media.last().unwrap().0;
    let rate = (log.media.len() - 1) as f64 / (last - first).as_secs_f64();
    assert!((45.0..=55.0).contains(&rate), "{rate:.1} frames/s");

    // The mark came back once its 500 ms of audio had played.
    assert_eq!(log.marks.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), ["greeting"]);
    let played = log.marks[0].0 - log.mark_sent.unwrap();
    assert!(played >= Duration::from_millis(440) && played < Duration::from_millis(1_500), "{played:?}");
    assert!(log.stop.is_none(), "the engine hung up, the carrier sends no stop");

    let cdr = h.cdr("s-answer");
    assert_eq!(cdr["carrier"], "simulator");
    assert_eq!(cdr["call_id"], id.as_str());
    assert_eq!((cdr["disposition"].as_str(), cdr["callee"].as_str()), (Some("answered"), Some("human")));
    assert_eq!(cdr["cause"], "bot_hangup");
    assert_eq!((cdr["from"].as_str(), cdr["to"].as_str()), (Some("+15550100000"), Some("+15550100001")));
    let (started, answered, ended) =
        (cdr["started_at"].as_i64().unwrap(), cdr["answered_at"].as_i64().unwrap(), cdr["ended_at"].as_i64().unwrap());
    assert!(started <= answered && answered < ended);
    assert_eq!(cdr["duration_ms"].as_i64().unwrap(), ended - answered);
    assert!(ended - answered >= 1_400, "75 frames of real-time audio: {} ms", ended - answered);
    let first_audio = cdr["answer_to_first_audio_ms"].as_i64().expect("the bot's audio was timed");
    assert!(first_audio < 1_000, "{first_audio} ms");

    let record = h.sim.call(&id).unwrap();
    assert_eq!(record.disposition, Some(Disposition::Answered));
    assert_eq!(record.cdr, CdrDelivery::Delivered { attempts: 1 });
    assert_eq!(record.marks_echoed, 1);
    assert_eq!(record.media_received, 25);
    assert_eq!(record.media_sent as usize, log.media.len());
    assert_eq!(h.sim.call_state(&id).await.unwrap(), CallState::Ended);
    let stats = h.sim.stats();
    assert_eq!((stats.created, stats.answered, stats.live, stats.peak_live, stats.cdr_delivered), (1, 1, 0, 1, 1));
}

#[tokio::test]
async fn busy_no_answer_and_failed_post_their_cdrs_without_opening_the_stream() {
    let h = Harness::new(fast(vec![
        Rule::new("0002", Outcome::Busy),
        Rule::new("0003", Outcome::NoAnswer),
        Rule::new("0004", Outcome::Failed),
    ]))
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for (session, to) in [("s-busy", "+15550100002"), ("s-none", "+15550100003"), ("s-fail", "+15550100004")] {
        h.place(&h.request(session, to, stream_cxml(addr))).await;
    }
    h.idle().await;
    for (session, disposition, cause) in
        [("s-busy", "busy", "user_busy"), ("s-none", "no_answer", "no_answer"), ("s-fail", "failed", "network_failure")]
    {
        let cdr = h.cdr(session);
        assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some(disposition), Some(cause)), "{cdr}");
        assert!(cdr["answered_at"].is_null() && cdr["callee"].is_null(), "{cdr}");
        assert_eq!(cdr["duration_ms"], 0);
    }
    // No answer rings for the whole ring timeout (30 s scaled by 0.01); busy and failed are quicker.
    let rang = |s: &str| {
        let c = h.cdr(s);
        c["ended_at"].as_i64().unwrap() - c["started_at"].as_i64().unwrap()
    };
    assert!((295..1_000).contains(&rang("s-none")), "{}", rang("s-none"));
    assert!(rang("s-busy") < 200 && rang("s-fail") < 200, "{} {}", rang("s-busy"), rang("s-fail"));
    assert!(timeout(Duration::from_millis(100), listener.accept()).await.is_err(), "no socket was opened");
    let stats = h.sim.stats();
    assert_eq!(
        stats,
        SimulatorStats {
            created: 3,
            peak_live: 3,
            busy: 1,
            no_answer: 1,
            failed: 1,
            cdr_delivered: 3,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn hangup_cxml_ends_the_call_at_once_and_other_verbs_end_it_with_a_cause() {
    let h = Harness::new(fast(vec![])).await;
    h.place(&h.request("s-hangup", "+15550100005", Answer::Cxml("<Response><Hangup/></Response>".into()))).await;
    let say = Answer::Cxml("<Response><Say>Hello</Say><Hangup/></Response>".into());
    let id = h.place(&h.request("s-say", "+15550100015", say)).await;
    h.idle().await;
    let cdr = h.cdr("s-say");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some("answered"), Some("unsupported_verb")));
    assert_eq!(h.sim.call(&id).unwrap().detail.as_deref(), Some("<Say>"));
    let cdr = h.cdr("s-hangup");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some("answered"), Some("cxml_hangup")));
    assert!(cdr["duration_ms"].as_i64().unwrap() < 100, "{cdr}");
    assert!(cdr["answer_to_first_audio_ms"].is_null());
}

#[tokio::test]
async fn answer_urls_are_fetched_as_voice_application_requests() {
    let h = Harness::new(SimulatorConfig { talk: Span::ms(20_000, 20_000), ..fast(vec![]) }).await;
    let url = |kind: &str| Answer::Url(format!("{}/answer/{kind}", h.http_base));
    let id = h.place(&h.request("s-url", "+15550100006", url("service"))).await;
    h.place(&h.request("s-garbage", "+15550100007", url("garbage"))).await;
    h.place(&h.request("s-error", "+15550100008", url("error"))).await;
    h.idle().await;

    let answers = h.seen.answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 3);
    let request = answers.iter().find(|f| f.get("Session").map(String::as_str) == Some("s-url")).unwrap();
    let expected: HashMap<String, String> = [
        ("CallSid", id.as_str()),
        ("From", "+15550100000"),
        ("To", "+15550100006"),
        ("Direction", "outbound-api"),
        ("CallStatus", "in-progress"),
        ("ApiVersion", "2010-04-01"),
        ("Session", "s-url"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(request.get_key_value("AccountSid").map(|(k, v)| (k.clone(), v.clone())))
    .collect();
    assert_eq!(request, &expected);

    // The SIP service is "connected" for the talk time (20 s scaled: 200 ms).
    let cdr = h.cdr("s-url");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some("answered"), Some("service_ended")));
    assert!((190..1_000).contains(&cdr["duration_ms"].as_i64().unwrap()), "{cdr}");
    let cdr = h.cdr("s-garbage");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some("answered"), Some("cxml_invalid")));
    let cdr = h.cdr("s-error");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some("answered"), Some("cxml_fetch_failed")));
}

#[tokio::test]
async fn hanging_up_a_ringing_call_cancels_it_and_a_connected_one_sends_stop() {
    let h = Harness::new(SimulatorConfig {
        ring: RingTimes { answer: Span::ms(5_000, 5_000), ..RingTimes::default() },
        time_scale: 0.1, // rings 500 ms
        talk: Span::ms(100_000, 100_000),
        rules: vec![Rule::new("0009", Outcome::Answer)],
        ..SimulatorConfig::default()
    })
    .await;
    let hangup = Answer::Cxml("<Response><Hangup/></Response>".into());
    let ringing = h.place(&h.request("s-ringing", "+15550100009", hangup)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.sim.call_state(&ringing).await.unwrap(), CallState::Live);
    h.sim.hang_up(&ringing).await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = engine(listener, None);
    let live = h.place(&h.request("s-connected", "+15550100009", stream_cxml(addr))).await;
    timeout(LIMIT, async {
        while h.sim.call(&live).is_none_or(|r| r.answered.is_none()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.sim.hang_up(&live).await.unwrap();
    let log = timeout(LIMIT, engine).await.unwrap().unwrap();
    let stop = log.stop.expect("the carrier sends stop when the call ends");
    assert_eq!(stop["streamSid"], log.start["streamSid"]);
    assert_eq!(stop["stop"]["callSid"], live.as_str());
    assert_eq!(stop["stop"]["accountSid"], log.start["start"]["accountSid"]);
    assert_eq!(stop["sequenceNumber"], (log.numbers.len() + 1).to_string().as_str(), "stop is the last message");
    h.idle().await;
    let cdr = h.cdr("s-ringing");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some("canceled"), Some("canceled")));
    assert!(cdr["answered_at"].is_null());
    assert_eq!(h.sim.call_state(&ringing).await.unwrap(), CallState::Ended);
    // Hanging up an ended or unknown call is not an error.
    h.sim.hang_up(&ringing).await.unwrap();
    h.sim.hang_up("sim-nobody-1").await.unwrap();
    assert_eq!(h.sim.call_state("sim-nobody-1").await.unwrap(), CallState::Unknown);

    let cdr = h.cdr("s-connected");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some("answered"), Some("api_hangup")));
    assert!(cdr["callee"] == "human" && cdr["duration_ms"].as_i64().unwrap() >= 250, "{cdr}");
    assert_eq!(h.sim.stats().canceled, 1);
}

#[tokio::test]
async fn bad_requests_and_malformed_cxml_are_refused_without_a_call() {
    let h = Harness::new(fast(vec![])).await;
    let good = h.request("s-bad", "+15550100010", Answer::Cxml("<Response><Hangup/></Response>".into()));
    let mut bad = Vec::new();
    for doc in ["<Response><Connect>", "<Response><Connect><Stream/></Connect></Response>", "not xml", "<Hangup/>"] {
        bad.push(CallRequest { answer: Answer::Cxml(doc.into()), ..good.clone() });
    }
    bad.push(CallRequest { to: "5550100010".into(), ..good.clone() });
    bad.push(CallRequest { to: "+1 555 010 0010".into(), ..good.clone() });
    bad.push(CallRequest { from: "anonymous".into(), ..good.clone() });
    bad.push(CallRequest { ring_timeout: Duration::ZERO, ..good.clone() });
    bad.push(CallRequest { cdr_url: "not a url".into(), ..good.clone() });
    bad.push(CallRequest { answer: Answer::Url("ftp://x/answer".into()), ..good.clone() });
    for call in &bad {
        match h.sim.create_call(call).await {
            Err(CarrierError::Rejected { status: 400, .. }) => {}
            other => panic!("{call:?} -> {other:?}"),
        }
    }
    h.idle().await;
    assert!(h.seen.cdrs.lock().unwrap().is_empty());
    let stats = h.sim.stats();
    assert_eq!((stats.created, stats.rejected), (0, bad.len() as u64));
    // The good one goes through.
    h.place(&good).await;
    h.idle().await;
    assert_eq!(h.cdr("s-bad")["cause"], "cxml_hangup");
}

#[tokio::test]
async fn a_stream_that_cannot_connect_ends_the_answered_call() {
    let h = Harness::new(SimulatorConfig { connect_timeout: Duration::from_secs(2), ..fast(vec![]) }).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let id = h.place(&h.request("s-nows", "+15550100011", stream_cxml(closed))).await;
    h.idle().await;
    let cdr = h.cdr("s-nows");
    assert_eq!((cdr["disposition"].as_str(), cdr["cause"].as_str()), (Some("answered"), Some("stream_failed")));
    assert!(h.sim.call(&id).unwrap().detail.is_some());
}

#[tokio::test]
async fn cdrs_are_retried_until_taken() {
    let h = Harness::new(fast(vec![])).await;
    h.seen.refuse_first.store(2, Ordering::SeqCst);
    let id = h.place(&h.request("s-retry", "+15550100012", Answer::Cxml("<Response/>".into()))).await;
    h.idle().await;
    assert_eq!(h.cdr("s-retry")["cause"], "cxml_hangup");
    assert_eq!(h.sim.call(&id).unwrap().cdr, CdrDelivery::Delivered { attempts: 3 });
    assert_eq!(h.seen.refuse_first.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_voicemail_greets_beeps_and_records_until_its_limit() {
    let h = Harness::new(SimulatorConfig {
        voicemail_limit: Duration::from_secs(50), // 500 ms scaled
        ring: RingTimes { voicemail: Span::ms(1_000, 1_000), ..RingTimes::default() },
        ..fast(vec![Rule::new("0013", Outcome::Voicemail)])
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = engine(listener, None);
    h.place(&h.request("s-vm", "+15550100013", stream_cxml(addr))).await;
    let log = timeout(LIMIT, engine).await.unwrap().unwrap();
    h.idle().await;
    assert!(log.stop.is_some());
    // A greeting of several seconds, then 500 ms of 1000 Hz (8 samples a cycle: 40 zero
    // crossings a frame), then silence until the limit.
    let frames = log.frames();
    let crossings = |f: &[i16]| f.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let is_beep = |f: &Vec<i16>| level(f) > 2_000 && (38..=42).contains(&crossings(f));
    // The longest run of beep-like frames.
    let (mut run, mut best) = (0..0, 0..0);
    for (i, f) in frames.iter().enumerate() {
        run = if is_beep(f) { if run.is_empty() { i..i + 1 } else { run.start..i + 1 } } else { i + 1..i + 1 };
        if run.len() > best.len() {
            best = run.clone();
        }
    }
    assert!((23..=26).contains(&best.len()), "a 500 ms beep: frames {best:?}");
    let (start, end) = (best.start, best.end - 1);
    let greeting = frames[..start].iter().filter(|f| level(f) > 500).count();
    assert!(greeting >= 150, "{greeting} frames of greeting");
    let after = &frames[end + 1..];
    assert!((20..=30).contains(&after.len()) && after.iter().all(|f| level(f) < 50), "{} frames after", after.len());
    let cdr = h.cdr("s-vm");
    assert_eq!((cdr["callee"].as_str(), cdr["cause"].as_str()), (Some("voicemail"), Some("voicemail_limit")));
    assert_eq!(h.sim.stats().voicemail, 1);
}

#[tokio::test]
async fn the_mix_is_seeded_and_the_log_times_every_call() {
    let mix = OutcomeMix { answer: 1, busy: 1, no_answer: 1, voicemail: 0, failed: 1 };
    // Rings of 100-300 ms (scaled), so all 40 calls are placed before the first ends.
    let ring = Span::ms(10_000, 30_000);
    let ring = RingTimes { answer: ring, busy: ring, failed: ring, voicemail: ring };
    let config = SimulatorConfig { mix, ring, ..fast(vec![]) };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let h = Harness::new(config.clone()).await;
        for i in 0..40 {
            let to = format!("+1555020{i:04}");
            h.place(&h.request(&format!("s-{i}"), &to, Answer::Cxml("<Response><Hangup/></Response>".into()))).await;
        }
        h.idle().await;
        let calls = h.sim.calls();
        assert_eq!(calls.len(), 40);
        assert!(calls.iter().all(|c| c.ended.is_some_and(|e| e >= c.created)));
        assert!(calls.windows(2).all(|w| w[0].created <= w[1].created), "the log is in creation order");
        runs.push(calls.iter().map(|c| c.disposition).collect::<Vec<_>>());
        let stats = h.sim.stats();
        assert_eq!(stats.answered + stats.busy + stats.no_answer + stats.failed, 40);
        assert!(stats.answered > 0 && stats.busy > 0 && stats.no_answer > 0 && stats.failed > 0, "{stats:?}");
        assert_eq!(stats.peak_live, 40, "all 40 rang at once");
    }
    assert_eq!(runs[0], runs[1], "the same seed, the same outcomes");
}
