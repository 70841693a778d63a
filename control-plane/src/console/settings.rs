//! Settings: the organization's settings and carrier (`/v1/settings`), unit prices, users and
//! roles (`/v1/users`), API keys shown once (`/v1/api-keys`), webhooks with their delivery log
//! (`/v1/webhooks`), and for admins the fleet's hosts (`/v1/fleet/hosts`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{Form, Nav, Notice, PageError, PageResult, Signed, html, items, see_other, show, text};
use crate::AppState;
use crate::auth::Role;
use crate::error::ApiError;
use crate::extract::{Body, JsonObject, Query as ApiQuery, typed};
use crate::model::Webhook;




fn notice(n: &Notice) -> Option<&'static str> {
    match n.notice.as_deref()? {
        "saved" => Some("Settings saved."),
        "user_added" => Some("User added."),
        "user_changed" => Some("User changed."),
        "user_removed" => Some("User removed."),
        "key_revoked" => Some("API key revoked."),
        "webhook_removed" => Some("Webhook removed."),
        _ => None,
    }
}

pub(crate) struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: String,
}

pub(crate) struct Key {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created: String,
    pub last_used: String,
}

pub(crate) struct Hook {
    pub id: String,
    pub name: String,
    pub url: String,
    pub events: String,
    pub enabled: bool,
}

pub(crate) struct Host {
    pub id: String,
    pub address: String,
    pub version: String,
    pub live: i64,
    pub free: i64,
    pub total: i64,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    nav: Nav,
    notice: Option<&'static str>,
    error: Option<String>,
    /// A secret made by the last action, shown this once (an API key, a webhook's signing secret).
    once: Option<(String, String)>,
    caller_id: String,
    country_code: String,
    webhook_url: String,
    carrier: String,
    cloudonix_domain: String,
    api_base: String,
    carrier_secrets: String,
    sip_host: String,
    sip_port: String,
    sip_username: String,
    sip_transport: String,
    currency: String,
    prices: String,
    users: Vec<User>,
    keys: Vec<Key>,
    hooks: Vec<Hook>,
    hosts: Option<Vec<Host>>,
    roles: &'static [&'static str],
    me: String,
}

const ROLES: &[&str] = &["viewer", "agent", "operator", "admin"];

async fn settings_page(s: &AppState, signed: &Signed) -> Result<SettingsPage, PageError> {
    let axum::Json(st) = crate::settings::get(State(s.clone()), signed.caller.clone()).await?;
    let list = || typed::<crate::users::PageQuery>(json!({ "limit": 200 }));
    let axum::Json(users) = crate::users::list_users(State(s.clone()), signed.caller.clone(), ApiQuery(list()?)).await?;
    let admin = signed.caller.role >= Role::Admin;
    let keys = if admin {
        let axum::Json(keys) = crate::users::list_keys(State(s.clone()), signed.caller.clone(), ApiQuery(list()?)).await?;
        items(&keys)
            .map(|k| Key {
                id: text(&k["id"]),
                name: text(&k["name"]),
                role: text(&k["role"]),
                created: show::time(k["created_at"].as_str()),
                last_used: show::time(k["last_used_at"].as_str()),
            })
            .collect()
    } else {
        Vec::new()
    };
    let query = typed::<crate::resources::ListQuery>(json!({ "limit": 200 }))?;
    let axum::Json(hooks) = crate::resources::list::<Webhook>(State(s.clone()), signed.caller.clone(), ApiQuery(query)).await?;
    let hosts = if admin {
        let axum::Json(h) = crate::fleet::hosts(State(s.clone()), crate::fleet::FleetOrAdmin).await?;
        Some(
            items(&h)
                .map(|h| Host {
                    id: text(&h["host_id"]),
                    address: text(&h["address"]),
                    version: text(&h["version"]),
                    live: h["live_calls"].as_i64().unwrap_or(0),
                    free: h["slots_free"].as_i64().unwrap_or(0),
                    total: h["slots_total"].as_i64().unwrap_or(0),
                })
                .collect(),
        )
    } else {
        None
    };
    let c = &st["carrier"];
    Ok(SettingsPage {
        nav: signed.nav("settings"),
        notice: None,
        error: None,
        once: None,
        caller_id: text(&st["default_caller_id"]),
        country_code: text(&st["default_country_code"]),
        webhook_url: text(&st["webhook_url"]),
        carrier: text(&c["provider"]),
        cloudonix_domain: text(&c["domain"]),
        api_base: text(&c["api_base"]),
        carrier_secrets: c["secrets_set"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        sip_host: text(&c["sip"]["host"]),
        sip_port: text(&c["sip"]["port"]),
        sip_username: text(&c["sip"]["username"]),
        sip_transport: text(&c["sip"]["transport"]),
        currency: text(&st["currency"]),
        prices: serde_json::to_string_pretty(&st["prices"]).unwrap_or_default(),
        users: items(&users)
            .map(|u| User { id: text(&u["id"]), email: text(&u["email"]), name: text(&u["name"]), role: text(&u["role"]) })
            .collect(),
        keys,
        hooks: items(&hooks)
            .map(|h| Hook {
                id: text(&h["id"]),
                name: text(&h["name"]),
                url: text(&h["url"]),
                events: h["events"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
                enabled: h["enabled"].as_bool().unwrap_or(true),
            })
            .collect(),
        hosts,
        roles: ROLES,
        me: signed.caller.user_id.clone().unwrap_or_default(),
    })
}

pub(crate) async fn page(State(s): State<AppState>, signed: Signed, Query(n): Query<Notice>) -> PageResult {
    let mut page = settings_page(&s, &signed).await?;
    page.notice = notice(&n);
    Ok(html(&page))
}

/// The settings patch of one of the page's settings forms.
fn settings_patch(form: &Form) -> Result<serde_json::Map<String, Value>, ApiError> {
    let opt = |k: &str| form.text(k).map_or(Value::Null, |v| Value::String(v.to_string()));
    let patch = match form.get("section").unwrap_or("") {
        "organization" => json!({ "default_caller_id": opt("default_caller_id"), "default_country_code": opt("default_country_code"), "webhook_url": opt("webhook_url") }),
        "carrier" => {
            let provider = form.text("provider").unwrap_or("simulator");
            let mut carrier = json!({ "provider": provider, "domain": opt("domain"), "api_base": opt("api_base") });
            carrier["sip"] = if provider == "sip" {
                let port = form.text("sip_port").map_or(Ok(5060), str::parse::<u16>).map_err(|_| ApiError::invalid("carrier.sip.port", "1 to 65535"))?;
                json!({ "host": form.get("sip_host").unwrap_or(""), "port": port, "username": opt("sip_username"), "transport": opt("sip_transport") })
            } else {
                Value::Null
            };
            let mut secrets = serde_json::Map::new();
            for name in ["api_key", "webhook_token", "password"] {
                if let Some(v) = form.text(&format!("secret_{name}")) {
                    secrets.insert(name.into(), v.into());
                }
            }
            if !secrets.is_empty() {
                carrier["secrets"] = Value::Object(secrets);
            }
            json!({ "carrier": carrier })
        }
        "prices" => {
            let text = form.get("prices").unwrap_or("").trim();
            let prices: Value = if text.is_empty() { json!({}) } else { serde_json::from_str(text).map_err(|e| ApiError::invalid("prices", format!("not JSON: {e}")))? };
            if !prices.is_object() {
                return Err(ApiError::invalid("prices", "a JSON object of providers"));
            }
            // The whole price list replaces the stored one.
            json!({ "currency": opt("currency"), "__prices": prices })
        }
        _ => return Err(ApiError::bad_request("no such settings section")),
    };
    let Value::Object(patch) = patch else { unreachable!("built as an object") };
    Ok(patch)
}

/// Every form of the page: settings sections, users, keys, webhooks.
pub(crate) async fn change(State(s): State<AppState>, signed: Signed, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    let caller = signed.caller.clone();
    let outcome: Result<Option<(String, String)>, ApiError> = async {
        match form.get("section").unwrap_or("") {
            "organization" | "carrier" | "prices" => {
                let mut patch = settings_patch(&form)?;
                if let Some(prices) = patch.remove("__prices") {
                    // The form holds the whole list: what it left out is removed.
                    let axum::Json(current) = crate::settings::get(State(s.clone()), caller.clone()).await?;
                    patch.insert("prices".into(), super::replacing(&current["prices"], prices));
                }
                let _saved = crate::settings::update(State(s.clone()), caller, JsonObject(patch)).await?;
                Ok(None)
            }
            "add_user" => {
                let user: crate::users::NewUser = typed(json!({
                    "email": form.get("email").unwrap_or(""), "name": form.get("name").unwrap_or(""),
                    "role": form.get("role").unwrap_or("viewer"), "password": form.get("password").unwrap_or(""),
                }))?;
                let _made = crate::users::create_user(State(s.clone()), caller, Body(user)).await?;
                Ok(None)
            }
            "change_user" => {
                let patch: crate::users::UserPatch = typed(json!({ "role": form.get("role").unwrap_or("") }))?;
                let _changed = crate::users::update_user(State(s.clone()), caller, Path(form.get("user_id").unwrap_or("").to_string()), Body(patch)).await?;
                Ok(None)
            }
            "remove_user" => {
                crate::users::delete_user(State(s.clone()), caller, Path(form.get("user_id").unwrap_or("").to_string())).await?;
                Ok(None)
            }
            "add_key" => {
                let key: crate::users::NewApiKey = typed(json!({ "name": form.get("name").unwrap_or(""), "role": form.get("role").unwrap_or("viewer") }))?;
                let (_, axum::Json(made)) = crate::users::create_key(State(s.clone()), caller, Body(key)).await?;
                Ok(Some(("API key (copy it now: it is not shown again)".to_string(), text(&made["key"]))))
            }
            "revoke_key" => {
                crate::users::delete_key(State(s.clone()), caller, Path(form.get("key_id").unwrap_or("").to_string())).await?;
                Ok(None)
            }
            "add_webhook" => {
                let events: Vec<&str> = ["call.completed", "handoff.created"].into_iter().filter(|e| form.ticked(&format!("event_{e}"))).collect();
                let mut doc = serde_json::Map::new();
                doc.insert("name".into(), form.get("name").unwrap_or("").into());
                doc.insert("url".into(), form.get("url").unwrap_or("").into());
                doc.insert("events".into(), json!(events));
                let (_, axum::Json(made)) = crate::resources::create::<Webhook>(State(s.clone()), caller, JsonObject(doc)).await?;
                Ok(Some(("Signing secret of the new webhook (copy it now: it is not shown again)".to_string(), text(&made["signing_secret"]))))
            }
            "remove_webhook" => {
                crate::resources::delete::<Webhook>(State(s.clone()), caller, Path(form.get("webhook_id").unwrap_or("").to_string())).await?;
                Ok(None)
            }
            _ => Err(ApiError::bad_request("no such form")),
        }
    }
    .await;
    let done = match form.get("section").unwrap_or("") {
        "add_user" => "user_added",
        "change_user" => "user_changed",
        "remove_user" => "user_removed",
        "revoke_key" => "key_revoked",
        "remove_webhook" => "webhook_removed",
        _ => "saved",
    };
    match outcome {
        Ok(None) => Ok(see_other(&format!("/settings?notice={done}"))),
        // A secret shown once is rendered into this answer, never into a URL.
        Ok(Some(once)) => {
            let mut page = settings_page(&s, &signed).await?;
            page.once = Some(once);
            Ok(html(&page))
        }
        Err(e) if matches!(e.status.as_u16(), 409 | 422) => {
            let mut page = settings_page(&s, &signed).await?;
            page.error = Some(e.message);
            let mut r = html(&page);
            *r.status_mut() = e.status;
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) struct Delivery {
    pub at: String,
    pub event: String,
    pub status: String,
    pub attempts: String,
    pub last: String,
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    nav: Nav,
    name: String,
    url: String,
    deliveries: Vec<Delivery>,
}

pub(crate) async fn webhook(State(s): State<AppState>, signed: Signed, Path(id): Path<String>) -> PageResult {
    let axum::Json(hook) = crate::resources::get::<Webhook>(State(s.clone()), signed.caller.clone(), Path(id.clone())).await?;
    let query = typed::<crate::webhooks::DeliveryQuery>(json!({ "limit": 100 }))?;
    let axum::Json(list) = crate::webhooks::deliveries(State(s), signed.caller.clone(), Path(id), ApiQuery(query)).await?;
    let deliveries = items(&list)
        .map(|d| Delivery {
            at: show::time(d["created_at"].as_str()),
            event: text(&d["event"]),
            status: text(&d["status"]),
            attempts: text(&d["attempts"]),
            last: [text(&d["last_status"]), text(&d["last_error"])].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" · "),
        })
        .collect();
    Ok(html(&WebhookPage { nav: signed.nav("settings"), name: text(&hook["name"]), url: text(&hook["url"]), deliveries }))
}
