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
        let at = page.find("name=\"_csrf\" value=\"").unwrap() + 20;
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
