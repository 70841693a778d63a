//! Bots' knowledge bases. People add documents to a bot; each is cut into passages that follow
//! its structure (`cxb_knowledge::chunk`: headings, paragraphs, sentences, a sentence of
//! overlap), embedded by the built-in model when the API has one, and stored with its heading
//! path and position. During a call the engine's `search_knowledge` tool asks
//! `POST /v1/runtime/knowledge/search`, which ranks the bot's passages by BM25 and vector
//! similarity fused (`cxb_knowledge::search`), over an index in memory per knowledge base. The
//! index is rebuilt when the base's documents changed, also by another API process (the
//! documents' count and newest time are read with each search), so the SQL stays plain and the
//! same on SQLite and PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use cxb_knowledge::chunk::{Chunk, chunk};
use cxb_knowledge::model::{MODEL_NAME, StaticModel};
use cxb_knowledge::search::{Fusion, Index, Mode};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Fleet, Role};
use crate::clock::rfc3339;
use crate::db::new_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Arg, Body, Filter, Query, limit};
use crate::resources::exists;

/// The most text one document may have, in bytes.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 200 * 1024;
/// The most text one bot's documents may have together, in bytes: every search reads them all.
pub(crate) const MAX_BOT_BYTES: i64 = 5 * 1024 * 1024;
/// Knowledge bases whose indexes are kept in memory at once.
const CACHED_BASES: usize = 64;

/// A document to add to a bot's knowledge base.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDocument {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub(crate) title: String,
    /// Plain text, at most 200 KiB. Blank lines separate paragraphs.
    #[schema(max_length = 204800)]
    pub(crate) text: String,
}

/// A search of one bot's knowledge base.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Search {
    pub(crate) bot_id: String,
    /// What to look for, 1 to 1000 characters, not only spaces.
    #[schema(min_length = 1, max_length = 1000, pattern = r"\S")]
    pub(crate) query: String,
    /// How many matches, 1 to 20 (default: the bot's `knowledge.top_k`, 3 unless set).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 20)]
    pub(crate) limit: Option<u32>,
}

/// One passage that matched, best first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Match {
    pub(crate) document_id: String,
    pub(crate) title: String,
    pub(crate) text: String,
    /// What it was ranked by (the fused score, or BM25 when searched by keywords alone).
    pub(crate) score: f64,
    /// Its cosine similarity to the query (absent without vectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) similarity: Option<f64>,
    /// Its BM25 score (0 when no keyword matched).
    pub(crate) bm25: f64,
    /// Where it comes from: the document's title, the headings it sits under and its place.
    pub(crate) citation: Citation,
}

/// Where a passage comes from.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Citation {
    pub(crate) document_id: String,
    pub(crate) title: String,
    /// The headings it sits under, outermost first.
    pub(crate) heading: Vec<String>,
    /// Its place in the document, from 0.
    pub(crate) position: u32,
    /// For people: `Title › Heading › Heading (passage N)`.
    pub(crate) label: String,
}

/// The answer to a search.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Matches {
    pub(crate) matches: Vec<Match>,
    /// How the passages were ranked: `hybrid` (keywords and vectors) or `bm25` (keywords alone:
    /// the API has no embedding model).
    pub(crate) mode: &'static str,
}

/// A bot's knowledge search settings (`knowledge` in the bot).
pub(crate) use cxb_contract::bot::Knowledge as KnowledgeSettings;

/// A passage as searches return it.
#[derive(Debug)]
struct Passage {
    document_id: String,
    title: String,
    heading: Vec<String>,
    position: u32,
    text: String,
}

/// One knowledge base in memory.
#[derive(Debug)]
struct Base {
    passages: Vec<Passage>,
    index: Index,
}

/// Searches knowledge bases: the embedding model, if any, and the bases' indexes, each with
/// the version (documents, newest document) it was built from.
#[derive(Debug)]
pub(crate) struct Searcher {
    model: Option<Arc<StaticModel>>,
    bases: Mutex<HashMap<String, (Version, Arc<Base>)>>,
}

/// What a knowledge base's index was built from: its documents' count and newest time.
type Version = (i64, i64);

impl Searcher {
    /// With the model in `dir` (an error names what is missing), or keywords only.
    pub(crate) fn new(dir: Option<&std::path::Path>) -> Result<Searcher, String> {
        let model = match dir {
            Some(dir) => {
                let model = StaticModel::load(dir)?;
                tracing::info!(model = MODEL_NAME, dimensions = model.dim(), "knowledge bases are searched by keywords and vectors");
                Some(Arc::new(model))
            }
            None => {
                tracing::warn!("no embedding model (--embed-model DIR, from `cargo xtask embed-model`): knowledge bases are searched by keywords alone");
                None
            }
        };
        Ok(Searcher { model, bases: Mutex::default() })
    }

    /// The passages' vectors, as stored.
    fn embed(&self, chunks: &[Chunk]) -> Vec<Option<String>> {
        chunks.iter().map(|c| self.model.as_ref().map(|m| encode(&m.embed(&c.for_embedding())))).collect()
    }
}

/// A vector as stored: base64 of its little-endian float32s.
fn encode(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A stored vector of `dim` values, if it is one.
fn decode(text: &str, dim: usize) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    (bytes.len() == dim * 4).then(|| bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

const DOCUMENT_COLUMNS: &str = "id, bot_id, title, bytes, chunks, created_at";

fn document_view(row: &sqlx::any::AnyRow) -> ApiResult<Value> {
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "bot_id": row.try_get::<String, _>("bot_id")?,
        "title": row.try_get::<String, _>("title")?,
        "bytes": row.try_get::<i64, _>("bytes")?,
        "chunks": row.try_get::<i64, _>("chunks")?,
        "created_at": rfc3339(row.try_get("created_at")?),
    }))
}

/// 404 unless `bot` is a bot of organization `org`.
async fn own_bot(s: &AppState, org: &str, bot: &str) -> ApiResult<()> {
    if exists(s, "bots", org, bot).await? { Ok(()) } else { Err(ApiError::not_found("bot")) }
}

/// `GET /v1/bots/{id}/knowledge`: the bot's documents, newest first.
pub(crate) async fn list(State(s): State<AppState>, caller: Caller, Path(bot): Path<String>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let limit = limit(q.limit)?;
    own_bot(&s, &caller.org_id, &bot).await?;
    let mut f = Filter::new(&format!("SELECT {DOCUMENT_COLUMNS} FROM knowledge_documents WHERE org_id = "));
    f.and("? AND bot_id = ?", [Arg::Text(caller.org_id), Arg::Text(bot)]);
    f.newest_first(q.cursor, limit);
    Ok(Json(f.page_by_id(&s.db, limit, document_view).await?))
}

/// `?limit=&cursor=`
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `POST /v1/bots/{id}/knowledge`: stores the document and its chunks in one transaction.
pub(crate) async fn add(State(s): State<AppState>, caller: Caller, Path(bot): Path<String>, Body(doc): Body<NewDocument>) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let title = doc.title.trim();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(ApiError::invalid("title", "1 to 200 characters"));
    }
    if doc.text.len() > MAX_DOCUMENT_BYTES {
        return Err(ApiError::invalid("text", format!("at most {MAX_DOCUMENT_BYTES} bytes")));
    }
    let chunks = chunk(&doc.text);
    let vectors = s.knowledge.embed(&chunks);
    if chunks.is_empty() {
        return Err(ApiError::invalid("text", "the document has no text"));
    }
    own_bot(&s, &caller.org_id, &bot).await?;
    let mut tx = s.db.begin().await?;
    // PostgreSQL sums BIGINT as NUMERIC, which the Any driver cannot read: cast it back.
    let used: i64 = sqlx::query_scalar("SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM knowledge_documents WHERE bot_id = $1")
        .bind(&bot)
        .fetch_one(&mut *tx)
        .await?;
    if used + doc.text.len() as i64 > MAX_BOT_BYTES {
        return Err(ApiError::conflict("limit_reached", format!("a bot's documents may hold at most {MAX_BOT_BYTES} bytes together")));
    }
    let now = s.now();
    let id = new_id("kdoc", now);
    sqlx::query("INSERT INTO knowledge_documents (id, org_id, bot_id, title, bytes, chunks, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&id)
        .bind(&caller.org_id)
        .bind(&bot)
        .bind(title)
        .bind(doc.text.len() as i64)
        .bind(chunks.len() as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    // Many rows per statement (portable multi-row VALUES), 7 parameters each.
    let model = vectors.first().and_then(Option::as_ref).map(|_| MODEL_NAME);
    for (batch_no, batch) in chunks.chunks(100).enumerate() {
        let rows: Vec<String> = (0..batch.len()).map(|i| format!("({})", (1..=7).map(|k| format!("${}", 7 * i + k)).collect::<Vec<_>>().join(", "))).collect();
        let sql = format!("INSERT INTO knowledge_chunks (document_id, bot_id, seq, text, heading, embedding, model) VALUES {}", rows.join(", "));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, c) in batch.iter().enumerate() {
            let n = batch_no * 100 + i;
            q = q.bind(&id).bind(&bot).bind(n as i64).bind(c.text.as_str()).bind(c.heading.join(" > ")).bind(vectors[n].clone()).bind(model);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let sql = format!("SELECT {DOCUMENT_COLUMNS} FROM knowledge_documents WHERE id = $1");
    let row = sqlx::query(AssertSqlSafe(sql)).bind(&id).fetch_one(&s.db).await?;
    Ok((StatusCode::CREATED, Json(document_view(&row)?)))
}

/// `DELETE /v1/bots/{id}/knowledge/{doc_id}`; its chunks go with it (`ON DELETE CASCADE`).
pub(crate) async fn delete(State(s): State<AppState>, caller: Caller, Path((bot, doc)): Path<(String, String)>) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    let done = sqlx::query("DELETE FROM knowledge_documents WHERE id = $1 AND bot_id = $2 AND org_id = $3")
        .bind(&doc)
        .bind(&bot)
        .bind(&caller.org_id)
        .execute(&s.db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("knowledge document"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/runtime/knowledge/search` (fleet token): the bot's best chunks for the query.
pub(crate) async fn search(State(s): State<AppState>, _fleet: Fleet, Body(q): Body<Search>) -> ApiResult<Json<Matches>> {
    let query = q.query.trim();
    if query.is_empty() || query.chars().count() > 1000 {
        return Err(ApiError::invalid("query", "1 to 1000 characters"));
    }
    let requested = match q.limit {
        None => None,
        Some(n @ 1..=20) => Some(n as usize),
        Some(_) => return Err(ApiError::invalid("limit", "between 1 and 20")),
    };
    let body: Option<String> = sqlx::query_scalar("SELECT body FROM bots WHERE id = $1").bind(&q.bot_id).fetch_optional(&s.db).await?;
    let body = body.ok_or_else(|| ApiError::not_found("bot"))?;
    let settings: KnowledgeSettings = serde_json::from_str::<Value>(&body).ok().and_then(|b| serde_json::from_value(b["knowledge"].clone()).ok()).unwrap_or_default();
    let limit = requested.unwrap_or(settings.top_k as usize);
    let base = base(&s, &q.bot_id).await?;
    let model = s.knowledge.model.clone();
    let query = query.to_string();
    let min_similarity = settings.min_similarity as f32;
    let (hits, hybrid) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            let vector = model.as_ref().map(|m| m.embed(&query));
            let hybrid = vector.is_some() && base.index.has_vectors();
            (base.index.search(&query, vector.as_deref(), Mode::Hybrid(Fusion::DEFAULT), limit, min_similarity), hybrid)
        }
    })
    .await
    .map_err(ApiError::internal)?;
    metrics::counter!("cxb_api_knowledge_searches_total").increment(1);
    let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
    let matches = hits
        .iter()
        .filter_map(|h| {
            let p = base.passages.get(h.index)?;
            let mut label = p.title.clone();
            for h in &p.heading {
                label.push_str(" › ");
                label.push_str(h);
            }
            label.push_str(&format!(" (passage {})", p.position + 1));
            Some(Match {
                document_id: p.document_id.clone(),
                title: p.title.clone(),
                text: p.text.clone(),
                score: round(h.score),
                similarity: hybrid.then(|| round(f64::from(h.similarity))),
                bm25: round(h.bm25),
                citation: Citation { document_id: p.document_id.clone(), title: p.title.clone(), heading: p.heading.clone(), position: p.position, label },
            })
        })
        .collect();
    Ok(Json(Matches { matches, mode: if hybrid { "hybrid" } else { "bm25" } }))
}

/// The bot's knowledge base in memory, built again when its documents changed since.
async fn base(s: &AppState, bot: &str) -> ApiResult<Arc<Base>> {
    let (count, newest): (i64, i64) = sqlx::query_as("SELECT COUNT(*), CAST(COALESCE(MAX(created_at), 0) AS BIGINT) FROM knowledge_documents WHERE bot_id = $1")
        .bind(bot)
        .fetch_one(&s.db)
        .await?;
    let cached = s.knowledge.bases.lock().unwrap_or_else(PoisonError::into_inner).get(bot).filter(|(v, _)| *v == (count, newest)).map(|(_, b)| b.clone());
    if let Some(base) = cached {
        return Ok(base);
    }
    let rows = sqlx::query(
        "SELECT c.document_id, d.title, c.heading, c.seq, c.text, c.embedding, c.model FROM knowledge_chunks c \
         JOIN knowledge_documents d ON d.id = c.document_id WHERE c.bot_id = $1 ORDER BY c.document_id, c.seq",
    )
    .bind(bot)
    .fetch_all(&s.db)
    .await?;
    let mut passages = Vec::with_capacity(rows.len());
    let mut stored = Vec::with_capacity(rows.len());
    for row in &rows {
        let heading: String = row.try_get(2)?;
        passages.push(Passage {
            document_id: row.try_get(0)?,
            title: row.try_get(1)?,
            heading: heading.split(" > ").filter(|h| !h.is_empty()).map(str::to_string).collect(),
            position: u32::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0),
            text: row.try_get(4)?,
        });
        let model: Option<String> = row.try_get(6)?;
        stored.push(row.try_get::<Option<String>, _>(5)?.filter(|_| model.as_deref() == Some(MODEL_NAME)));
    }
    let model = s.knowledge.model.clone();
    let base = tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
        let (dim, vectors) = match &model {
            Some(m) => {
                // Passages embedded by another model (or none) are embedded again here.
                let vectors = passages
                    .iter()
                    .zip(&stored)
                    .flat_map(|(p, v)| v.as_deref().and_then(|v| decode(v, m.dim())).unwrap_or_else(|| m.embed(&Chunk { text: p.text.clone(), heading: p.heading.clone(), position: p.position as usize }.for_embedding())))
                    .collect();
                (m.dim(), vectors)
            }
            None => (0, Vec::new()),
        };
        let index = Index::new(&texts, dim, vectors);
        Arc::new(Base { passages, index })
    })
    .await
    .map_err(ApiError::internal)?;
    let mut bases = s.knowledge.bases.lock().unwrap_or_else(PoisonError::into_inner);
    if bases.len() >= CACHED_BASES {
        bases.clear();
    }
    bases.insert(bot.to_string(), ((count, newest), base.clone()));
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_vectors_round_trip_and_a_wrong_size_is_refused() {
        let v = [0.25f32, -1.5, 3.0e-7];
        assert_eq!(decode(&encode(&v), 3).as_deref(), Some(&v[..]));
        assert_eq!(decode(&encode(&v), 4), None);
        assert_eq!(decode("not base64!", 3), None);
    }

    #[test]
    fn settings_default_and_refuse_what_is_out_of_range() {
        let s: KnowledgeSettings = serde_json::from_value(json!({})).expect("defaults");
        assert_eq!((s.top_k, s.min_similarity), (3, 0.05));
        assert!(s.problem().is_none());
        for bad in [json!({"top_k": 0}), json!({"top_k": 21}), json!({"min_similarity": 1.5})] {
            let s: KnowledgeSettings = serde_json::from_value(bad).expect("parses");
            assert_eq!(s.problem().map(|p| p.0), Some("knowledge"));
        }
        assert!(serde_json::from_value::<KnowledgeSettings>(json!({"k": 3})).is_err(), "unknown fields are refused");
    }
}
