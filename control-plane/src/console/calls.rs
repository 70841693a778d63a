//! Calls: the log with filters (`GET /v1/calls`) and one call's page (`GET /v1/calls/{id}`):
//! the timed transcript, the recording, per-turn latency stages, costs, tool runs, the AMD
//! verdict.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::{Nav, PageResult, Signed, html, show, text, urlencode};
use crate::AppState;
use crate::calls::CallQuery;
use crate::error::ApiError;

/// The log's filters as the page's form sends them (empty fields mean no filter; days as
/// `YYYY-MM-DD`, UTC).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    from_day: String,
    #[serde(default)]
    to_day: String,
    #[serde(default)]
    campaign_id: String,
    #[serde(default)]
    bot_id: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    number: String,
    #[serde(default)]
    cursor: String,
}

fn some(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `YYYY-MM-DD` (UTC midnight), plus `days`, as RFC 3339.
fn day(field: &str, s: &str, days: i64) -> Result<Option<String>, ApiError> {
    let Some(s) = some(s) else { return Ok(None) };
    let d = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|_| ApiError::invalid(field, "a day as YYYY-MM-DD"))?;
    let d = d.checked_add_signed(chrono::TimeDelta::days(days)).ok_or_else(|| ApiError::invalid(field, "a day as YYYY-MM-DD"))?;
    Ok(Some(format!("{}T00:00:00Z", d.format("%Y-%m-%d"))))
}

impl Filters {
    fn query(&self) -> Result<CallQuery, ApiError> {
        Ok(CallQuery {
            limit: Some(50),
            cursor: some(&self.cursor),
            since: day("from_day", &self.from_day, 0)?,
            until: day("to_day", &self.to_day, 1)?,
            campaign_id: some(&self.campaign_id),
            bot_id: some(&self.bot_id),
            outcome: some(&self.outcome),
            direction: some(&self.direction),
            number: some(&self.number),
        })
    }

    /// This query string with another cursor.
    fn with_cursor(&self, cursor: &str) -> String {
        let pairs = [
            ("from_day", &self.from_day),
            ("to_day", &self.to_day),
            ("campaign_id", &self.campaign_id),
            ("bot_id", &self.bot_id),
            ("outcome", &self.outcome),
            ("direction", &self.direction),
            ("number", &self.number),
        ];
        let mut q: Vec<String> = pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
        q.push(format!("cursor={}", urlencode(cursor)));
        q.join("&")
    }
}

pub(crate) struct Row {
    pub id: String,
    pub started: String,
    pub direction: String,
    pub from: String,
    pub to: String,
    pub bot: String,
    pub outcome: String,
    /// The outcome in words (`no answer`).
    pub outcome_label: String,
    pub duration: String,
}

#[derive(Template)]
#[template(path = "calls.html")]
struct CallsPage {
    nav: Nav,
    rows: Vec<Row>,
    filters: Filters,
    next: Option<String>,
    outcomes: &'static [(&'static str, &'static str)],
    error: Option<String>,
}

const OUTCOMES: &[(&str, &str)] = &[
    ("completed", "completed"),
    ("no_answer", "no answer"),
    ("busy", "busy"),
    ("failed", "failed"),
    ("voicemail", "voicemail"),
    ("canceled", "canceled"),
    ("error", "error"),
    ("in_progress", "in progress"),
];


pub(crate) async fn list(State(s): State<AppState>, signed: Signed, Query(filters): Query<Filters>) -> PageResult {
    let mut page = CallsPage { nav: signed.nav("calls"), rows: Vec::new(), next: None, outcomes: OUTCOMES, error: None, filters: Filters::default() };
    let query = match filters.query() {
        Ok(q) => q,
        Err(e) => {
            page.error = Some(e.message);
            page.filters = filters;
            return Ok(html(&page));
        }
    };
    let answer = crate::calls::list(State(s), signed.caller.clone(), crate::extract::Query(query)).await;
    match answer {
        Ok(axum::Json(answer)) => {
            page.rows = answer["items"].as_array().into_iter().flatten().map(row).collect();
            page.next = answer["next_cursor"].as_str().map(|c| filters.with_cursor(c));
        }
        Err(e) if e.status.as_u16() == 422 => page.error = Some(e.message),
        Err(e) => return Err(e.into()),
    }
    page.filters = filters;
    Ok(html(&page))
}

fn row(c: &Value) -> Row {
    Row {
        id: text(&c["id"]),
        started: show::time(c["started_at"].as_str()),
        direction: text(&c["direction"]),
        from: text(&c["from"]),
        to: text(&c["to"]),
        bot: text(&c["bot_id"]),
        outcome: text(&c["outcome"]),
        outcome_label: show::words(c["outcome"].as_str().unwrap_or("")),
        duration: show::duration(c["duration_ms"].as_i64()),
    }
}

pub(crate) struct Line {
    pub at: String,
    pub role: String,
    pub text: String,
    pub interrupted: bool,
}

/// One stage of a turn's answer as a bar segment (x and width in the chart's units).
pub(crate) struct Stage {
    pub name: &'static str,
    pub ms: u64,
    pub x: u64,
    pub w: u64,
    pub color: &'static str,
}

pub(crate) struct Latency {
    pub turn: usize,
    pub stages: Vec<Stage>,
    pub total: u64,
    pub y: usize,
    pub label_x: u64,
}

/// Where the bars start and how wide the longest is, in the chart's 460 units.
const BAR_X: u64 = 56;
const BAR_W: u64 = 330;
const COLORS: [&str; 4] = ["#93c5fd", "#3b82f6", "#1d4ed8", "#1e3a8a"];

pub(crate) struct Cost {
    pub item: String,
    pub quantity: String,
    pub amount: String,
}

pub(crate) struct ToolRun {
    pub name: String,
    pub ok: bool,
    pub status: String,
    pub duration: String,
}

#[derive(Template)]
#[template(path = "call.html")]
struct CallPage {
    nav: Nav,
    call: Row,
    answered: String,
    ended: String,
    end_reason: String,
    campaign: String,
    contact: String,
    transport: String,
    first_audio: String,
    barge_ins: i64,
    recording: Option<String>,
    lines: Vec<Line>,
    latencies: Vec<Latency>,
    costs: Vec<Cost>,
    tools: Vec<ToolRun>,
    amd: Option<String>,
}

/// `m:ss` from the start of the call.
fn offset(ms: u64) -> String {
    format!("{}:{:02}", ms / 60_000, ms / 1000 % 60)
}

pub(crate) async fn page(State(s): State<AppState>, signed: Signed, Path(id): Path<String>) -> PageResult {
    let axum::Json(c) = crate::calls::get(State(s), signed.caller.clone(), Path(id)).await?;
    let m = &c["metrics"];
    let lines = c["transcript"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| Line {
            at: offset(t["at_ms"].as_u64().unwrap_or(0)),
            role: text(&t["role"]),
            text: text(&t["text"]),
            interrupted: t["interrupted"].as_bool().unwrap_or(false),
        })
        .collect();
    let turns: Vec<[u64; 4]> = m["turn_latency_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| ["final_transcript_ms", "first_token_ms", "first_audio_ms", "first_frame_ms"].map(|k| t[k].as_u64().unwrap_or(0)))
        .collect();
    let scale = turns.iter().flat_map(|t| t.iter().copied()).max().unwrap_or(0).max(1);
    let latencies = turns
        .iter()
        .enumerate()
        .map(|(i, marks)| {
            // Each stage as the time it added after the one before.
            let mut before = 0;
            let stages = ["transcript", "first token", "first audio", "on the wire"]
                .iter()
                .zip(marks)
                .zip(COLORS)
                .map(|((&name, &t), color)| {
                    let stage = Stage { name, ms: t.saturating_sub(before), x: BAR_X + before * BAR_W / scale, w: t.saturating_sub(before) * BAR_W / scale, color };
                    before = before.max(t);
                    stage
                })
                .collect();
            Latency { turn: i + 1, stages, total: before, y: i * 26 + 4, label_x: BAR_X + before * BAR_W / scale + 8 }
        })
        .collect();
    let costs = c["costs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| Cost {
            item: text(&l["item"]),
            quantity: format!("{} {}", l["quantity"].as_f64().map_or(String::new(), |q| format!("{q:.2}").trim_end_matches('0').trim_end_matches('.').to_string()), text(&l["unit"])),
            amount: match (l["amount"].as_f64(), l["currency"].as_str()) {
                (Some(a), Some(cur)) if a > 0.0 => format!("{a:.4} {cur}"),
                _ => String::new(),
            },
        })
        .collect();
    let tools = m["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| ToolRun {
            name: text(&t["name"]),
            ok: t["ok"].as_bool().unwrap_or(false),
            status: t["status"].as_u64().map(|s| s.to_string()).unwrap_or_default(),
            duration: format!("{} ms", t["duration_ms"].as_u64().unwrap_or(0)),
        })
        .collect();
    let amd = m["amd"]["result"].as_str().map(|r| {
        let mut v = show::words(r);
        if let Some(cause) = m["amd"]["cause"].as_str() {
            v.push_str(&format!(" ({})", show::words(cause)));
        }
        if let Some(at) = m["amd"]["decided_ms"].as_u64() {
            v.push_str(&format!(", decided at {:.1} s", at as f64 / 1000.0));
        }
        v
    });
    let call = row(&c);
    let recording = c["recording"]["location"].is_string().then(|| format!("/calls/{}/recording", urlencode(&call.id)));
    Ok(html(&CallPage {
        nav: signed.nav("calls"),
        answered: show::time(c["answered_at"].as_str()),
        ended: show::time(c["ended_at"].as_str()),
        end_reason: show::words(c["end_reason"].as_str().unwrap_or("")),
        campaign: text(&c["campaign_id"]),
        contact: text(&c["contact_id"]),
        transport: text(&m["transport"]),
        first_audio: m["answer_to_first_audio_ms"].as_u64().map(|ms| format!("{ms} ms")).unwrap_or_default(),
        barge_ins: m["barge_ins"].as_i64().unwrap_or(0),
        recording,
        lines,
        latencies,
        costs,
        tools,
        amd,
        call,
    }))
}

/// The recording for the page's player, through the API's handler (the session's caller).
pub(crate) async fn recording(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, headers: HeaderMap) -> PageResult {
    Ok(crate::recordings::stream(&s, &signed.caller, &id, &headers).await?)
}
