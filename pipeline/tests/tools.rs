//! The tools the language model calls: specs, what each call means for the conversation,
//! custom HTTP tools against a local server, `search_knowledge` against a real `cxb api`,
//! and Twilio transfers against a double of Twilio's REST API.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use cxb_pipeline::config::BotConfig;
use cxb_pipeline::provider::{Event, Events, ProviderError, ToolCall, ToolOutput};
use cxb_pipeline::testkit::tools::{HttpServer, Reply, twilio};
use cxb_pipeline::tools::{ApiLink, CarrierLink, Destination, ToolAction, Tools, check_arguments, xml_escape};
use serde_json::{Value, json};

fn run<F: Future>(f: F) -> F::Output {
    // The test servers listen on loopback, which the outbound-request guard refuses unless allowed.
    cxb_pipeline::egress::set_policy(cxb_contract::egress::EgressPolicy::with_loopback());
    compio::runtime::Runtime::new().unwrap().block_on(f)
}

fn bot(tools: Value) -> BotConfig {
    BotConfig::from_json(json!({"id": "bot_test", "tools": tools}).to_string().as_bytes()).unwrap()
}

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall { id: format!("call_{name}"), name: name.into(), arguments: arguments.into() }
}

/// The next tool answer on the queue, within 10 s.
async fn answer(events: &Events) -> (String, ToolOutput) {
    let wait = async {
        loop {
            events.ready().await;
            if let Some((_, Event::Tool { call_id, output })) = events.pop() {
                return (call_id, output);
            }
        }
    };
    compio::time::timeout(Duration::from_secs(10), wait).await.expect("a tool answer within 10 s")
}

/// Classifies `c`, which must start a task, and waits for its answer.
async fn run_tool(tools: &Tools, c: &ToolCall) -> ToolOutput {
    let events = Events::new();
    let ToolAction::Run(job) = tools.classify(c, &events) else { panic!("{} should run", c.name) };
    let (id, output) = answer(&events).await;
    assert_eq!(id, c.id);
    drop(job);
    assert!(events.is_empty(), "exactly one answer");
    output
}

fn http_bot(url: &str, extra: Value) -> Tools {
    let mut t = json!({
        "kind": "http",
        "name": "lookup_order",
        "description": "Find an order.",
        "url": url,
        "headers": {"X-Team": "support"},
        "secrets": {"Authorization": "Bearer s3cret"},
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "count": {"type": "integer"}, "rush": {"type": "boolean"}},
            "required": ["order_id"]
        }
    });
    if let (Value::Object(t), Value::Object(extra)) = (&mut t, extra) {
        t.extend(extra);
    }
    Tools::new(&bot(json!([t])), None).unwrap()
}

#[test]
fn specs_describe_built_ins_and_declared_tools() {
    let tools = Tools::new(
        &bot(json!([
            {"kind": "end_call"},
            {"kind": "transfer_call", "transfer_to": "+1 (415) 555-0100"},
            {"kind": "transfer_call", "name": "escalate", "description": "Reach a supervisor."},
            {"kind": "detected_voicemail"},
            {"kind": "search_knowledge"},
            {"kind": "http", "name": "crm", "url": "https://crm.example/api", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
        ])),
        None,
    )
    .unwrap();
    let specs = tools.specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["end_call", "transfer_call", "escalate", "detected_voicemail", "search_knowledge", "crm"]);
    assert!(specs.iter().all(|s| !s.description.is_empty() && s.parameters["type"] == "object"));
    assert_eq!(specs[0].parameters["properties"]["reason"]["type"], "string");
    // With a default number the destination is optional; without one it is required.
    assert_eq!(specs[1].parameters["required"], json!([]));
    assert_eq!(specs[2].parameters["required"], json!(["destination"]));
    assert_eq!(specs[2].description, "Reach a supervisor.");
    assert_eq!(specs[3].parameters["properties"], json!({}));
    assert_eq!(specs[4].parameters["required"], json!(["query"]));
    assert_eq!(specs[5].parameters["properties"]["q"]["type"], "string");
    assert_eq!(specs[5].parameters["required"], json!(["q"]));
}

#[test]
fn unusable_tool_configs_are_refused_naming_the_field() {
    let cases = [
        (json!([{"kind": "http", "name": "x"}]), "tools[0].url"),
        (json!([{"kind": "http", "name": "x", "url": "ftp://host/"}]), "tools[0].url"),
        (json!([{"kind": "http", "url": "https://h/"}]), "tools[0].name"),
        (json!([{"kind": "http", "name": "has space", "url": "https://h/"}]), "tools[0].name"),
        (json!([{"kind": "http", "name": "x", "url": "https://h/", "method": "TRACE"}]), "tools[0].method"),
        (json!([{"kind": "http", "name": "x", "url": "https://h/", "headers": {"Bad Header": "v"}}]), "tools[0].headers.Bad Header"),
        (json!([{"kind": "http", "name": "x", "url": "https://h/", "secrets": {"X-Key": "a\r\nInjected: yes"}}]), "tools[0].secrets.X-Key"),
        (json!([{"kind": "http", "name": "x", "url": "https://h/", "parameters": {"required": "q"}}]), "tools[0].parameters"),
        (json!([{"kind": "http", "name": "x", "url": "https://h/", "parameters": []}]), "tools[0].parameters"),
        (json!([{"kind": "end_call"}, {"kind": "end_call"}]), "tools[1].name"),
        (json!([{"kind": "transfer_call", "transfer_to": "call Bob"}]), "tools[0].transfer_to"),
    ];
    for (tools, field) in cases {
        match Tools::new(&bot(tools.clone()), None) {
            Err(ProviderError::Invalid { field: f, .. }) => assert_eq!(f, field, "{tools}"),
            other => panic!("{tools}: {other:?}"),
        }
    }
}

#[test]
fn built_ins_tell_the_conversation_what_to_do() {
    run(async {
        let tools = Tools::new(
            &bot(json!([{"kind": "end_call"}, {"kind": "transfer_call", "transfer_to": "+14155550100"}, {"kind": "detected_voicemail"}])),
            None,
        )
        .unwrap();
        let events = Events::new();
        match tools.classify(&call("end_call", r#"{"reason":" caller said bye "}"#), &events) {
            ToolAction::EndCall { reason } => assert_eq!(reason, "caller said bye"),
            other => panic!("{other:?}"),
        }
        // Garbage arguments do not stop a hang-up.
        assert!(matches!(tools.classify(&call("end_call", "{not json"), &events), ToolAction::EndCall { reason } if reason.is_empty()));
        assert!(matches!(tools.classify(&call("detected_voicemail", ""), &events), ToolAction::Voicemail));
        match tools.classify(&call("transfer_call", r#"{"destination":"sip:agent@pbx.example","reason":"billing"}"#), &events) {
            ToolAction::Transfer { destination, reason } => {
                assert_eq!(destination, Destination::Sip("sip:agent@pbx.example".into()));
                assert_eq!(reason, "billing");
            }
            other => panic!("{other:?}"),
        }
        match tools.classify(&call("transfer_call", "{}"), &events) {
            ToolAction::Transfer { destination, .. } => assert_eq!(destination, Destination::Number("+14155550100".into())),
            other => panic!("{other:?}"),
        }
        assert!(events.is_empty(), "built-ins answer nothing themselves");

        // A destination that is neither a number nor a SIP URI, and an unknown tool, are
        // answered to the model as failures.
        let out = run_tool(&tools, &call("transfer_call", r#"{"destination":"the manager"}"#)).await;
        assert!(out.failed && out.content.contains("not a phone number"), "{out:?}");
        let out = run_tool(&tools, &call("launch_rockets", "{}")).await;
        assert!(out.failed && out.content.contains("no tool called `launch_rockets`"), "{out:?}");
        let no_default = Tools::new(&bot(json!([{"kind": "transfer_call"}])), None).unwrap();
        let out = run_tool(&no_default, &call("transfer_call", "{}")).await;
        assert!(out.failed && out.content.contains("No destination"), "{out:?}");
        assert!(tools.log().records().is_empty(), "no I/O, no telemetry");
    });
}

#[test]
fn http_tool_posts_json_with_declared_and_secret_headers() {
    let server = HttpServer::start(|_| Reply::json(200, &json!({"status": "shipped", "eta": "Tuesday"}))).unwrap();
    run(async {
        let tools = http_bot(&format!("{}/orders/lookup?src=bot", server.url()), json!({}));
        let out = run_tool(&tools, &call("lookup_order", r#"{"order_id":"A-17","count":2,"rush":true}"#)).await;
        assert!(!out.failed, "{out:?}");
        assert_eq!(serde_json::from_str::<Value>(&out.content).unwrap(), json!({"status": "shipped", "eta": "Tuesday"}));
        let telemetry = tools.log().take();
        assert_eq!(telemetry.len(), 1);
        let t = &telemetry[0];
        assert_eq!((t.name.as_str(), t.call_id.as_str(), t.status, t.ok), ("lookup_order", "call_lookup_order", Some(200), true));
        assert!(t.duration_ms < 5_000);
        assert!(tools.log().take().is_empty(), "taken");
    });
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path()), ("POST", "/orders/lookup"));
    assert_eq!(r.query(), vec![("src".to_string(), "bot".to_string())]);
    assert_eq!(r.header("x-team"), Some("support"));
    assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), Some(json!({"order_id": "A-17", "count": 2, "rush": true})));
}

#[test]
fn http_tool_get_sends_arguments_as_the_query() {
    let server = HttpServer::start(|r| Reply::text(200, format!("you asked for {}", r.query().len()))).unwrap();
    run(async {
        let tools = http_bot(&format!("{}/orders", server.url()), json!({"method": "get"}));
        let out = run_tool(&tools, &call("lookup_order", r#"{"order_id":"A 17&x=1","count":2,"rush":false,"note":null}"#)).await;
        assert_eq!(out, ToolOutput { content: "you asked for 3".into(), failed: false });
    });
    let r = &server.requests()[0];
    assert_eq!((r.method.as_str(), r.path()), ("GET", "/orders"));
    let mut query = r.query();
    query.sort();
    assert_eq!(query, vec![("count".into(), "2".into()), ("order_id".into(), "A 17&x=1".into()), ("rush".into(), "false".into())]);
    assert!(r.body.is_empty());
    assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
}

#[test]
fn http_tool_failures_are_answers_the_model_can_read() {
    let server = HttpServer::start(|r| match r.path() {
        "/down" => Reply::text(503, "maintenance until noon"),
        "/slow" => Reply::text(200, "too late").after(Duration::from_secs(5)),
        "/huge" => Reply::text(200, "é".repeat(10_000)),
        _ => Reply::text(404, "no such thing"),
    })
    .unwrap();
    run(async {
        let down = http_bot(&format!("{}/down", server.url()), json!({}));
        let out = run_tool(&down, &call("lookup_order", r#"{"order_id":"1"}"#)).await;
        assert!(out.failed && out.content.contains("HTTP 503") && out.content.contains("maintenance until noon"), "{out:?}");
        let t = down.log().take();
        assert_eq!((t[0].status, t[0].ok), (Some(503), false));

        let slow = http_bot(&format!("{}/slow", server.url()), json!({"timeout_ms": 200}));
        let started = Instant::now();
        let out = run_tool(&slow, &call("lookup_order", r#"{"order_id":"1"}"#)).await;
        assert!(out.failed && out.content.contains("within 200 ms"), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        let t = slow.log().take();
        assert_eq!((t[0].status, t[0].ok), (None, false));
        assert!(t[0].duration_ms >= 200, "{t:?}");

        // Long answers are cut on a character boundary and marked.
        let huge = http_bot(&format!("{}/huge", server.url()), json!({}));
        let out = run_tool(&huge, &call("lookup_order", r#"{"order_id":"1"}"#)).await;
        assert!(!out.failed);
        assert!(out.content.ends_with(" […]") && out.content.len() <= 8 * 1024 + 8, "{}", out.content.len());
        assert!(out.content.trim_end_matches(" […]").chars().all(|c| c == 'é'));

        // Nothing listening.
        let closed = http_bot("http://127.0.0.1:9/", json!({}));
        let out = run_tool(&closed, &call("lookup_order", r#"{"order_id":"1"}"#)).await;
        assert!(out.failed && out.content.contains("could not be reached"), "{out:?}");
    });
}

#[test]
fn bad_arguments_are_refused_before_any_request() {
    let server = HttpServer::start(|_| Reply::text(200, "should not be asked")).unwrap();
    run(async {
        let tools = http_bot(&server.url(), json!({}));
        for (arguments, expect) in [
            ("{\"order_id\": ", "not valid JSON"),
            ("[1, 2]", "must be a JSON object"),
            ("\"order\"", "must be a JSON object"),
            ("{}", "`order_id` is missing"),
            ("{\"order_id\": null}", "`order_id` is missing"),
            ("{\"order_id\": 17}", "`order_id` must be of type string"),
            ("{\"order_id\": \"1\", \"count\": 1.5}", "`count` must be of type integer"),
            ("{\"order_id\": \"1\", \"rush\": \"yes\"}", "`rush` must be of type boolean"),
        ] {
            let out = run_tool(&tools, &call("lookup_order", arguments)).await;
            assert!(out.failed && out.content.contains(expect), "{arguments}: {out:?}");
        }
        let telemetry = tools.log().take();
        assert_eq!(telemetry.len(), 8, "every call is recorded");
        assert!(telemetry.iter().all(|t| !t.ok && t.status.is_none()));
    });
    assert!(server.requests().is_empty());
}

/// Arbitrary bytes as any tool's arguments: never a panic, always exactly one outcome.
#[test]
fn malformed_arguments_never_panic() {
    let server = HttpServer::start(|_| Reply::text(200, "ok")).unwrap();
    run(async {
        let tools = Tools::new(
            &bot(json!([
                {"kind": "end_call"}, {"kind": "transfer_call"}, {"kind": "detected_voicemail"}, {"kind": "search_knowledge"},
                {"kind": "http", "name": "h", "url": server.url(), "method": "GET", "parameters": {"type": "object", "properties": {"a": {"type": ["string", "null"]}}, "required": ["a"]}}
            ])),
            None,
        )
        .unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let samples = ["", "{", "}", "null", "{\"a\":", "{\"a\":\"\\ud800\"}", "{\"destination\":\"sip:\"}", "{\"query\":[]}", "\u{0}\u{1}", "{\"a\":{\"b\":[1,{}]}}"];
        for i in 0..200 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut arguments = samples[i % samples.len()].to_string();
            for k in 0..(seed % 24) {
                arguments.push(char::from_u32(((seed >> (k % 40)) % 0x800) as u32).unwrap_or('x'));
            }
            for name in ["end_call", "transfer_call", "detected_voicemail", "search_knowledge", "h"] {
                let events = Events::new();
                if let ToolAction::Run(job) = tools.classify(&call(name, &arguments), &events) {
                    let (_, out) = answer(&events).await;
                    assert!(!out.content.is_empty());
                    drop(job);
                }
            }
        }
    });
    let schema = json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}});
    assert!(check_arguments(&schema, "{\"a\":\"x\"}").is_ok());
    assert!(check_arguments(&json!(null), "{}").is_ok(), "a schema of the wrong shape checks nothing");
}

/// A real `cxb api` (tokio, SQLite in a temp dir) on its own thread, with an organization and
/// a fleet token; stopped on drop.
struct LiveApi {
    base: String,
    fleet: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

const PASSWORD: &str = "a long enough password";

impl LiveApi {
    fn start() -> LiveApi {
        use cxb_control_plane::{ApiConfig, ApiServer, admin};
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}/cxb.db", dir.path().display());
        let (ready, started) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let mut config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), database);
                config.webhook_interval = None;
                let server = ApiServer::start(config).await.unwrap();
                let now = server.state().now();
                admin::create_org(&server.state().db, "Acme", "admin@acme.example", PASSWORD.into(), now).await.unwrap();
                let fleet = admin::create_fleet_token(&server.state().db, "engine", now).await.unwrap();
                ready.send((format!("http://{}", server.local_addr()), fleet)).unwrap();
                let _ = stopped.await;
                server.shutdown().await;
            });
        });
        let (base, fleet) = started.recv_timeout(Duration::from_secs(60)).unwrap();
        LiveApi { base, fleet, stop: Some(stop), thread: Some(thread), _dir: dir }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        let client = cyper::Client::new().unwrap();
        let mut request = client.post(format!("{}{path}", self.base)).unwrap().header("content-type", "application/json").unwrap();
        if let Some(token) = token {
            request = request.bearer_auth(token).unwrap();
        }
        let response = request.body(body.to_string()).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!((200..300).contains(&status), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for LiveApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn search_knowledge_asks_the_control_plane() {
    let api = LiveApi::start();
    run(async {
        let login = api.post("/v1/auth/login", None, json!({"email": "admin@acme.example", "password": PASSWORD})).await;
        let session = login["token"].as_str().unwrap().to_string();
        let bot_id = api.post("/v1/bots", Some(&session), json!({"name": "Support"})).await["id"].as_str().unwrap().to_string();
        let knowledge = format!("/v1/bots/{bot_id}/knowledge");
        let text = "Refunds are paid to the original card within fourteen days. Keep the receipt.";
        api.post(&knowledge, Some(&session), json!({"title": "Refund policy", "text": text})).await;
        api.post(&knowledge, Some(&session), json!({"title": "Hours", "text": "We are open nine to five on weekdays."})).await;

        let mut config = bot(json!([{"kind": "search_knowledge"}]));
        config.id = bot_id.clone();
        let link = ApiLink { base_url: format!("{}/", api.base), fleet_token: api.fleet.clone() };
        let tools = Tools::new(&config, Some(link.clone())).unwrap();
        let out = run_tool(&tools, &call("search_knowledge", r#"{"query":"when do I get my refund?"}"#)).await;
        assert_eq!(out, ToolOutput { content: format!("[1] Refund policy (passage 1)\n{text}"), failed: false }, "the passage with where it comes from");
        let out = run_tool(&tools, &call("search_knowledge", r#"{"query":"zebra crossings"}"#)).await;
        assert_eq!(out, ToolOutput { content: "Nothing in the knowledge base matches.".into(), failed: false });
        let out = run_tool(&tools, &call("search_knowledge", r#"{"query":"  "}"#)).await;
        assert!(out.failed && out.content.contains("query"), "{out:?}");
        let telemetry = tools.log().take();
        assert_eq!(telemetry.iter().map(|t| (t.name.as_str(), t.status, t.ok)).collect::<Vec<_>>(), [
            ("search_knowledge", Some(200), true),
            ("search_knowledge", Some(200), true),
            ("search_knowledge", None, false)
        ]);

        // A wrong fleet token and an unknown bot fail with the API's status.
        let wrong = Tools::new(&config, Some(ApiLink { fleet_token: "cxf_wrong".into(), ..link.clone() })).unwrap();
        let out = run_tool(&wrong, &call("search_knowledge", r#"{"query":"refund"}"#)).await;
        assert!(out.failed && out.content.contains("HTTP 401"), "{out:?}");
        let mut other = config.clone();
        other.id = "bot_unknown".into();
        let unknown = Tools::new(&other, Some(link)).unwrap();
        let out = run_tool(&unknown, &call("search_knowledge", r#"{"query":"refund"}"#)).await;
        assert!(out.failed && out.content.contains("HTTP 404"), "{out:?}");
        assert_eq!(unknown.log().take()[0].status, Some(404));

        // Without an API link there is no knowledge base.
        let offline = Tools::new(&config, None).unwrap();
        let out = run_tool(&offline, &call("search_knowledge", r#"{"query":"refund"}"#)).await;
        assert_eq!(out, ToolOutput { content: "No knowledge base is configured.".into(), failed: true });
    });
}

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const CALL_SID: &str = "CAfedcba9876543210fedcba9876543210";

#[test]
fn twilio_transfers_update_the_live_call_with_dial_twiml() {
    let server = twilio(ACCOUNT, "auth-token").unwrap();
    run(async {
        let tools = Tools::new(&bot(json!([{"kind": "transfer_call"}])), None).unwrap();
        let carrier = CarrierLink { base_url: server.url(), ..CarrierLink::twilio(ACCOUNT, "auth-token") };
        let events = Events::new();
        let number = Destination::parse("+1 415-555-0100").unwrap();
        let job = tools.transfer(Some(&carrier), CALL_SID, &number, "call_1", &events);
        let (id, out) = answer(&events).await;
        drop(job);
        assert_eq!(id, "call_1");
        assert_eq!(out, ToolOutput { content: "The call is being transferred to +14155550100.".into(), failed: false });

        let sip = Destination::parse("sip:agent@pbx.example;transport=tls?X-Queue=a&X-Tag=<b>").unwrap();
        let job = tools.transfer(Some(&carrier), CALL_SID, &sip, "call_2", &events);
        assert!(!answer(&events).await.1.failed);
        drop(job);

        // Wrong credentials and a call Twilio does not know are refused with Twilio's error.
        let wrong = CarrierLink { auth_token: "nope".into(), ..carrier.clone() };
        let job = tools.transfer(Some(&wrong), CALL_SID, &number, "call_3", &events);
        let (_, out) = answer(&events).await;
        drop(job);
        assert!(out.failed && out.content.contains("HTTP 401") && out.content.contains("Authenticate"), "{out:?}");
        let job = tools.transfer(Some(&carrier), "CA123", &number, "call_4", &events);
        let (_, out) = answer(&events).await;
        drop(job);
        assert!(out.failed && out.content.contains("HTTP 404"), "{out:?}");
        // A call id from the carrier that could break the request path is never sent.
        let job = tools.transfer(Some(&carrier), "CA1/../../x", &number, "call_5", &events);
        assert!(answer(&events).await.1.failed);
        drop(job);
        let job = tools.transfer(None, CALL_SID, &number, "call_6", &events);
        let (_, out) = answer(&events).await;
        drop(job);
        assert!(out.failed && out.content.contains("cannot be transferred"), "{out:?}");

        let telemetry = tools.log().take();
        let seen: Vec<(&str, Option<u16>, bool)> = telemetry.iter().map(|t| (t.call_id.as_str(), t.status, t.ok)).collect();
        assert_eq!(seen, [
            ("call_1", Some(200), true),
            ("call_2", Some(200), true),
            ("call_3", Some(401), false),
            ("call_4", Some(404), false),
            ("call_5", None, false),
            ("call_6", None, false)
        ]);
        assert!(telemetry.iter().all(|t| t.name == "transfer_call"));
    });
    let requests = server.requests();
    assert_eq!(requests.len(), 4, "call_5 and call_6 sent nothing");
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path()), ("POST", format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}.json").as_str()));
    assert_eq!(r.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(r.basic_auth(), Some((ACCOUNT.to_string(), "auth-token".to_string())));
    assert_eq!(r.form(), vec![("Twiml".to_string(), "<Response><Dial>+14155550100</Dial></Response>".to_string())]);
    assert_eq!(
        requests[1].form(),
        vec![("Twiml".to_string(), "<Response><Dial><Sip>sip:agent@pbx.example;transport=tls?X-Queue=a&amp;X-Tag=&lt;b&gt;</Sip></Dial></Response>".to_string())]
    );
}

#[test]
fn destinations_are_numbers_or_sip_uris_and_hide_digits_in_logs() {
    assert_eq!(Destination::parse(" +44 (20) 7946.0018 "), Ok(Destination::Number("+442079460018".into())));
    assert_eq!(Destination::parse("911"), Ok(Destination::Number("911".into())));
    assert_eq!(Destination::parse("SIPS:desk@example.com").map(|d| d.twiml()), Ok("<Response><Dial><Sip>SIPS:desk@example.com</Sip></Dial></Response>".into()));
    for bad in ["", "12", "+1234567890123456", "sip:", "sip:a b@example.com", "call me", "sip:é\u{0}", "tel:+14155550100"] {
        assert!(Destination::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(format!("{:?}", Destination::parse("+14155550123").unwrap()), "Number(…0123)");
    assert_eq!(xml_escape(r#"a&b<c>"d'"#), "a&amp;b&lt;c&gt;&quot;d&apos;");
    let link = format!("{:?}", CarrierLink::twilio(ACCOUNT, "very-secret"));
    assert!(!link.contains("very-secret"), "{link}");
    let api = format!("{:?}", ApiLink { base_url: "http://x".into(), fleet_token: "cxf_secret".into() });
    assert!(!api.contains("cxf_secret"), "{api}");
}

#[test]
fn requests_for_a_tenant_never_reach_internal_addresses() {
    use cxb_contract::egress::EgressPolicy;
    let server = HttpServer::start(|r| match r.path() {
        "/hop" => Reply::redirect(302, "http://169.254.169.254/latest/meta-data/"),
        _ => Reply::text(200, "internal secrets"),
    })
    .unwrap();
    let port = server.addr().port();
    compio::runtime::Runtime::new().unwrap().block_on(async {
        cxb_pipeline::egress::set_policy(EgressPolicy::public_only());
        for url in [
            format!("http://127.0.0.1:{port}/x"),
            format!("http://localhost:{port}/x"),
            format!("http://[::ffff:127.0.0.1]:{port}/x"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "http://10.0.0.1/x".to_string(),
        ] {
            let tools = http_bot(&url, json!({}));
            let out = run_tool(&tools, &call("lookup_order", r#"{"order_id":"1"}"#)).await;
            assert!(out.failed && out.content.contains("egress_forbidden"), "{url}: {out:?}");
            let t = tools.log().take();
            assert_eq!((t[0].status, t[0].ok), (None, false), "a refusal is telemetry, not a crash");
        }
        let wyoming = cxb_pipeline::providers::wyoming::Connection::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).await;
        assert!(wyoming.is_err_and(|e| e.to_string().contains("egress_forbidden")));

        // Allowed explicitly (self-hosted services), but redirects are never followed.
        cxb_pipeline::egress::set_policy(EgressPolicy::with_loopback());
        let hop = http_bot(&format!("http://127.0.0.1:{port}/hop"), json!({}));
        let out = run_tool(&hop, &call("lookup_order", r#"{"order_id":"1"}"#)).await;
        assert!(out.failed && out.content.contains("HTTP 302"), "{out:?}");
    });
    let paths: Vec<String> = server.requests().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(paths, ["/hop"], "only the redirecting request reached the server");
}
