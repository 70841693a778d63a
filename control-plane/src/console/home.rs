//! Home: `GET /v1/overview` as a page that refreshes its figures while it is open.

use askama::Template;
use axum::extract::State;
use serde_json::Value;

use super::{Nav, PageResult, Signed, html, show, text};
use crate::AppState;

pub(crate) struct CampaignBar {
    pub id: String,
    pub name: String,
    pub state: String,
    pub done: i64,
    pub contacts: i64,
    pub percent: String,
    pub live_now: i64,
}

pub(crate) struct Failure {
    pub call_id: String,
    pub at: String,
    pub outcome: String,
    pub reason: String,
    pub to: String,
}

pub(crate) struct Fleet {
    pub hosts: i64,
    pub slots_total: i64,
    pub slots_free: i64,
    pub live_calls: i64,
    pub used_percent: String,
}

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    nav: Nav,
    live_calls: i64,
    calls_today: i64,
    answered_today: i64,
    failed_today: i64,
    answer_rate: String,
    campaigns: Vec<CampaignBar>,
    failures: Vec<Failure>,
    fleet: Option<Fleet>,
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}


pub(crate) async fn page(State(s): State<AppState>, signed: Signed) -> PageResult {
    let axum::Json(o) = crate::overview::get(State(s), signed.caller.clone()).await?;
    let today = &o["today"];
    let campaigns = o["campaigns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| CampaignBar {
            id: text(&c["id"]),
            name: text(&c["name"]),
            state: text(&c["state"]).to_lowercase(),
            done: int(&c["done"]),
            contacts: int(&c["contacts"]),
            percent: show::percent(int(&c["done"]), int(&c["contacts"])),
            live_now: int(&c["live_now"]),
        })
        .collect();
    let failures = o["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| Failure {
            call_id: text(&f["call_id"]),
            at: show::time(f["started_at"].as_str()),
            outcome: text(&f["outcome"]),
            reason: show::words(f["end_reason"].as_str().unwrap_or("")),
            to: text(&f["to"]),
        })
        .collect();
    let fleet = o["fleet"].is_object().then(|| {
        let f = &o["fleet"];
        let total = int(&f["slots_total"]);
        Fleet {
            hosts: int(&f["hosts"]),
            slots_total: total,
            slots_free: int(&f["slots_free"]),
            live_calls: int(&f["live_calls"]),
            used_percent: show::percent(total - int(&f["slots_free"]), total),
        }
    });
    Ok(html(&Home {
        nav: signed.nav("home"),
        live_calls: int(&o["live_calls"]),
        calls_today: int(&today["calls"]),
        answered_today: int(&today["answered"]),
        failed_today: int(&today["failed"]),
        answer_rate: show::percent(int(&today["answered"]), int(&today["calls"])),
        campaigns,
        failures,
        fleet,
    }))
}
