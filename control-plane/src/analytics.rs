//! Costs and analytics. A call's cost lines are priced from the organization's settings when
//! its result arrives (`prices` by provider and item); each call row keeps a summary for
//! analytics (its turns' latencies, its priced lines by provider) so `GET /v1/analytics`
//! reads columns, not result bodies.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::Row;

use crate::AppState;
use crate::auth::Caller;
use crate::calls::CallResult;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;

/// The provider a cost item is billed by: the call's STT, LLM or TTS provider for their items,
/// else the item's own name.
fn provider_of<'a>(item: &'a str, providers: &'a Value) -> &'a str {
    let stage = item.split('_').next().unwrap_or("");
    match stage {
        "stt" | "llm" | "tts" => providers[stage].as_str().filter(|p| !p.is_empty()).unwrap_or(item),
        _ => item,
    }
}

/// Fills in the amount of every unpriced cost line the organization has a price for.
pub(crate) async fn price(s: &AppState, org: &str, r: &mut CallResult) -> ApiResult<()> {
    if r.costs.iter().all(|c| c.amount > 0.0) {
        return Ok(());
    }
    let (settings, _) = crate::settings::load(s, org).await?;
    let Some(prices) = settings["prices"].as_object().filter(|p| !p.is_empty()) else { return Ok(()) };
    let currency = settings["currency"].as_str().unwrap_or("USD");
    let providers = r.metrics.get("providers").cloned().unwrap_or(Value::Null);
    for line in r.costs.iter_mut().filter(|c| c.amount == 0.0) {
        let provider = provider_of(&line.item, &providers);
        if let Some(unit) = prices.get(provider).and_then(|p| p.get(&line.item)).and_then(Value::as_f64) {
            line.amount = line.quantity * unit;
            line.currency = currency.to_string();
        }
    }
    Ok(())
}

/// Writes the call row's analytics summary.
pub(crate) async fn record(tx: &mut sqlx::AnyConnection, org: &str, r: &CallResult) -> ApiResult<()> {
    let turns: Vec<String> = r
        .metrics
        .get("turn_latency_ms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t["first_frame_ms"].as_u64())
        .map(|ms| ms.to_string())
        .collect();
    let providers = r.metrics.get("providers").cloned().unwrap_or(Value::Null);
    let lines: Vec<Value> = r.costs.iter().filter(|c| c.amount > 0.0).map(|c| json!([provider_of(&c.item, &providers), c.amount])).collect();
    let first_audio = r.metrics.get("answer_to_first_audio_ms").and_then(Value::as_i64);
    sqlx::query("UPDATE calls SET turn_ms = $1, cost_lines = $2, first_audio_ms = COALESCE(first_audio_ms, $3) WHERE id = $4 AND org_id = $5")
        .bind((!turns.is_empty()).then(|| turns.join(",")))
        .bind((!lines.is_empty()).then(|| Value::Array(lines).to_string()))
        .bind(first_audio)
        .bind(r.call_id.as_str())
        .bind(org)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub(crate) struct AnalyticsQuery {
    /// Days back from today (UTC), today included: 1 to 90 (default 14).
    pub(crate) days: Option<u32>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

fn percentiles(mut v: Vec<i64>) -> Value {
    v.sort_unstable();
    json!({ "p50": percentile(&v, 50.0), "p95": percentile(&v, 95.0), "p99": percentile(&v, 99.0), "count": v.len() })
}

#[derive(Default)]
struct Day {
    calls: i64,
    answered: i64,
    outcomes: BTreeMap<String, i64>,
    cost: BTreeMap<String, f64>,
}

/// `GET /v1/analytics?days=N`: calls and outcomes per day, answer rate, answer-to-first-audio
/// and turn latency percentiles, and cost by provider per day.
pub(crate) async fn get(State(s): State<AppState>, caller: Caller, Query(q): Query<AnalyticsQuery>) -> ApiResult<Json<Value>> {
    let days = q.days.unwrap_or(14);
    if !(1..=90).contains(&days) {
        return Err(ApiError::invalid("days", "between 1 and 90"));
    }
    let now = s.now();
    let today = now - now.rem_euclid(86_400_000);
    let since = today - i64::from(days - 1) * 86_400_000;
    let rows = sqlx::query(
        "SELECT started_at, outcome, answered_at, first_audio_ms, turn_ms, cost_lines FROM calls WHERE org_id = $1 AND started_at >= $2",
    )
    .bind(&caller.org_id)
    .bind(since)
    .fetch_all(&s.db)
    .await?;
    let mut per_day: Vec<Day> = (0..days).map(|_| Day::default()).collect();
    let (mut first_audio, mut turns) = (Vec::new(), Vec::new());
    let mut total_cost = 0.0;
    for row in &rows {
        let started: i64 = row.try_get(0)?;
        let Some(day) = per_day.get_mut(((started - since) / 86_400_000) as usize) else { continue };
        let outcome: String = row.try_get(1)?;
        let outcome = if outcome.starts_with("pending_") { "in_progress".to_string() } else { outcome };
        day.calls += 1;
        if row.try_get::<Option<i64>, _>(2)?.is_some() {
            day.answered += 1;
        }
        *day.outcomes.entry(outcome).or_default() += 1;
        if let Some(ms) = row.try_get::<Option<i64>, _>(3)? {
            first_audio.push(ms);
        }
        if let Some(list) = row.try_get::<Option<String>, _>(4)? {
            turns.extend(list.split(',').filter_map(|t| t.parse::<i64>().ok()));
        }
        if let Some(lines) = row.try_get::<Option<String>, _>(5)?
            && let Ok(Value::Array(lines)) = serde_json::from_str::<Value>(&lines)
        {
            for line in lines {
                if let (Some(provider), Some(amount)) = (line[0].as_str(), line[1].as_f64()) {
                    *day.cost.entry(provider.to_string()).or_default() += amount;
                    total_cost += amount;
                }
            }
        }
    }
    let (calls, answered): (i64, i64) = per_day.iter().fold((0, 0), |(c, a), d| (c + d.calls, a + d.answered));
    let (settings, _) = crate::settings::load(&s, &caller.org_id).await?;
    let days: Vec<Value> = per_day
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            json!({
                "day": &rfc3339(since + i as i64 * 86_400_000)[..10],
                "calls": d.calls,
                "answered": d.answered,
                "answer_rate": if d.calls > 0 { d.answered as f64 / d.calls as f64 } else { 0.0 },
                "outcomes": d.outcomes,
                "cost": d.cost.into_iter().map(|(k, v)| (k, json!(v))).collect::<Map<_, _>>(),
            })
        })
        .collect();
    Ok(Json(json!({
        "since": rfc3339(since),
        "days": days,
        "calls": calls,
        "answered": answered,
        "answer_rate": if calls > 0 { answered as f64 / calls as f64 } else { 0.0 },
        "answer_to_first_audio_ms": percentiles(first_audio),
        "turn_latency_ms": percentiles(turns),
        "cost": { "amount": total_cost, "currency": settings["currency"].as_str().unwrap_or("USD") },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_items_are_billed_by_the_provider_of_their_stage() {
        let providers = json!({"stt": "deepgram", "llm": "openai", "tts": ""});
        assert_eq!(provider_of("stt_audio", &providers), "deepgram");
        assert_eq!(provider_of("llm_prompt_tokens", &providers), "openai");
        assert_eq!(provider_of("tts_characters", &providers), "tts_characters", "no provider named: the item");
        assert_eq!(provider_of("carrier_minutes", &providers), "carrier_minutes");
        assert_eq!(provider_of("stt_audio", &Value::Null), "stt_audio");
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentiles((1..=100).collect())["p95"], 95);
        assert_eq!(percentiles(vec![])["p50"], Value::Null);
    }
}
