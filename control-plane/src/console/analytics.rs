//! Analytics: `GET /v1/analytics` as charts (calls by outcome, answer rate, cost by provider,
//! per day) and latency percentiles.

use askama::Template;
use axum::extract::{Query, State};
use serde_json::Value;

use super::{Nav, PageResult, Signed, charts, html};
use crate::AppState;
use crate::analytics::AnalyticsQuery;

#[derive(Template)]
#[template(path = "analytics.html")]
struct AnalyticsPage {
    nav: Nav,
    days: u32,
    calls: i64,
    answer_rate: String,
    first_audio: String,
    first_audio_tail: String,
    turn_latency: String,
    turn_latency_tail: String,
    turns: i64,
    cost: String,
    outcomes_chart: String,
    rate_chart: String,
    cost_chart: String,
}

/// The outcome series drawn, in stacking order, with their colors.
const OUTCOMES: [(&str, &str, &[&str]); 5] = [
    ("completed", "#16a34a", &["completed"]),
    ("voicemail", "#a16207", &["voicemail"]),
    ("no answer / busy", "#f59e0b", &["no_answer", "busy"]),
    ("failed", "#dc2626", &["failed", "error", "canceled"]),
    ("in progress", "#2563eb", &["in_progress"]),
];
const PALETTE: [&str; 6] = ["#2563eb", "#16a34a", "#f59e0b", "#9333ea", "#dc2626", "#0891b2"];

fn ms(v: &Value) -> String {
    v.as_i64().map_or_else(|| "–".to_string(), |ms| format!("{ms} ms"))
}

pub(crate) async fn page(State(s): State<AppState>, signed: Signed, Query(q): Query<AnalyticsQuery>) -> PageResult {
    let days = q.days.unwrap_or(14).clamp(1, 90);
    let axum::Json(a) = crate::analytics::get(State(s), signed.caller.clone(), crate::extract::Query(AnalyticsQuery { days: Some(days) })).await?;
    let per_day = a["days"].as_array().cloned().unwrap_or_default();
    let label = |d: &Value| d["day"].as_str().map(|s| s[5..].to_string()).unwrap_or_default();
    let outcomes: Vec<(String, Vec<f64>)> = per_day
        .iter()
        .map(|d| (label(d), OUTCOMES.iter().map(|(_, _, names)| names.iter().map(|n| d["outcomes"][*n].as_f64().unwrap_or(0.0)).sum()).collect()))
        .collect();
    let rates: Vec<(String, Vec<f64>)> = per_day.iter().map(|d| (label(d), vec![(d["answer_rate"].as_f64().unwrap_or(0.0) * 100.0).round()])).collect();
    let mut providers: Vec<String> = per_day.iter().filter_map(|d| d["cost"].as_object()).flat_map(|c| c.keys().cloned()).collect();
    providers.sort();
    providers.dedup();
    let costs: Vec<(String, Vec<f64>)> = per_day.iter().map(|d| (label(d), providers.iter().map(|p| d["cost"][p].as_f64().unwrap_or(0.0)).collect())).collect();
    let cost_series: Vec<(&str, &str)> = providers.iter().zip(PALETTE.iter().cycle()).map(|(p, c)| (p.as_str(), *c)).collect();
    let outcome_series: Vec<(&str, &str)> = OUTCOMES.iter().map(|(n, c, _)| (*n, *c)).collect();
    let currency = a["cost"]["currency"].as_str().unwrap_or("USD");
    Ok(html(&AnalyticsPage {
        nav: signed.nav("analytics"),
        days,
        calls: a["calls"].as_i64().unwrap_or(0),
        answer_rate: format!("{:.0}%", a["answer_rate"].as_f64().unwrap_or(0.0) * 100.0),
        first_audio: ms(&a["answer_to_first_audio_ms"]["p50"]),
        first_audio_tail: format!("p95 {}", ms(&a["answer_to_first_audio_ms"]["p95"])),
        turn_latency: ms(&a["turn_latency_ms"]["p50"]),
        turn_latency_tail: format!("p95 {} · p99 {}", ms(&a["turn_latency_ms"]["p95"]), ms(&a["turn_latency_ms"]["p99"])),
        turns: a["turn_latency_ms"]["count"].as_i64().unwrap_or(0),
        cost: format!("{:.2} {currency}", a["cost"]["amount"].as_f64().unwrap_or(0.0)),
        outcomes_chart: charts::columns(&outcomes, &outcome_series, "calls per day by outcome"),
        rate_chart: charts::columns(&rates, &[("answered %", "#16a34a")], "answer rate per day, percent"),
        cost_chart: if providers.is_empty() { String::new() } else { charts::columns(&costs, &cost_series, "cost per day by provider") },
    }))
}
