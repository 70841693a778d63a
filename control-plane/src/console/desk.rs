//! The Agent Desk: handoffs waiting for people, oldest first (`GET /v1/handoffs`, refreshed
//! while open), and one handoff's page to claim it, add notes and resolve it.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use axum::response::{IntoResponse, Response};

use super::{Form, Nav, PageResult, Signed, html, html_connecting, see_other, show, text, urlencode};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Body, Query as ApiQuery, typed};


pub(crate) struct Item {
    pub id: String,
    pub waiting_since: String,
    pub caller: String,
    pub reason: String,
    pub summary: String,
    pub status: String,
    pub claimed_by: String,
    pub resolution: String,
    /// The call is still up for a person to take over.
    pub live: bool,
}

fn item(h: &Value) -> Item {
    Item {
        id: text(&h["id"]),
        waiting_since: show::time(h["created_at"].as_str()),
        caller: text(&h["caller"]),
        reason: text(&h["reason"]),
        summary: text(&h["summary"]),
        status: text(&h["status"]),
        claimed_by: text(&h["claimed_by"]),
        resolution: show::words(h["resolution"].as_str().unwrap_or("")),
        live: h["live"] == true,
    }
}

#[derive(Template)]
#[template(path = "desk.html")]
struct DeskPage {
    nav: Nav,
    open: Vec<Item>,
    resolved: Vec<Item>,
}

pub(crate) async fn queue(State(s): State<AppState>, signed: Signed) -> PageResult {
    let list = |status: &str, limit: u32| typed::<crate::handoffs::HandoffQuery>(json!({ "status": status, "limit": limit }));
    let axum::Json(open) = crate::handoffs::list(State(s.clone()), signed.caller.clone(), ApiQuery(list("open", 200)?)).await?;
    let axum::Json(done) = crate::handoffs::list(State(s), signed.caller.clone(), ApiQuery(list("resolved", 20)?)).await?;
    let items = |v: &Value| v["items"].as_array().into_iter().flatten().map(item).collect();
    Ok(html(&DeskPage { nav: signed.nav("desk"), open: items(&open), resolved: items(&done) }))
}

pub(crate) struct Line {
    pub at: String,
    pub role: String,
    pub text: String,
}

pub(crate) struct NoteView {
    pub by: String,
    pub at: String,
    pub text: String,
}

#[derive(Template)]
#[template(path = "handoff.html")]
struct HandoffPage {
    nav: Nav,
    h: Item,
    call_id: String,
    lines: Vec<Line>,
    notes: Vec<NoteView>,
    /// Whether this person may work the desk (agents, operators, admins).
    works_desk: bool,
}

pub(crate) async fn page(State(s): State<AppState>, signed: Signed, Path(id): Path<String>) -> PageResult {
    let axum::Json(h) = crate::handoffs::get(State(s.clone()), signed.caller.clone(), Path(id)).await?;
    // A live call's page may talk to the engine carrying it (the takeover's signalling).
    let engine = if h["live"] == true { crate::handoffs::engine_host(&s, &signed.caller.org_id, text(&h["id"]).as_str()).await?.map(|(_, address)| address) } else { None };
    let engine = engine.and_then(|a| reqwest::Url::parse(&crate::widget::engine_http(&a)).ok()).map(|u| u.origin().ascii_serialization());
    let lines = h["transcript"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let ms = l["at_ms"].as_u64().unwrap_or(0);
            Line { at: format!("{}:{:02}", ms / 60_000, ms / 1000 % 60), role: text(&l["role"]), text: text(&l["text"]) }
        })
        .collect();
    let notes = h["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| NoteView { by: text(&n["by"]), at: show::time(n["at"].as_str()), text: text(&n["text"]) })
        .collect();
    let role = signed.caller.role;
    let page = HandoffPage {
        nav: signed.nav("desk"),
        call_id: text(&h["call_id"]),
        h: item(&h),
        lines,
        notes,
        works_desk: role == crate::auth::Role::Agent || role >= crate::auth::Role::Operator,
    };
    Ok(html_connecting(&page, engine.as_deref()))
}

/// `POST /desk/{id}/takeover` (the page's script, with the form token): the takeover grant
/// of `POST /v1/handoffs/{id}/takeover`, or its JSON error.
pub(crate) async fn takeover(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, headers: HeaderMap, form: Form) -> Response {
    if let Err(e) = signed.check_form(&headers, &form) {
        return e.0.into_response();
    }
    match crate::handoffs::takeover(State(s), signed.caller.clone(), Path(id)).await {
        Ok(grant) => grant.into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn act(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    let caller = signed.caller.clone();
    let path = Path(id.clone());
    match form.get("action").unwrap_or("") {
        "claim" => drop(crate::handoffs::claim(State(s), caller, path).await?),
        "note" => drop(crate::handoffs::note(State(s), caller, path, Body(crate::handoffs::Note { text: form.get("text").unwrap_or("").to_string() })).await?),
        "resolve" => {
            let resolution = crate::handoffs::Resolve { resolution: form.get("resolution").unwrap_or("").to_string() };
            drop(crate::handoffs::resolve(State(s), caller, path, Body(resolution)).await?);
            return Ok(see_other("/desk"));
        }
        _ => return Err(ApiError::bad_request("no such action").into()),
    }
    Ok(see_other(&format!("/desk/{}", urlencode(&id))))
}
