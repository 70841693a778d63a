//! The API through HTTP against a real SQLite database: accounts and access, organization
//! isolation for every resource, validation and errors, campaigns and contacts, call records,
//! webhooks, the fleet registry, and the OpenAPI document.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, product};
use cxb_control_plane::admin;
use cxb_control_plane::auth::FleetScope;
use cxb_control_plane::clock::Clock;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn sign_in_sessions_expire_and_failures_are_rate_limited() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let me = api.get("/v1/me", &token).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["role"], "admin");
    assert_eq!(me.body["org"]["name"], "Acme");

    // No token, a malformed header, an unknown token.
    assert_eq!(api.raw(Method::GET, "/v1/me", None, None).await.status, 401);
    assert_eq!(api.get("/v1/me", "cxs_nope").await.status, 401);
    assert_eq!(api.get("/v1/me", "garbage").await.code(), "unauthorized");

    // Five wrong passwords lock the account (429 with Retry-After), even with the right one.
    let login = |password: &'static str| {
        let body = serde_json::to_vec(&json!({"email": "admin@acme.example", "password": password})).unwrap();
        api.raw(Method::POST, "/v1/auth/login", None, Some(("application/json", body)))
    };
    for _ in 0..5 {
        assert_eq!(login("wrong password!").await.status, 401);
    }
    let locked = login("a long enough password").await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert_eq!(locked.code(), "rate_limited");
    assert!(locked.headers.get("retry-after").is_some());
    api.clock.advance_ms(15 * 60 * 1000 + 1);
    assert_eq!(login("a long enough password").await.status, 200);

    // Sessions expire after 12 hours and end at sign-out.
    api.clock.advance_ms(12 * 3600 * 1000);
    assert_eq!(api.get("/v1/me", &token).await.status, 401);
    let fresh = api.login("admin@acme.example", "a long enough password").await;
    assert_eq!(api.call(Method::POST, "/v1/auth/logout", &fresh, None).await.status, 204);
    assert_eq!(api.get("/v1/me", &fresh).await.status, 401);

    // Only hashes are stored.
    let stored: Vec<String> = sqlx::query_scalar("SELECT password_hash FROM users").fetch_all(api.db()).await.unwrap();
    assert!(stored.iter().all(|h| h.starts_with("$argon2id$")));
}

#[tokio::test]
async fn api_keys_are_shown_once_scoped_by_role_and_expire() {
    let api = Api::start().await;
    let admin = api.org("Acme").await;
    let created = api.post("/v1/api-keys", &admin, json!({"name": "ci", "role": "viewer", "expires_at": "2026-10-01T00:00:00Z"})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.body["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("cxk_"));
    let listed = api.get("/v1/api-keys", &admin).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert!(!listed.body.to_string().contains(&key), "a listed key shows its value");

    // A viewer key reads but does not write.
    assert_eq!(api.get("/v1/bots", &key).await.status, 200);
    let denied = api.post("/v1/bots", &key, json!({"name": "x"})).await;
    assert_eq!((denied.status, denied.code()), (403, "forbidden"));
    assert_eq!(api.get("/v1/api-keys", &key).await.status, 403);

    // It stops working at its expiry, and when revoked.
    api.clock.advance_ms(11 * 24 * 3600 * 1000);
    assert_eq!(api.get("/v1/bots", &key).await.status, 401);
    let admin = api.login("admin@acme.example", "a long enough password").await;
    let op = api.post("/v1/api-keys", &admin, json!({"name": "ops", "role": "operator"})).await.body["key"].as_str().unwrap().to_string();
    assert_eq!(api.post("/v1/bots", &op, json!({"name": "by key"})).await.status, 201);
    let id = api.get("/v1/api-keys", &admin).await.body["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(api.delete(&format!("/v1/api-keys/{id}"), &admin).await.status, 204);
    assert_eq!(api.get("/v1/bots", &op).await.status, 401);

    // Expiry in the past is refused, naming the field.
    let past = api.post("/v1/api-keys", &admin, json!({"name": "old", "role": "admin", "expires_at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!((past.status, past.body["error"]["field"].as_str()), (422, Some("expires_at")));
}

#[tokio::test]
async fn roles_limit_what_users_do() {
    let api = Api::start().await;
    let admin = api.org("Acme").await;
    for (email, role) in [("op@acme.example", "operator"), ("view@acme.example", "viewer")] {
        let r = api.post("/v1/users", &admin, json!({"email": email, "role": role, "password": "another long password"})).await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(r.body.get("password_hash").is_none());
    }
    let dup = api.post("/v1/users", &admin, json!({"email": "OP@acme.example", "role": "viewer", "password": "another long password"})).await;
    assert_eq!(dup.status, 409);
    let short = api.post("/v1/users", &admin, json!({"email": "x@acme.example", "role": "viewer", "password": "short"})).await;
    assert_eq!((short.status, short.body["error"]["field"].as_str()), (422, Some("password")));

    let op = api.login("op@acme.example", "another long password").await;
    let viewer = api.login("view@acme.example", "another long password").await;
    assert_eq!(api.post("/v1/bots", &op, json!({"name": "b"})).await.status, 201);
    assert_eq!(api.post("/v1/bots", &viewer, json!({"name": "b"})).await.status, 403);
    assert_eq!(api.patch("/v1/settings", &op, json!({"default_country_code": "1"})).await.status, 403);
    assert_eq!(api.post("/v1/users", &op, json!({"email": "y@acme.example", "role": "admin", "password": "another long password"})).await.status, 403);
    assert_eq!(api.get("/v1/settings", &viewer).await.status, 200);
}

/// Every resource of organization A answers 404 to organization B, exactly like an unknown id.
#[tokio::test]
async fn organizations_never_see_each_other() {
    let api = Api::start().await;
    let a = api.org("Alpha").await;
    let b = api.org("Beta").await;
    let fleet = api.fleet_token().await;
    let (bot, asst, lb, campaign) = product(&api, &a).await;
    let webhook = api.post("/v1/webhooks", &a, json!({"name": "crm", "url": "http://127.0.0.1:9/hook"})).await.body["id"].as_str().unwrap().to_string();
    let contact = api.post(&format!("/v1/campaigns/{campaign}/contacts"), &a, json!({"phone": "+14155550111"})).await.body["id"].as_str().unwrap().to_string();
    let dnc = api.post("/v1/dnc", &a, json!({"phone": "+14155550112"})).await.body["id"].as_str().unwrap().to_string();
    let user = api.post("/v1/users", &a, json!({"email": "u@alpha.example", "role": "viewer", "password": "another long password"})).await.body["id"].as_str().unwrap().to_string();
    let key = api.post("/v1/api-keys", &a, json!({"name": "k", "role": "viewer"})).await.body["id"].as_str().unwrap().to_string();
    let result = json!({"call_id": "call-a-1", "direction": "inbound", "from": "+14155550123", "to": "+14155550100", "bot_id": bot,
        "started_at": "2026-09-21T10:00:00Z", "ended_at": "2026-09-21T10:01:00Z", "outcome": "completed"});
    assert_eq!(api.post("/v1/runtime/results", &fleet, result).await.status, 201);

    let readable = [
        format!("/v1/bots/{bot}"),
        format!("/v1/ai-assistants/{asst}"),
        format!("/v1/load-balancers/{lb}"),
        format!("/v1/webhooks/{webhook}"),
        format!("/v1/webhooks/{webhook}/deliveries"),
        format!("/v1/campaigns/{campaign}"),
        format!("/v1/campaigns/{campaign}/contacts"),
        format!("/v1/campaigns/{campaign}/contacts/{contact}"),
        format!("/v1/users/{user}"),
        "/v1/calls/call-a-1".to_string(),
    ];
    for path in &readable {
        assert_eq!(api.get(path, &a).await.status, 200, "{path} for its owner");
        let other = api.get(path, &b).await;
        assert_eq!((other.status, other.code()), (404, "not_found"), "{path} for another organization");
    }
    for path in [format!("/v1/bots/{bot}"), format!("/v1/ai-assistants/{asst}"), format!("/v1/load-balancers/{lb}"), format!("/v1/webhooks/{webhook}"), format!("/v1/campaigns/{campaign}"), format!("/v1/users/{user}")] {
        assert_eq!(api.patch(&path, &b, json!({"name": "stolen"})).await.status, 404, "PATCH {path}");
    }
    for action in ["start", "pause", "archive"] {
        assert_eq!(api.post(&format!("/v1/campaigns/{campaign}/{action}"), &b, json!({})).await.status, 404);
    }
    assert_eq!(api.post(&format!("/v1/campaigns/{campaign}/contacts"), &b, json!({"phone": "+14155550199"})).await.status, 404);
    let csv = ("text/csv", b"phone\n+14155550198\n".to_vec());
    assert_eq!(api.raw(Method::POST, &format!("/v1/campaigns/{campaign}/contacts/import"), Some(&b), Some(csv)).await.status, 404);
    for path in [
        format!("/v1/bots/{bot}"),
        format!("/v1/ai-assistants/{asst}"),
        format!("/v1/load-balancers/{lb}"),
        format!("/v1/webhooks/{webhook}"),
        format!("/v1/campaigns/{campaign}/contacts/{contact}"),
        format!("/v1/dnc/{dnc}"),
        format!("/v1/users/{user}"),
        format!("/v1/api-keys/{key}"),
    ] {
        assert_eq!(api.delete(&path, &b).await.status, 404, "DELETE {path}");
    }
    // Lists hold only the caller's rows, and references cannot cross organizations.
    for list in ["/v1/bots", "/v1/ai-assistants", "/v1/load-balancers", "/v1/webhooks", "/v1/campaigns", "/v1/dnc", "/v1/calls", "/v1/api-keys"] {
        let items = api.get(list, &b).await.body["items"].as_array().unwrap().len();
        assert_eq!(items, 0, "{list}");
    }
    assert_eq!(api.get("/v1/users", &b).await.body["items"].as_array().unwrap().len(), 1);
    let cross = api.post("/v1/campaigns", &b, json!({"name": "x", "routing": {"type": "ai_assistant", "target_id": asst}})).await;
    assert_eq!((cross.status, cross.body["error"]["field"].as_str()), (422, Some("routing.target_id")));
    let cross = api.post("/v1/load-balancers", &b, json!({"name": "x", "strategy": "random", "members": [{"assistant_id": asst}]})).await;
    assert_eq!((cross.status, cross.body["error"]["field"].as_str()), (422, Some("members[0].assistant_id")));
    // Everything of A is still there.
    for path in &readable {
        assert_eq!(api.get(path, &a).await.status, 200, "{path} after the attempts");
    }
}

#[tokio::test]
async fn bot_secrets_are_write_only_and_validation_names_the_field() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let fleet = api.fleet_token().await;
    let (bot, ..) = product(&api, &token).await;
    let shown = api.get(&format!("/v1/bots/{bot}"), &token).await;
    assert!(!shown.body.to_string().contains("dg-secret"));
    assert_eq!(shown.body["stt"]["secrets_set"], json!(["api_key"]));
    assert_eq!(shown.body["max_call_seconds"], 1800);
    // Lists filter by name (case-insensitive, `%` and `_` taken literally) and page by cursor.
    assert_eq!(api.post("/v1/bots", &token, json!({"name": "Sales 100%"})).await.status, 201);
    for (query, n) in [("name=SUPP", 1), ("name=zzz", 0), ("name=100%25", 1), ("name=_", 0), ("limit=1", 1)] {
        assert_eq!(api.get(&format!("/v1/bots?{query}"), &token).await.body["items"].as_array().unwrap().len(), n, "{query}");
    }
    let first = api.get("/v1/bots?limit=1", &token).await;
    assert_eq!(first.body["items"][0]["name"], "Sales 100%", "newest first");
    let rest = api.get(&format!("/v1/bots?limit=1&cursor={}", first.body["next_cursor"].as_str().unwrap()), &token).await;
    assert_eq!((rest.body["items"][0]["id"].as_str(), &rest.body["next_cursor"]), (Some(bot.as_str()), &Value::Null));

    // A merge patch keeps the secret, and the shown document can be sent back as is.
    let mut back = shown.body.clone();
    back["greeting"] = "Hi there".into();
    let patched = api.patch(&format!("/v1/bots/{bot}"), &token, back).await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["greeting"], "Hi there");
    let runtime = api.get(&format!("/v1/runtime/bots/{bot}"), &fleet).await;
    assert_eq!(runtime.body["stt"]["secrets"]["api_key"], "dg-secret");
    assert_eq!(runtime.body["greeting"], "Hi there");
    assert_eq!(runtime.body["outbound_greeting"], "immediate", "the default");
    assert_eq!(runtime.body["interruptions"]["min_speech_ms"], 500, "the default: {}", runtime.body);
    let patched = api.patch(&format!("/v1/bots/{bot}"), &token, json!({"outbound_greeting": "after_hello"})).await;
    assert_eq!(patched.body["outbound_greeting"], "after_hello", "{}", patched.body);
    let typo = api.patch(&format!("/v1/bots/{bot}"), &token, json!({"llm": {"temprature": 0.2}})).await;
    assert_eq!((typo.status, typo.body["error"]["field"].as_str()), (422, Some("llm.temprature")), "{}", typo.body);
    // Users cannot reach the runtime endpoints, and fleet tokens only those.
    assert_eq!(api.get(&format!("/v1/runtime/bots/{bot}"), &token).await.status, 403);
    assert_eq!(api.get(&format!("/v1/bots/{bot}"), &fleet).await.status, 403);

    for (body, field) in [
        (json!({"name": "x", "stt": {"provider": "nope"}}), "stt.provider"),
        (json!({"name": "x", "tools": [{"kind": "http", "name": "crm", "url": "ftp://x"}]}), "tools[0].url"),
        (json!({"name": "x", "tools": [{"kind": "http"}]}), "tools[0].name"),
        (json!({"name": "x", "max_call_seconds": 5}), "max_call_seconds"),
        (json!({"name": "x", "max_call_seconds": "long"}), "max_call_seconds"),
        (json!({"name": "x", "outbound_greeting": "whenever"}), "outbound_greeting"),
        (json!({"name": "x", "colour": "blue"}), ""),
        // The parts shared with the engine ignore unknown fields there; the API refuses them.
        (json!({"name": "x", "stt": {"provider": "none", "colour": "blue"}}), "stt.colour"),
        (json!({"name": "x", "tools": [{"kind": "end_call"}, {"kind": "end_call", "name": "bye", "timeout": 5}]}), "tools[1].timeout"),
        (json!({"name": "x", "idle": {"snooze": 1}}), "idle.snooze"),
        (json!({"name": "x", "inbound": {"allow": true}}), "inbound.allow"),
        (json!({"name": "x", "answering_machine": {"beep": true}}), "answering_machine.beep"),
        (json!({"name": "x", "interruptions": {"min_speech_ms": 5000}}), "interruptions"),
        (json!({"name": "x", "turn_detection": {"mode": "guess"}}), "turn_detection.mode"),
        (json!({"name": "x", "turn_detection": {"mode": "model", "threshold": 1.5}}), "turn_detection.threshold"),
        (json!({"name": "x", "turn_detection": {"model_after_ms": 900, "max_silence_ms": 800}}), "turn_detection.max_silence_ms"),
        (json!({"name": "x", "interruptions": {"backchannels": ["Yeah right"]}}), "interruptions.backchannels"),
        (json!({"name": "x", "interruptions": {"min_words": -1}}), "interruptions.min_words"),
        (json!({"name": ""}), "name"),
        (json!({"greeting": "no name"}), ""),
    ] {
        let r = api.post("/v1/bots", &token, body.clone()).await;
        assert_eq!(r.status, 422, "{body} -> {}", r.body);
        assert_eq!(r.code(), "validation_failed");
        if !field.is_empty() {
            assert_eq!(r.body["error"]["field"], field, "{body} -> {}", r.body);
        }
    }
}

#[tokio::test]
async fn malformed_requests_get_stable_json_errors() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    type Case<'a> = (Method, &'a str, Option<(&'a str, Vec<u8>)>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (Method::POST, "/v1/bots", Some(("application/json", b"{not json".to_vec())), 400, "bad_request"),
        (Method::POST, "/v1/bots", Some(("application/json", b"[1,2]".to_vec())), 400, "bad_request"),
        (Method::POST, "/v1/bots", Some(("application/json", vec![0xff, 0xfe, 0x00])), 400, "bad_request"),
        (Method::POST, "/v1/bots", Some(("text/plain", b"{}".to_vec())), 415, "unsupported_media_type"),
        (Method::POST, "/v1/bots", Some(("application/json", vec![b' '; 2 << 20])), 413, "payload_too_large"),
        (Method::GET, "/v1/bots?limit=100000", None, 422, "validation_failed"),
        (Method::GET, "/v1/bots?limit=abc", None, 400, "bad_request"),
        (Method::GET, "/v1/calls?since=yesterday", None, 422, "validation_failed"),
        (Method::GET, "/v1/calls?cursor=garbage", None, 422, "validation_failed"),
        (Method::GET, "/v1/nothing-here", None, 404, "route_not_found"),
        (Method::GET, "/v1/bots/bot_doesnotexist", None, 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let r = api.raw(method.clone(), path, Some(&token), body).await;
        assert_eq!((r.status, r.code()), (status, code), "{method} {path}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The server is still fine.
    assert_eq!(api.get("/v1/me", &token).await.status, 200);
}

#[tokio::test]
async fn campaigns_move_through_their_states_and_refuse_the_rest() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let (.., campaign) = product(&api, &token).await;
    let c = api.get(&format!("/v1/campaigns/{campaign}"), &token).await;
    assert_eq!(c.body["state"], "DRAFT");
    assert_eq!(c.body["caller_ids"], json!(["+14155550100"]));
    assert_eq!(c.body["retry"]["max_attempts"], 3);
    let act = |a: &'static str| {
        let path = format!("/v1/campaigns/{campaign}/{a}");
        let api = &api;
        let token = token.clone();
        async move { api.post(&path, &token, json!({})).await }
    };
    assert_eq!(act("pause").await.code(), "invalid_transition");
    assert_eq!(act("start").await.body["state"], "ACTIVE");
    assert_eq!(act("start").await.status, 409);
    assert_eq!(act("archive").await.status, 409);
    assert_eq!(api.delete(&format!("/v1/campaigns/{campaign}"), &token).await.status, 409);
    assert_eq!(act("pause").await.body["state"], "PAUSED");
    assert_eq!(act("resume").await.body["state"], "ACTIVE");
    // Changing CPS while active is allowed.
    assert_eq!(api.patch(&format!("/v1/campaigns/{campaign}"), &token, json!({"cps": 5})).await.body["cps"], 5.0);
    assert_eq!(act("complete").await.body["state"], "COMPLETED");
    assert_eq!(act("resume").await.status, 409);
    assert_eq!(api.patch(&format!("/v1/campaigns/{campaign}"), &token, json!({"cps": 1})).await.status, 409);
    assert_eq!(api.post(&format!("/v1/campaigns/{campaign}/contacts"), &token, json!({"phone": "+14155550111"})).await.status, 409);
    assert_eq!(act("archive").await.body["state"], "ARCHIVED");
    assert_eq!(api.get("/v1/campaigns?state=ARCHIVED", &token).await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(api.get("/v1/campaigns?state=ACTIVE", &token).await.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(api.delete(&format!("/v1/campaigns/{campaign}"), &token).await.status, 204);

    for (body, field) in [
        (json!({"name": "x", "routing": {"type": "hangup"}, "cac": 0}), "cac"),
        (json!({"name": "x", "routing": {"type": "hangup"}, "schedule": {"time_zone": "Mars/Base"}}), "schedule.time_zone"),
        (json!({"name": "x", "routing": {"type": "hangup"}, "schedule": {"windows": [{"days": ["mon"], "start": "17:00", "end": "09:00"}]}}), "schedule.windows[0].end"),
        (json!({"name": "x", "routing": {"type": "hangup"}, "caller_ids": ["12"]}), "caller_ids[0]"),
        (json!({"name": "x", "routing": {"type": "ai_assistant"}}), "routing.target_id"),
        (json!({"name": "x", "routing": {"type": "teleport"}}), "routing.type"),
        (json!({"name": "x", "routing": {"type": "hangup"}, "retry": {"retry_on": ["maybe"]}}), "retry.retry_on[0]"),
    ] {
        let r = api.post("/v1/campaigns", &token, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some(field)), "{body} -> {}", r.body);
    }
}

#[tokio::test]
async fn contacts_import_from_csv_merge_duplicates_and_report_rejections() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let (.., campaign) = product(&api, &token).await;
    api.patch(&format!("/v1/campaigns/{campaign}"), &token, json!({"default_country_code": "1"})).await;
    let one = api.post(&format!("/v1/campaigns/{campaign}/contacts"), &token, json!({"phone": "(415) 555-0101", "name": "Ada", "fields": {"plan": "gold"}})).await;
    assert_eq!(one.status, 201, "{}", one.body);
    assert_eq!(one.body["phone"], "+14155550101");
    assert_eq!(one.body["status"], "pending");

    let csv = "phone,name,timezone,plan\n\
               +1 415 555 0101,Ada L.,America/Los_Angeles,\n\
               415-555-0102,Bob,America/New_York,silver\n\
               not-a-phone,Eve,,\n\
               4155550103,Cy,Nowhere/Land,\n\
               +1 415 555 0102,,,platinum\n";
    let r = api.raw(Method::POST, &format!("/v1/campaigns/{campaign}/contacts/import"), Some(&token), Some(("text/csv", csv.as_bytes().to_vec()))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["imported"], 1, "{}", r.body);
    assert_eq!(r.body["updated"], 1);
    assert_eq!(r.body["merged_in_file"], 1);
    let rejected = r.body["rejected"].as_array().unwrap();
    assert_eq!(rejected.iter().map(|x| x["row"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 5]);

    let list = api.get(&format!("/v1/campaigns/{campaign}/contacts?limit=1"), &token).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let next = list.body["next_cursor"].as_str().unwrap().to_string();
    let rest = api.get(&format!("/v1/campaigns/{campaign}/contacts?limit=10&cursor={next}"), &token).await;
    let all: Vec<Value> = list.body["items"].as_array().unwrap().iter().chain(rest.body["items"].as_array().unwrap()).cloned().collect();
    assert_eq!(all.len(), 2);
    let ada = all.iter().find(|c| c["phone"] == "+14155550101").unwrap();
    assert_eq!((ada["name"].as_str(), ada["time_zone"].as_str(), ada["fields"]["plan"].as_str()), (Some("Ada L."), Some("America/Los_Angeles"), Some("gold")));
    let bob = all.iter().find(|c| c["phone"] == "+14155550102").unwrap();
    assert_eq!(bob["fields"]["plan"], "platinum");

    let no_phone = api.raw(Method::POST, &format!("/v1/campaigns/{campaign}/contacts/import"), Some(&token), Some(("text/csv", b"name\nx\n".to_vec()))).await;
    assert_eq!((no_phone.status, no_phone.body["error"]["field"].as_str()), (422, Some("file")));

    // DNC: normalised, deduplicated, filterable.
    assert_eq!(api.post("/v1/dnc", &token, json!({"phone": "+1 415 555 0101", "note": "asked"})).await.status, 201);
    assert_eq!(api.post("/v1/dnc", &token, json!({"phone": "+14155550101"})).await.status, 200);
    assert_eq!(api.post("/v1/dnc", &token, json!({"phone": "nope"})).await.status, 422);
    let found = api.get("/v1/dnc?phone=%2B14155550101", &token).await;
    assert_eq!(found.body["items"][0]["note"], "asked");
}

#[tokio::test]
async fn call_results_are_stored_once_filtered_and_sent_to_webhooks_with_signatures() {
    use axum::extract::State;
    use std::sync::{Arc, Mutex};

    // A CRM that fails its first request, then accepts.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;
    let seen: Seen = Arc::default();
    let receiver = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|State(seen): State<Seen>, headers: axum::http::HeaderMap, body: String| async move {
                let sig = headers.get("x-cxb-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let mut seen = seen.lock().unwrap();
                seen.push((sig, body));
                if seen.len() == 1 { axum::http::StatusCode::INTERNAL_SERVER_ERROR } else { axum::http::StatusCode::NO_CONTENT }
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let crm = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let api = Api::start().await;
    let token = api.org("Acme").await;
    let fleet = api.fleet_token().await;
    let (bot, _, _, campaign) = product(&api, &token).await;
    let hook = api.post("/v1/webhooks", &token, json!({"name": "crm", "url": format!("http://{crm}/hook")})).await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let secret = hook.body["signing_secret"].as_str().unwrap().to_string();
    let hook_id = hook.body["id"].as_str().unwrap().to_string();
    assert!(!api.get(&format!("/v1/webhooks/{hook_id}"), &token).await.body.to_string().contains(&secret));

    let result = json!({
        "call_id": "CA123", "direction": "outbound", "from": "+14155550100", "to": "+14155550123", "bot_id": bot, "campaign_id": campaign,
        "started_at": "2026-09-21T10:00:00Z", "answered_at": "2026-09-21T10:00:05Z", "ended_at": "2026-09-21T10:01:05Z",
        "outcome": "completed", "end_reason": "bot ended the call",
        "transcript": [{"role": "bot", "text": "Hello", "at_ms": 100}, {"role": "caller", "text": "Hi", "at_ms": 1500}],
        "costs": [{"item": "stt", "quantity": 60, "unit": "seconds", "amount": 0.0043, "currency": "USD"}],
    });
    let first = api.post("/v1/runtime/results", &fleet, result.clone()).await;
    assert_eq!((first.status, &first.body["duplicate"]), (201, &json!(false)), "{}", first.body);
    let again = api.post("/v1/runtime/results", &fleet, result.clone()).await;
    assert_eq!((again.status, &again.body["duplicate"]), (200, &json!(true)));
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls").fetch_one(api.db()).await.unwrap();
    assert_eq!(n, 1);
    let bad = api.post("/v1/runtime/results", &fleet, json!({"call_id": "x y", "direction": "inbound", "from": "a", "to": "b", "org_id": "org_x", "started_at": "now", "outcome": "completed"})).await;
    assert_eq!((bad.status, bad.body["error"]["field"].as_str()), (422, Some("call_id")));

    let call = api.get("/v1/calls/CA123", &token).await;
    assert_eq!(call.body["duration_ms"], 60_000);
    assert_eq!(call.body["transcript"][1]["text"], "Hi");
    for (query, n) in [("outcome=completed", 1), ("outcome=busy", 0), (&format!("campaign_id={campaign}"), 1), ("since=2026-09-21T10:00:01Z", 0), ("until=2026-09-21T10:00:01Z", 1)] {
        assert_eq!(api.get(&format!("/v1/calls?{query}"), &token).await.body["items"].as_array().unwrap().len(), n, "{query}");
    }

    // First attempt fails (500), the retry after the back-off succeeds; both are logged.
    assert_eq!(api.server.deliver_webhooks().await, 1);
    assert_eq!(api.server.deliver_webhooks().await, 0, "not due before its back-off");
    api.clock.advance_ms(10_000);
    assert_eq!(api.server.deliver_webhooks().await, 1);
    let log = api.get(&format!("/v1/webhooks/{hook_id}/deliveries"), &token).await;
    let d = &log.body["items"][0];
    assert_eq!((d["status"].as_str(), d["attempts"].as_i64(), d["last_status"].as_i64()), (Some("delivered"), Some(2), Some(204)), "{}", log.body);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let (sig, body) = &seen[1];
    let t = sig.split(',').next().unwrap().trim_start_matches("t=").parse::<i64>().unwrap();
    assert_eq!(sig, &cxb_control_plane_signature(&secret, t, body));
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!((payload["event"].as_str(), payload["data"]["id"].as_str()), (Some("call.completed"), Some("CA123")));
}

/// Recomputes the signature independently of the API's code.
fn cxb_control_plane_signature(secret: &str, t: i64, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

fn beat(host: &str, free: u64, applied: &[&str]) -> Value {
    json!({"host_id": host, "address": format!("wss://{host}"), "workers": 2, "slots_total": 10, "slots_free": free, "live_calls": 10 - free, "applied": applied})
}

#[tokio::test]
async fn fleet_reserves_atomically_on_the_freest_live_host() {
    let api = Api::start().await;
    // One engine token per host (each binds to its first heartbeat's host); a dialler reserves.
    let (fleet, fleet2) = (api.fleet_token().await, api.fleet_token().await);
    let dialler = admin::create_scoped_fleet_token(api.db(), "dialler", FleetScope::Dialler, None, api.clock.now_ms()).await.unwrap();
    let admin = api.org("Ops").await;
    assert_eq!(api.post("/v1/runtime/hosts/heartbeat", &fleet, beat("10.0.0.1:8080", 3, &[])).await.status, 200);
    assert_eq!(api.post("/v1/runtime/hosts/heartbeat", &fleet2, beat("10.0.0.2:8080", 1, &[])).await.status, 200);
    let hosts = api.get("/v1/fleet/hosts", &admin).await;
    assert_eq!(hosts.body["items"][0]["host_id"], "10.0.0.1:8080", "{}", hosts.body);
    assert_eq!(api.get("/v1/fleet/hosts", &fleet).await.body["items"].as_array().unwrap().len(), 2);

    // 12 concurrent reservations for 4 free slots: exactly 4 succeed, 3 on the freer host.
    let tries = (0..12).map(|_| api.call(Method::POST, "/v1/fleet/reserve", &dialler, None));
    let replies = futures_join_all(tries).await;
    let ok: Vec<&Value> = replies.iter().filter(|r| r.status == 201).map(|r| &r.body).collect();
    assert_eq!(ok.len(), 4, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(replies.iter().filter(|r| r.status != 201).all(|r| r.status == 503 && r.code() == "no_capacity"));
    assert_eq!(ok.iter().filter(|b| b["host_id"] == "10.0.0.1:8080").count(), 3);
    let tokens: Vec<String> = ok.iter().filter(|b| b["host_id"] == "10.0.0.1:8080").map(|b| b["token"].as_str().unwrap().to_string()).collect();
    assert!(tokens.iter().all(|t| t.len() == 16 && t.starts_with("ff")));

    // The host learns of its reservations in the heartbeat answer, and once it confirms them
    // they stop counting twice: its own free count already excludes them.
    let answer = api.post("/v1/runtime/hosts/heartbeat", &fleet, beat("10.0.0.1:8080", 3, &[])).await;
    let mut offered: Vec<String> = answer.body["reservations"].as_array().unwrap().iter().map(|r| r["token"].as_str().unwrap().to_string()).collect();
    offered.sort();
    let mut expected = tokens.clone();
    expected.sort();
    assert_eq!(offered, expected);
    assert_eq!(api.call(Method::POST, "/v1/fleet/reserve", &dialler, None).await.status, 503);
    let applied: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let answer = api.post("/v1/runtime/hosts/heartbeat", &fleet, beat("10.0.0.1:8080", 0, &applied)).await;
    assert_eq!(answer.body["reservations"], json!([]));
    assert_eq!(api.call(Method::POST, "/v1/fleet/reserve", &dialler, None).await.status, 503);
    api.post("/v1/runtime/hosts/heartbeat", &fleet, beat("10.0.0.1:8080", 2, &[])).await;
    assert_eq!(api.call(Method::POST, "/v1/fleet/reserve", &dialler, None).await.status, 201);

    // A host that stops heartbeating drops out after the TTL (10 s).
    api.clock.advance_ms(9_000);
    api.post("/v1/runtime/hosts/heartbeat", &fleet2, beat("10.0.0.2:8080", 1, &[])).await;
    api.clock.advance_ms(2_000);
    let live = api.get("/v1/fleet/hosts", &fleet).await;
    assert_eq!(live.body["items"].as_array().unwrap().iter().map(|h| h["host_id"].as_str().unwrap()).collect::<Vec<_>>(), ["10.0.0.2:8080"]);

    // Bad reports are refused; users cannot heartbeat.
    let bad = api.post("/v1/runtime/hosts/heartbeat", &fleet, json!({"host_id": "h", "address": "http://h", "workers": 1, "slots_total": 1, "slots_free": 1, "live_calls": 0})).await;
    assert_eq!((bad.status, bad.body["error"]["field"].as_str()), (422, Some("address")));
    assert_eq!(api.post("/v1/runtime/hosts/heartbeat", &admin, beat("h:1", 1, &[])).await.status, 403);
}

async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.collect();
    let mut out = Vec::new();
    // Poll them together on this task.
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = handles.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

#[tokio::test]
async fn every_route_is_documented_and_answers() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let doc = api.raw(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc.body["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for method in ["get", "post", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let concrete = path.replace("{id}", "x").replace("{contact_id}", "y");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = api.raw(m, &concrete, Some(&token), None).await;
            assert_ne!(r.code(), "route_not_found", "{method} {path} is documented but not routed");
            assert_ne!(r.status, 405, "{method} {path}");
        }
    }
    assert!(operations >= 50, "{operations} operations");
    // Schemas referenced by the document exist in it.
    let text = doc.body.to_string();
    for name in ["Bot", "Campaign", "CallResult", "Heartbeat", "Error", "Settings", "Webhook", "LoadBalancer", "AiAssistant"] {
        assert!(doc.body["components"]["schemas"].get(name).is_some(), "schema {name}");
    }
    assert!(text.contains("#/components/schemas/Provider"));

    let health = api.raw(Method::GET, "/health", None, None).await;
    assert_eq!((health.status, health.body["database"].as_bool()), (200, Some(true)));
    let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("cxb_api_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/v1/openapi.json\""));
}

#[tokio::test]
async fn phone_numbers_route_sip_calls_to_bots_with_their_trunks_credentials() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let other = api.org("Other").await;
    let fleet = api.fleet_token().await;
    let (bot, ..) = product(&api, &token).await;
    let created = api
        .post(
            "/v1/phone-numbers",
            &token,
            json!({"number": "+15550100", "bot_id": bot, "allowed_sources": ["203.0.113.7", "2001:db8::1/32"], "digest_username": "trunk", "secrets": {"digest_password": "a long trunk secret"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["allowed_sources"], json!(["203.0.113.7/32", "2001:db8::/32"]), "normalised");
    assert!(!created.body.to_string().contains("a long trunk secret"), "the password is write-only");
    // The engine sees the route with the secret open; users and other organizations do not.
    let runtime = api.get("/v1/runtime/phone-numbers/+15550100", &fleet).await;
    assert_eq!(runtime.status, 200, "{}", runtime.body);
    assert_eq!((runtime.body["bot_id"].as_str(), runtime.body["digest_password"].as_str()), (Some(bot.as_str()), Some("a long trunk secret")));
    assert!(runtime.body["org_id"].as_str().is_some_and(|o| !o.is_empty()));
    assert_eq!(api.get("/v1/runtime/phone-numbers/+15550100", &token).await.status, 403);
    assert_eq!(api.get("/v1/runtime/phone-numbers/+15550199", &fleet).await.status, 404);
    assert_eq!(api.get(&format!("/v1/phone-numbers/{id}"), &other).await.status, 404);
    // One number, one route across the platform.
    let taken = api.post("/v1/phone-numbers", &other, json!({"number": "+15550100", "bot_id": "echo", "allowed_sources": ["127.0.0.1"]})).await;
    assert_eq!((taken.status, taken.body["error"]["code"].as_str()), (409, Some("already_exists")), "{}", taken.body);
    // A disabled number routes nowhere.
    assert_eq!(api.patch(&format!("/v1/phone-numbers/{id}"), &token, json!({"enabled": false})).await.status, 200);
    assert_eq!(api.get("/v1/runtime/phone-numbers/+15550100", &fleet).await.status, 404);
    for (body, field) in [
        (json!({"number": "+15550101", "bot_id": "echo"}), "allowed_sources"),
        (json!({"number": "+1 555", "bot_id": "echo", "allowed_sources": ["127.0.0.1"]}), "number"),
        (json!({"number": "+12", "bot_id": "echo", "allowed_sources": ["127.0.0.1"]}), "number"),
        (json!({"number": "sales", "bot_id": "nope", "allowed_sources": ["127.0.0.1"]}), "bot_id"),
        (json!({"number": "sales", "bot_id": "echo", "allowed_sources": ["10.0.0.0/33"]}), "allowed_sources[0]"),
        (json!({"number": "sales", "bot_id": "echo", "digest_username": "u"}), "secrets.digest_password"),
        (json!({"number": "sales", "bot_id": "echo", "digest_username": "u", "secrets": {"digest_password": "short"}}), "secrets.digest_password"),
    ] {
        let r = api.post("/v1/phone-numbers", &token, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some(field)), "{body}: {}", r.body);
    }
    assert_eq!(api.post("/v1/phone-numbers", &token, json!({"number": "sales", "bot_id": "echo", "allowed_sources": ["127.0.0.1"]})).await.status, 201);

    // The organization's outbound trunk: its fields are checked and named when wrong.
    let trunk = |sip: Value| json!({"carrier": {"provider": "sip", "sip": sip}});
    let ok = api.patch("/v1/settings", &token, trunk(json!({"host": "sip.example.com", "port": 5080, "transport": "tcp", "caller_id_header": "pai"}))).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["carrier"]["sip"]["transport"], "tcp");
    for (sip, field) in [
        (json!({"host": "sip.example.com", "transport": "tls"}), "carrier.sip.transport"),
        (json!({"host": "sip.example.com", "caller_id_header": "x"}), "carrier.sip.caller_id_header"),
        (json!({"host": "bad host"}), "carrier.sip.host"),
        (json!({"host": "h", "port": 0}), "carrier.sip.port"),
    ] {
        let r = api.patch("/v1/settings", &token, trunk(sip.clone())).await;
        assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some(field)), "{sip}: {}", r.body);
    }
}

#[tokio::test]
async fn campaign_statistics_rank_durations_and_first_audio_in_the_database() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let fleet = api.fleet_token().await;
    let (bot, _, _, campaign) = product(&api, &token).await;
    let empty = api.get(&format!("/v1/campaigns/{campaign}/stats"), &token).await.body;
    assert_eq!((&empty["duration_ms"]["average"], &empty["answer_to_first_audio_ms"]["p50"]), (&Value::Null, &Value::Null), "{empty}");
    // 20 answered calls of 1..=20 s with first audio 100..=2000 ms, and two unanswered.
    for i in 1..=22u32 {
        let answered = i <= 20;
        let mut result = json!({
            "call_id": format!("CA{i:03}"), "direction": "outbound", "from": "+14155550100", "to": "+14155550123", "bot_id": bot, "campaign_id": campaign,
            "started_at": "2026-09-21T10:00:00Z", "ended_at": format!("2026-09-21T10:00:{:02}Z", if answered { i } else { 30 }),
            "outcome": if answered { "completed" } else { "no_answer" }, "end_reason": "caller_hangup",
        });
        if answered {
            result["answered_at"] = json!("2026-09-21T10:00:00Z");
            result["metrics"] = json!({"answer_to_first_audio_ms": i * 100});
        }
        assert_eq!(api.post("/v1/runtime/results", &fleet, result).await.status, 201);
    }
    let stats = api.get(&format!("/v1/campaigns/{campaign}/stats"), &token).await.body;
    assert_eq!((stats["attempts"].as_i64(), stats["answered"].as_i64(), stats["no_answer"].as_i64()), (Some(22), Some(20), Some(2)), "{stats}");
    // Nearest rank: the 95th percentile of 20 values is the 19th.
    assert_eq!((stats["duration_ms"]["average"].as_i64(), stats["duration_ms"]["p95"].as_i64()), (Some(10_500), Some(19_000)), "{stats}");
    let fa = &stats["answer_to_first_audio_ms"];
    assert_eq!((fa["p50"].as_i64(), fa["p95"].as_i64(), fa["calls"].as_i64()), (Some(1_000), Some(1_900), Some(20)), "{stats}");
}
