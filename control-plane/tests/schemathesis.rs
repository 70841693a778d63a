//! The OpenAPI document against the real API: schemathesis (from PyPI, installed on first use
//! into `target/schemathesis/venv`) generates requests for every operation of
//! `/v1/openapi.json`, valid and invalid, and checks that the server never answers 5XX, and that
//! every status code, content type, header and body it answers is the one the document states.
//! `CXB_SCHEMATHESIS_ARGS` adds arguments to the run (`--max-examples 100`, say).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Api;
use cxb_control_plane::admin;
use cxb_control_plane::auth::FleetScope;
use cxb_control_plane::clock::Clock;
use serde_json::json;

/// The schemathesis release the run is pinned to (its checks and generators change between
/// releases; a newer one is a deliberate bump here).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// How long the run may take before it is stopped and the test fails.
const LIMIT: Duration = Duration::from_secs(150);

/// The workspace's target directory: `$CARGO_TARGET_DIR` (relative to the workspace) or `target`.
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The schemathesis executable, installed into a venv under the target directory unless a
/// previous run did (`python3 -m venv` and pip; needs python3 with venv, and PyPI).
fn schemathesis() -> PathBuf {
    let venv = target_dir().join("schemathesis/venv");
    let bin = venv.join("bin/schemathesis");
    let marker = venv.join("cxb-installed");
    if bin.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == SCHEMATHESIS) {
        return bin;
    }
    eprintln!("installing {SCHEMATHESIS} into {}", venv.display());
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv));
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", "--no-input", SCHEMATHESIS]));
    std::fs::write(&marker, SCHEMATHESIS).unwrap();
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let bin = tokio::task::spawn_blocking(schemathesis).await.unwrap();
    let api = Api::start().await;
    let session = api.org("Fuzz").await;
    // An admin API key, not a session: `POST /v1/auth/logout` ends sessions (an API key is
    // answered 400), and a password change ends them all.
    let key = api.post("/v1/api-keys", &session, json!({"name": "schemathesis", "role": "admin"})).await;
    assert_eq!(key.status, 201, "{}", key.body);
    let key = key.body["key"].as_str().unwrap().to_string();
    // `DELETE /v1/api-keys/{id}` is sent with another organization's admin key: with the run's
    // own key it would revoke that key as soon as it learns its id (from `GET /v1/api-keys`),
    // and every later request would answer 401. The other organization's key ids never appear
    // in this one's answers, so that route is still run (its 401, 404 and 400 answers, and
    // keys the run makes itself are not found from there) without cutting the run off.
    let elsewhere = api.org("Elsewhere").await;
    let other_key = api.post("/v1/api-keys", &elsewhere, json!({"name": "deleter", "role": "admin"})).await;
    assert_eq!(other_key.status, 201, "{}", other_key.body);
    let other_key = other_key.body["key"].as_str().unwrap().to_string();
    // `POST /v1/auth/logout` answers API keys 400 (they are revoked, not signed out): it gets a
    // session of its own, which the first sign-out ends (later ones answer 401).
    let logout = api.login("admin@fuzz.example", "a long enough password").await;
    let engine = api.fleet_token().await;
    let dialler = admin::create_scoped_fleet_token(api.db(), "dialler", FleetScope::Dialler, None, api.clock.now_ms()).await.unwrap();
    // Records for the lists and reads to answer with, secrets included (answers show their names).
    let (bot, _, _, campaign) = common::product(&api, &session).await;
    let seeded = [
        (
            "/v1/bots".to_string(),
            json!({"name": "Tools", "tools": [{"kind": "http", "name": "crm", "url": "https://crm.example/x", "secrets": {"Authorization": "Bearer s"}}, {"kind": "end_call"}]}),
        ),
        ("/v1/webhooks".to_string(), json!({"name": "CRM", "url": "https://crm.example/hook"})),
        (format!("/v1/campaigns/{campaign}/contacts"), json!({"phone": "+14155550101", "name": "Ann", "fields": {"plan": "gold"}})),
        ("/v1/dnc".to_string(), json!({"phone": "+14155550102", "note": "asked"})),
        (format!("/v1/bots/{bot}/knowledge"), json!({"title": "Hours", "text": "We open at nine."})),
    ];
    for (path, body) in seeded {
        let r = api.post(&path, &session, body).await;
        assert_eq!(r.status, 201, "{path}: {}", r.body);
    }
    let r = api.patch("/v1/settings", &session, json!({"carrier": {"provider": "cloudonix", "domain": "x.example", "secrets": {"api_key": "k"}}})).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    let toml = format!(
        r#"
[auth.openapi.bearer]
bearer = "{key}"

[auth.openapi.fleet_token]
bearer = "{engine}"

[generation]
# No field of the API takes NUL (422 wherever it appears), which no schema here can say.
allow-x00 = false

[checks.positive_data_acceptance]
# 422 too: the API checks more than a JSON Schema can state (references to other records,
# phone numbers, time zones, URLs, fields that depend on each other), and says so in the
# document's 422 descriptions.
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[checks.negative_data_rejection]
# 413 too: a body over an endpoint's size limit is refused before it is parsed, whatever
# else is wrong with it (the generator makes megabyte-long prompts).
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# Adding a number to the do-not-call list is idempotent by number: a second add answers the
# existing entry (200), so a scenario that adds, deletes and adds the number again holds the
# id of an entry it deleted itself, which then answers 404 as it should.
[[operations]]
include-path = "/v1/dnc/{{id}}"
checks.ensure_resource_availability.enabled = false

# Deleting a bot deletes its knowledge documents with it: a scenario that made a document,
# then deleted its bot, holds the id of a document that is gone, and answers 404 as it should.
[[operations]]
include-path = "/v1/bots/{{id}}/knowledge/{{doc_id}}"
checks.ensure_resource_availability.enabled = false

[[operations]]
include-path = "/v1/api-keys/{{id}}"
include-method = "DELETE"
headers = {{ Authorization = "Bearer {other_key}" }}

[[operations]]
include-path = "/v1/auth/logout"
headers = {{ Authorization = "Bearer {logout}" }}

# Reservations take a dialler's token (the other fleet routes an engine's); with no engine
# host in the fleet the answer is the documented 503 `no_capacity`.
[[operations]]
include-path = "/v1/fleet/reserve"
headers = {{ Authorization = "Bearer {dialler}" }}
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

# This API runs without a dialler: calls and carriers' webhooks answer the documented 503
# `telephony_unavailable`.
[[operations]]
include-path = ["/v1/calls", "/v1/carriers/{{org_id}}/cdr"]
include-method = "POST"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"#
    );
    std::fs::write(&config, toml).unwrap();
    let url = format!("{}/v1/openapi.json", api.base);
    let extra: Vec<String> = std::env::var("CXB_SCHEMATHESIS_ARGS").map(|a| a.split_whitespace().map(String::from).collect()).unwrap_or_default();
    let mut cmd = Command::new(&bin);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&url)
        .args(["--url", &api.base])
        .args(["--workers", "1", "--max-examples", "10", "--seed", "1", "--generation-deterministic", "--no-color"])
        .args(["--report-dir"])
        .arg(dir.path().join("report"))
        .args(&extra)
        .current_dir(dir.path())
        .stdin(Stdio::null());
    eprintln!("{cmd:?}");
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Read the pipes on threads so a full pipe cannot stall the run.
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s).ok();
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut s).ok();
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (status, out.join().unwrap(), err.join().unwrap())
    })
    .await
    .unwrap();
    let (status, stdout, stderr) = out;
    eprintln!("schemathesis took {:.1} s", started.elapsed().as_secs_f64());
    let status = status.unwrap_or_else(|| panic!("schemathesis did not finish within {LIMIT:?}:\n{stdout}\n{stderr}"));
    assert!(status.success(), "schemathesis failed ({status}):\n{stdout}\n{stderr}");
    // Shown with `--nocapture`: what was run, and the warnings (operations that only ever
    // answered 404 or 401, say).
    eprintln!("{stdout}");
    api.server.shutdown().await;
}
