//! Bots' knowledge bases. People add documents to a bot; each is split into chunks of about
//! 500 characters on paragraph and sentence boundaries and stored. During a call the engine's
//! `search_knowledge` tool asks `POST /v1/runtime/knowledge/search`, which ranks the bot's
//! chunks by BM25 over their terms, computed here in Rust so the SQL stays plain and the same
//! on SQLite and PostgreSQL.

use std::collections::{HashMap, HashSet};

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
/// A chunk's most characters.
pub(crate) const CHUNK_CHARS: usize = 500;
/// At a paragraph break, a chunk this long is closed rather than filled further.
const CHUNK_MIN_CHARS: usize = 200;

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
    /// How many matches, 1 to 20 (default 3).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 20)]
    pub(crate) limit: Option<u32>,
}

/// One chunk that matched, best first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Match {
    pub(crate) document_id: String,
    pub(crate) title: String,
    pub(crate) text: String,
    pub(crate) score: f64,
}

/// The answer to a search.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Matches {
    pub(crate) matches: Vec<Match>,
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
    // Many rows per statement (portable multi-row VALUES), 4 parameters each.
    for (batch_no, batch) in chunks.chunks(100).enumerate() {
        let rows: Vec<String> = (0..batch.len()).map(|i| format!("(${}, ${}, ${}, ${})", 4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4)).collect();
        let sql = format!("INSERT INTO knowledge_chunks (document_id, bot_id, seq, text) VALUES {}", rows.join(", "));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, text) in batch.iter().enumerate() {
            q = q.bind(&id).bind(&bot).bind((batch_no * 100 + i) as i64).bind(text.as_str());
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
    let limit = match q.limit {
        None => 3,
        Some(n @ 1..=20) => n as usize,
        Some(_) => return Err(ApiError::invalid("limit", "between 1 and 20")),
    };
    let bot: Option<String> = sqlx::query_scalar("SELECT id FROM bots WHERE id = $1").bind(&q.bot_id).fetch_optional(&s.db).await?;
    if bot.is_none() {
        return Err(ApiError::not_found("bot"));
    }
    let rows = sqlx::query(
        "SELECT c.document_id, d.title, c.text FROM knowledge_chunks c JOIN knowledge_documents d ON d.id = c.document_id \
         WHERE c.bot_id = $1 ORDER BY c.document_id, c.seq",
    )
    .bind(&q.bot_id)
    .fetch_all(&s.db)
    .await?;
    let mut chunks = Vec::with_capacity(rows.len());
    for row in &rows {
        chunks.push((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?, row.try_get::<String, _>(2)?));
    }
    let texts: Vec<&str> = chunks.iter().map(|(_, _, text)| text.as_str()).collect();
    let ranked = rank(query, &texts);
    metrics::counter!("cxb_api_knowledge_searches_total").increment(1);
    let matches = ranked
        .into_iter()
        .take(limit)
        .filter_map(|(i, score)| {
            let (document_id, title, text) = chunks.get(i)?;
            Some(Match { document_id: document_id.clone(), title: title.clone(), text: text.clone(), score: (score * 10_000.0).round() / 10_000.0 })
        })
        .collect();
    Ok(Json(Matches { matches }))
}

/// Splits `text` into chunks of at most [`CHUNK_CHARS`] characters. Whitespace is collapsed;
/// blank lines separate paragraphs. A chunk ends at a paragraph break once it has
/// [`CHUNK_MIN_CHARS`], otherwise at the sentence that would not fit; a sentence longer than
/// a chunk is cut between words, and a word longer than a chunk between characters.
pub(crate) fn chunk(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut chars = 0;
    let flush = |current: &mut String, chars: &mut usize, chunks: &mut Vec<String>| {
        if !current.is_empty() {
            chunks.push(std::mem::take(current));
        }
        *chars = 0;
    };
    for paragraph in paragraphs(text) {
        if chars >= CHUNK_MIN_CHARS {
            flush(&mut current, &mut chars, &mut chunks);
        }
        let mut separator = "\n\n";
        for sentence in sentences(&paragraph) {
            for piece in pieces(sentence, CHUNK_CHARS) {
                let n = piece.chars().count();
                if chars > 0 && chars + separator.len() + n > CHUNK_CHARS {
                    flush(&mut current, &mut chars, &mut chunks);
                }
                if chars > 0 {
                    current.push_str(separator);
                    chars += separator.len();
                }
                current.push_str(piece);
                chars += n;
                separator = " ";
            }
        }
    }
    flush(&mut current, &mut chars, &mut chunks);
    chunks
}

/// Paragraphs (runs of non-blank lines) with their whitespace collapsed to single spaces.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut words: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !words.is_empty() {
                out.push(words.join(" "));
                words.clear();
            }
        } else {
            words.extend(line.split_whitespace());
        }
    }
    if !words.is_empty() {
        out.push(words.join(" "));
    }
    out
}

/// Sentences of a paragraph: each ends after `.`, `!` or `?` followed by a space.
fn sentences(paragraph: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_end = false;
    for (i, c) in paragraph.char_indices() {
        if c == ' ' && prev_end {
            out.push(&paragraph[start..i]);
            start = i + 1;
        }
        prev_end = matches!(c, '.' | '!' | '?');
    }
    out.push(&paragraph[start..]);
    out.retain(|s| !s.is_empty());
    out
}

/// `s` cut into pieces of at most `max` characters, between words where it can.
fn pieces(s: &str, max: usize) -> Vec<&str> {
    if s.chars().count() <= max {
        return vec![s];
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = 0;
    let mut last_space = None;
    for (i, c) in s.char_indices() {
        if chars == max {
            let cut = last_space.filter(|&sp| sp > start).unwrap_or(i);
            out.push(s[start..cut].trim());
            start = if s[cut..].starts_with(' ') { cut + 1 } else { cut };
            chars = s[start..i].chars().count();
            last_space = None;
        }
        if c == ' ' {
            last_space = Some(i);
        }
        chars += 1;
    }
    out.push(s[start..].trim());
    out.retain(|p| !p.is_empty());
    out
}

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i", "in", "is", "it", "its", "me", "my", "of",
    "on", "or", "our", "so", "that", "the", "their", "there", "this", "to", "was", "we", "what", "when", "where", "which", "who", "will",
    "with", "you", "your",
];

/// The terms of `text`: lowercase words (letters and digits), stop words dropped, plurals
/// reduced (`policies` → `policy`, `refunds` → `refund`).
pub(crate) fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|mut w| {
            if w.len() > 4 && w.ends_with("ies") {
                w.truncate(w.len() - 3);
                w.push('y');
            } else if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
                w.pop();
            }
            w
        })
        .collect()
}

/// BM25 (k1 = 1.2, b = 0.75) of each chunk for `query`: `(index, score)` of the chunks that
/// share a term with it, best first (ties keep chunk order).
pub(crate) fn rank(query: &str, chunks: &[&str]) -> Vec<(usize, f64)> {
    const K1: f64 = 1.2;
    const B: f64 = 0.75;
    let wanted: HashSet<String> = terms(query).into_iter().collect();
    if wanted.is_empty() || chunks.is_empty() {
        return Vec::new();
    }
    let mut lengths = Vec::with_capacity(chunks.len());
    let mut freqs: Vec<HashMap<&str, f64>> = Vec::with_capacity(chunks.len());
    let mut df: HashMap<&str, f64> = HashMap::new();
    for text in chunks {
        let words = terms(text);
        lengths.push(words.len() as f64);
        let mut tf: HashMap<&str, f64> = HashMap::new();
        for w in &words {
            if let Some(term) = wanted.get(w) {
                *tf.entry(term.as_str()).or_default() += 1.0;
            }
        }
        for term in tf.keys() {
            *df.entry(term).or_default() += 1.0;
        }
        freqs.push(tf);
    }
    let n = chunks.len() as f64;
    let average = (lengths.iter().sum::<f64>() / n).max(1.0);
    let mut scored: Vec<(usize, f64)> = freqs
        .iter()
        .zip(&lengths)
        .enumerate()
        .filter(|(_, (tf, _))| !tf.is_empty())
        .map(|(i, (tf, &len))| {
            let score = tf
                .iter()
                .map(|(term, &f)| {
                    let n_t = df.get(term).copied().unwrap_or(0.0);
                    let idf = (1.0 + (n - n_t + 0.5) / (n_t + 0.5)).ln();
                    idf * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * len / average))
                })
                .sum();
            (i, score)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_break_at_paragraphs_and_sentences_and_keep_every_word() {
        let sentence = "Refunds are issued within fourteen days of a return being received.";
        let long_paragraph = [sentence; 12].join(" ");
        let text = format!("Opening hours\n\nWe open at nine.\r\nWe close at five.\n\n\n{long_paragraph}\n\nShort tail.");
        let chunks = chunk(&text);
        assert!(chunks.iter().all(|c| !c.is_empty() && c.chars().count() <= CHUNK_CHARS), "{chunks:?}");
        // Small paragraphs share a chunk, separated by a blank line; single newlines are spaces.
        assert!(chunks[0].starts_with("Opening hours\n\nWe open at nine. We close at five."), "{:?}", chunks[0]);
        // Chunks end at sentence ends.
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c.ends_with('.')), "{chunks:?}");
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(words(&chunks.join(" ")), words(&text));
        assert!(chunks.len() >= 3);
    }

    #[test]
    fn overlong_sentences_and_words_are_cut() {
        let text = format!("{} {}", "word ".repeat(300), "x".repeat(1200));
        let chunks = chunk(&text);
        assert!(chunks.iter().all(|c| c.chars().count() <= CHUNK_CHARS), "{:?}", chunks.iter().map(|c| c.len()).collect::<Vec<_>>());
        assert_eq!(chunks.iter().map(|c| c.matches('x').count()).sum::<usize>(), 1200);
        assert_eq!(chunks.iter().map(|c| c.matches("word").count()).sum::<usize>(), 300);
        // Multi-byte text is cut on character boundaries.
        let chunks = chunk(&"é".repeat(1001));
        assert_eq!(chunks.iter().map(|c| c.chars().count()).collect::<Vec<_>>(), vec![500, 500, 1]);
        assert!(chunk("  \n\n \t ").is_empty());
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet: Vec<char> = "ab .!?\n\r\t é日\u{0}x".chars().collect();
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 1500) as usize;
            let text: String = (0..len).map(|i| alphabet[((seed >> (i % 50)) as usize + i * 7) % alphabet.len()]).collect();
            for c in chunk(&text) {
                assert!(!c.is_empty() && c.chars().count() <= CHUNK_CHARS);
            }
            let _ = rank(&text, &[&text, "a b"]);
        }
    }

    #[test]
    fn ranking_prefers_rare_terms_and_dense_chunks() {
        assert_eq!(terms("The Policies on REFUNDS, and class"), vec!["policy", "refund", "class"]);
        let chunks = [
            "Our shipping policy: parcels leave the warehouse within two days.",
            "Refunds: a refund is paid to the original card within fourteen days of the return.",
            "Returns are free. Refund questions go to the billing team.",
            "Opening hours are nine to five on weekdays.",
        ];
        let ranked = rank("How do refunds work?", &chunks);
        assert_eq!(ranked.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(ranked[0].1 > ranked[1].1);
        assert!(rank("the and of", &chunks).is_empty(), "stop words alone match nothing");
        assert!(rank("zebra", &chunks).is_empty());
    }
}
