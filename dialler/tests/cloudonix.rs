//! The Cloudonix adapter against a local stand-in for Cloudonix that speaks the API as its
//! documentation and public clients show it (see `carrier::cloudonix`'s module docs): bearer
//! keys checked against the domain in the path, `POST /calls/{domain}/application` answering
//! with a session token, `GET`/`DELETE /customers/self/domains/{domain}/sessions/{token}`, and a
//! CDR in the documented shape posted to the domain's `cdr-endpoint` when a session ends. The
//! stand-in's clock is a number the tests move; nothing sleeps.
#![cfg(feature = "runtime")]
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use cxb_dialler::carrier::cloudonix::{Cloudonix, CloudonixConfig, parse_cdr};
use cxb_dialler::carrier::{Answer, CallRequest, CallState, Carrier, CarrierError, Cdr, CdrError, Disposition};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const DOMAIN: &str = "acme.cloudonix.net";
const KEY: &str = "XI0123456789ABCDEF0123456789ABCDEF";
const T0: i64 = 1_716_239_100_387;

// ---------------------------------------------------------------------------------------------
// The stand-in for Cloudonix.

#[derive(Debug)]
struct Session {
    request: Value,
    status: &'static str,
    start: i64,
    answer: i64,
    end: i64,
}

#[derive(Debug, Default)]
struct FakeState {
    now: i64,
    next: u64,
    fail_with: Option<u16>,
    sessions: HashMap<String, Session>,
    /// Every API request: method, path, `Authorization` header.
    seen: Vec<(String, String, String)>,
    cdr_endpoint: Option<String>,
    cdr_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Fake {
    state: Arc<Mutex<FakeState>>,
    http: reqwest::Client,
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(&self, ms: i64) {
        self.lock().now += ms;
    }

    /// The callee picks up.
    fn answer(&self, token: &str) {
        let mut s = self.lock();
        let now = s.now;
        let session = s.sessions.get_mut(token).expect("known session");
        session.status = "connected";
        session.answer = now;
    }

    /// The session ends on Cloudonix's side with `disposition`; the CDR goes out as Cloudonix
    /// sends it, to the domain's `cdr-endpoint`.
    async fn end(&self, token: &str, disposition: &str) -> bool {
        let cdr = {
            let mut s = self.lock();
            let now = s.now;
            let Some(session) = s.sessions.get_mut(token) else { return false };
            if session.end != 0 {
                return false;
            }
            session.end = now;
            session.status = if session.answer != 0 { "completed" } else { "cancel" };
            cdr_json(token, disposition, session)
        };
        self.post_cdr(&cdr).await;
        true
    }

    async fn post_cdr(&self, cdr: &Value) {
        let (endpoint, headers) = {
            let s = self.lock();
            (s.cdr_endpoint.clone(), s.cdr_headers.clone())
        };
        let Some(endpoint) = endpoint else { return };
        let mut request = self.http.post(endpoint).json(cdr);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send().await.expect("the CDR endpoint answers");
    }

    fn create_bodies(&self) -> Vec<Value> {
        let s = self.lock();
        let mut sessions: Vec<&Session> = s.sessions.values().collect();
        sessions.sort_by_key(|x| x.start);
        sessions.iter().map(|x| x.request.clone()).collect()
    }
}

/// A CDR as Cloudonix's documentation shows one (`theCdrProcessor` sample), for this session.
fn cdr_json(token: &str, disposition: &str, s: &Session) -> Value {
    let billsec = if s.answer != 0 { (s.end - s.answer) / 1000 } else { 0 };
    json!({
        "timestamp": s.start / 1000,
        "domain": DOMAIN,
        "subscriber": 372,
        "from": s.request["caller-id"],
        "to": s.request["destination"],
        "cx_trunk_id": null,
        "application": null,
        "route": null,
        "duration": (s.end - s.start) / 1000,
        "billsec": billsec,
        "disposition": disposition,
        "rated_cost": null,
        "approx_cost": null,
        "sell_cost": null,
        "vapp_server": "172.24.41.58",
        "call_id": format!("{token}@203.0.113.9:5060"),
        "session": {
            "id": 9_812_750,
            "domainId": 3,
            "domain": DOMAIN,
            "destination": s.request["destination"],
            "callerId": s.request["caller-id"],
            "token": token,
            "timeLimit": 0,
            "profile": {
                "cxb-session": s.request["profile"]["cxb-session"],
                "qos": {"rxjitter": 0, "txcount": 106, "rx_mos": "NaN", "tx_mos": 4.4},
                "application": []
            },
            "callStartTime": s.start,
            "callEndTime": s.end,
            "callAnswerTime": s.answer,
            "status": s.status,
            "vappServer": "172.24.41.58"
        }
    })
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The key check Cloudonix does: a bearer key valid for the domain in the path.
fn refused(s: &FakeState, headers: &HeaderMap, domain: &str) -> Option<Response> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let key = auth.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, k)| k);
    if key != Some(KEY) || domain != DOMAIN {
        return Some(json_response(StatusCode::UNAUTHORIZED, json!({"message": "Unauthorized"})));
    }
    s.fail_with.map(|code| {
        let status = StatusCode::from_u16(code).expect("a status code");
        json_response(status, json!({"message": "Service temporarily unavailable"}))
    })
}

fn remember(s: &mut FakeState, method: &str, path: String, headers: &HeaderMap) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    s.seen.push((method.to_owned(), path, auth));
}

async fn create_call(State(fake): State<Fake>, Path(domain): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let mut s = fake.lock();
    remember(&mut s, "POST", format!("/calls/{domain}/application"), &headers);
    if let Some(refusal) = refused(&s, &headers, &domain) {
        return refusal;
    }
    let Ok(request @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return json_response(StatusCode::BAD_REQUEST, json!({"message": "Invalid JSON"}));
    };
    let text = |k: &str| request.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let programs = ["application", "url", "cxml"].iter().filter(|k| request.get(**k).is_some()).count();
    if text("destination").is_none() || text("caller-id").is_none() || programs != 1 {
        return json_response(StatusCode::BAD_REQUEST, json!({"message": "destination, caller-id and one application"}));
    }
    s.next += 1;
    let token = format!("{:032x}", 0x16a7_294c_989b_11e7_u128 * 1000 + u128::from(s.next));
    let destination = request["destination"].clone();
    let now = s.now + i64::try_from(s.next).unwrap_or(0);
    s.sessions.insert(token.clone(), Session { request, status: "ringing", start: now, answer: 0, end: 0 });
    json_response(
        StatusCode::OK,
        json!({"domainId": 3, "subscriberId": 372, "destination": destination, "direction": "outbound-api", "token": token}),
    )
}

type SessionPath = Path<(String, String)>;

async fn get_session(State(fake): State<Fake>, Path((domain, token)): SessionPath, headers: HeaderMap) -> Response {
    let mut s = fake.lock();
    remember(&mut s, "GET", format!("/customers/self/domains/{domain}/sessions/{token}"), &headers);
    if let Some(refusal) = refused(&s, &headers, &domain) {
        return refusal;
    }
    let Some(x) = s.sessions.get(&token) else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "Session not found"}));
    };
    json_response(StatusCode::OK, json!({
        "domainId": 3, "domain": DOMAIN, "destination": x.request["destination"], "callerId": x.request["caller-id"],
        "direction": "outbound-api", "token": token, "timeLimit": 0, "profile": x.request["profile"],
        "callStartTime": x.start, "callAnswerTime": x.answer, "callEndTime": x.end, "status": x.status,
    }))
}

async fn delete_session(State(fake): State<Fake>, Path((domain, token)): SessionPath, headers: HeaderMap) -> Response {
    let answered = {
        let mut s = fake.lock();
        remember(&mut s, "DELETE", format!("/customers/self/domains/{domain}/sessions/{token}"), &headers);
        if let Some(refusal) = refused(&s, &headers, &domain) {
            return refusal;
        }
        match s.sessions.get(&token) {
            Some(x) if x.end == 0 => x.answer != 0,
            _ => return json_response(StatusCode::NOT_FOUND, json!({"message": "Session not found"})),
        }
    };
    fake.end(&token, if answered { "ANSWER" } else { "CANCEL" }).await;
    json_response(StatusCode::OK, json!({}))
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake { state: Arc::default(), http: http() };
    fake.lock().now = T0;
    let app = Router::new()
        .route("/calls/{domain}/application", post(create_call))
        .route("/customers/self/domains/{domain}/sessions/{token}", delete(delete_session).get(get_session))
        .with_state(fake.clone());
    (fake, serve(app).await)
}

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn http() -> reqwest::Client {
    cxb_control_plane::http_client(Duration::from_secs(5)).expect("HTTP client")
}

// ---------------------------------------------------------------------------------------------
// Our side: the adapter, and a CDR endpoint that hands what it reads to the test.

fn config(api_base: &str) -> CloudonixConfig {
    CloudonixConfig { api_base: api_base.to_owned(), ..CloudonixConfig::new(DOMAIN, KEY) }
}

fn call(session: &str, answer: Answer) -> CallRequest {
    CallRequest {
        session: session.into(),
        to: "+15551230001".into(),
        from: "+15559870000".into(),
        answer,
        ring_timeout: Duration::from_secs(30),
        cdr_url: "http://127.0.0.1:1/v1/carriers/cdr?token=per-call".into(),
        engine: None,
    }
}

type Received = mpsc::UnboundedReceiver<Result<Cdr, CdrError>>;

/// Our CDR endpoint: reads each post with `carrier.parse_cdr` and reports the result.
async fn cdr_endpoint(carrier: Arc<dyn Carrier>) -> (String, Received) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/cdr", post(move |headers: HeaderMap, body: Bytes| {
            let (carrier, tx) = (carrier.clone(), tx.clone());
            async move {
                let headers: Vec<(String, String)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let parsed = carrier.parse_cdr(&headers, &body);
                let status = match &parsed {
                    Ok(_) => StatusCode::NO_CONTENT,
                    Err(CdrError::Unauthorized) => StatusCode::UNAUTHORIZED,
                    Err(_) => StatusCode::BAD_REQUEST,
                };
                let _ = tx.send(parsed);
                status
            }
        }));
    (format!("{}/cdr", serve(app).await), rx)
}

// ---------------------------------------------------------------------------------------------
// The REST API.

#[tokio::test]
async fn create_call_with_inline_cxml_sends_exactly_the_document() {
    let (fake, base) = start_fake().await;
    let carrier = Cloudonix::new(http(), config(&base));
    let cxml = "<Response><Connect><Stream url=\"wss://e.example/ws?a=1&amp;b=&quot;2&quot;\"/></Connect></Response>";
    let placed = carrier.create_call(&call("c-17", Answer::Cxml(cxml.into()))).await.expect("placed");

    let bodies = fake.create_bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0], json!({
        "destination": "+15551230001", "caller-id": "+15559870000", "cxml": cxml,
        "timeout": 30, "profile": {"cxb-session": "c-17"},
    }));
    let s = fake.lock();
    assert!(s.sessions.contains_key(&placed.carrier_call_id), "the token is the carrier id");
    assert_eq!(s.seen, [("POST".into(), format!("/calls/{DOMAIN}/application"), format!("Bearer {KEY}"))]);
}

#[tokio::test]
async fn create_call_with_an_answer_url() {
    let (fake, base) = start_fake().await;
    let carrier = Cloudonix::new(http(), config(&base));
    let url = "https://cxb.example/v1/cxml/c-18?sig=a%2Bb&x=1";
    carrier.create_call(&call("c-18", Answer::Url(url.into()))).await.expect("placed");
    let body = &fake.create_bodies()[0];
    assert_eq!(body["url"], url);
    assert!(body.get("cxml").is_none(), "{body}");
    assert_eq!(body["destination"], "+15551230001");
    assert_eq!(body["caller-id"], "+15559870000");
}

#[tokio::test]
async fn a_wrong_api_key_is_a_settings_error() {
    let (fake, base) = start_fake().await;
    let wrong = CloudonixConfig { api_key: "XI-not-the-key".into(), ..config(&base) };
    let err = Cloudonix::new(http(), wrong).create_call(&call("c-1", Answer::Url("https://x/".into()))).await.unwrap_err();
    assert!(matches!(&err, CarrierError::Config(m) if m.contains("API key") && m.contains("401")), "{err:?}");
    assert!(fake.lock().sessions.is_empty());

    let other_domain = CloudonixConfig { domain: "other.cloudonix.net".into(), ..config(&base) };
    let err = Cloudonix::new(http(), other_domain).hang_up("whatever").await.unwrap_err();
    assert!(matches!(err, CarrierError::Config(_)), "{err:?}");

    let empty = CloudonixConfig { api_key: String::new(), ..config(&base) };
    let err = Cloudonix::new(http(), empty).call_state("t").await.unwrap_err();
    assert!(matches!(err, CarrierError::Config(_)), "{err:?}");
    assert_eq!(fake.lock().seen.len(), 2, "an empty key is refused before any request");
}

#[tokio::test]
async fn overload_and_outages_are_unavailable_and_bad_requests_rejected() {
    let (fake, base) = start_fake().await;
    let carrier = Cloudonix::new(http(), config(&base));
    let c = call("c-2", Answer::Cxml("<Response><Hangup/></Response>".into()));
    for code in [503, 500, 429, 408] {
        fake.lock().fail_with = Some(code);
        let err = carrier.create_call(&c).await.unwrap_err();
        assert!(matches!(&err, CarrierError::Unavailable(m) if m.contains(&code.to_string())), "{code}: {err:?}");
    }
    fake.lock().fail_with = Some(400);
    let err = carrier.create_call(&c).await.unwrap_err();
    let rejected = matches!(err, CarrierError::Rejected { status: 400, ref message } if message.contains("unavailable"));
    assert!(rejected, "{err:?}");
    fake.lock().fail_with = None;
    let no_caller = CallRequest { from: String::new(), ..c.clone() };
    let err = carrier.create_call(&no_caller).await.unwrap_err();
    assert!(matches!(err, CarrierError::Rejected { status: 400, .. }), "{err:?}");

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("address");
    drop(closed);
    let err = Cloudonix::new(http(), config(&format!("http://{addr}"))).create_call(&c).await.unwrap_err();
    assert!(matches!(err, CarrierError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn hanging_up_twice_is_fine() {
    let (fake, base) = start_fake().await;
    let carrier = Cloudonix::new(http(), config(&base));
    let placed = carrier.create_call(&call("c-3", Answer::Url("https://x/".into()))).await.expect("placed");
    carrier.hang_up(&placed.carrier_call_id).await.expect("first hang-up");
    carrier.hang_up(&placed.carrier_call_id).await.expect("second hang-up: already gone");
    carrier.hang_up("never-existed").await.expect("unknown session");
    let s = fake.lock();
    let deletes: Vec<_> = s.seen.iter().filter(|(m, ..)| m == "DELETE").collect();
    assert_eq!(deletes.len(), 3);
    assert_eq!(deletes[0].1, format!("/customers/self/domains/{DOMAIN}/sessions/{}", placed.carrier_call_id));
    assert!(s.sessions[&placed.carrier_call_id].end != 0);
}

#[tokio::test]
async fn call_state_follows_the_session() {
    let (fake, base) = start_fake().await;
    let carrier = Cloudonix::new(http(), config(&base));
    let token = carrier.create_call(&call("c-4", Answer::Url("https://x/".into()))).await.expect("placed").carrier_call_id;
    assert_eq!(carrier.call_state(&token).await.expect("state"), CallState::Live);
    fake.advance(4_000);
    fake.answer(&token);
    assert_eq!(carrier.call_state(&token).await.expect("state"), CallState::Live);
    fake.advance(30_000);
    assert!(fake.end(&token, "ANSWER").await);
    assert_eq!(carrier.call_state(&token).await.expect("state"), CallState::Ended);
    assert_eq!(carrier.call_state("no-such-session").await.expect("state"), CallState::Unknown);
}

// ---------------------------------------------------------------------------------------------
// The CDR webhook, end to end: Cloudonix posts, our endpoint parses.

#[tokio::test]
async fn cloudonix_posts_a_cdr_that_parses_end_to_end() {
    let (fake, base) = start_fake().await;
    let with_token = CloudonixConfig { webhook_token: Some("hook-secret".into()), ..config(&base) };
    let carrier = Arc::new(Cloudonix::new(http(), with_token));
    let (endpoint, mut received) = cdr_endpoint(carrier.clone()).await;
    {
        let mut s = fake.lock();
        s.cdr_endpoint = Some(endpoint);
        s.cdr_headers = vec![("Authorization".into(), "Bearer hook-secret".into())];
    }

    // Rung, then we gave up: CANCEL.
    let first = carrier.create_call(&call("c-5", Answer::Url("https://x/".into()))).await.expect("placed");
    fake.advance(12_000);
    carrier.hang_up(&first.carrier_call_id).await.expect("hang-up");
    let cdr = received.try_recv().expect("a CDR arrived during the hang-up").expect("parsed");
    assert_eq!(cdr.carrier_call_id, first.carrier_call_id);
    assert_eq!(cdr.session.as_deref(), Some("c-5"));
    assert_eq!(cdr.disposition, Disposition::Canceled);
    assert_eq!((cdr.answered_at_ms, cdr.ended_at_ms - cdr.started_at_ms), (None, 12_000 - 1));
    assert!(cdr.authenticated);

    // Answered, talked, the callee hung up: ANSWER with the answer time.
    let second = carrier.create_call(&call("c-6", Answer::Url("https://x/".into()))).await.expect("placed");
    fake.advance(3_000);
    fake.answer(&second.carrier_call_id);
    fake.advance(45_000);
    assert!(fake.end(&second.carrier_call_id, "ANSWER").await);
    let cdr = received.try_recv().expect("a CDR").expect("parsed");
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.session.as_deref(), Some("c-6"));
    assert_eq!(cdr.answered_at_ms.map(|a| cdr.ended_at_ms - a), Some(45_000));

    // The same endpoint refuses a CDR without the token.
    fake.lock().cdr_headers.clear();
    let third = carrier.create_call(&call("c-7", Answer::Url("https://x/".into()))).await.expect("placed");
    carrier.hang_up(&third.carrier_call_id).await.expect("hang-up");
    assert_eq!(received.try_recv().expect("a CDR"), Err(CdrError::Unauthorized));
}

// ---------------------------------------------------------------------------------------------
// CDR parsing, one disposition at a time, on records shaped like Cloudonix's.

fn record(disposition: &str) -> Value {
    let session = Session {
        request: json!({"destination": "+15551230001", "caller-id": "+15559870000", "profile": {"cxb-session": "c-9"}}),
        status: "completed",
        start: T0,
        answer: 0,
        end: T0 + 21_000,
    };
    cdr_json("16a7294c989b11e7b3d32b9edb8660c7", disposition, &session)
}

fn parse(value: &Value) -> Result<Cdr, CdrError> {
    parse_cdr(None, &[], value.to_string().as_bytes())
}

#[test]
fn every_disposition_maps() {
    for (raw, want) in [("ANSWER", Disposition::Answered), ("CONNECTED", Disposition::Answered),
        ("BUSY", Disposition::Busy), ("NOANSWER", Disposition::NoAnswer), ("NO ANSWER", Disposition::NoAnswer),
        ("CANCEL", Disposition::Canceled), ("FAILED", Disposition::Failed), ("CONGESTION", Disposition::Failed)] {
        let cdr = parse(&record(raw)).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(cdr.disposition, want, "{raw}");
        assert_eq!(cdr.carrier_call_id, "16a7294c989b11e7b3d32b9edb8660c7");
        assert_eq!(cdr.session.as_deref(), Some("c-9"));
        assert_eq!((cdr.started_at_ms, cdr.ended_at_ms), (T0, T0 + 21_000));
        assert_eq!(cdr.cause, None, "{raw}");
        assert!(!cdr.authenticated, "no token configured");
    }
    let odd = parse(&record("VOICEMAIL")).expect("parsed");
    assert_eq!((odd.disposition, odd.cause.as_deref()), (Disposition::Failed, Some("disposition VOICEMAIL")));
}

#[test]
fn answered_records_carry_the_answer_time() {
    let mut answered = record("ANSWER");
    answered["session"]["callAnswerTime"] = json!(T0 + 2_223);
    assert_eq!(parse(&answered).expect("parsed").answered_at_ms, Some(T0 + 2_223));
    // No answer time at all: the billed seconds count back from the end.
    let mut billed = record("ANSWER");
    billed["session"].as_object_mut().expect("object").remove("callAnswerTime");
    billed["billsec"] = json!(19);
    assert_eq!(parse(&billed).expect("parsed").answered_at_ms, Some(T0 + 2_000));
    // Unanswered: callAnswerTime 0 means never.
    assert_eq!(parse(&record("NOANSWER")).expect("parsed").answered_at_ms, None);
}

#[test]
fn unreachable_numbers_are_invalid() {
    let with = |k: &str, v: Value| {
        let mut r = record("FAILED");
        r[k] = v;
        parse(&r).expect("parsed")
    };
    for (k, v, cause) in [("sipCode", json!(404), "SIP 404"), ("sip_code", json!("484"), "SIP 484"),
        ("sipStatus", json!(604), "SIP 604"), ("hangupCauseCode", json!(1), "Q.850 1"), ("q850", json!(28), "Q.850 28"),
        ("hangupCause", json!("UNALLOCATED_NUMBER"), "UNALLOCATED_NUMBER"),
        ("hangupCause", json!("404 Not Found"), "404 Not Found")] {
        let cdr = with(k, v);
        assert_eq!(cdr.disposition, Disposition::InvalidNumber, "{k}");
        assert_eq!(cdr.cause.as_deref(), Some(cause), "{k}");
    }
    let busy = with("sipCode", json!(486));
    assert_eq!((busy.disposition, busy.cause.as_deref()), (Disposition::Failed, Some("SIP 486")));
    let mut both = record("CONGESTION");
    both["hangupCause"] = json!("UNALLOCATED_NUMBER");
    both["hangupCauseCode"] = json!(1);
    assert_eq!(parse(&both).expect("parsed").cause.as_deref(), Some("UNALLOCATED_NUMBER; Q.850 1"));
    // An answered call stays answered whatever the cause says.
    let mut answered = record("ANSWER");
    answered["sipCode"] = json!(404);
    assert_eq!(parse(&answered).expect("parsed").disposition, Disposition::Answered);
}

#[test]
fn times_in_every_form() {
    // ISO 8601 only (the session model's startTime/endTime).
    let mut iso = record("BUSY");
    for k in ["callStartTime", "callEndTime", "callAnswerTime"] {
        iso["session"].as_object_mut().expect("object").remove(k);
    }
    iso["session"]["startTime"] = json!("2024-05-20T21:05:00.387Z");
    iso["session"]["endTime"] = json!("2024-05-20T23:05:21.387+02:00");
    let cdr = parse(&iso).expect("parsed");
    assert_eq!((cdr.started_at_ms, cdr.ended_at_ms), (T0, T0 + 21_000));
    // Epoch seconds as strings.
    let mut strings = record("BUSY");
    strings["session"]["callStartTime"] = json!("1716239100");
    strings["session"]["callEndTime"] = json!("1716239121");
    let cdr = parse(&strings).expect("parsed");
    assert_eq!((cdr.started_at_ms, cdr.ended_at_ms), (1_716_239_100_000, 1_716_239_121_000));
    // No session times at all: the record's timestamp and duration.
    let mut bare = record("NOANSWER");
    bare["session"] = json!({"token": "t-1"});
    let cdr = parse(&bare).expect("parsed");
    assert_eq!(cdr.carrier_call_id, "t-1");
    assert_eq!((cdr.started_at_ms, cdr.ended_at_ms), (1_716_239_100_000, 1_716_239_121_000));
    assert_eq!(cdr.session, None);
}

// ---------------------------------------------------------------------------------------------
// The webhook token.

#[test]
fn the_configured_token_is_required() {
    let body = record("BUSY").to_string();
    let h = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    let token = Some("hook-secret");
    for headers in [h("authorization", "Bearer hook-secret"), h("Authorization", "bearer  hook-secret "),
        h("x-cx-apikey", "hook-secret"), h("X-CX-APIKey", "hook-secret"),
        // base64("cxb:hook-secret")
        h("authorization", "Basic Y3hiOmhvb2stc2VjcmV0")] {
        let cdr = parse_cdr(token, &headers, body.as_bytes()).unwrap_or_else(|e| panic!("{headers:?}: {e}"));
        assert!(cdr.authenticated, "{headers:?}");
    }
    let wrong = [vec![], h("authorization", "Bearer hook-secreT"), h("authorization", "Bearer hook-secret2"),
        h("authorization", "hook-secret"), h("authorization", "Basic aG9vay1zZWNyZXQ="), h("x-cx-apikey", ""),
        h("authorization", "Basic !!!"), h("x-api-key", "hook-secret")];
    for headers in wrong {
        assert_eq!(parse_cdr(token, &headers, body.as_bytes()), Err(CdrError::Unauthorized), "{headers:?}");
    }
    // The token is checked before the body is read.
    assert_eq!(parse_cdr(token, &[], b"not json"), Err(CdrError::Unauthorized));
    // One right header among wrong ones is enough.
    let mut mixed = [h("x-cx-apikey", "nope"), h("authorization", "Bearer hook-secret")].concat();
    assert!(parse_cdr(token, &mixed, body.as_bytes()).expect("parsed").authenticated);
    mixed.reverse();
    assert!(parse_cdr(token, &mixed, body.as_bytes()).expect("parsed").authenticated);
    // No token configured (or an empty one): readable, not authenticated.
    for configured in [None, Some("")] {
        let cdr = parse_cdr(configured, &h("authorization", "Bearer anything"), body.as_bytes()).expect("parsed");
        assert!(!cdr.authenticated);
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed records: refused, never a panic.

#[test]
fn malformed_records_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("not JSON", b"disposition=ANSWER&token=x".to_vec()),
        ("invalid UTF-8", b"{\"disposition\":\"\xff\"}".to_vec()),
        ("an array", b"[]".to_vec()),
        ("a string", b"\"ANSWER\"".to_vec()),
        ("truncated", record("ANSWER").to_string().as_bytes()[..40].to_vec()),
        ("deeply nested", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
    ];
    // Edits of a good record: (what, [(JSON pointer, new value or removal)]).
    type Change = (&'static str, Option<Value>);
    let edits: Vec<(&str, Vec<Change>)> = vec![
        ("no token", vec![("/session/token", None)]),
        ("token a number", vec![("/session/token", Some(json!(123)))]),
        ("token empty", vec![("/session/token", Some(json!("  ")))]),
        ("token huge", vec![("/session/token", Some(json!("x".repeat(10_000))))]),
        ("session a string", vec![("/session", Some(json!("16a7294c")))]),
        ("no disposition", vec![("/disposition", None)]),
        ("disposition a number", vec![("/disposition", Some(json!(16)))]),
        ("disposition empty", vec![("/disposition", Some(json!("")))]),
        ("no times", vec![("/session", Some(json!({"token": "t"}))), ("/timestamp", None), ("/duration", None)]),
        ("no end", vec![("/session/callEndTime", None), ("/duration", None)]),
        ("start a bool", vec![("/session/callStartTime", Some(json!(true)))]),
        ("start an object", vec![("/session/callStartTime", Some(json!({"ms": 1})))]),
        ("start huge", vec![("/session/callStartTime", Some(json!(1e300)))]),
        ("start past u64", vec![("/session/callStartTime", Some(json!(u64::MAX)))]),
        ("start negative", vec![("/session/callStartTime", Some(json!(-T0)))]),
        ("start not a date", vec![("/session/callStartTime", Some(json!("yesterday")))]),
        ("end before start", vec![("/session/callEndTime", Some(json!(T0 - 1)))]),
        ("answer not a time", vec![("/session/callAnswerTime", Some(json!([1])))]),
        ("duration negative", vec![("/session/callEndTime", None), ("/duration", Some(json!(-5)))]),
        ("duration huge", vec![("/session/callEndTime", None), ("/duration", Some(json!(u64::MAX)))]),
        ("billsec a string", vec![("/billsec", Some(json!("long")))]),
        ("sip code huge", vec![("/sipCode", Some(json!(1e20)))]),
        ("q850 fractional", vec![("/q850", Some(json!(1.5)))]),
    ];
    let mut all = cases;
    for (what, changes) in edits {
        let mut r = record("ANSWER");
        for (pointer, value) in changes {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let parent = r.pointer_mut(parent).unwrap().as_object_mut().unwrap();
            match value {
                Some(v) => parent.insert(key.to_owned(), v),
                None => parent.remove(key),
            };
        }
        all.push((what, r.to_string().into_bytes()));
    }
    for (what, body) in all {
        match parse_cdr(None, &[], &body) {
            Err(CdrError::Malformed(why)) => assert!(!why.is_empty(), "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn random_bytes_and_mutated_records_never_panic() {
    // A fixed xorshift stream: the same inputs every run.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let good = record("ANSWER").to_string().into_bytes();
    let headers = vec![("authorization".to_owned(), "Basic Y3hiOmhvb2stc2VjcmV0".to_owned())];
    for i in 0..20_000 {
        let mut body = if i % 2 == 0 { good.clone() } else { (0..next() % 300).map(|_| next() as u8).collect() };
        for _ in 0..(next() % 4) {
            if body.is_empty() {
                break;
            }
            let at = (next() as usize) % body.len();
            body[at] = next() as u8;
        }
        let token = if i % 3 == 0 { Some("hook-secret") } else { None };
        let _ = parse_cdr(token, &headers, &body);
    }
}
