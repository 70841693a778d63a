//! The console over HTTP, as a browser without scripts would use it: sign-in and its cookie,
//! the CSRF token and origin check on every form, what a viewer may not do, the bot builder
//! through the same checks as the JSON API, the calls log and a call's page, and recordings
//! with range requests. (Chromium drives the same pages in the workspace's `tests/console.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, RANGE, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{Value, json};

/// A browser's session: the cookie jar of one signed-in person.
struct Browser<'a> {
    api: &'a Api,
    http: reqwest::Client,
    cookie: String,
}

/// `application/x-www-form-urlencoded`, as a browser sends a form.
fn encoded(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) { (b as char).to_string() } else if b == b' ' { "+".into() } else { format!("%{b:02X}") }).collect::<String>();
    fields.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

trait FormBody {
    fn form(self, fields: &[(&str, &str)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form(self, fields: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded").body(encoded(fields))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

async fn form(api: &Api, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().post(format!("{}{path}", api.base)).form(fields);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    req.send().await.unwrap()
}

impl<'a> Browser<'a> {
    async fn sign_in(api: &'a Api, email: &str, password: &str) -> Browser<'a> {
        let r = form(api, "/login", None, &[("email", email), ("password", password), ("next", "/bots")]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()[LOCATION], "/bots");
        let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
        let cookie = set.split(';').next().unwrap().to_string();
        Browser { api, http: client(), cookie }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{path}", self.api.base)).header(COOKIE, &self.cookie).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The form token the pages carry.
    async fn csrf(&self) -> String {
        let (_, page) = self.get("/").await;
        let at = page.find("name=\"_csrf\" value=\"").unwrap_or_else(|| panic!("no form token on the home page: {page}")) + 20;
        page[at..at + page[at..].find('"').unwrap()].to_string()
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String, Option<String>) {
        let r = form(self.api, path, Some(&self.cookie), fields).await;
        let location = r.headers().get(LOCATION).map(|l| l.to_str().unwrap().to_string());
        (r.status().as_u16(), r.text().await.unwrap(), location)
    }
}

#[tokio::test]
async fn pages_need_a_session_and_sign_in_sets_a_safe_cookie() {
    let api = Api::start().await;
    api.org("Acme").await;

    let r = client().get(format!("{}/calls?outcome=failed", api.base)).send().await.unwrap();
    assert_eq!(r.status(), 303, "no session: to the sign-in page");
    assert_eq!(r.headers()[LOCATION], "/login?next=/calls%3Foutcome%3Dfailed");
    let r = client().get(format!("{}/", api.base)).header(COOKIE, "cxb_session=cxs_forged").send().await.unwrap();
    assert_eq!(r.status(), 303, "an unknown session is no session");

    let page = client().get(format!("{}/login?next=//evil.example/", api.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let page = page.text().await.unwrap();
    assert!(page.contains("name=\"next\" value=\"/\""), "a next that leaves the site becomes /");

    let wrong = form(&api, "/login", None, &[("email", "admin@acme.example"), ("password", "not it at all")]).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("wrong email or password"));
    let elsewhere = client()
        .post(format!("{}/login", api.base))
        .header(ORIGIN, "https://evil.example")
        .form(&[("email", "admin@acme.example"), ("password", "a long enough password")])
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403, "a sign-in posted from another site");

    let r = form(&api, "/login", None, &[("email", "admin@acme.example"), ("password", "a long enough password"), ("next", "/calls")]).await;
    assert_eq!(r.status(), 303);
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.starts_with("cxb_session=cxs_"), "{set}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attribute), "{attribute} in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback: a Secure cookie would never come back");

    let me = Browser { api: &api, http: client(), cookie: set.split(';').next().unwrap().to_string() };
    let (status, home) = me.get("/").await;
    assert_eq!(status, 200);
    assert!(home.contains("<h1>Home</h1>") && home.contains("Acme"), "{home}");

    // Sign out: the session row goes, so the cookie alone no longer works.
    let csrf = me.csrf().await;
    assert_eq!(me.post("/logout", &[]).await.0, 403, "sign-out is a form like the others");
    let (status, _, location) = me.post("/logout", &[("_csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (303, Some("/login")));
    assert_eq!(me.get("/").await.0, 303);

    let secure = Api::start_with(|c| c.secure_cookies = true).await;
    secure.org("Acme").await;
    let r = form(&secure, "/login", None, &[("email", "admin@acme.example"), ("password", "a long enough password")]).await;
    assert!(r.headers()[SET_COOKIE].to_str().unwrap().ends_with("; Secure"));
}

#[tokio::test]
async fn forms_without_the_token_or_from_another_site_are_refused() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let me = Browser::sign_in(&api, "admin@acme.example", "a long enough password").await;
    let csrf = me.csrf().await;
    let bot = [("name", "Forged"), ("language", "en-US"), ("stt_provider", "none"), ("llm_provider", "script"), ("tts_provider", "espeak")];

    let (status, page, _) = me.post("/bots/new", &bot).await;
    assert_eq!(status, 403, "no token");
    assert!(page.contains("did not come from this console"));
    let mut wrong = bot.to_vec();
    wrong.push(("_csrf", "AAAAAAAAAAAAAAAAAAAAAAAA"));
    assert_eq!(me.post("/bots/new", &wrong).await.0, 403, "another session's token");
    let elsewhere = client()
        .post(format!("{}/bots/new", api.base))
        .header(COOKIE, &me.cookie)
        .header(ORIGIN, "https://evil.example")
        .form(&[bot.as_slice(), &[("_csrf", csrf.as_str())]].concat())
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403, "the right token from another origin");
    assert_eq!(api.get("/v1/bots", &token).await.body["items"], json!([]), "nothing was made");

    let (status, _, location) = me.post("/bots/new", &[bot.as_slice(), &[("_csrf", csrf.as_str())]].concat()).await;
    assert_eq!(status, 303);
    assert!(location.unwrap().ends_with("?notice=created"));
    assert_eq!(api.get("/v1/bots", &token).await.body["items"][0]["name"], "Forged");
}

#[tokio::test]
async fn a_viewer_sees_no_edit_controls_and_is_refused_like_the_api_refuses() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let bot = api.post("/v1/bots", &token, json!({"name": "Support"})).await.body["id"].as_str().unwrap().to_string();
    let user = api.post("/v1/users", &token, json!({"email": "vi@acme.example", "role": "viewer", "password": "a long enough password"})).await;
    assert_eq!(user.status, 201, "{}", user.body);

    let viewer = Browser::sign_in(&api, "vi@acme.example", "a long enough password").await;
    let (status, list) = viewer.get("/bots").await;
    assert_eq!(status, 200);
    assert!(list.contains("Support") && !list.contains("New bot"), "{list}");
    let (_, page) = viewer.get(&format!("/bots/{bot}")).await;
    assert!(page.contains("fieldset class=\"plain\" disabled"), "the builder is read-only");
    assert!(!page.contains("Save changes") && !page.contains("Delete bot") && !page.contains("Add document"));
    assert_eq!(viewer.get("/bots/new").await.0, 200, "the empty builder shows, read-only");

    let csrf = viewer.csrf().await;
    let (status, page, _) = viewer.post(&format!("/bots/{bot}"), &[("_csrf", &csrf), ("name", "Renamed")]).await;
    assert_eq!(status, 403);
    assert!(page.contains("this needs the operator role"), "{page}");
    assert_eq!(viewer.post(&format!("/bots/{bot}/delete"), &[("_csrf", &csrf)]).await.0, 403);
    assert_eq!(api.get(&format!("/v1/bots/{bot}"), &token).await.body["name"], "Support");
}

#[tokio::test]
async fn the_bot_builder_saves_through_the_api_and_keeps_secrets_write_only() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let me = Browser::sign_in(&api, "admin@acme.example", "a long enough password").await;
    let csrf = me.csrf().await;
    let fields = [
        ("_csrf", csrf.as_str()),
        ("name", "Front desk"),
        ("greeting", "Hello, front desk."),
        ("system_prompt", "You book rooms."),
        ("language", "en-GB"),
        ("stt_provider", "deepgram"),
        ("stt_model", "nova-3"),
        ("stt_api_key", "dg-very-secret"),
        ("llm_provider", "script"),
        ("tts_provider", "espeak"),
        ("recording", "on"),
        ("max_call_seconds", "600"),
        ("outbound_greeting", "after_hello"),
        ("amd_detect", "on"),
        ("amd_action", "leave_voicemail"),
        ("voicemail_message", "Call us back."),
        ("idle_after", "7"),
        ("idle_max", "1"),
        ("tools", r#"[{"kind": "end_call"}]"#),
        ("tools_shown", "[]"),
        ("widget_enabled", "on"),
        ("widget_origins", "https://hotel.example\n"),
        ("widget_button", "Call the desk"),
    ];
    let (status, _, location) = me.post("/bots/new", &fields).await;
    assert_eq!(status, 303);
    let id = location.unwrap().trim_start_matches("/bots/").split('?').next().unwrap().to_string();
    let bot = api.get(&format!("/v1/bots/{id}"), &token).await.body;
    assert_eq!(bot["language"], "en-GB");
    assert_eq!(bot["stt"], json!({"provider": "deepgram", "model": "nova-3", "secrets_set": ["api_key"]}));
    assert_eq!(bot["answering_machine"]["action"], "leave_voicemail");
    assert_eq!(bot["idle"]["reprompt_after_seconds"], 7);
    assert_eq!(bot["tools"][0]["kind"], "end_call");
    assert_eq!(bot["widget"]["allowed_origins"], json!(["https://hotel.example"]));
    assert!(bot["widget"]["key"].as_str().unwrap().starts_with("wk_"), "the API made the widget key");
    assert_eq!(bot["recording"], true);

    let (_, page) = me.get(&format!("/bots/{id}?notice=created")).await;
    assert!(page.contains("Bot created."));
    assert!(!page.contains("dg-very-secret"), "secrets are write-only");
    assert!(page.contains("set; blank keeps it"));
    assert!(page.contains("Try it in the browser"), "the widget is on: the demo page is offered");

    // A save with the key blank and the tools as shown keeps both; unticking a box is a change.
    let shown_tools = page.split("name=\"tools_shown\" value=\"").nth(1).unwrap().split('"').next().unwrap().replace("&quot;", "\"").replace("&#34;", "\"");
    let mut edit: Vec<(&str, &str)> = fields.iter().copied().filter(|(k, _)| !["stt_api_key", "recording", "tools", "tools_shown"].contains(k)).collect();
    edit.push(("tools", &shown_tools));
    edit.push(("tools_shown", &shown_tools));
    let (status, _, location) = me.post(&format!("/bots/{id}"), &edit).await;
    assert_eq!(status, 303);
    assert!(location.unwrap().ends_with("?notice=saved"));
    let runtime = api.get(&format!("/v1/runtime/bots/{id}"), &api.fleet_token().await).await.body;
    assert_eq!(runtime["stt"]["secrets"]["api_key"], "dg-very-secret", "the stored key is kept");
    assert_eq!(runtime["recording"], false);

    // A refusal keeps the form as posted and marks the field.
    let mut bad = edit.clone();
    bad.retain(|(k, _)| *k != "max_call_seconds");
    bad.push(("max_call_seconds", "5"));
    let (status, page, _) = me.post(&format!("/bots/{id}"), &bad).await;
    assert_eq!(status, 422);
    assert!(page.contains("max_call_seconds: between 10 and 14400"), "{page}");
    assert!(page.contains("name=\"max_call_seconds\" value=\"5\" min=\"10\" max=\"14400\" class=\"bad-field\""));
    let mut bad = edit.clone();
    bad.retain(|(k, _)| *k != "tools");
    bad.push(("tools", "[not json"));
    let (status, page, _) = me.post(&format!("/bots/{id}"), &bad).await;
    assert_eq!(status, 422);
    assert!(page.contains("tools: not JSON"));

    // Knowledge documents from the bot's page.
    let (status, _, _) = me.post(&format!("/bots/{id}"), &[("_csrf", &csrf), ("action", "add_doc"), ("doc_title", "Pets"), ("doc_text", "Dogs are welcome.")]).await;
    assert_eq!(status, 303);
    let (_, page) = me.get(&format!("/bots/{id}")).await;
    assert!(page.contains("<td>Pets</td>"));
    let (status, _, location) = me.post(&format!("/bots/{id}/delete"), &[("_csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (303, Some("/bots?notice=deleted")));
    assert_eq!(api.get(&format!("/v1/bots/{id}"), &token).await.status, 404);
}

fn result(id: &str, outcome: &str, to: &str, recording: Option<&str>) -> Value {
    let mut r = json!({
        "call_id": id, "org_id": "", "direction": "outbound", "from": "+14155550100", "to": to,
        "started_at": "2026-09-21T10:00:00Z", "answered_at": "2026-09-21T10:00:05Z", "ended_at": "2026-09-21T10:01:05Z",
        "outcome": outcome, "end_reason": "caller_hangup",
        "transcript": [
            {"role": "bot", "text": "Hello, how can I help?", "at_ms": 100},
            {"role": "caller", "text": "I need a room for Friday", "at_ms": 2500},
            {"role": "bot", "text": "Friday works, we have", "at_ms": 4000, "interrupted": true},
        ],
        "costs": [{"item": "tts", "quantity": 120, "unit": "characters"}],
        "metrics": {
            "transport": "webrtc",
            "turn_latency_ms": [{"final_transcript_ms": 180, "first_token_ms": 420, "first_audio_ms": 610, "first_frame_ms": 640}],
            "tools": [{"name": "book", "call_id": "c1", "duration_ms": 85, "status": 200, "ok": true}],
            "amd": {"result": "human", "cause": "short_greeting", "decided_ms": 1800},
        },
    });
    if let Some(location) = recording {
        r["recording"] = json!({"location": location, "duration_ms": 60000, "channels": 2});
    }
    r
}

#[tokio::test]
async fn calls_show_their_transcript_latency_and_recording_with_ranges() {
    let recordings = tempfile::tempdir().unwrap();
    let root = recordings.path().to_path_buf();
    let api = Api::start_with(|c| c.recordings.local_root = Some(root)).await;
    let token = api.org("Acme").await;
    let other = api.org("Other").await;
    let org = api.get("/v1/me", &token).await.body["org"]["id"].as_str().unwrap().to_string();
    let fleet = api.fleet_token().await;

    let wav: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let file = recordings.path().join("recordings").join(&org).join("CA1.wav");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &wav).unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), b"not a recording").unwrap();
    let escape = format!("file://{}/recordings/../../{}", recordings.path().display(), outside.path().display());
    for (id, outcome, to, rec) in [
        ("CA1", "completed", "+14155550123", Some(format!("file://{}", file.display()))),
        ("CA2", "failed", "+14155550199", None),
        ("CA3", "completed", "+14155550123", Some(format!("file://{}", outside.path().display()))),
        ("CA4", "completed", "+14155550123", Some(escape)),
    ] {
        let mut r = result(id, outcome, to, rec.as_deref());
        r["org_id"] = json!(org);
        let posted = api.post("/v1/runtime/results", &fleet, r).await;
        assert_eq!(posted.status, 201, "{}", posted.body);
    }

    let me = Browser::sign_in(&api, "admin@acme.example", "a long enough password").await;
    let (status, log) = me.get("/calls").await;
    assert_eq!(status, 200);
    assert!(["CA1", "CA2", "CA3", "CA4"].iter().all(|id| log.contains(&format!("/calls/{id}\""))));
    let (_, failed) = me.get("/calls?outcome=failed").await;
    assert!(failed.contains("/calls/CA2\"") && !failed.contains("/calls/CA1\""));
    let (_, by_number) = me.get("/calls?number=%2B14155550199").await;
    assert!(by_number.contains("/calls/CA2\"") && !by_number.contains("/calls/CA1\""));
    let (_, by_day) = me.get("/calls?from_day=2026-09-22").await;
    assert!(by_day.contains("No calls match."));
    let (status, bad_day) = me.get("/calls?from_day=yesterday").await;
    assert_eq!(status, 200);
    assert!(bad_day.contains("a day as YYYY-MM-DD"));
    assert_eq!(api.get("/v1/calls?number=%2B14155550199", &token).await.body["items"].as_array().unwrap().len(), 1, "the API has the filter too");

    let (status, page) = me.get("/calls/CA1").await;
    assert_eq!(status, 200);
    for expected in ["I need a room for Friday", "· interrupted", "webrtc", "human (short greeting), decided at 1.8 s", "640 ms", "<audio id=\"recording\" controls preload=\"metadata\" src=\"/calls/CA1/recording\">", ">book<"] {
        assert!(page.contains(expected), "{expected} in the call's page");
    }
    assert_eq!(me.get("/calls/CA2").await.0, 200);
    let (status, _) = Browser::sign_in(&api, "admin@other.example", "a long enough password").await.get("/calls/CA1").await;
    assert_eq!(status, 404, "another organization's call does not exist");

    // The recording, through the console's cookie and the API's token alike.
    let get = |path: &str, range: Option<&str>, cookie: bool| {
        let mut req = client().get(format!("{}{path}", api.base));
        req = if cookie { req.header(COOKIE, &me.cookie) } else { req.bearer_auth(&token) };
        if let Some(r) = range {
            req = req.header(RANGE, r);
        }
        req.send()
    };
    let whole = get("/v1/calls/CA1/recording", None, false).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "audio/wav");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await.unwrap().as_ref(), wav.as_slice());
    let part = get("/calls/CA1/recording", Some("bytes=100-199"), true).await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &wav[100..200]);
    let tail = get("/calls/CA1/recording", Some("bytes=-16"), true).await.unwrap();
    assert_eq!(tail.headers()["content-range"], "bytes 9984-9999/10000");
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &wav[9984..]);
    let past = get("/v1/calls/CA1/recording", Some("bytes=10000-"), false).await.unwrap();
    assert_eq!(past.status(), 416);
    assert_eq!(past.headers()["content-range"], "bytes */10000");
    for (id, why) in [("CA2", "no recording"), ("CA3", "a file outside the recordings folder"), ("CA4", "a path that climbs out of it"), ("CA9", "no such call")] {
        let r = get(&format!("/v1/calls/{id}/recording"), None, false).await.unwrap();
        assert_eq!(r.status(), 404, "{why}");
        assert_eq!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["error"]["code"], "not_found");
    }
    assert_eq!(api.get("/v1/calls/CA1/recording", &other).await.status, 404, "another organization");

    // Home: today's figures and the failure that needs a look.
    let overview = api.get("/v1/overview", &token).await.body;
    assert_eq!(overview["today"]["calls"], 4);
    assert_eq!(overview["today"]["answered"], 4);
    assert_eq!(overview["failures"][0]["call_id"], "CA2");
    assert_eq!(overview["fleet"]["hosts"], 0, "admins see the fleet");
    let (_, home) = me.get("/").await;
    assert!(home.contains("/calls/CA2\"") && home.contains("caller hangup"));
}

/// A multipart form body as a browser sends a file upload.
fn multipart(fields: &[(&str, &str)], file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----cxbconsoletest7d3f";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes());
    }
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"contacts.csv\"\r\nContent-Type: text/csv\r\n\r\n").as_bytes());
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn a_campaign_is_built_fed_a_csv_with_a_bad_row_and_started_from_the_console() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let asst = api.post("/v1/ai-assistants", &token, json!({"name": "Agent", "kind": "websocket", "bot_id": "echo"})).await.body["id"].as_str().unwrap().to_string();
    let me = Browser::sign_in(&api, "admin@acme.example", "a long enough password").await;
    let csrf = me.csrf().await;

    let (status, page) = me.get("/campaigns/new").await;
    assert_eq!(status, 200);
    assert!(page.contains(&format!("value=\"ai_assistant:{asst}\"")) && page.contains("Assistant: Agent"), "the routing targets are offered");
    let route = format!("ai_assistant:{asst}");
    let fields = [
        ("_csrf", csrf.as_str()),
        ("name", "Renewals"),
        ("route", route.as_str()),
        ("caller_ids", "+1 415 555 0100\n"),
        ("cac", "3"),
        ("cps", "0.5"),
        ("time_zone", "America/New_York"),
        ("contact_local_time", "on"),
        ("w0_mon", "on"),
        ("w0_tue", "on"),
        ("w0_start", "09:00"),
        ("w0_end", "17:30"),
        ("max_attempts", "2"),
        ("backoff_seconds", "60"),
        ("backoff_multiplier", "2"),
        ("max_backoff_seconds", "600"),
        ("retry_busy", "on"),
        ("amd_action", "hangup"),
    ];
    let mut bad = fields.to_vec();
    bad.retain(|(k, _)| *k != "time_zone");
    bad.push(("time_zone", "Mars/Olympus"));
    let (status, page, _) = me.post("/campaigns/new", &bad).await;
    assert_eq!(status, 422);
    assert!(page.contains("an IANA time zone") && page.contains("value=\"Mars/Olympus\""), "the form comes back as typed");

    let (status, _, location) = me.post("/campaigns/new", &fields).await;
    assert_eq!(status, 303);
    let id = location.unwrap().trim_start_matches("/campaigns/").split('?').next().unwrap().to_string();
    let c = api.get(&format!("/v1/campaigns/{id}"), &token).await.body;
    assert_eq!(c["caller_ids"], json!(["+14155550100"]));
    assert_eq!(c["schedule"]["windows"], json!([{"days": ["mon", "tue"], "start": "09:00", "end": "17:30"}]));
    assert_eq!(c["retry"]["retry_on"], json!(["busy"]));
    assert_eq!((c["cac"].as_u64(), c["cps"].as_f64()), (Some(3), Some(0.5)));

    // The import: one good row, one bad; the report names the bad row and why.
    let csv = b"phone,name\n+14155550123,Ada\nnot a number,Bob\n";
    let (content_type, body) = multipart(&[("_csrf", &csrf)], csv);
    let r = client()
        .post(format!("{}/campaigns/{id}/import", api.base))
        .header(COOKIE, &me.cookie)
        .header("content-type", &content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("<b>1</b> new contacts"), "{page}");
    assert!(page.contains("<tr><td>3</td><td>"), "row 3 (the header is row 1) is rejected");
    assert!(page.contains("+14155550123"), "the contact is listed");
    let (content_type, body) = multipart(&[], csv);
    let r = client().post(format!("{}/campaigns/{id}/import", api.base)).header(COOKIE, &me.cookie).header("content-type", &content_type).body(body).send().await.unwrap();
    assert_eq!(r.status(), 403, "an upload without the form token");

    let (status, _, location) = me.post(&format!("/campaigns/{id}/action"), &[("_csrf", &csrf), ("action", "start")]).await;
    assert_eq!((status, location.unwrap()), (303, format!("/campaigns/{id}?notice=start")));
    assert_eq!(api.get(&format!("/v1/campaigns/{id}"), &token).await.body["state"], "ACTIVE");
    let (_, page) = me.get(&format!("/campaigns/{id}")).await;
    assert!(page.contains("id=\"action-pause\"") && !page.contains("id=\"action-start\""), "an active campaign offers pause, not start");
    assert!(page.contains("data-live") && page.contains("<svg class=\"bars\""), "the live region and the outcome chart");
    let (status, page, _) = me.post(&format!("/campaigns/{id}/action"), &[("_csrf", &csrf), ("action", "resume")]).await;
    assert_eq!(status, 409, "resume an active campaign");
    assert!(page.contains("cannot resume a ACTIVE campaign"), "{page}");
    let (_, list) = me.get("/campaigns").await;
    assert!(list.contains("Renewals") && list.contains("pill active") && list.contains("Assistant: Agent"));

    // The do-not-call list.
    let (status, _, location) = me.post("/dnc", &[("_csrf", &csrf), ("phone", "+1 415 555 0199"), ("note", "asked")]).await;
    assert_eq!((status, location.as_deref()), (303, Some("/dnc?notice=dnc_added")));
    let (_, page) = me.get("/dnc").await;
    assert!(page.contains("+14155550199") && page.contains("asked"));
    let (status, page, _) = me.post("/dnc", &[("_csrf", &csrf), ("phone", "12")]).await;
    assert_eq!(status, 422);
    assert!(page.contains("phone:"));
    let dnc = api.get("/v1/dnc", &token).await.body["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(me.post("/dnc", &[("_csrf", &csrf), ("remove", &dnc)]).await.0, 303);
    assert_eq!(api.get("/v1/dnc", &token).await.body["items"], json!([]));
}

#[tokio::test]
async fn results_are_priced_from_settings_and_analytics_adds_them_up_by_day_and_provider() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let org = api.get("/v1/me", &token).await.body["org"]["id"].as_str().unwrap().to_string();
    let fleet = api.fleet_token().await;
    let bad = api.patch("/v1/settings", &token, json!({"prices": {"deepgram": {"stt_audio": -1}}})).await;
    assert_eq!((bad.status, bad.body["error"]["field"].as_str()), (422, Some("prices.deepgram.stt_audio")));
    let set = api.patch("/v1/settings", &token, json!({"currency": "EUR", "prices": {"deepgram": {"stt_audio": 0.01}, "openai": {"llm_prompt_tokens": 0.001}}})).await;
    assert_eq!(set.status, 200, "{}", set.body);

    for (id, day, outcome, turn) in [("C1", "2026-09-21T09:00:00Z", "completed", 500), ("C2", "2026-09-21T11:00:00Z", "completed", 900), ("C3", "2026-09-20T11:00:00Z", "no_answer", 0)] {
        let mut r = result(id, outcome, "+14155550123", None);
        r["org_id"] = json!(org);
        r["started_at"] = json!(day);
        if outcome != "completed" {
            r.as_object_mut().unwrap().remove("answered_at");
        }
        r["costs"] = json!([
            {"item": "stt_audio", "quantity": 60, "unit": "second"},
            {"item": "llm_prompt_tokens", "quantity": 1000, "unit": "token"},
            {"item": "tts_characters", "quantity": 100, "unit": "character"},
        ]);
        r["metrics"]["providers"] = json!({"stt": "deepgram", "llm": "openai", "tts": "espeak"});
        r["metrics"]["turn_latency_ms"] = json!([{"final_transcript_ms": 100, "first_token_ms": 200, "first_audio_ms": 300, "first_frame_ms": turn}]);
        r["metrics"]["answer_to_first_audio_ms"] = json!(turn + 100);
        assert_eq!(api.post("/v1/runtime/results", &fleet, r).await.status, 201);
    }
    let call = api.get("/v1/calls/C1", &token).await.body;
    assert_eq!(call["costs"][0]["amount"].as_f64(), Some(0.6), "60 s at 0.01");
    assert_eq!(call["costs"][0]["currency"], "EUR");
    assert_eq!(call["costs"][2]["amount"].as_f64(), Some(0.0), "no price for espeak");

    let a = api.get("/v1/analytics?days=7", &token).await.body;
    let days = a["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    let today = &days[6];
    assert_eq!(today["day"], "2026-09-21");
    assert_eq!((today["calls"].as_i64(), today["answered"].as_i64()), (Some(2), Some(2)));
    assert_eq!(today["cost"]["deepgram"].as_f64(), Some(1.2));
    assert_eq!(today["cost"]["openai"].as_f64(), Some(2.0));
    assert_eq!(days[5]["outcomes"]["no_answer"], 1);
    assert_eq!(a["turn_latency_ms"]["p50"], 500);
    assert_eq!(a["turn_latency_ms"]["p99"], 900);
    assert_eq!(a["answer_to_first_audio_ms"]["p50"], 600);
    assert_eq!(a["cost"]["currency"], "EUR");
    assert_eq!(api.get("/v1/analytics?days=91", &token).await.status, 422);

    let me = Browser::sign_in(&api, "admin@acme.example", "a long enough password").await;
    let (status, page) = me.get("/analytics?days=7").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>09-21 deepgram: 1.2</title>"), "the cost chart has the day's deepgram column");
    assert!(page.contains("id=\"turn-p50\">500 ms<") && page.contains("p95 900 ms · p99 900 ms"), "turn latency percentiles");
    assert!(page.contains("4.80 EUR") || page.contains("4.8"), "the total cost");
}

fn handoff(org: &str, id: &str) -> Value {
    json!({
        "handoff_id": id, "call_id": "CA77", "org_id": org, "caller": "+14155550123",
        "reason": "billing dispute", "summary": "Caller disputes the May bill and wants a person.",
        "transcript": [{"role": "bot", "text": "Hello", "at_ms": 100}, {"role": "caller", "text": "I want a person", "at_ms": 2100}],
        "created_at": "2026-09-21T10:00:00Z",
    })
}

#[tokio::test]
async fn handoffs_arrive_once_wait_on_the_desk_and_agents_see_only_the_desk() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let org = api.get("/v1/me", &token).await.body["org"]["id"].as_str().unwrap().to_string();
    let fleet = api.fleet_token().await;
    let hook = api.post("/v1/webhooks", &token, json!({"name": "crm", "url": "http://127.0.0.1:9/hook", "events": ["handoff.created"]})).await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let hook = hook.body["id"].as_str().unwrap().to_string();

    let first = api.post("/v1/runtime/handoffs", &fleet, handoff(&org, "CA77-h1")).await;
    assert_eq!((first.status, &first.body["duplicate"]), (201, &json!(false)), "{}", first.body);
    let again = api.post("/v1/runtime/handoffs", &fleet, handoff(&org, "CA77-h1")).await;
    assert_eq!((again.status, &again.body["duplicate"]), (200, &json!(true)), "an outbox's retry is the same handoff");
    assert_eq!(api.post("/v1/runtime/handoffs", &token, handoff(&org, "x")).await.status, 403, "people cannot post handoffs");
    let mut bad = handoff(&org, "bad id!");
    assert_eq!(api.post("/v1/runtime/handoffs", &fleet, bad.clone()).await.status, 422);
    bad["handoff_id"] = json!("ok");
    bad["org_id"] = json!("org_nope");
    assert_eq!(api.post("/v1/runtime/handoffs", &fleet, bad).await.status, 422);
    let deliveries = api.get(&format!("/v1/webhooks/{hook}/deliveries"), &token).await.body;
    assert_eq!(deliveries["items"].as_array().unwrap().len(), 1, "one handoff.created for the CRM");
    assert_eq!(deliveries["items"][0]["event"], "handoff.created");

    // An agent: the desk only, in the console and the API alike.
    let agent = api.post("/v1/users", &token, json!({"email": "ag@acme.example", "role": "agent", "password": "a long enough password"})).await;
    assert_eq!(agent.status, 201, "{}", agent.body);
    let agent_token = api.login("ag@acme.example", "a long enough password").await;
    assert_eq!(api.get("/v1/bots", &agent_token).await.status, 403);
    assert_eq!(api.get("/v1/calls", &agent_token).await.status, 403);
    assert_eq!(api.get("/v1/handoffs", &agent_token).await.status, 200);
    let desk = Browser { api: &api, http: client(), cookie: String::new() };
    let r = form(&api, "/login", None, &[("email", "ag@acme.example"), ("password", "a long enough password"), ("next", "/")]).await;
    let desk = Browser { cookie: r.headers()[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string(), ..desk };
    let r = client().get(format!("{}/bots", api.base)).header(COOKIE, &desk.cookie).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()[LOCATION].to_str().unwrap()), (303, "/desk"), "an agent is sent to the desk");
    let (status, queue) = desk.get("/desk").await;
    assert_eq!(status, 200);
    assert!(queue.contains("billing dispute") && queue.contains("+14155550123"), "{queue}");
    assert!(!queue.contains("href=\"/bots\""), "the menu shows only the desk");

    let (_, page) = desk.get("/desk/CA77-h1").await;
    let at = page.find("name=\"_csrf\" value=\"").unwrap() + 20;
    let csrf = page[at..at + 24].to_string();
    assert!(page.contains("I want a person") && page.contains("id=\"claim\""));
    assert_eq!(desk.post("/desk/CA77-h1", &[("_csrf", &csrf), ("action", "claim")]).await.0, 303);
    let (status, page, _) = desk.post("/desk/CA77-h1", &[("_csrf", &csrf), ("action", "claim")]).await;
    assert_eq!(status, 409, "claimed twice");
    assert!(page.contains("by ag@acme.example"), "{page}");
    assert_eq!(desk.post("/desk/CA77-h1", &[("_csrf", &csrf), ("action", "note"), ("text", "Called, no answer; will retry.")]).await.0, 303);
    assert_eq!(desk.post("/desk/CA77-h1", &[("_csrf", &csrf), ("action", "resolve"), ("resolution", "called_back")]).await.2.as_deref(), Some("/desk"));
    let h = api.get("/v1/handoffs/CA77-h1", &token).await.body;
    assert_eq!((h["status"].as_str(), h["resolution"].as_str(), h["claimed_by"].as_str()), (Some("resolved"), Some("called_back"), Some("ag@acme.example")));
    assert_eq!(h["notes"][0]["text"], "Called, no answer; will retry.");
    assert_eq!(api.get("/v1/handoffs", &token).await.body["items"], json!([]), "nothing open");
    assert_eq!(api.get("/v1/handoffs?status=resolved", &token).await.body["items"][0]["id"], "CA77-h1");

    // A viewer reads the desk but cannot work it.
    api.post("/v1/users", &token, json!({"email": "vi@acme.example", "role": "viewer", "password": "a long enough password"})).await;
    let viewer = api.login("vi@acme.example", "a long enough password").await;
    api.post("/v1/runtime/handoffs", &fleet, handoff(&org, "CA77-h2")).await;
    assert_eq!(api.get("/v1/handoffs", &viewer).await.body["items"][0]["id"], "CA77-h2");
    assert_eq!(api.call(reqwest::Method::POST, "/v1/handoffs/CA77-h2/claim", &viewer, None).await.status, 403);
}

#[tokio::test]
async fn a_live_handoff_gives_the_desk_a_takeover_token_until_its_call_ends() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let org = api.get("/v1/me", &token).await.body["org"]["id"].as_str().unwrap().to_string();
    let fleet = api.fleet_token().await;
    let beat = json!({"host_id": "h1", "address": "ws://127.0.0.1:8090", "workers": 1, "slots_total": 10, "slots_free": 10, "live_calls": 1, "applied": []});
    assert_eq!(api.post("/v1/runtime/hosts/heartbeat", &fleet, beat).await.status, 200);
    let mut live = handoff(&org, "CA78-h1");
    live["call_id"] = json!("CA78");
    live["live"] = json!(true);
    assert_eq!(api.post("/v1/runtime/handoffs", &fleet, live).await.status, 201);
    assert_eq!(api.post("/v1/runtime/handoffs", &fleet, handoff(&org, "CA77-h1")).await.status, 201);
    assert_eq!(api.get("/v1/handoffs/CA78-h1", &token).await.body["live"], true);
    assert_eq!(api.get("/v1/handoffs/CA77-h1", &token).await.body["live"], false, "a handoff the engine did not keep up");

    let grant = api.call(reqwest::Method::POST, "/v1/handoffs/CA78-h1/takeover", &token, None).await;
    assert_eq!(grant.status, 200, "{}", grant.body);
    assert_eq!(grant.body["webrtc_url"], "http://127.0.0.1:8090/webrtc/takeover", "the engine host carrying the call");
    assert!(grant.body["token"].as_str().is_some_and(|t| t.len() > 40), "{}", grant.body);
    assert_eq!(grant.body["handoff"]["status"], "claimed", "the handoff is the taker's");
    let refused = api.call(reqwest::Method::POST, "/v1/handoffs/CA77-h1/takeover", &token, None).await;
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (409, Some("not_live")));
    api.post("/v1/users", &token, json!({"email": "vi@acme.example", "role": "viewer", "password": "a long enough password"})).await;
    let viewer = api.login("vi@acme.example", "a long enough password").await;
    assert_eq!(api.call(reqwest::Method::POST, "/v1/handoffs/CA78-h1/takeover", &viewer, None).await.status, 403);

    // The console: the button, the engine allowed in the page's policy, the form token checked.
    let me = Browser::sign_in(&api, "admin@acme.example", "a long enough password").await;
    let r = client().get(format!("{}/desk/CA78-h1", api.base)).header(COOKIE, &me.cookie).send().await.unwrap();
    let policy = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("connect-src 'self' http://127.0.0.1:8090"), "{policy}");
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"take-call\"") && page.contains("/desk.js"), "{page}");
    let csrf = me.csrf().await;
    let (status, body, _) = me.post("/desk/CA78-h1/takeover", &[("_csrf", &csrf)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["token"].is_string());
    assert_eq!(me.post("/desk/CA78-h1/takeover", &[("_csrf", "forged")]).await.0, 403);
    let (status, script) = me.get("/desk.js").await;
    assert!(status == 200 && script.contains("RTCPeerConnection"));

    // The call's result ends it: no takeover after.
    let mut ended = result("CA78", "completed", "+14155550123", None);
    ended["org_id"] = json!(org);
    assert_eq!(api.post("/v1/runtime/results", &fleet, ended).await.status, 201);
    assert_eq!(api.get("/v1/handoffs/CA78-h1", &token).await.body["live"], false);
    let late = api.call(reqwest::Method::POST, "/v1/handoffs/CA78-h1/takeover", &token, None).await;
    assert_eq!((late.status, late.body["error"]["code"].as_str()), (409, Some("not_live")));
}

#[tokio::test]
async fn routing_adds_assistants_and_load_balancers_through_the_api_and_shows_its_refusals() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let bot = api.post("/v1/bots", &token, json!({"name": "Support"})).await.body["id"].as_str().unwrap().to_string();
    let me = Browser::sign_in(&api, "admin@acme.example", "a long enough password").await;
    let csrf = me.csrf().await;
    let (status, page) = me.get("/routing").await;
    assert_eq!(status, 200);
    assert!(page.contains("No assistant yet") && page.contains("Add an assistant"), "{page}");

    let add = |name: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let mut f = vec![("op", "add_assistant"), ("name", name)];
        f.extend(extra);
        f
    };
    let mut f = add("Support line", vec![("target", "bot")]);
    f.push(("bot_id", &bot));
    f.push(("_csrf", &csrf));
    let (status, _, to) = me.post("/routing", &f).await;
    assert_eq!((status, to.as_deref()), (303, Some("/routing?notice=assistant_added")));
    let mut f = add("Partner bot", vec![("target", "websocket"), ("url_template", "wss://bot.partner.example/s/{session}?t={auth_token}"), ("auth_token", "tok-secret-1")]);
    f.push(("_csrf", &csrf));
    assert_eq!(me.post("/routing", &f).await.0, 303);

    // The API holds what the forms made, the token write-only.
    let list = api.get("/v1/ai-assistants", &token).await.body;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let support = items.iter().find(|a| a["name"] == "Support line").unwrap();
    assert_eq!((support["kind"].as_str(), support["bot_id"].as_str()), (Some("websocket"), Some(bot.as_str())));
    let partner = items.iter().find(|a| a["name"] == "Partner bot").unwrap();
    assert!(!list.to_string().contains("tok-secret-1"), "the auth token is write-only");
    let (_, page) = me.get("/routing").await;
    assert!(page.contains("Support line") && page.contains("Bot on this platform") && page.contains("wss://bot.partner.example"), "{page}");
    assert!(!page.contains("tok-secret-1"));

    // A bad URL is refused with the API's reason, on the page, and nothing is added.
    let mut f = add("Broken", vec![("target", "websocket"), ("url_template", "http://not-a-websocket.example/")]);
    f.push(("_csrf", &csrf));
    let (status, page, _) = me.post("/routing", &f).await;
    assert_eq!(status, 422);
    assert!(page.contains("url_template"), "{page}");
    assert_eq!(api.get("/v1/ai-assistants", &token).await.body["items"].as_array().unwrap().len(), 2);

    // A weighted load balancer of both, then one assistant marked down.
    let (s_id, p_id) = (support["id"].as_str().unwrap(), partner["id"].as_str().unwrap());
    let (m1, w1, m2, w2) = (format!("member_{s_id}"), format!("weight_{s_id}"), format!("member_{p_id}"), format!("weight_{p_id}"));
    let f = [("_csrf", csrf.as_str()), ("op", "add_balancer"), ("name", "Both"), ("strategy", "weighted"), (&m1, "on"), (&w1, "3"), (&m2, "on"), (&w2, "1")];
    assert_eq!(me.post("/routing", &f).await.0, 303);
    let lbs = api.get("/v1/load-balancers", &token).await.body;
    let members = &lbs["items"][0]["members"];
    assert_eq!(members.as_array().unwrap().len(), 2, "{lbs}");
    assert!(members.as_array().unwrap().iter().any(|m| m["assistant_id"] == s_id && m["weight"] == 3));
    let (_, page) = me.get("/routing").await;
    assert!(page.contains("Support line ×3"), "{page}");
    let f = [("_csrf", csrf.as_str()), ("op", "down"), ("id", p_id)];
    assert_eq!(me.post("/routing", &f).await.2.as_deref(), Some("/routing?notice=down"));
    assert_eq!(api.get(&format!("/v1/ai-assistants/{p_id}"), &token).await.body["down"], true);

    // A viewer sees the lists but no forms, and a post from them is refused.
    let user = api.post("/v1/users", &token, json!({"email": "vi@acme.example", "role": "viewer", "password": "a long enough password"})).await;
    assert_eq!(user.status, 201);
    let viewer = Browser::sign_in(&api, "vi@acme.example", "a long enough password").await;
    let (_, page) = viewer.get("/routing").await;
    assert!(page.contains("Support line") && !page.contains("Add an assistant") && !page.contains("Mark up"), "{page}");
    let vcsrf = viewer.csrf().await;
    assert_eq!(viewer.post("/routing", &[("_csrf", &vcsrf), ("op", "delete_balancer"), ("id", lbs["items"][0]["id"].as_str().unwrap())]).await.0, 403);
}
