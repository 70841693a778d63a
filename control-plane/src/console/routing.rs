//! Routing: the AI assistants campaigns send answered calls to (a bot of this platform, an
//! outside WebSocket bot, or a SIP destination) and the load balancers that spread calls over
//! them. Reads and writes go through `/v1/ai-assistants` and `/v1/load-balancers`' handlers.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Map, Value, json};

use super::{Form, Nav, Notice, PageError, PageResult, Signed, html, items, see_other, text};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonObject, Query as ApiQuery};
use crate::model::{AiAssistant, Bot, LoadBalancer};


fn notice(n: &Notice) -> Option<&'static str> {
    Some(match n.notice.as_deref()? {
        "assistant_added" => "The assistant is added.",
        "balancer_added" => "The load balancer is added.",
        "down" => "Marked down: load balancers pass it by and campaigns routed to it wait.",
        "up" => "Marked up: it takes calls again.",
        "deleted" => "Deleted.",
        _ => return None,
    })
}

pub(crate) struct Assistant {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    pub down: bool,
}

pub(crate) struct Balancer {
    pub id: String,
    pub name: String,
    pub strategy: String,
    pub members: String,
}

#[derive(Template)]
#[template(path = "routing.html")]
struct RoutingPage {
    nav: Nav,
    assistants: Vec<Assistant>,
    balancers: Vec<Balancer>,
    bots: Vec<(String, String)>,
    notice: Option<&'static str>,
    error: Option<String>,
}


async fn listed<T: crate::resources::Document>(s: &AppState, signed: &Signed) -> Result<Vec<Value>, PageError> {
    let query: crate::resources::ListQuery = crate::extract::typed(json!({ "limit": 200 }))?;
    let axum::Json(list) = crate::resources::list::<T>(State(s.clone()), signed.caller.clone(), ApiQuery(query)).await?;
    Ok(items(&list).cloned().collect())
}

async fn routing_page(s: &AppState, signed: &Signed) -> Result<RoutingPage, PageError> {
    let bots: Vec<(String, String)> = listed::<Bot>(s, signed).await?.iter().map(|b| (text(&b["id"]), text(&b["name"]))).collect();
    let found = listed::<AiAssistant>(s, signed).await?;
    let assistants: Vec<Assistant> = found
        .iter()
        .map(|a| {
            let (kind, target) = if let Some(bot) = a["bot_id"].as_str() {
                ("Bot on this platform", bots.iter().find(|(id, _)| id == bot).map_or(bot.to_string(), |(_, n)| n.clone()))
            } else if a["kind"] == "sip" {
                ("SIP", format!("{} ({})", text(&a["sip_uri"]), text(&a["sip_provider"])))
            } else {
                ("WebSocket", text(&a["url_template"]))
            };
            Assistant { id: text(&a["id"]), name: text(&a["name"]), kind, target, down: a["down"].as_bool().unwrap_or(false) }
        })
        .collect();
    let balancers = listed::<LoadBalancer>(s, signed)
        .await?
        .iter()
        .map(|l| {
            let weighted = l["strategy"] == "weighted";
            let members = l["members"].as_array().map(Vec::as_slice).unwrap_or_default().iter().map(|m| {
                let id = m["assistant_id"].as_str().unwrap_or_default();
                let name = assistants.iter().find(|a| a.id == id).map_or(id.to_string(), |a| a.name.clone());
                if weighted { format!("{name} ×{}", m["weight"]) } else { name }
            });
            Balancer { id: text(&l["id"]), name: text(&l["name"]), strategy: text(&l["strategy"]).replace('_', " "), members: members.collect::<Vec<_>>().join(", ") }
        })
        .collect();
    Ok(RoutingPage { nav: signed.nav("routing"), assistants, balancers, bots, notice: None, error: None })
}

pub(crate) async fn page(State(s): State<AppState>, signed: Signed, Query(n): Query<Notice>) -> PageResult {
    let mut page = routing_page(&s, &signed).await?;
    page.notice = notice(&n);
    Ok(html(&page))
}

/// The assistant document the add form describes.
fn assistant(form: &Form) -> Value {
    let name = form.get("name").unwrap_or("");
    match form.get("target").unwrap_or("bot") {
        "sip" => json!({ "name": name, "kind": "sip", "sip_uri": form.text("sip_uri"), "sip_provider": form.text("sip_provider") }),
        "websocket" => {
            let mut doc = json!({ "name": name, "kind": "websocket", "url_template": form.text("url_template") });
            if let Some(token) = form.text("auth_token") {
                doc["secrets"] = json!({ "auth_token": token });
            }
            doc
        }
        _ => json!({ "name": name, "kind": "websocket", "bot_id": form.text("bot_id") }),
    }
}

/// The load balancer document the add form describes: each ticked assistant with its weight.
fn balancer(form: &Form) -> Value {
    let members: Vec<Value> = form
        .0
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("member_"))
        .map(|id| {
            let weight = form.text(&format!("weight_{id}")).and_then(|w| w.parse::<i64>().ok()).unwrap_or(1);
            json!({ "assistant_id": id, "weight": weight })
        })
        .collect();
    json!({ "name": form.get("name").unwrap_or(""), "strategy": form.get("strategy").unwrap_or("round_robin"), "members": members })
}

fn object(v: Value) -> JsonObject {
    let mut map = Map::new();
    if let Value::Object(o) = v {
        map.extend(o.into_iter().filter(|(_, v)| !v.is_null()));
    }
    JsonObject(map)
}

pub(crate) async fn change(State(s): State<AppState>, signed: Signed, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    let id = form.get("id").unwrap_or("").to_string();
    let caller = signed.caller.clone();
    let st = State(s.clone());
    let done: Result<&str, ApiError> = match form.get("op").unwrap_or("") {
        "add_assistant" => crate::resources::create::<AiAssistant>(st, caller, object(assistant(&form))).await.map(|_| "assistant_added"),
        "add_balancer" => crate::resources::create::<LoadBalancer>(st, caller, object(balancer(&form))).await.map(|_| "balancer_added"),
        "down" | "up" => {
            let down = form.get("op") == Some("down");
            crate::resources::update::<AiAssistant>(st, caller, Path(id), object(json!({ "down": down }))).await.map(|_| if down { "down" } else { "up" })
        }
        "delete_assistant" => crate::resources::delete::<AiAssistant>(st, caller, Path(id)).await.map(|_| "deleted"),
        "delete_balancer" => crate::resources::delete::<LoadBalancer>(st, caller, Path(id)).await.map(|_| "deleted"),
        _ => Err(ApiError::bad_request("unknown action")),
    };
    match done {
        Ok(notice) => Ok(see_other(&format!("/routing?notice={notice}"))),
        Err(e) if matches!(e.status.as_u16(), 409 | 422) => {
            let mut page = routing_page(&s, &signed).await?;
            page.error = Some(match &e.field {
                Some(field) => format!("{field}: {}", e.message),
                None => e.message.clone(),
            });
            let mut r = html(&page);
            *r.status_mut() = e.status;
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}
