//! Secrets at rest and on the way out: stored sealed, shown to no one, handed to engines open,
//! cleared when their destination moves without them, old plaintext rows sealed at start; URLs
//! that point at internal addresses refused when written (422 `egress_forbidden` naming the
//! field) and requests to them refused when sent.

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use cxb_contract::egress::EgressPolicy;
use serde_json::{Value, json};

fn stt(key: &str) -> Value {
    json!({"provider": "deepgram", "base_url": "https://api.deepgram.com", "secrets": {"api_key": key}})
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_open_only_for_engines() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let bot = api.post("/v1/bots", &token, json!({"name": "B", "stt": stt("dg-plain-secret")})).await;
    assert_eq!(bot.status, 201, "{}", bot.body);
    let id = bot.body["id"].as_str().unwrap().to_string();
    let stored: String = sqlx::query_scalar("SELECT body FROM bots WHERE id = $1").bind(&id).fetch_one(api.db()).await.unwrap();
    assert!(stored.contains("enc:v1:") && !stored.contains("dg-plain-secret"), "{stored}");
    let shown = api.get(&format!("/v1/bots/{id}"), &token).await;
    assert_eq!(shown.body["stt"]["secrets_set"], json!(["api_key"]));
    assert!(!shown.body.to_string().contains("enc:v1:"), "not even sealed values are shown");
    let fleet = api.fleet_token().await;
    let runtime = api.get(&format!("/v1/runtime/bots/{id}"), &fleet).await;
    assert_eq!(runtime.body["stt"]["secrets"]["api_key"], "dg-plain-secret", "the engine gets the key it needs");

    // An edit that keeps the destination keeps the secret (still sealed).
    let renamed = api.patch(&format!("/v1/bots/{id}"), &token, json!({"name": "B2"})).await;
    assert_eq!((renamed.status, renamed.body.get("secrets_cleared")), (200, None), "{}", renamed.body);
    let runtime = api.get(&format!("/v1/runtime/bots/{id}"), &fleet).await;
    assert_eq!(runtime.body["stt"]["secrets"]["api_key"], "dg-plain-secret");
}

#[tokio::test]
async fn moving_a_secret_s_destination_without_sending_it_again_clears_it() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let id = api.post("/v1/bots", &token, json!({"name": "B", "stt": stt("dg-1")})).await.body["id"].as_str().unwrap().to_string();
    let moved = api.patch(&format!("/v1/bots/{id}"), &token, json!({"stt": {"base_url": "https://collector.example"}})).await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.body["secrets_cleared"], json!(["stt"]), "the response says so");
    assert_eq!(moved.body["stt"].get("secrets_set"), None);
    let fleet = api.fleet_token().await;
    let runtime = api.get(&format!("/v1/runtime/bots/{id}"), &fleet).await;
    assert_eq!(runtime.body["stt"].get("secrets"), None, "the key does not follow the new URL");
    let resent = api.patch(&format!("/v1/bots/{id}"), &token, json!({"stt": {"base_url": "https://dg.self-hosted.example", "secrets": {"api_key": "dg-2"}}})).await;
    assert_eq!((resent.status, resent.body.get("secrets_cleared")), (200, None));
    let runtime = api.get(&format!("/v1/runtime/bots/{id}"), &fleet).await;
    assert_eq!(runtime.body["stt"]["secrets"]["api_key"], "dg-2");

    // The carrier's key does not follow a new API base either.
    let set = api.patch("/v1/settings", &token, json!({"carrier": {"provider": "cloudonix", "domain": "d.example", "secrets": {"api_key": "cx-1"}}})).await;
    assert_eq!(set.status, 200, "{}", set.body);
    let moved = api.patch("/v1/settings", &token, json!({"carrier": {"api_base": "https://cloudonix.collector.example"}})).await;
    assert_eq!(moved.body["secrets_cleared"], json!(["carrier"]), "{}", moved.body);
}

#[tokio::test]
async fn rows_stored_before_sealing_are_sealed_when_the_api_starts() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let id = api.post("/v1/bots", &token, json!({"name": "Old"})).await.body["id"].as_str().unwrap().to_string();
    let plain = json!({"name": "Old", "stt": stt("legacy-plain")}).to_string();
    sqlx::query("UPDATE bots SET body = $1 WHERE id = $2").bind(&plain).bind(&id).execute(api.db()).await.unwrap();
    let secrets = api.secrets();
    let sealed = cxb_control_plane::secrets::seal_stored_rows(api.db(), &secrets, false).await.unwrap();
    assert_eq!(sealed, 1);
    let stored: String = sqlx::query_scalar("SELECT body FROM bots WHERE id = $1").bind(&id).fetch_one(api.db()).await.unwrap();
    assert!(!stored.contains("legacy-plain"), "{stored}");
    let fleet = api.fleet_token().await;
    assert_eq!(api.get(&format!("/v1/runtime/bots/{id}"), &fleet).await.body["stt"]["secrets"]["api_key"], "legacy-plain");
}

#[tokio::test]
async fn urls_that_point_inside_are_refused_when_written_naming_the_field() {
    let api = Api::start_with(|c| c.egress = EgressPolicy::public_only()).await;
    let token = api.org("Acme").await;
    let tool = json!({"name": "B", "tools": [{"kind": "http", "name": "meta", "url": "http://169.254.169.254/latest/meta-data/"}]});
    let r = api.post("/v1/bots", &token, tool).await;
    assert_eq!((r.status, r.code(), r.body["error"]["field"].as_str()), (422, "egress_forbidden", Some("tools[0].url")), "{}", r.body);
    let r = api.post("/v1/bots", &token, json!({"name": "B", "llm": {"provider": "openai", "base_url": "http://[::1]:8000/v1"}})).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("llm.base_url")), "{}", r.body);
    let r = api.post("/v1/webhooks", &token, json!({"name": "W", "url": "http://10.0.0.7/hook", "events": ["call.completed"]})).await;
    assert_eq!((r.status, r.code()), (422, "egress_forbidden"), "{}", r.body);
    let r = api.patch("/v1/settings", &token, json!({"carrier": {"provider": "cloudonix", "domain": "d", "api_base": "https://localhost:9443"}})).await;
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("carrier.api_base")), "{}", r.body);
    let ok = api.post("/v1/bots", &token, json!({"name": "B", "llm": {"provider": "openai", "base_url": "https://api.openai.com/v1"}})).await;
    assert_eq!(ok.status, 201, "public names are judged when they are resolved");
}

#[tokio::test]
async fn requests_for_tenants_never_reach_internal_addresses_by_name_or_literal() {
    use cxb_control_plane::egress::{Egress, EgressError};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let guard = Egress::new(EgressPolicy::public_only(), std::time::Duration::from_secs(5)).unwrap();
    for url in [format!("http://localhost:{port}/hook"), format!("http://127.0.0.1:{port}/hook"), "http://169.254.169.254/".to_string()] {
        let request = guard.client().post(&url).body("{}").build().unwrap();
        let refused = guard.execute(request).await.unwrap_err();
        assert!(matches!(&refused, EgressError::Forbidden { .. }) || refused.to_string().contains("egress_forbidden"), "{url}: {refused}");
    }
    // Nothing connected to the listener.
    let accepted = tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "no connection reached the internal address");
}

/// Call-token keys are secrets too: stored sealed, opened for signing and for the engines'
/// heartbeats, and a key stored in plain text before sealing is sealed at start and keeps
/// verifying the tokens it signed.
#[tokio::test]
async fn call_token_keys_are_sealed_at_rest() {
    use cxb_contract::call_token::CallClaims;
    use cxb_control_plane::call_tokens;
    use cxb_control_plane::clock::Clock as _;
    let api = Api::start().await;
    let secrets = api.secrets();
    let now = api.clock.now_ms();
    let claims = CallClaims { bot_id: "bot_1".into(), call_id: "call_1".into(), org_id: "org_1".into(), exp: (now / 1000) as u64 + 60, ..CallClaims::default() };
    let token = call_tokens::issue(api.db(), &secrets, now, claims.clone()).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT secret FROM call_token_keys").fetch_all(api.db()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].starts_with("enc:v1:"), "sealed: {}", stored[0]);
    let ring = call_tokens::verifying_ring(api.db(), &secrets, now).await.unwrap();
    assert_eq!(ring.verify(&token, (now / 1000) as u64).map(|c| c.call_id), Ok("call_1".into()));

    // A row from before sealing: the same key in plain text.
    let plain = secrets.open(&stored[0]).unwrap();
    sqlx::query("UPDATE call_token_keys SET secret = $1").bind(&plain).execute(api.db()).await.unwrap();
    assert_eq!(cxb_control_plane::secrets::seal_stored_rows(api.db(), &secrets, false).await.unwrap(), 1);
    let resealed: String = sqlx::query_scalar("SELECT secret FROM call_token_keys").fetch_one(api.db()).await.unwrap();
    assert!(resealed.starts_with("enc:v1:") && !resealed.contains(&plain), "{resealed}");
    let ring = call_tokens::verifying_ring(api.db(), &secrets, now).await.unwrap();
    assert!(ring.verify(&token, (now / 1000) as u64).is_ok(), "the key is the same");
}
