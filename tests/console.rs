//! The console in a real browser: headless Chromium (Debian's, under chromedriver) against
//! `cxb up` (API, engine, dialler and carrier simulator in one process). An admin signs in,
//! builds a bot with the offline providers in the builder, builds a campaign, imports a CSV
//! with a bad row (the rejection shows), starts it and watches the live view reach the end,
//! opens a call (transcript, and a recording whose audio element reports a duration), works a
//! handoff the bot made on the Agent Desk, and a form posted from another site is refused; a
//! viewer sees no edit controls and a form posted without the token is refused. Each page is
//! saved as a 1280×800 screenshot in `docs/console/`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

mod common;

use common::Kill;
use common::browser::{Browser, website};

/// Sets the value of the form field `css` (inputs, selects, text areas).
async fn fill(browser: &Browser, css: &str, value: &str) {
    let done = browser
        .run(&format!(
            "const e = document.querySelector({css}); if (!e) return 'missing'; e.value = {value}; e.dispatchEvent(new Event('change')); return 'ok';",
            css = json!(css),
            value = json!(value)
        ))
        .await;
    assert_eq!(done, "ok", "the field {css}");
}

async fn click(browser: &Browser, css: &str) {
    let done = browser.run(&format!("const e = document.querySelector({}); if (!e) return 'missing'; e.click(); return 'ok';", json!(css))).await;
    assert_eq!(done, "ok", "clicking {css}");
}

/// Waits for a page whose `<h1>` holds `text`.
async fn heading(browser: &Browser, text: &str) {
    let script = format!("const h = document.querySelector('h1'); return h && h.textContent.includes({});", json!(text));
    browser.until(&format!("the page headed {text}"), Duration::from_secs(20), &script).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_platform_from_the_console_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxb"))
        .args(["up", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--sip", "127.0.0.1:0", "--sim-time-scale", "0.2"])
        .args(["--sim-mix", "answer=8,busy=1,no_answer=1", "--sim-seed", "7"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("up.log")).map_or(Stdio::null(), Stdio::from))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _up = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let line = line.trim().to_string();
            for key in ["API", "password"] {
                if let Some(v) = line.strip_prefix(key).filter(|v| v.starts_with(' ')) {
                    let _ = tx.send((key, v.split_whitespace().next().unwrap_or_default().to_string()));
                }
            }
        }
    });
    let (mut api, mut password) = (String::new(), String::new());
    while api.is_empty() || password.is_empty() {
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            ("API", v) => api = v,
            (_, v) => password = v,
        }
    }
    let http = cxb_control_plane::http_client(Duration::from_secs(30)).unwrap();
    let login = http.post(format!("{api}/v1/auth/login")).json(&json!({"email": "admin@cxb.local", "password": password})).send().await.unwrap();
    let token = serde_json::from_slice::<Value>(&login.bytes().await.unwrap()).unwrap()["token"].as_str().unwrap().to_string();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = async |browser: &Browser, name: &str| browser.screenshot(&shots.join(format!("{name}.png"))).await;

    let browser = Browser::start(dir.path(), None).await;
    // Signing in.
    browser.go(&format!("{api}/calls")).await;
    browser.until("the sign-in page", Duration::from_secs(20), "return !!document.querySelector('#email')").await;
    assert!(browser.url().await.contains("/login?next=/calls"), "a page without a session goes to the sign-in page");
    shot(&browser, "login").await;
    fill(&browser, "#email", "admin@cxb.local").await;
    fill(&browser, "#password", &password).await;
    click(&browser, "button[type=submit]").await;
    heading(&browser, "Calls").await;

    // A bot from the builder, with the offline providers: it hands every caller to people.
    browser.go(&format!("{api}/bots/new")).await;
    heading(&browser, "New bot").await;
    fill(&browser, "#name", "Front desk").await;
    fill(&browser, "#greeting", "Hello! This is the front desk.").await;
    fill(&browser, "#stt_options", r#"{"placeholder": "I want a person"}"#).await;
    let script = json!({"script": {"intents": [{"name": "person", "keywords": ["person"], "reply": "Let me pass you to the team.",
        "tool": {"name": "handoff", "arguments": {"reason": "asked for a person", "summary": "The caller wants to talk to someone."}},
        "after_tool": "Someone will call you back."}], "fallback": "Sorry?"}});
    fill(&browser, "#llm_options", &script.to_string()).await;
    fill(&browser, "#tools", r#"[{"kind": "handoff"}, {"kind": "end_call"}]"#).await;
    click(&browser, "#save").await;
    heading(&browser, "Front desk").await;
    let url = browser.url().await;
    let bot = url.split("/bots/").nth(1).unwrap().split('?').next().unwrap().to_string();
    assert!(browser.run("return document.body.textContent.includes('Bot created.')").await == true);
    shot(&browser, "bot").await;
    browser.go(&format!("{api}/bots")).await;
    heading(&browser, "Bots").await;
    shot(&browser, "bots").await;

    // Where answered calls go: an assistant on this host running the bot, from the Routing page.
    browser.go(&format!("{api}/routing")).await;
    heading(&browser, "Routing").await;
    fill(&browser, "#a_name", "Front desk here").await;
    fill(&browser, "#bot_id", &bot).await;
    click(&browser, "#assistant-form button[type=submit]").await;
    browser.until("the assistant listed", Duration::from_secs(10), "const t = document.querySelector('#assistants'); return t && t.textContent.includes('Front desk here');").await;
    shot(&browser, "routing").await;
    let list = http.get(format!("{api}/v1/ai-assistants")).bearer_auth(&token).send().await.unwrap();
    let list: Value = serde_json::from_slice(&list.bytes().await.unwrap()).unwrap();
    assert_eq!(list["items"][0]["bot_id"], bot.as_str(), "{list}");
    let asst = list["items"][0]["id"].as_str().unwrap().to_string();

    // A campaign from the builder, contacts from a CSV file with a bad row.
    browser.go(&format!("{api}/campaigns/new")).await;
    heading(&browser, "New campaign").await;
    fill(&browser, "#name", "Spring renewals").await;
    fill(&browser, "#route", &format!("ai_assistant:{asst}")).await;
    fill(&browser, "#caller_ids", "+15550100000").await;
    fill(&browser, "#cac", "5").await;
    fill(&browser, "#cps", "5").await;
    fill(&browser, "#max_attempts", "1").await;
    // Any time of day: the test runs whenever it runs.
    browser.run("document.querySelectorAll('input[type=checkbox][name^=w]').forEach(c => c.checked = false); return true;").await;
    click(&browser, "#save").await;
    heading(&browser, "Spring renewals").await;
    let csv = dir.path().join("contacts.csv");
    std::fs::write(&csv, "phone,name\n+15550100001,Ada\n+15550100002,Ben\nnot a number,Cy\n+15550100003,Di\n+15550100004,Ed\n").unwrap();
    browser.type_into("#file", csv.to_str().unwrap()).await;
    click(&browser, "#import-form button[type=submit]").await;
    let report = browser.until("the import's report", Duration::from_secs(20), "const r = document.querySelector('#import-report'); return r && r.textContent;").await;
    let report = report.as_str().unwrap();
    assert!(report.contains("4 new contacts"), "{report}");
    let rejected = browser.run("return [...document.querySelectorAll('#rejected tbody tr')].map(r => r.textContent.trim())").await;
    assert_eq!(rejected.as_array().unwrap().len(), 1, "one rejected row: {rejected}");
    assert!(rejected[0].as_str().unwrap().starts_with('4'), "row 4 of the file (the header is row 1): {rejected}");
    shot(&browser, "campaign-import").await;

    // Started, the live view reaches the end without a reload.
    click(&browser, "#action-start").await;
    browser.until("the campaign started", Duration::from_secs(20), "const s = document.querySelector('#state'); return s && s.textContent === 'active';").await;
    browser.run("window.notReloaded = true; return true;").await;
    browser.until("every contact done", Duration::from_secs(120), "const d = document.querySelector('#contacts-done'); return d && d.textContent.trim() === '4 / 4';").await;
    assert_eq!(browser.run("return window.notReloaded === true").await, true, "the page updated in place");
    shot(&browser, "campaign").await;
    browser.go(&format!("{api}/campaigns")).await;
    heading(&browser, "Campaigns").await;
    shot(&browser, "campaigns").await;

    // A call: its transcript and its recording, which the player can load.
    browser.go(&format!("{api}/calls?outcome=completed")).await;
    heading(&browser, "Calls").await;
    shot(&browser, "calls").await;
    let call = browser.until("an answered call", Duration::from_secs(30), "const a = document.querySelector('#calls tbody a'); return a && a.href;").await;
    browser.go(call.as_str().unwrap()).await;
    heading(&browser, "Call").await;
    let said = browser.run("const t = document.querySelector('#transcript'); return t ? t.textContent : ''").await;
    assert!(said.as_str().unwrap().contains("I want a person"), "the caller's turn in the transcript: {said}");
    let duration = browser
        .until("the recording's duration", Duration::from_secs(20), "const a = document.querySelector('#recording'); return a && a.readyState >= 1 && isFinite(a.duration) && a.duration > 0 && a.duration;")
        .await;
    assert!(duration.as_f64().unwrap() > 0.5, "the recording lasts {duration} s");
    shot(&browser, "call").await;

    // The Agent Desk: the bot's handoffs wait; one is claimed and resolved.
    browser.go(&format!("{api}/desk")).await;
    heading(&browser, "Agent Desk").await;
    browser.until("a waiting handoff", Duration::from_secs(30), "return document.querySelectorAll('#queue tbody tr').length > 0").await;
    assert!(browser.run("return document.querySelector('#queue').textContent.includes('asked for a person')").await == true);
    shot(&browser, "desk").await;
    click(&browser, "#queue tbody a").await;
    browser.until("the handoff's page", Duration::from_secs(20), "return !!document.querySelector('#claim')").await;
    assert!(browser.run("return document.body.textContent.includes('I want a person')").await == true, "the transcript up to the handoff");
    click(&browser, "#claim").await;
    browser.until("claimed", Duration::from_secs(20), "const s = document.querySelector('#status'); return s && s.textContent === 'claimed';").await;
    shot(&browser, "handoff").await;
    fill(&browser, "#resolve-form select", "called_back").await;
    click(&browser, "#resolve").await;
    heading(&browser, "Agent Desk").await;
    let resolved: Value = serde_json::from_slice(&http.get(format!("{api}/v1/handoffs?status=resolved")).bearer_auth(&token).send().await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(resolved["items"][0]["resolution"], "called_back");
    assert_eq!(resolved["items"][0]["claimed_by"], "admin@cxb.local");

    // The other pages, for the record.
    for (path, title, name) in [("/", "Home", "home"), ("/analytics", "Analytics", "analytics"), ("/settings", "Settings", "settings"), ("/dnc", "Do not call", "dnc")] {
        browser.go(&format!("{api}{path}")).await;
        heading(&browser, title).await;
        shot(&browser, name).await;
        if name == "analytics" {
            let calls = browser.run("return Number(document.querySelector('#calls').textContent)").await;
            assert!(calls.as_i64().unwrap() >= 4, "today's calls in analytics: {calls}");
        }
    }

    // A page on another site that posts a form to the console with the admin's cookie.
    let forged = format!(
        "<!doctype html><html><body><form id=f method=post action=\"{api}/bots/new\"><input name=name value=Forged><input name=_csrf value=guessed></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    let site = website(forged).await;
    browser.go(&site).await;
    browser.until("the forged post's answer", Duration::from_secs(20), "return document.body && document.body.textContent.includes('Not allowed')").await;
    let bots: Value = serde_json::from_slice(&http.get(format!("{api}/v1/bots")).bearer_auth(&token).send().await.unwrap().bytes().await.unwrap()).unwrap();
    assert!(!bots.to_string().contains("Forged"), "the forged form made nothing");

    // A viewer: no edit controls, and a post without the form token is refused.
    let viewer = http
        .post(format!("{api}/v1/users"))
        .bearer_auth(&token)
        .json(&json!({"email": "viewer@cxb.local", "role": "viewer", "password": "a long enough password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status().as_u16(), 201);
    browser.go(&format!("{api}/")).await;
    heading(&browser, "Home").await;
    click(&browser, ".who button").await;
    browser.until("the sign-in page", Duration::from_secs(20), "return !!document.querySelector('#email')").await;
    fill(&browser, "#email", "viewer@cxb.local").await;
    fill(&browser, "#password", "a long enough password").await;
    click(&browser, "button[type=submit]").await;
    heading(&browser, "Home").await;
    browser.go(&format!("{api}/bots")).await;
    heading(&browser, "Bots").await;
    assert!(browser.run("return document.querySelector('#new-bot') === null").await == true, "no New bot for a viewer");
    browser.go(&format!("{api}/bots/{bot}")).await;
    heading(&browser, "Front desk").await;
    assert!(browser.run("return document.querySelector('#save') === null && document.querySelector('#bot-form fieldset').disabled").await == true);
    let status = browser
        .command(
            "execute/async",
            json!({ "script": "const done = arguments[arguments.length - 1]; fetch('/bots/new', {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'name=Forged'}).then(r => done(r.status));", "args": [] }),
        )
        .await;
    assert_eq!(status, 403, "a form post without the token");
}
