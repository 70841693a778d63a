//! Fleet tokens through HTTP: each reaches only its scope's routes (`engine`: heartbeat, runtime
//! bots, results, knowledge search; `dialler`: reservations; both: the live hosts); an engine
//! token heartbeats as one host only, bound when it was made or by its first heartbeat, and
//! learns nothing of another host; hosts advertise `wss://`, or `ws://` to loopback only.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, Reply};
use cxb_control_plane::admin;
use cxb_control_plane::auth::FleetScope;
use cxb_control_plane::clock::Clock;
use cxb_control_plane::db::{new_id, new_secret, token_hash};
use reqwest::Method;
use serde_json::{Value, json};

fn beat(host: &str, address: &str, free: u64) -> Value {
    json!({"host_id": host, "address": address, "workers": 1, "slots_total": 4, "slots_free": free, "live_calls": 4 - free})
}

async fn token(api: &Api, scope: FleetScope, host: Option<&str>) -> String {
    admin::create_scoped_fleet_token(api.db(), "test", scope, host, api.clock.now_ms()).await.unwrap()
}

async fn heartbeat(api: &Api, token: &str, host: &str, address: &str) -> Reply {
    api.post("/v1/runtime/hosts/heartbeat", token, beat(host, address, 4)).await
}

/// The host a token is bound to, and since when.
async fn binding(api: &Api, token: &str) -> (Option<String>, Option<i64>) {
    sqlx::query_as("SELECT host_id, bound_at FROM fleet_tokens WHERE token_hash = $1").bind(token_hash(token)).fetch_one(api.db()).await.unwrap()
}

/// The live hosts' ids and addresses, as an admin sees them.
async fn hosts(api: &Api, admin: &str) -> Vec<(String, String)> {
    let r = api.get("/v1/fleet/hosts", admin).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"].as_array().unwrap().iter().map(|h| (h["host_id"].as_str().unwrap().into(), h["address"].as_str().unwrap().into())).collect()
}

fn tokens(answer: &Reply, list: &str) -> Vec<String> {
    answer.body[list].as_array().unwrap().iter().map(|r| r.as_str().or_else(|| r["token"].as_str()).unwrap().to_string()).collect()
}

#[tokio::test]
async fn each_fleet_token_reaches_only_its_scopes_routes() {
    let api = Api::start().await;
    let admin = api.org("Ops").await;
    let bot = api.post("/v1/bots", &admin, json!({"name": "Support"})).await.body["id"].as_str().unwrap().to_string();
    let engine = api.fleet_token().await;
    let dialler = token(&api, FleetScope::Dialler, None).await;

    // A dialler token reaches none of the engine's routes, whatever it sends.
    let refused = [
        api.post("/v1/runtime/hosts/heartbeat", &dialler, beat("e1:8443", "wss://e1.example:8443", 4)).await,
        api.get(&format!("/v1/runtime/bots/{bot}"), &dialler).await,
        api.post("/v1/runtime/results", &dialler, json!({})).await,
        api.post("/v1/runtime/knowledge/search", &dialler, json!({"bot_id": bot, "query": "refund"})).await,
    ];
    for r in &refused {
        assert_eq!((r.status, r.code()), (403, "wrong_scope"), "{}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().contains("`engine`"), "{}", r.body);
    }
    // An engine token reaches them (reading a bot needs no binding) but cannot reserve.
    assert_eq!(api.get(&format!("/v1/runtime/bots/{bot}"), &engine).await.status, 200);
    assert_eq!(binding(&api, &engine).await, (None, None), "reading binds nothing");
    assert_eq!(heartbeat(&api, &engine, "e1:8443", "wss://e1.example:8443").await.status, 200);
    let r = api.call(Method::POST, "/v1/fleet/reserve", &engine, None).await;
    assert_eq!((r.status, r.code()), (403, "wrong_scope"), "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("`dialler`"), "{}", r.body);

    // The dialler reserves on the engine's host; both read the live hosts, as an admin does.
    let r = api.call(Method::POST, "/v1/fleet/reserve", &dialler, None).await;
    assert_eq!((r.status, r.body["host_id"].as_str()), (201, Some("e1:8443")), "{}", r.body);
    for who in [&engine, &dialler, &admin] {
        let r = api.get("/v1/fleet/hosts", who).await;
        assert_eq!((r.status, r.body["items"][0]["pending_reservations"].as_i64()), (200, Some(1)), "{}", r.body);
    }
    // People reach neither; unknown fleet tokens are unknown.
    let r = api.call(Method::POST, "/v1/fleet/reserve", &admin, None).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    assert_eq!(api.call(Method::POST, "/v1/fleet/reserve", "cxf_unknown", None).await.status, 401);
    assert_eq!(api.get("/v1/fleet/hosts", "cxf_unknown").await.status, 401);
}

#[tokio::test]
async fn tokens_made_before_scopes_are_unbound_engine_tokens() {
    let api = Api::start().await;
    // A row as `create_fleet_token` wrote it before the migration: no scope, no host.
    let old = new_secret("cxf");
    sqlx::query("INSERT INTO fleet_tokens (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(new_id("flt", api.clock.now_ms()))
        .bind("old")
        .bind(token_hash(&old))
        .bind(api.clock.now_ms())
        .execute(api.db())
        .await
        .unwrap();
    let scope: String = sqlx::query_scalar("SELECT scope FROM fleet_tokens WHERE token_hash = $1").bind(token_hash(&old)).fetch_one(api.db()).await.unwrap();
    assert_eq!(scope, "engine");
    assert_eq!(api.call(Method::POST, "/v1/fleet/reserve", &old, None).await.code(), "wrong_scope");
    assert_eq!(heartbeat(&api, &old, "old:8080", "ws://127.0.0.1:8080").await.status, 200);
    assert_eq!(binding(&api, &old).await, (Some("old:8080".into()), Some(api.clock.now_ms())));
    // The wrapper older callers use makes the same kind of token.
    let wrapper = api.fleet_token().await;
    assert_eq!(binding(&api, &wrapper).await, (None, None));
    assert_eq!(api.call(Method::POST, "/v1/fleet/reserve", &wrapper, None).await.code(), "wrong_scope");
}

#[tokio::test]
async fn an_engine_token_is_bound_to_the_first_host_it_heartbeats_as() {
    let api = Api::start().await;
    let admin = api.org("Ops").await;
    let dialler = token(&api, FleetScope::Dialler, None).await;
    let e1 = token(&api, FleetScope::Engine, None).await;

    let first = heartbeat(&api, &e1, "e1:8443", "wss://e1.example:8443").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(!first.body["call_token_keys"].as_array().unwrap().is_empty(), "{}", first.body);
    assert_eq!(binding(&api, &e1).await, (Some("e1:8443".into()), Some(api.clock.now_ms())));
    let reserved = api.call(Method::POST, "/v1/fleet/reserve", &dialler, None).await;
    assert_eq!(reserved.status, 201, "{}", reserved.body);
    let reservation = reserved.body["token"].as_str().unwrap().to_string();

    // The same token as another host: refused, with nothing of either host, and nothing written.
    api.clock.advance_ms(1_000);
    let other = api.post("/v1/runtime/hosts/heartbeat", &e1, json!({"host_id": "e2:8443", "address": "wss://e2.example:8443", "workers": 1,
        "slots_total": 4, "slots_free": 4, "live_calls": 0, "applied": [reservation]})).await;
    assert_eq!((other.status, other.code()), (403, "wrong_host"), "{}", other.body);
    assert!(other.body["error"]["message"].as_str().unwrap().contains("e1:8443"), "{}", other.body);
    assert_eq!(other.body.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()), Some(vec!["error".to_string()]));
    assert_eq!(hosts(&api, &admin).await, [("e1:8443".to_string(), "wss://e1.example:8443".to_string())]);
    assert_eq!(binding(&api, &e1).await.0.as_deref(), Some("e1:8443"));

    // Another unbound token cannot claim the bound host either: its reservation stays e1's.
    let e2 = token(&api, FleetScope::Engine, None).await;
    let claim = heartbeat(&api, &e2, "e1:8443", "wss://attacker.example").await;
    assert_eq!((claim.status, claim.code()), (403, "wrong_host"), "{}", claim.body);
    assert_eq!(binding(&api, &e2).await, (None, None));
    assert_eq!(hosts(&api, &admin).await, [("e1:8443".to_string(), "wss://e1.example:8443".to_string())], "the address is not taken over");
    let own = heartbeat(&api, &e1, "e1:8443", "wss://e1.example:8443").await;
    assert_eq!((own.status, tokens(&own, "reservations")), (200, vec![reservation]), "{}", own.body);

    // That token binds to a host of its own, and it too stays with it.
    assert_eq!(heartbeat(&api, &e2, "e2:8443", "wss://e2.example:8443").await.status, 200);
    assert_eq!(binding(&api, &e2).await.0.as_deref(), Some("e2:8443"));
    assert_eq!(heartbeat(&api, &e2, "e1:8443", "wss://e2.example:8443").await.code(), "wrong_host");
    assert_eq!(hosts(&api, &admin).await.len(), 2);
}

#[tokio::test]
async fn first_heartbeats_racing_for_one_host_bind_one_token() {
    let api = Api::start().await;
    let (a, b) = (token(&api, FleetScope::Engine, None).await, token(&api, FleetScope::Engine, None).await);
    let (ra, rb) = tokio::join!(heartbeat(&api, &a, "e1:8443", "wss://a.example"), heartbeat(&api, &b, "e1:8443", "wss://b.example"));
    let mut statuses = [(ra.status, ra.code().to_string()), (rb.status, rb.code().to_string())];
    statuses.sort();
    assert_eq!(statuses, [(200, String::new()), (403, "wrong_host".to_string())], "{} {}", ra.body, rb.body);
    let bound = [binding(&api, &a).await.0, binding(&api, &b).await.0];
    assert_eq!(bound.iter().flatten().collect::<Vec<_>>(), ["e1:8443"]);

    // One token racing as two hosts ends bound to one of them.
    let c = token(&api, FleetScope::Engine, None).await;
    let (r1, r2) = tokio::join!(heartbeat(&api, &c, "c1:8443", "wss://c.example"), heartbeat(&api, &c, "c2:8443", "wss://c.example"));
    let mut statuses = [(r1.status, r1.code().to_string()), (r2.status, r2.code().to_string())];
    statuses.sort();
    assert_eq!(statuses, [(200, String::new()), (403, "wrong_host".to_string())], "{} {}", r1.body, r2.body);
    let winner = if r1.status == 200 { "c1:8443" } else { "c2:8443" };
    assert_eq!(binding(&api, &c).await.0.as_deref(), Some(winner));
}

#[tokio::test]
async fn an_engine_token_made_for_a_host_heartbeats_as_that_host_only() {
    let api = Api::start().await;
    let admin = api.org("Ops").await;
    let e1 = token(&api, FleetScope::Engine, Some("e1:8443")).await;
    assert_eq!(binding(&api, &e1).await, (Some("e1:8443".into()), Some(api.clock.now_ms())));

    let r = heartbeat(&api, &e1, "e2:8443", "wss://e2.example:8443").await;
    assert_eq!((r.status, r.code()), (403, "wrong_host"), "{}", r.body);
    assert!(hosts(&api, &admin).await.is_empty());
    // Its host is its own from the start: an unbound token cannot claim it first.
    let early = api.fleet_token().await;
    assert_eq!(heartbeat(&api, &early, "e1:8443", "wss://e1.example:8443").await.code(), "wrong_host");
    assert_eq!(heartbeat(&api, &e1, "e1:8443", "wss://e1.example:8443").await.status, 200);
    assert_eq!(hosts(&api, &admin).await, [("e1:8443".to_string(), "wss://e1.example:8443".to_string())]);

    // Dialler tokens have no host; host ids are checked as heartbeats check them.
    let now = api.clock.now_ms();
    assert!(admin::create_scoped_fleet_token(api.db(), "d", FleetScope::Dialler, Some("e1:8443"), now).await.is_err());
    assert!(admin::create_scoped_fleet_token(api.db(), "e", FleetScope::Engine, Some(""), now).await.is_err());
    assert!(admin::create_scoped_fleet_token(api.db(), "e", FleetScope::Engine, Some(&"h".repeat(201)), now).await.is_err());
    assert_eq!("dialler".parse::<FleetScope>(), Ok(FleetScope::Dialler));
    assert!("admin".parse::<FleetScope>().is_err());
}

#[tokio::test]
async fn hosts_advertise_wss_and_plain_ws_only_to_loopback() {
    let api = Api::start().await;
    let admin = api.org("Ops").await;
    let engine = api.fleet_token().await;

    // Refused: plain ws:// to a host that is not loopback, or no WebSocket base URL at all. A
    // refused heartbeat registers nothing and binds nothing.
    for address in ["ws://10.0.0.1:8080", "ws://203.0.113.7:8080", "ws://engine.example", "ws://localhost.example:8080", "ws://0.0.0.0:8080", "wss://u:p@engine.example", "http://127.0.0.1:8080"] {
        let r = heartbeat(&api, &engine, "e1:8080", address).await;
        assert_eq!((r.status, r.code(), r.body["error"]["field"].as_str()), (422, "validation_failed", Some("address")), "{address}: {}", r.body);
    }
    assert!(hosts(&api, &admin).await.is_empty());
    assert_eq!(binding(&api, &engine).await, (None, None));
    let r = heartbeat(&api, &engine, "e1:8080", "ws://10.0.0.1:8080").await;
    assert!(r.body["error"]["message"].as_str().unwrap().contains("wss://"), "{}", r.body);

    // Accepted: wss:// anywhere, ws:// to loopback (what `cxb up` advertises).
    for address in ["ws://127.0.0.1:8080", "ws://127.0.0.2:8080", "ws://[::1]:8080", "ws://localhost:8080", "wss://10.0.0.1:8443", "wss://engine.example", "wss://edge.example/e1"] {
        let r = heartbeat(&api, &engine, "e1:8080", address).await;
        assert_eq!(r.status, 200, "{address}: {}", r.body);
        assert_eq!(hosts(&api, &admin).await, [("e1:8080".to_string(), address.to_string())]);
    }
}
