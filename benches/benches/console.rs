//! The console's pages over a busy organization: a real API (SQLite in a temp dir) holding
//! 10,000 calls over 30 days, all of one campaign, with transcripts, latencies and priced
//! costs, posted through `POST /v1/runtime/results` as engines post them. Each sample is one
//! page request from a signed-in browser's cookie over loopback HTTP: the server's time plus
//! a loopback round trip (about 0.1 ms here). The bar: under 100 ms a page.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

const CALLS: usize = 10_000;

struct Site {
    _api: cxb_control_plane::ApiServer,
    _dir: tempfile::TempDir,
    base: String,
    cookie: String,
    http: reqwest::Client,
    call: String,
    campaign: String,
}

async fn site() -> Site {
    use cxb_control_plane::clock::{Clock, SystemClock};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cxb_control_plane::ApiConfig::new("127.0.0.1:0".parse().expect("addr"), format!("sqlite://{}/cxb.db", dir.path().display()));
    let api = cxb_control_plane::ApiServer::start(config).await.expect("api");
    let base = format!("http://{}", api.local_addr());
    let now = SystemClock.now_ms();
    let db = &api.state().db;
    let org = cxb_control_plane::admin::create_org(db, "Bench", "b@bench.test", "correct horse battery".into(), now).await.expect("org");
    let fleet = cxb_control_plane::admin::create_fleet_token(db, "bench", now).await.expect("fleet");
    let http = cxb_control_plane::http_client(Duration::from_secs(30)).expect("client");
    let login: Value = http.post(format!("{base}/v1/auth/login")).json(&json!({"email": "b@bench.test", "password": "correct horse battery"})).send().await.expect("login").json().await.expect("json");
    let token = login["token"].as_str().expect("token").to_string();
    let post = async |path: &str, body: Value| -> Value { http.post(format!("{base}{path}")).bearer_auth(&token).json(&body).send().await.expect("post").json().await.expect("json") };
    let bot = post("/v1/bots", json!({"name": "Desk", "stt": {"provider": "deepgram"}, "llm": {"provider": "openai"}, "tts": {"provider": "elevenlabs"}})).await;
    let asst = post("/v1/ai-assistants", json!({"name": "A", "kind": "websocket", "bot_id": bot["id"]})).await;
    let campaign = post("/v1/campaigns", json!({"name": "Big", "routing": {"type": "ai_assistant", "target_id": asst["id"]}})).await;
    let _ = http
        .patch(format!("{base}/v1/settings"))
        .bearer_auth(&token)
        .json(&json!({"prices": {"deepgram": {"stt_audio": 0.0001}, "openai": {"llm_prompt_tokens": 0.000001}}}))
        .send()
        .await;
    let outcomes = ["completed", "completed", "completed", "no_answer", "busy", "failed", "voicemail"];
    let mut pending = Vec::new();
    for i in 0..CALLS {
        let started = now - (i as i64 * 30 * 86_400_000 / CALLS as i64);
        let t = |ms: i64| chrono_free_rfc3339(ms);
        let outcome = outcomes[i % outcomes.len()];
        let result = json!({
            "call_id": format!("CA{i:06}"), "org_id": org.org_id, "bot_id": bot["id"], "campaign_id": campaign["id"],
            "direction": "outbound", "from": "+15550100000", "to": format!("+1555{:07}", i),
            "started_at": t(started), "answered_at": t(started + 4_000), "ended_at": t(started + 64_000),
            "outcome": outcome, "end_reason": "caller_hangup",
            "transcript": (0..12).map(|k| json!({"role": if k % 2 == 0 { "bot" } else { "caller" }, "text": "A sentence of an ordinary length spoken on the call.", "at_ms": k * 4000})).collect::<Vec<_>>(),
            "costs": [{"item": "stt_audio", "quantity": 60, "unit": "second"}, {"item": "llm_prompt_tokens", "quantity": 3000, "unit": "token"}],
            "metrics": {"providers": {"stt": "deepgram", "llm": "openai", "tts": "elevenlabs"}, "answer_to_first_audio_ms": 300 + (i % 200),
                "turn_latency_ms": (0..6).map(|k| json!({"final_transcript_ms": 150, "first_token_ms": 400, "first_audio_ms": 600, "first_frame_ms": 620 + (i + k) % 300})).collect::<Vec<_>>()},
        });
        let req = http.post(format!("{base}/v1/runtime/results")).bearer_auth(&fleet).json(&result).send();
        pending.push(req);
        if pending.len() == 32 {
            for r in std::mem::take(&mut pending) {
                assert!(r.await.expect("result").status().is_success());
            }
        }
    }
    for r in pending {
        assert!(r.await.expect("result").status().is_success());
    }
    // The console's cookie, from its sign-in form.
    let signin = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let r = signin
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=b%40bench.test&password=correct+horse+battery")
        .send()
        .await
        .expect("sign in");
    let cookie = r.headers()["set-cookie"].to_str().expect("cookie").split(';').next().expect("pair").to_string();
    Site { _api: api, _dir: dir, base, cookie, http, call: "CA000042".into(), campaign: campaign["id"].as_str().expect("id").into() }
}

/// RFC 3339 of unix milliseconds, UTC (days from the civil-from-days algorithm).
fn chrono_free_rfc3339(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000)
}

fn pages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let site = rt.block_on(site());
    let mut g = c.benchmark_group("console_10k_calls");
    g.sample_size(20);
    let paths = [
        ("home", "/".to_string()),
        ("calls_log", "/calls".to_string()),
        ("calls_log_filtered", "/calls?outcome=failed&direction=outbound".to_string()),
        ("call_page", format!("/calls/{}", site.call)),
        ("campaign_page", format!("/campaigns/{}", site.campaign)),
        ("analytics_30_days", "/analytics?days=30".to_string()),
        ("desk", "/desk".to_string()),
    ];
    for (name, path) in paths {
        let url = format!("{}{path}", site.base);
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let r = site.http.get(&url).header("cookie", &site.cookie).send().await.expect("page");
                    assert_eq!(r.status().as_u16(), 200, "{url}");
                    r.bytes().await.expect("body").len()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pages);
criterion_main!(benches);
