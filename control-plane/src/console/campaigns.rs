//! Campaigns: the list, the builder (the document `POST /v1/campaigns` takes, or the merge
//! patch of `PATCH`), a campaign's live page (`GET /v1/campaigns/{id}/stats`, refreshed while
//! open) with its state changes, CSV contact import and its per-row report, contacts and calls;
//! and the do-not-call list.

use askama::Template;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Map, Value, json};

use super::{Form, Nav, Notice, PageError, PageResult, Signed, charts, html, items, see_other, show, text, urlencode};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonObject, Query as ApiQuery, typed};
use crate::model::{AiAssistant, Campaign, LoadBalancer};




fn notice(n: &Notice) -> Option<&'static str> {
    match n.notice.as_deref()? {
        "created" => Some("Campaign created. Import contacts, then start it."),
        "saved" => Some("Changes saved."),
        "start" => Some("Campaign started."),
        "pause" => Some("Campaign paused: calls in progress finish, no new ones are placed."),
        "resume" => Some("Campaign resumed."),
        "complete" => Some("Campaign completed."),
        "archive" => Some("Campaign archived."),
        "deleted" => Some("Campaign deleted."),
        "dnc_added" => Some("Number added to the do-not-call list."),
        "dnc_removed" => Some("Number removed from the do-not-call list."),
        _ => None,
    }
}

pub(crate) struct Item {
    pub id: String,
    pub name: String,
    pub state: String,
    pub routing: String,
    pub pacing: String,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "campaigns.html")]
struct CampaignsPage {
    nav: Nav,
    items: Vec<Item>,
    notice: Option<&'static str>,
}

/// Names of the organization's routing targets by id, for showing and choosing.
async fn targets(s: &AppState, signed: &Signed) -> Result<Vec<(String, String)>, PageError> {
    let mut out = Vec::new();
    let query = || typed::<crate::resources::ListQuery>(json!({ "limit": 500 }));
    let axum::Json(a) = crate::resources::list::<AiAssistant>(State(s.clone()), signed.caller.clone(), ApiQuery(query()?)).await?;
    out.extend(items(&a).map(|v| (format!("ai_assistant:{}", text(&v["id"])), format!("Assistant: {}", text(&v["name"])))));
    let axum::Json(l) = crate::resources::list::<LoadBalancer>(State(s.clone()), signed.caller.clone(), ApiQuery(query()?)).await?;
    out.extend(items(&l).map(|v| (format!("ai_load_balancer:{}", text(&v["id"])), format!("Load balancer: {}", text(&v["name"])))));
    out.push(("hangup".into(), "Hang up (test the dialling only)".into()));
    Ok(out)
}

fn routing_value(c: &Value) -> String {
    match (c["routing"]["type"].as_str(), c["routing"]["target_id"].as_str()) {
        (Some(kind), Some(target)) => format!("{kind}:{target}"),
        (Some(kind), None) => kind.to_string(),
        _ => String::new(),
    }
}

pub(crate) async fn list(State(s): State<AppState>, signed: Signed, Query(n): Query<Notice>) -> PageResult {
    let targets = targets(&s, &signed).await?;
    let query = typed::<crate::resources::ListQuery>(json!({ "limit": 200 }))?;
    let axum::Json(page) = crate::resources::list::<Campaign>(State(s), signed.caller.clone(), ApiQuery(query)).await?;
    let items = items(&page)
        .map(|c| {
            let route = routing_value(c);
            Item {
                id: text(&c["id"]),
                name: text(&c["name"]),
                state: text(&c["state"]).to_lowercase(),
                routing: targets.iter().find(|(v, _)| *v == route).map_or(route.clone(), |(_, n)| n.clone()),
                pacing: format!("{} at once · {} per second", c["cac"], c["cps"]),
                updated: show::time(c["updated_at"].as_str()),
            }
        })
        .collect();
    Ok(html(&CampaignsPage { nav: signed.nav("campaigns"), items, notice: notice(&n) }))
}

fn checked(on: bool) -> &'static str {
    if on { "checked" } else { "" }
}

/// A calling window row of the builder.
pub(crate) struct WindowRow {
    /// Each day with `checked` or nothing.
    pub days: Vec<(&'static str, &'static str)>,
    pub start: String,
    pub end: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const RETRY_ON: [(&str, &str); 4] = [("busy", "busy"), ("no_answer", "no answer"), ("failed", "failed"), ("voicemail", "voicemail")];
/// Window rows the builder offers.
const WINDOWS: usize = 3;

#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub name: String,
    pub description: String,
    pub route: String,
    pub caller_ids: String,
    pub country_code: String,
    pub cac: String,
    pub cps: String,
    pub time_zone: String,
    pub contact_local_time: bool,
    pub windows: Vec<(Vec<String>, String, String)>,
    pub max_attempts: String,
    pub backoff_seconds: String,
    pub backoff_multiplier: String,
    pub max_backoff_seconds: String,
    pub retry_on: Vec<String>,
    pub amd_enabled: bool,
    pub amd_action: String,
}

impl Fields {
    fn of(c: &Value) -> Fields {
        let s = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        let strings = |v: &Value| v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect::<Vec<_>>();
        Fields {
            name: s(&c["name"]),
            description: s(&c["description"]),
            route: routing_value(c),
            caller_ids: strings(&c["caller_ids"]).join("\n"),
            country_code: s(&c["default_country_code"]),
            cac: s(&c["cac"]),
            cps: s(&c["cps"]),
            time_zone: s(&c["schedule"]["time_zone"]),
            contact_local_time: c["schedule"]["contact_local_time"].as_bool().unwrap_or(true),
            windows: c["schedule"]["windows"].as_array().into_iter().flatten().map(|w| (strings(&w["days"]), s(&w["start"]), s(&w["end"]))).collect(),
            max_attempts: s(&c["retry"]["max_attempts"]),
            backoff_seconds: s(&c["retry"]["backoff_seconds"]),
            backoff_multiplier: s(&c["retry"]["backoff_multiplier"]),
            max_backoff_seconds: s(&c["retry"]["max_backoff_seconds"]),
            retry_on: strings(&c["retry"]["retry_on"]),
            amd_enabled: c["amd"]["enabled"].as_bool().unwrap_or(false),
            amd_action: s(&c["amd"]["action"]),
        }
    }

    fn new_campaign() -> Fields {
        Fields::of(&json!({
            "cac": 10, "cps": 1, "schedule": {"time_zone": "UTC", "contact_local_time": true,
            "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "18:00"}]},
            "retry": {"max_attempts": 3, "backoff_seconds": 300, "backoff_multiplier": 2, "max_backoff_seconds": 3600, "retry_on": ["busy", "no_answer", "failed"]},
            "amd": {"enabled": false, "action": "hangup"},
        }))
    }

    fn posted(f: &Form) -> Fields {
        let doc = document(f).unwrap_or_default();
        let mut fields = Fields::of(&Value::Object(doc));
        // What the document could not hold is shown as typed.
        for (field, name) in [(&mut fields.cac, "cac"), (&mut fields.cps, "cps"), (&mut fields.max_attempts, "max_attempts")] {
            *field = f.get(name).unwrap_or("").to_string();
        }
        fields.route = f.get("route").unwrap_or("").to_string();
        fields
    }

    /// The builder's window rows: the campaign's, then empty ones up to [`WINDOWS`].
    pub(crate) fn window_rows(&self) -> Vec<WindowRow> {
        (0..WINDOWS.max(self.windows.len()))
            .map(|i| {
                let w = self.windows.get(i);
                WindowRow {
                    days: DAYS.iter().map(|d| (*d, checked(w.is_some_and(|w| w.0.iter().any(|x| x == d))))).collect(),
                    start: w.map(|w| w.1.clone()).unwrap_or_default(),
                    end: w.map(|w| w.2.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }

    pub(crate) fn retries(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        RETRY_ON.iter().map(|(v, l)| (*v, *l, checked(self.retry_on.iter().any(|r| r == v)))).collect()
    }
}

/// The campaign document a builder form stands for (numbers that do not parse are sent as
/// text, so the API names the field).
fn document(f: &Form) -> Result<Map<String, Value>, ApiError> {
    let num = |k: &str| -> Value {
        let v = f.get(k).unwrap_or("").trim();
        v.parse::<f64>().ok().filter(|n| n.is_finite()).map_or_else(|| Value::String(v.to_string()), |n| if n.fract() == 0.0 && n >= 0.0 { json!(n as u64) } else { json!(n) })
    };
    let route = f.get("route").unwrap_or("");
    let routing = match route.split_once(':') {
        Some((kind, target)) => json!({ "type": kind, "target_id": target }),
        None if route.is_empty() => return Err(ApiError::invalid("routing.target_id", "choose where answered calls go")),
        None => json!({ "type": route }),
    };
    let windows: Vec<Value> = (0..WINDOWS)
        .filter_map(|i| {
            let days: Vec<&str> = DAYS.iter().copied().filter(|d| f.ticked(&format!("w{i}_{d}"))).collect();
            (!days.is_empty()).then(|| json!({ "days": days, "start": f.get(&format!("w{i}_start")).unwrap_or(""), "end": f.get(&format!("w{i}_end")).unwrap_or("") }))
        })
        .collect();
    let doc = json!({
        "name": f.get("name").unwrap_or(""),
        "description": f.get("description").unwrap_or(""),
        "routing": routing,
        "caller_ids": f.get("caller_ids").unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        "default_country_code": f.text("country_code"),
        "cac": num("cac"),
        "cps": num("cps"),
        "schedule": { "time_zone": f.text("time_zone").unwrap_or("UTC"), "contact_local_time": f.ticked("contact_local_time"), "windows": windows },
        "retry": {
            "max_attempts": num("max_attempts"),
            "backoff_seconds": num("backoff_seconds"),
            "backoff_multiplier": num("backoff_multiplier"),
            "max_backoff_seconds": num("max_backoff_seconds"),
            "retry_on": RETRY_ON.iter().map(|(v, _)| *v).filter(|v| f.ticked(&format!("retry_{v}"))).collect::<Vec<_>>(),
        },
        "amd": { "enabled": f.ticked("amd_enabled"), "action": f.text("amd_action").unwrap_or("hangup") },
    });
    let Value::Object(doc) = doc else { unreachable!("built as an object") };
    Ok(doc)
}

#[derive(Template)]
#[template(path = "campaign_form.html")]
struct FormPage {
    nav: Nav,
    id: Option<String>,
    f: Fields,
    targets: Vec<(String, String)>,
    error: Option<String>,
    error_field: String,
}

impl FormPage {
    fn bad(&self, field: &str) -> bool {
        self.error_field == field || self.error_field.starts_with(&format!("{field}.")) || self.error_field.starts_with(&format!("{field}["))
    }
}

pub(crate) async fn new_page(State(s): State<AppState>, signed: Signed) -> PageResult {
    let targets = targets(&s, &signed).await?;
    Ok(html(&FormPage { nav: signed.nav("campaigns"), id: None, f: Fields::new_campaign(), targets, error: None, error_field: String::new() }))
}

pub(crate) async fn edit_page(State(s): State<AppState>, signed: Signed, Path(id): Path<String>) -> PageResult {
    let axum::Json(c) = crate::resources::get::<Campaign>(State(s.clone()), signed.caller.clone(), Path(id.clone())).await?;
    let targets = targets(&s, &signed).await?;
    Ok(html(&FormPage { nav: signed.nav("campaigns"), id: Some(id), f: Fields::of(&c), targets, error: None, error_field: String::new() }))
}

async fn refused(s: &AppState, signed: &Signed, id: Option<String>, form: &Form, e: ApiError) -> PageResult {
    if !matches!(e.status.as_u16(), 409 | 422) {
        return Err(e.into());
    }
    let targets = targets(s, signed).await?;
    let mut page = html(&FormPage { nav: signed.nav("campaigns"), id, f: Fields::posted(form), targets, error: Some(e.message), error_field: e.field.unwrap_or_default() });
    *page.status_mut() = e.status;
    Ok(page)
}

pub(crate) async fn create(State(s): State<AppState>, signed: Signed, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    let made = match document(&form) {
        Ok(doc) => crate::resources::create::<Campaign>(State(s.clone()), signed.caller.clone(), JsonObject(doc)).await,
        Err(e) => Err(e),
    };
    match made {
        Ok((_, axum::Json(c))) => Ok(see_other(&format!("/campaigns/{}?notice=created", urlencode(c["id"].as_str().unwrap_or_default())))),
        Err(e) => refused(&s, &signed, None, &form, e).await,
    }
}

pub(crate) async fn save(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    let mut doc = document(&form);
    if let Ok(doc) = &mut doc
        && doc["default_country_code"].is_null()
    {
        // Blank removes it (merge patch); a new campaign simply leaves it out.
        doc.insert("default_country_code".into(), Value::Null);
    }
    let saved = match doc {
        Ok(doc) => crate::resources::update::<Campaign>(State(s.clone()), signed.caller.clone(), Path(id.clone()), JsonObject(doc)).await,
        Err(e) => Err(e),
    };
    match saved {
        Ok(_) => Ok(see_other(&format!("/campaigns/{}?notice=saved", urlencode(&id)))),
        Err(e) => refused(&s, &signed, Some(id), &form, e).await,
    }
}

/// One state change (start, pause, resume, complete, archive) or deletion.
pub(crate) async fn act(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    let action = match form.get("action").unwrap_or("") {
        "start" => "start",
        "pause" => "pause",
        "resume" => "resume",
        "complete" => "complete",
        "archive" => "archive",
        "delete" => "delete",
        _ => "",
    };
    match action {
        "start" | "pause" | "resume" | "complete" | "archive" => {
            let _changed = crate::campaigns::transition(s, signed.caller.clone(), id.clone(), action).await?;
            Ok(see_other(&format!("/campaigns/{}?notice={action}", urlencode(&id))))
        }
        "delete" => {
            crate::resources::delete::<Campaign>(State(s), signed.caller.clone(), Path(id)).await?;
            Ok(see_other("/campaigns?notice=deleted"))
        }
        _ => Err(ApiError::bad_request("no such action").into()),
    }
}

pub(crate) struct Contact {
    pub phone: String,
    pub name: String,
    pub status: String,
    pub disposition: String,
    pub attempts: i64,
}

pub(crate) struct Call {
    pub id: String,
    pub started: String,
    pub to: String,
    pub outcome: String,
    pub duration: String,
}

pub(crate) struct Rejection {
    pub row: u64,
    pub reason: String,
}

/// What an import did, shown once on the page after the upload.
pub(crate) struct ImportReport {
    pub imported: i64,
    pub updated: i64,
    pub merged: i64,
    pub truncated: bool,
    pub rejected: Vec<Rejection>,
}

#[derive(Template)]
#[template(path = "campaign.html")]
struct CampaignPage {
    nav: Nav,
    id: String,
    name: String,
    state: String,
    routing: String,
    pacing: String,
    notice: Option<&'static str>,
    error: Option<String>,
    report: Option<ImportReport>,
    attempts: i64,
    answered: i64,
    live_now: i64,
    in_progress: i64,
    answer_rate: String,
    contacts_total: i64,
    contacts_done: i64,
    contacts_pending: i64,
    average_duration: String,
    first_audio_p50: String,
    outcome_chart: String,
    contacts: Vec<Contact>,
    calls: Vec<Call>,
}

impl CampaignPage {
    /// The state changes this state allows, as (action, label).
    fn actions(&self) -> Vec<(&'static str, &'static str)> {
        match self.state.as_str() {
            "draft" => vec![("start", "Start"), ("archive", "Archive")],
            "active" => vec![("pause", "Pause"), ("complete", "Complete")],
            "paused" => vec![("resume", "Resume"), ("complete", "Complete"), ("archive", "Archive")],
            "completed" => vec![("archive", "Archive")],
            _ => Vec::new(),
        }
    }

    fn takes_contacts(&self) -> bool {
        !matches!(self.state.as_str(), "completed" | "archived")
    }
}

async fn campaign_page(s: &AppState, signed: &Signed, id: &str) -> Result<CampaignPage, PageError> {
    let axum::Json(c) = crate::resources::get::<Campaign>(State(s.clone()), signed.caller.clone(), Path(id.to_string())).await?;
    let axum::Json(st) = crate::attempts::stats(State(s.clone()), signed.caller.clone(), Path(id.to_string())).await?;
    let targets = targets(s, signed).await?;
    let route = routing_value(&c);
    let query = typed::<crate::campaigns::ContactQuery>(json!({ "limit": 50 }))?;
    let axum::Json(contacts) = crate::campaigns::list_contacts(State(s.clone()), signed.caller.clone(), Path(id.to_string()), ApiQuery(query)).await?;
    let query = typed::<crate::calls::CallQuery>(json!({ "limit": 10, "campaign_id": id }))?;
    let axum::Json(calls) = crate::calls::list(State(s.clone()), signed.caller.clone(), ApiQuery(query)).await?;
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let outcomes = [
        ("answered", "answered", "#16a34a"),
        ("voicemail", "voicemail", "#a16207"),
        ("no answer", "no_answer", "#d97706"),
        ("busy", "busy", "#f59e0b"),
        ("failed", "failed", "#dc2626"),
        ("canceled", "canceled", "#9ca3af"),
        ("in progress", "in_progress", "#2563eb"),
        ("skipped (DNC)", "dnc_skipped", "#6b7280"),
    ];
    let chart = outcomes.iter().map(|(label, key, color)| (label.to_string(), int(&st[*key]), *color)).collect::<Vec<_>>();
    Ok(CampaignPage {
        nav: signed.nav("campaigns"),
        id: id.to_string(),
        name: text(&c["name"]),
        state: text(&c["state"]).to_lowercase(),
        routing: targets.iter().find(|(v, _)| *v == route).map_or(route.clone(), |(_, n)| n.clone()),
        pacing: format!("up to {} calls at once, {} new calls a second", c["cac"], c["cps"]),
        notice: None,
        error: None,
        report: None,
        attempts: int(&st["attempts"]),
        answered: int(&st["answered"]),
        live_now: int(&st["live_now"]),
        in_progress: int(&st["in_progress"]),
        answer_rate: show::percent(int(&st["answered"]), int(&st["attempts"]) - int(&st["in_progress"])),
        contacts_total: int(&st["contacts"]["total"]),
        contacts_done: int(&st["contacts"]["done"]),
        contacts_pending: int(&st["contacts"]["pending"]),
        average_duration: show::duration(st["duration_ms"]["average"].as_i64()),
        first_audio_p50: st["answer_to_first_audio_ms"]["p50"].as_i64().map(|ms| format!("{ms} ms")).unwrap_or_default(),
        outcome_chart: charts::bars(&chart),
        contacts: items(&contacts)
            .map(|k| Contact {
                phone: text(&k["phone"]),
                name: text(&k["name"]),
                status: text(&k["status"]),
                disposition: show::words(k["disposition"].as_str().unwrap_or("")),
                attempts: int(&k["attempts"]),
            })
            .collect(),
        calls: items(&calls)
            .map(|k| Call {
                id: text(&k["id"]),
                started: show::time(k["started_at"].as_str()),
                to: text(&k["to"]),
                outcome: text(&k["outcome"]),
                duration: show::duration(k["duration_ms"].as_i64()),
            })
            .collect(),
    })
}

pub(crate) async fn page(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, Query(n): Query<Notice>) -> PageResult {
    let mut page = campaign_page(&s, &signed, &id).await?;
    page.notice = notice(&n);
    Ok(html(&page))
}

/// A CSV upload (multipart: `_csrf`, `file`, `default_country_code`) into the import's work;
/// the page comes back with the report, rejected rows listed.
pub(crate) async fn import(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, headers: HeaderMap, mut multipart: Multipart) -> PageResult {
    let mut form = Form::default();
    let mut file: Option<Vec<u8>> = None;
    let unreadable = |e: axum::extract::multipart::MultipartError| PageError(ApiError::bad_request(format!("the upload cannot be read: {e}")));
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            file = Some(field.bytes().await.map_err(unreadable)?.to_vec());
        } else {
            let value = field.text().await.map_err(unreadable)?;
            form.0.push((name, value));
        }
    }
    signed.check_form(&headers, &form)?;
    let result = match file.filter(|f| !f.is_empty()) {
        Some(bytes) => crate::campaigns::import_file(&s, &signed.caller, &id, form.text("default_country_code").map(str::to_string), &bytes).await,
        None => Err(ApiError::invalid("file", "choose a CSV file to import")),
    };
    let mut page = campaign_page(&s, &signed, &id).await?;
    match result {
        Ok(r) => {
            page.report = Some(ImportReport {
                imported: r["imported"].as_i64().unwrap_or(0),
                updated: r["updated"].as_i64().unwrap_or(0),
                merged: r["merged_in_file"].as_i64().unwrap_or(0),
                truncated: r["truncated"].as_bool().unwrap_or(false),
                rejected: r["rejected"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| Rejection { row: x["row"].as_u64().unwrap_or(0), reason: text(&x["reason"]) })
                    .collect(),
            });
            Ok(html(&page))
        }
        Err(e) if matches!(e.status.as_u16(), 409 | 413 | 422) => {
            page.error = Some(e.message);
            let mut r = html(&page);
            *r.status_mut() = e.status;
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) struct Dnc {
    pub id: String,
    pub phone: String,
    pub note: String,
    pub added: String,
}

#[derive(Template)]
#[template(path = "dnc.html")]
struct DncPage {
    nav: Nav,
    entries: Vec<Dnc>,
    notice: Option<&'static str>,
    error: Option<String>,
}

async fn dnc_page(s: &AppState, signed: &Signed) -> Result<DncPage, PageError> {
    let query = typed::<crate::campaigns::DncQuery>(json!({ "limit": 500 }))?;
    let axum::Json(list) = crate::campaigns::list_dnc(State(s.clone()), signed.caller.clone(), ApiQuery(query)).await?;
    let entries = items(&list)
        .map(|d| Dnc { id: text(&d["id"]), phone: text(&d["phone"]), note: text(&d["note"]), added: show::time(d["created_at"].as_str()) })
        .collect();
    Ok(DncPage { nav: signed.nav("dnc"), entries, notice: None, error: None })
}

pub(crate) async fn dnc(State(s): State<AppState>, signed: Signed, Query(n): Query<Notice>) -> PageResult {
    let mut page = dnc_page(&s, &signed).await?;
    page.notice = notice(&n);
    Ok(html(&page))
}

pub(crate) async fn dnc_change(State(s): State<AppState>, signed: Signed, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    if let Some(id) = form.text("remove") {
        crate::campaigns::delete_dnc(State(s), signed.caller.clone(), Path(id.to_string())).await?;
        return Ok(see_other("/dnc?notice=dnc_removed"));
    }
    let entry = crate::campaigns::NewDnc { phone: form.get("phone").unwrap_or("").to_string(), note: form.get("note").unwrap_or("").to_string() };
    match crate::campaigns::add_dnc(State(s.clone()), signed.caller.clone(), crate::extract::Body(entry)).await {
        Ok(_) => Ok(see_other("/dnc?notice=dnc_added")),
        Err(e) if e.status.as_u16() == 422 => {
            let mut page = dnc_page(&s, &signed).await?;
            page.error = Some(e.message);
            let mut r = html(&page);
            *r.status_mut() = e.status;
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}
