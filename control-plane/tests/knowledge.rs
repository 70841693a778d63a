//! Bots' knowledge bases through HTTP: documents added, listed and deleted per bot and
//! organization, chunked, and searched by engines with a fleet token.

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use reqwest::Method;
use serde_json::{Value, json};

async fn new_bot(api: &Api, token: &str, name: &str) -> String {
    let r = api.post("/v1/bots", token, json!({"name": name})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

async fn add(api: &Api, token: &str, bot: &str, title: &str, text: &str) -> String {
    let r = api.post(&format!("/v1/bots/{bot}/knowledge"), token, json!({"title": title, "text": text})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

fn ids(page: &Value) -> Vec<&str> {
    page["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect()
}

async fn chunk_count(api: &Api, doc: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM knowledge_chunks WHERE document_id = $1").bind(doc).fetch_one(api.db()).await.unwrap()
}

#[tokio::test]
async fn documents_are_added_chunked_listed_and_deleted() {
    let api = Api::start().await;
    let admin = api.org("Acme").await;
    let bot = new_bot(&api, &admin, "Support").await;
    let long: String = (0..40).map(|i| format!("Sentence number {i} talks about warranty coverage for devices. ")).collect();
    let created = api.post(&format!("/v1/bots/{bot}/knowledge"), &admin, json!({"title": "  Warranty  ", "text": long})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["title"], "Warranty");
    assert_eq!(created.body["bot_id"], bot.as_str());
    assert_eq!(created.body["bytes"], long.len());
    let chunks = created.body["chunks"].as_i64().unwrap();
    assert!(chunks >= 4, "{chunks} chunks for {} bytes", long.len());
    let first = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(chunk_count(&api, &first).await, chunks);
    let texts: Vec<String> = sqlx::query_scalar("SELECT text FROM knowledge_chunks WHERE document_id = $1 ORDER BY seq").bind(&first).fetch_all(api.db()).await.unwrap();
    assert!(texts.iter().all(|t| t.chars().count() <= 700 && t.ends_with('.')), "{texts:?}");

    let second = add(&api, &admin, &bot, "Hours", "We open at nine.").await;
    let listed = api.get(&format!("/v1/bots/{bot}/knowledge"), &admin).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(ids(&listed.body), vec![second.as_str(), first.as_str()], "newest first");
    let page = api.get(&format!("/v1/bots/{bot}/knowledge?limit=1"), &admin).await;
    assert_eq!(ids(&page.body), vec![second.as_str()]);
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = api.get(&format!("/v1/bots/{bot}/knowledge?limit=1&cursor={cursor}"), &admin).await;
    assert_eq!((ids(&rest.body), &rest.body["next_cursor"]), (vec![first.as_str()], &Value::Null));

    // Viewers read, operators write.
    let viewer = api.post("/v1/api-keys", &admin, json!({"name": "v", "role": "viewer"})).await.body["key"].as_str().unwrap().to_string();
    let operator = api.post("/v1/api-keys", &admin, json!({"name": "o", "role": "operator"})).await.body["key"].as_str().unwrap().to_string();
    assert_eq!(api.get(&format!("/v1/bots/{bot}/knowledge"), &viewer).await.status, 200);
    let denied = api.post(&format!("/v1/bots/{bot}/knowledge"), &viewer, json!({"title": "t", "text": "x"})).await;
    assert_eq!((denied.status, denied.code()), (403, "forbidden"));
    assert_eq!(api.delete(&format!("/v1/bots/{bot}/knowledge/{second}"), &viewer).await.status, 403);
    add(&api, &operator, &bot, "By key", "Added by an operator key.").await;

    // Deleting a document deletes its chunks; deleting it again is 404.
    assert_eq!(api.delete(&format!("/v1/bots/{bot}/knowledge/{first}"), &operator).await.status, 204);
    assert_eq!(chunk_count(&api, &first).await, 0);
    let again = api.delete(&format!("/v1/bots/{bot}/knowledge/{first}"), &operator).await;
    assert_eq!((again.status, again.code()), (404, "not_found"));
    assert_eq!(api.get(&format!("/v1/bots/{bot}/knowledge"), &admin).await.body["items"].as_array().unwrap().len(), 2);

    // Deleting the bot deletes its knowledge.
    assert_eq!(api.delete(&format!("/v1/bots/{bot}"), &admin).await.status, 204);
    assert_eq!(chunk_count(&api, &second).await, 0);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM knowledge_documents").fetch_one(api.db()).await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(api.get(&format!("/v1/bots/{bot}/knowledge"), &admin).await.status, 404);
}

/// Another organization's bot and documents answer 404, exactly like unknown ids.
#[tokio::test]
async fn knowledge_is_isolated_by_organization() {
    let api = Api::start().await;
    let a = api.org("Alpha").await;
    let b = api.org("Beta").await;
    let bot_a = new_bot(&api, &a, "A").await;
    let bot_b = new_bot(&api, &b, "B").await;
    let doc = add(&api, &a, &bot_a, "Secret plans", "Alpha launches in May.").await;

    let list = api.get(&format!("/v1/bots/{bot_a}/knowledge"), &b).await;
    assert_eq!((list.status, list.code()), (404, "not_found"));
    let post = api.post(&format!("/v1/bots/{bot_a}/knowledge"), &b, json!({"title": "t", "text": "planted"})).await;
    assert_eq!((post.status, post.code()), (404, "not_found"));
    assert_eq!(api.delete(&format!("/v1/bots/{bot_a}/knowledge/{doc}"), &b).await.status, 404);
    // Nor through B's own bot.
    assert_eq!(api.delete(&format!("/v1/bots/{bot_b}/knowledge/{doc}"), &b).await.status, 404);
    assert_eq!(api.get(&format!("/v1/bots/{bot_b}/knowledge"), &b).await.body["items"], json!([]));
    assert_eq!(chunk_count(&api, &doc).await, 1, "still there");
    assert_eq!(api.get(&format!("/v1/bots/{bot_a}/knowledge"), &a).await.body["items"][0]["id"], doc.as_str());
}

#[tokio::test]
async fn search_ranks_the_bots_chunks_for_fleet_tokens_only() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let other = api.org("Other").await;
    let fleet = api.fleet_token().await;
    let bot = new_bot(&api, &token, "Support").await;
    let other_bot = new_bot(&api, &other, "Elsewhere").await;
    let refunds = add(
        &api,
        &token,
        &bot,
        "Refund policy",
        "Refunds are paid to the original card within fourteen days. A refund needs the receipt.\n\nGift cards cannot be refunded.",
    )
    .await;
    let shipping = add(&api, &token, &bot, "Shipping", "Parcels ship within two days. Express shipping costs extra.").await;
    add(&api, &token, &bot, "Hours", "We are open nine to five, Monday to Friday.").await;
    add(&api, &other, &other_bot, "Not yours", "Refunds refunds refunds refund refund.").await;

    let search = |body: Value| api.post("/v1/runtime/knowledge/search", &fleet, body);
    let r = search(json!({"bot_id": bot, "query": "How long do refunds take?"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let matches = r.body["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 1, "{}", r.body);
    assert_eq!(matches[0]["document_id"], refunds.as_str());
    assert_eq!(matches[0]["title"], "Refund policy");
    assert!(matches[0]["text"].as_str().unwrap().starts_with("Refunds are paid"));
    assert!(matches[0]["score"].as_f64().unwrap() > 0.0);

    // More matching terms rank higher; limit caps the list.
    let r = search(json!({"bot_id": bot, "query": "express shipping for a refund", "limit": 5})).await;
    let docs: Vec<&str> = r.body["matches"].as_array().unwrap().iter().map(|m| m["document_id"].as_str().unwrap()).collect();
    assert_eq!(docs, vec![shipping.as_str(), refunds.as_str()], "{}", r.body);
    let scores: Vec<f64> = r.body["matches"].as_array().unwrap().iter().map(|m| m["score"].as_f64().unwrap()).collect();
    assert!(scores[0] > scores[1], "{scores:?}");
    let r = search(json!({"bot_id": bot, "query": "express shipping for a refund", "limit": 1})).await;
    assert_eq!(r.body["matches"].as_array().unwrap().len(), 1);
    assert_eq!(search(json!({"bot_id": bot, "query": "zebra crossing"})).await.body, json!({"matches": [], "mode": "bm25"}), "no model: keywords alone");
    assert_eq!(search(json!({"bot_id": other_bot, "query": "opening hours"})).await.body, json!({"matches": [], "mode": "bm25"}));
    // Everyday words of a spoken question match nothing by themselves.
    assert_eq!(search(json!({"bot_id": bot, "query": "what's up, I need to come over"})).await.body["matches"], json!([]));

    // People cannot search the runtime endpoint; fleet tokens cannot manage documents.
    let r = api.post("/v1/runtime/knowledge/search", &token, json!({"bot_id": bot, "query": "refund"})).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    assert_eq!(api.get(&format!("/v1/bots/{bot}/knowledge"), &fleet).await.status, 403);
    let r = api.raw(Method::POST, "/v1/runtime/knowledge/search", None, Some(("application/json", b"{}".to_vec()))).await;
    assert_eq!(r.status, 401);
    assert_eq!(api.post("/v1/runtime/knowledge/search", "cxf_unknown", json!({"bot_id": bot, "query": "x"})).await.status, 401);
    let r = search(json!({"bot_id": "bot_nope", "query": "refund"})).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
}

#[tokio::test]
async fn malformed_knowledge_requests_get_stable_errors() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let fleet = api.fleet_token().await;
    let bot = new_bot(&api, &token, "Support").await;
    let path = format!("/v1/bots/{bot}/knowledge");
    let too_big = "a".repeat(200 * 1024 + 1);
    for (body, status, field) in [
        (json!({"title": "", "text": "x"}), 422, Some("title")),
        (json!({"title": "t".repeat(201), "text": "x"}), 422, Some("title")),
        (json!({"title": "t", "text": " \n\n\t "}), 422, Some("text")),
        (json!({"title": "t", "text": too_big}), 422, Some("text")),
        (json!({"title": "t"}), 422, None),
        (json!({"title": "t", "text": 5}), 422, Some("text")),
        (json!({"title": "t", "text": "x", "colour": "blue"}), 422, None),
    ] {
        let r = api.post(&path, &token, body.clone()).await;
        assert_eq!((r.status, r.code()), (status, "validation_failed"), "{} -> {}", &body.to_string()[..body.to_string().len().min(80)], r.body);
        if let Some(field) = field {
            assert_eq!(r.body["error"]["field"], field, "{}", r.body);
        }
    }
    for (ct, bytes, status, code) in [
        ("application/json", b"{not json".to_vec(), 400, "bad_request"),
        ("application/json", b"[\"title\"]".to_vec(), 400, "bad_request"),
        ("application/json", vec![0xff, 0xfe], 400, "bad_request"),
        ("text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
        ("application/json", vec![b' '; 2 << 20], 413, "payload_too_large"),
    ] {
        let r = api.raw(Method::POST, &path, Some(&token), Some((ct, bytes))).await;
        assert_eq!((r.status, r.code()), (status, code), "{}", r.body);
    }
    for (body, field) in [
        (json!({"bot_id": bot, "query": ""}), Some("query")),
        (json!({"bot_id": bot, "query": "q".repeat(1001)}), Some("query")),
        (json!({"bot_id": bot, "query": "refund", "limit": 0}), Some("limit")),
        (json!({"bot_id": bot, "query": "refund", "limit": 21}), Some("limit")),
        (json!({"bot_id": bot, "query": "refund", "limit": -1}), Some("limit")),
        (json!({"query": "refund"}), None),
        (json!({"bot_id": 7, "query": "refund"}), Some("bot_id")),
    ] {
        let r = api.post("/v1/runtime/knowledge/search", &fleet, body.clone()).await;
        assert_eq!((r.status, r.code()), (422, "validation_failed"), "{body} -> {}", r.body);
        if let Some(field) = field {
            assert_eq!(r.body["error"]["field"], field, "{}", r.body);
        }
    }
    let r = api.raw(Method::POST, "/v1/runtime/knowledge/search", Some(&fleet), Some(("application/json", b"nope".to_vec()))).await;
    assert_eq!((r.status, r.code()), (400, "bad_request"));
    // Unknown documents and routes.
    assert_eq!(api.delete(&format!("{path}/kdoc_nope"), &token).await.code(), "not_found");
    assert_eq!(api.get("/v1/bots/bot_nope/knowledge", &token).await.code(), "not_found");
    assert_eq!(api.get(&format!("{path}?limit=0"), &token).await.status, 422);
    // The documents and search routes are in the OpenAPI document.
    let doc = api.raw(Method::GET, "/v1/openapi.json", None, None).await;
    assert!(doc.body["paths"]["/v1/bots/{id}/knowledge"]["post"].is_object());
    assert!(doc.body["paths"]["/v1/bots/{id}/knowledge/{doc_id}"]["delete"].is_object());
    assert!(doc.body["paths"]["/v1/runtime/knowledge/search"]["post"].is_object());
    assert!(doc.body["components"]["schemas"]["NewDocument"].is_object());
}

#[tokio::test]
async fn a_bots_knowledge_has_a_total_size_cap() {
    let api = Api::start().await;
    let token = api.org("Acme").await;
    let bot = new_bot(&api, &token, "Big").await;
    let text = "Every sentence here is filler text. ".repeat(200 * 1024 / 36);
    for i in 0..25 {
        add(&api, &token, &bot, &format!("part {i}"), &text).await;
    }
    let full = api.post(&format!("/v1/bots/{bot}/knowledge"), &token, json!({"title": "one more", "text": text})).await;
    assert_eq!((full.status, full.code()), (409, "limit_reached"), "{}", full.body);
    assert_eq!(api.get(&format!("/v1/bots/{bot}/knowledge?limit=100"), &token).await.body["items"].as_array().unwrap().len(), 25);
}

/// A tiny embedding model in the built-in model's files: whole words are tokens (each spelled
/// by merges from its letters), and the table gives words of one topic one direction, so
/// "dog", "pet" and "animals" are alike while sharing no letters that BM25 would see.
fn tiny_model(dir: &std::path::Path) {
    let topics: [(&str, [f32; 3]); 11] = [
        ("dog", [1.0, 0.0, 0.0]),
        ("pets", [1.0, 0.0, 0.0]),
        ("animals", [0.9, 0.1, 0.0]),
        ("companion", [0.8, 0.0, 0.2]),
        ("money", [0.0, 1.0, 0.0]),
        ("refunds", [0.0, 1.0, 0.0]),
        ("Refunds", [0.0, 1.0, 0.0]),
        ("back", [0.1, 0.9, 0.0]),
        ("parking", [0.0, 0.0, 1.0]),
        ("garage", [0.0, 0.0, 1.0]),
        ("Parking", [0.0, 0.0, 1.0]),
    ];
    let mut vocab = serde_json::Map::new();
    let mut rows: Vec<[f32; 3]> = Vec::new();
    let mut merges = Vec::new();
    let token = |t: &str, v: [f32; 3], vocab: &mut serde_json::Map<String, Value>, rows: &mut Vec<[f32; 3]>| {
        if !vocab.contains_key(t) {
            vocab.insert(t.to_string(), json!(rows.len()));
            rows.push(v);
        }
    };
    token("<unk>", [0.0; 3], &mut vocab, &mut rows);
    token("▁", [0.0; 3], &mut vocab, &mut rows);
    for c in ('a'..='z').chain('A'..='Z') {
        token(&c.to_string(), [0.0; 3], &mut vocab, &mut rows);
    }
    for (word, v) in topics {
        let spelled = format!("▁{word}");
        let chars: Vec<char> = spelled.chars().collect();
        for n in 2..=chars.len() {
            let (left, right): (String, String) = (chars[..n - 1].iter().collect(), chars[n - 1].to_string());
            merges.push(format!("{left} {right}"));
            token(&format!("{left}{right}"), if n == chars.len() { v } else { [0.0; 3] }, &mut vocab, &mut rows);
        }
    }
    let tokenizer = json!({"model": {"type": "BPE", "unk_token": "<unk>", "vocab": vocab, "merges": merges}});
    std::fs::write(dir.join("l2_supercat_tokenizer_config.json"), tokenizer.to_string()).unwrap();
    let data: Vec<u8> = rows.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    let header = format!(r#"{{"embedding.weight":{{"dtype":"F32","shape":[{},3],"data_offsets":[0,{}]}}}}"#, rows.len(), data.len());
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(dir.join("l2_supercat_256.safetensors"), file).unwrap();
}

#[tokio::test]
async fn with_an_embedding_model_a_paraphrase_finds_its_passage_with_a_citation() {
    let models = tempfile::tempdir().unwrap();
    tiny_model(models.path());
    let dir = models.path().to_path_buf();
    let api = Api::start_with(move |c| c.embed_model = Some(dir)).await;
    let token = api.org("Acme").await;
    let fleet = api.fleet_token().await;
    let bot = new_bot(&api, &token, "Front desk").await;
    let policies = "# House rules\n\n## Companion animals\n\nCompanion animals are welcome in every room.\n\n## Parking\n\nThe garage under the hotel is open all night.\n\n## Refunds\n\nRefunds reach the card within a week.";
    let doc = add(&api, &token, &bot, "Hotel policies", policies).await;
    let stored: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as("SELECT heading, embedding, model FROM knowledge_chunks WHERE document_id = $1 ORDER BY seq").bind(&doc).fetch_all(api.db()).await.unwrap();
    assert_eq!(stored.len(), 3, "a passage per section");
    assert_eq!(stored[0].0, "House rules > Companion animals");
    assert!(stored.iter().all(|(_, e, m)| e.is_some() && m.as_deref() == Some("wordllama-l2-supercat-256")), "embedded when added");

    let search = |body: Value| api.post("/v1/runtime/knowledge/search", &fleet, body);
    // "dog" is in no passage; its vector is the animals passage's.
    let r = search(json!({"bot_id": bot, "query": "can I bring my dog", "limit": 1})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["mode"], "hybrid");
    let m = &r.body["matches"][0];
    assert!(m["text"].as_str().unwrap().starts_with("Companion animals"), "{}", r.body);
    assert_eq!(m["citation"]["heading"], json!(["House rules", "Companion animals"]));
    assert_eq!(m["citation"]["label"], "Hotel policies › House rules › Companion animals (passage 1)");
    assert_eq!((m["citation"]["document_id"].as_str(), m["citation"]["position"].as_u64()), (Some(doc.as_str()), Some(0)));
    assert!(m["similarity"].as_f64().unwrap() > 0.9 && m["bm25"].as_f64() == Some(0.0), "{m}");

    // The bot's settings: passages per search, and a floor on similarity.
    let r = search(json!({"bot_id": bot, "query": "money back"})).await;
    assert!(r.body["matches"][0]["text"].as_str().unwrap().starts_with("Refunds"), "{}", r.body);
    assert_eq!(r.body["matches"].as_array().unwrap().len(), 2, "top_k 3 by default, but parking is not similar at all (below the default floor)");
    let patch = api.call(Method::PATCH, &format!("/v1/bots/{bot}"), &token, Some(json!({"knowledge": {"top_k": 2, "min_similarity": 0.5}}))).await;
    assert_eq!(patch.status, 200, "{}", patch.body);
    let r = search(json!({"bot_id": bot, "query": "money back"})).await;
    assert_eq!(r.body["matches"].as_array().unwrap().len(), 1, "only the passage similar enough: {}", r.body);
    let bad = api.call(Method::PATCH, &format!("/v1/bots/{bot}"), &token, Some(json!({"knowledge": {"top_k": 50}}))).await;
    assert_eq!((bad.status, bad.body["error"]["field"].as_str()), (422, Some("knowledge")));

    // Passages stored without a vector (added before the model, or by another) are embedded
    // when the base is next read; the index follows documents added since.
    sqlx::query("UPDATE knowledge_chunks SET embedding = NULL, model = NULL").execute(api.db()).await.unwrap();
    add(&api, &token, &bot, "Getting here", "Visitors leave cars in the garage.").await;
    let r = search(json!({"bot_id": bot, "query": "pets", "limit": 1})).await;
    assert!(r.body["matches"][0]["text"].as_str().unwrap().starts_with("Companion animals"), "{}", r.body);
    let r = search(json!({"bot_id": bot, "query": "parking", "limit": 3})).await;
    let titles: Vec<&str> = r.body["matches"].as_array().unwrap().iter().map(|m| m["title"].as_str().unwrap()).collect();
    assert!(titles.contains(&"Getting here") && titles.contains(&"Hotel policies"), "{}", r.body);
}

#[tokio::test]
async fn an_embedding_model_that_is_missing_stops_the_api_with_its_name() {
    let empty = tempfile::tempdir().unwrap();
    let mut config = cxb_control_plane::ApiConfig::new("127.0.0.1:0".parse().unwrap(), format!("sqlite://{}/cxb.db", empty.path().display()));
    config.secret_key_file = empty.path().join("secret.key");
    config.embed_model = Some(empty.path().to_path_buf());
    let err = cxb_control_plane::ApiServer::start(config).await.unwrap_err().to_string();
    assert!(err.contains("l2_supercat_tokenizer_config.json") && err.contains("cargo xtask embed-model"), "{err}");
}
