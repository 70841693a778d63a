//! Bots: the list (`GET /v1/bots`) and the builder, whose form becomes the document
//! `POST /v1/bots` takes or the merge patch `PATCH /v1/bots/{id}` takes; secrets are
//! write-only (a blank field keeps the stored one). The bot's knowledge documents are listed,
//! added and removed on its page through the knowledge routes' handlers.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Map, Value, json};

use super::{Form, Nav, Notice, PageError, PageResult, Signed, html, see_other, show, text, urlencode};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonObject, Query as ApiQuery};
use crate::model::Bot;

pub(crate) struct Item {
    pub id: String,
    pub name: String,
    pub language: String,
    pub providers: String,
    pub updated: String,
    pub widget: bool,
}

#[derive(Template)]
#[template(path = "bots.html")]
struct BotsPage {
    nav: Nav,
    items: Vec<Item>,
    notice: Option<&'static str>,
}


/// The fixed messages a redirect may ask a page to show.
fn notice(n: &Notice) -> Option<&'static str> {
    match n.notice.as_deref()? {
        "created" => Some("Bot created."),
        "saved" => Some("Changes saved."),
        "deleted" => Some("Bot deleted."),
        "doc_added" => Some("Document added to the knowledge base."),
        "doc_deleted" => Some("Document removed."),
        _ => None,
    }
}


pub(crate) async fn list(State(s): State<AppState>, signed: Signed, Query(n): Query<Notice>) -> PageResult {
    let query: crate::resources::ListQuery = crate::extract::typed(json!({ "limit": 200 }))?;
    let axum::Json(page) = crate::resources::list::<Bot>(State(s), signed.caller.clone(), ApiQuery(query)).await?;
    let items = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| Item {
            id: text(&b["id"]),
            name: text(&b["name"]),
            language: text(&b["language"]),
            providers: ["stt", "llm", "tts"].iter().map(|p| b[p]["provider"].as_str().filter(|p| !p.is_empty()).unwrap_or("–")).collect::<Vec<_>>().join(" · "),
            updated: show::time(b["updated_at"].as_str()),
            widget: b["widget"]["enabled"].as_bool().unwrap_or(false),
        })
        .collect();
    Ok(html(&BotsPage { nav: signed.nav("bots"), items, notice: notice(&n) }))
}

/// The builder's fields, as strings the form shows and sends back.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub name: String,
    pub greeting: String,
    pub system_prompt: String,
    pub language: String,
    pub stt_provider: String,
    pub stt_model: String,
    pub stt_base_url: String,
    pub stt_key_set: bool,
    pub stt_options: String,
    pub llm_provider: String,
    pub llm_model: String,
    pub llm_base_url: String,
    pub llm_key_set: bool,
    pub llm_options: String,
    pub tts_provider: String,
    pub tts_model: String,
    pub tts_base_url: String,
    pub tts_key_set: bool,
    pub tts_options: String,
    pub voice: String,
    pub recording: bool,
    pub max_call_seconds: String,
    pub outbound_greeting: String,
    pub amd_detect: bool,
    pub amd_action: String,
    pub voicemail_message: String,
    pub idle_after: String,
    pub idle_reprompt: String,
    pub idle_max: String,
    pub idle_goodbye: String,
    pub turn_mode: String,
    pub turn_silence: String,
    pub turn_after: String,
    pub turn_max: String,
    pub turn_threshold: String,
    pub barge_ms: String,
    pub barge_words: String,
    pub backchannels: String,
    pub widget_enabled: bool,
    pub widget_key: String,
    pub widget_origins: String,
    pub widget_button: String,
    pub widget_transcript: bool,
    pub tools: String,
}

const PROVIDERS: [&str; 3] = ["stt", "llm", "tts"];

/// A new bot's script (the offline language model), so it answers before any key is set.
const STARTER_SCRIPT: &str = r#"{
  "script": {
    "intents": [
      {"name": "bye", "keywords": ["bye", "goodbye"], "reply": "Thanks for calling. Goodbye!",
       "tool": {"name": "end_call", "arguments": {}}}
    ],
    "fallback": "Sorry, I can only say goodbye for now."
  }
}"#;

impl Fields {
    /// A new bot's defaults: the offline providers, so it can be tried at once.
    fn new_bot() -> Fields {
        Fields {
            language: "en-US".into(),
            stt_provider: "none".into(),
            llm_provider: "script".into(),
            tts_provider: "espeak".into(),
            recording: true,
            max_call_seconds: "1800".into(),
            outbound_greeting: "immediate".into(),
            amd_action: "hangup".into(),
            idle_after: "8".into(),
            idle_max: "2".into(),
            turn_mode: "silence".into(),
            turn_silence: "700".into(),
            turn_after: "200".into(),
            turn_max: "2000".into(),
            turn_threshold: "0.5".into(),
            barge_ms: "500".into(),
            barge_words: "1".into(),
            backchannels: cxb_contract::bot::Interruptions::default().backchannels.join(" "),
            widget_button: "Talk to us".into(),
            widget_transcript: true,
            tools: "[\n  {\"kind\": \"end_call\"}\n]".into(),
            stt_options: "{}".into(),
            llm_options: STARTER_SCRIPT.into(),
            tts_options: "{}".into(),
            ..Fields::default()
        }
    }

    /// From a bot as `GET /v1/bots/{id}` shows it.
    fn of(b: &Value) -> Fields {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let n = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or_default();
        let key_set = |p: &str| b[p]["secrets_set"].as_array().is_some_and(|a| a.iter().any(|k| k == "api_key"));
        let options = |p: &str| serde_json::to_string_pretty(b[p]["options"].as_object().unwrap_or(&serde_json::Map::new())).unwrap_or_default();
        Fields {
            name: s(&b["name"]),
            greeting: s(&b["greeting"]),
            system_prompt: s(&b["system_prompt"]),
            language: s(&b["language"]),
            stt_provider: s(&b["stt"]["provider"]),
            stt_model: s(&b["stt"]["model"]),
            stt_base_url: s(&b["stt"]["base_url"]),
            stt_key_set: key_set("stt"),
            stt_options: options("stt"),
            llm_provider: s(&b["llm"]["provider"]),
            llm_model: s(&b["llm"]["model"]),
            llm_base_url: s(&b["llm"]["base_url"]),
            llm_key_set: key_set("llm"),
            llm_options: options("llm"),
            tts_provider: s(&b["tts"]["provider"]),
            tts_model: s(&b["tts"]["model"]),
            tts_base_url: s(&b["tts"]["base_url"]),
            tts_key_set: key_set("tts"),
            tts_options: options("tts"),
            voice: s(&b["voice"]),
            recording: b["recording"].as_bool().unwrap_or(true),
            max_call_seconds: n(&b["max_call_seconds"]),
            outbound_greeting: s(&b["outbound_greeting"]),
            amd_detect: b["answering_machine"]["detect"].as_bool().unwrap_or(false),
            amd_action: s(&b["answering_machine"]["action"]),
            voicemail_message: s(&b["answering_machine"]["voicemail_message"]),
            idle_after: n(&b["idle"]["reprompt_after_seconds"]),
            idle_reprompt: s(&b["idle"]["reprompt"]),
            idle_max: n(&b["idle"]["max_reprompts"]),
            idle_goodbye: s(&b["idle"]["goodbye"]),
            turn_mode: s(&b["turn_detection"]["mode"]),
            turn_silence: n(&b["turn_detection"]["silence_ms"]),
            turn_after: n(&b["turn_detection"]["model_after_ms"]),
            turn_max: n(&b["turn_detection"]["max_silence_ms"]),
            turn_threshold: n(&b["turn_detection"]["threshold"]),
            barge_ms: n(&b["interruptions"]["min_speech_ms"]),
            barge_words: n(&b["interruptions"]["min_words"]),
            backchannels: b["interruptions"]["backchannels"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
            widget_enabled: b["widget"]["enabled"].as_bool().unwrap_or(false),
            widget_key: s(&b["widget"]["key"]),
            widget_origins: b["widget"]["allowed_origins"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"),
            widget_button: s(&b["widget"]["button_text"]),
            widget_transcript: b["widget"]["show_transcript"].as_bool().unwrap_or(true),
            tools: serde_json::to_string_pretty(&b["tools"]).unwrap_or_else(|_| "[]".into()),
        }
    }

    /// From a posted builder form (secrets are not kept: they are never shown again).
    fn posted(f: &Form) -> Fields {
        let s = |k: &str| f.get(k).unwrap_or("").to_string();
        Fields {
            name: s("name"),
            greeting: s("greeting"),
            system_prompt: s("system_prompt"),
            language: s("language"),
            stt_provider: s("stt_provider"),
            stt_model: s("stt_model"),
            stt_base_url: s("stt_base_url"),
            stt_options: s("stt_options"),
            llm_options: s("llm_options"),
            tts_options: s("tts_options"),
            llm_provider: s("llm_provider"),
            llm_model: s("llm_model"),
            llm_base_url: s("llm_base_url"),
            tts_provider: s("tts_provider"),
            tts_model: s("tts_model"),
            tts_base_url: s("tts_base_url"),
            voice: s("voice"),
            recording: f.ticked("recording"),
            max_call_seconds: s("max_call_seconds"),
            outbound_greeting: s("outbound_greeting"),
            amd_detect: f.ticked("amd_detect"),
            amd_action: s("amd_action"),
            voicemail_message: s("voicemail_message"),
            idle_after: s("idle_after"),
            idle_reprompt: s("idle_reprompt"),
            idle_max: s("idle_max"),
            idle_goodbye: s("idle_goodbye"),
            turn_mode: s("turn_mode"),
            turn_silence: s("turn_silence"),
            turn_after: s("turn_after"),
            turn_max: s("turn_max"),
            turn_threshold: s("turn_threshold"),
            barge_ms: s("barge_ms"),
            barge_words: s("barge_words"),
            backchannels: s("backchannels"),
            widget_enabled: f.ticked("widget_enabled"),
            widget_key: s("widget_key"),
            widget_origins: s("widget_origins"),
            widget_button: s("widget_button"),
            widget_transcript: f.ticked("widget_transcript"),
            tools: s("tools"),
            ..Fields::default()
        }
    }
}

/// The document (or merge patch: blanks become `null`, removing the field) a builder form
/// stands for. The tools go in only when their text changed, so a bot's tool secrets (never
/// shown) stay as they are.
fn document(f: &Form) -> Result<Map<String, Value>, ApiError> {
    let opt = |k: &str| f.text(k).map_or(Value::Null, |v| Value::String(v.to_string()));
    let number = |k: &str, field: &str| -> Result<Value, ApiError> {
        match f.text(k) {
            None => Ok(Value::Null),
            Some(v) => v.parse::<u32>().map(Value::from).map_err(|_| ApiError::invalid(field, "a whole number")),
        }
    };
    let mut doc = json!({
        "name": f.get("name").unwrap_or(""),
        "greeting": f.get("greeting").unwrap_or(""),
        "system_prompt": f.get("system_prompt").unwrap_or(""),
        "language": f.text("language").unwrap_or("en-US"),
        "voice": opt("voice"),
        "recording": f.ticked("recording"),
        "max_call_seconds": number("max_call_seconds", "max_call_seconds")?,
        "outbound_greeting": f.text("outbound_greeting").unwrap_or("immediate"),
        "answering_machine": {
            "detect": f.ticked("amd_detect"),
            "action": f.text("amd_action").unwrap_or("hangup"),
            "voicemail_message": f.get("voicemail_message").unwrap_or(""),
        },
        "idle": {
            "reprompt_after_seconds": number("idle_after", "idle.reprompt_after_seconds")?,
            "reprompt": f.get("idle_reprompt").unwrap_or(""),
            "max_reprompts": number("idle_max", "idle.max_reprompts")?,
            "goodbye": f.get("idle_goodbye").unwrap_or(""),
        },
        "turn_detection": {
            "mode": f.text("turn_mode").unwrap_or("silence"),
            "silence_ms": number("turn_silence", "turn_detection.silence_ms")?,
            "model_after_ms": number("turn_after", "turn_detection.model_after_ms")?,
            "max_silence_ms": number("turn_max", "turn_detection.max_silence_ms")?,
            "threshold": match f.text("turn_threshold") {
                None => Value::Null,
                Some(v) => v.parse::<f64>().map(Value::from).map_err(|_| ApiError::invalid("turn_detection.threshold", "a number such as 0.5"))?,
            },
        },
        "interruptions": {
            "min_speech_ms": number("barge_ms", "interruptions.min_speech_ms")?,
            "min_words": number("barge_words", "interruptions.min_words")?,
            "backchannels": f.text("backchannels").map(|b| b.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect::<Vec<_>>()),
        },
        "widget": {
            "enabled": f.ticked("widget_enabled"),
            "allowed_origins": f.get("widget_origins").unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>(),
            "button_text": f.text("widget_button").unwrap_or("Talk to us"),
            "show_transcript": f.ticked("widget_transcript"),
        },
    });
    for p in PROVIDERS {
        let mut provider = json!({
            "provider": f.text(&format!("{p}_provider")).unwrap_or(""),
            "model": opt(&format!("{p}_model")),
            "base_url": opt(&format!("{p}_base_url")),
        });
        if let Some(key) = f.text(&format!("{p}_api_key")) {
            provider["secrets"] = json!({ "api_key": key });
        }
        let options = f.get(&format!("{p}_options")).unwrap_or("").trim();
        let options: Value = if options.is_empty() { json!({}) } else { serde_json::from_str(options).map_err(|e| ApiError::invalid(format!("{p}.options"), format!("not JSON: {e}")))? };
        if !options.is_object() {
            return Err(ApiError::invalid(format!("{p}.options"), "a JSON object"));
        }
        provider["options"] = options;
        doc[p] = provider;
    }
    let tools = f.get("tools").unwrap_or("").trim();
    if tools != f.get("tools_shown").unwrap_or("").trim() {
        let tools: Value = if tools.is_empty() { json!([]) } else { serde_json::from_str(tools).map_err(|e| ApiError::invalid("tools", format!("not JSON: {e}")))? };
        if !tools.is_array() {
            return Err(ApiError::invalid("tools", "a JSON array of tools"));
        }
        doc["tools"] = tools;
    }
    let Value::Object(doc) = doc else { unreachable!("built as an object") };
    Ok(doc)
}

/// A document with its `null`s (meaning "remove" in a patch) left out, for a new bot.
fn without_nulls(v: Map<String, Value>) -> Map<String, Value> {
    v.into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::Object(m) => (k, Value::Object(without_nulls(m))),
            v => (k, v),
        })
        .collect()
}

pub(crate) struct KnowledgeDoc {
    pub id: String,
    pub title: String,
    pub chunks: i64,
    pub added: String,
}

#[derive(Template)]
#[template(path = "bot.html")]
struct BotPage {
    nav: Nav,
    /// `None` for a new bot.
    id: Option<String>,
    f: Fields,
    error: Option<String>,
    error_field: String,
    notice: Option<&'static str>,
    docs: Vec<KnowledgeDoc>,
}

impl BotPage {
    /// Marks the field an error names.
    fn bad(&self, field: &str) -> bool {
        self.error_field == field || self.error_field.starts_with(&format!("{field}."))
    }
}

async fn knowledge(s: &AppState, signed: &Signed, id: &str) -> Result<Vec<KnowledgeDoc>, PageError> {
    let query: crate::knowledge::ListQuery = crate::extract::typed(json!({ "limit": 200 }))?;
    let axum::Json(page) = crate::knowledge::list(State(s.clone()), signed.caller.clone(), Path(id.to_string()), ApiQuery(query)).await?;
    Ok(page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| KnowledgeDoc {
            id: text(&d["id"]),
            title: text(&d["title"]),
            chunks: d["chunks"].as_i64().unwrap_or(0),
            added: show::time(d["created_at"].as_str()),
        })
        .collect())
}

pub(crate) async fn new_page(signed: Signed) -> PageResult {
    Ok(html(&BotPage { nav: signed.nav("bots"), id: None, f: Fields::new_bot(), error: None, error_field: String::new(), notice: None, docs: Vec::new() }))
}

pub(crate) async fn page(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, Query(n): Query<Notice>) -> PageResult {
    let axum::Json(bot) = crate::resources::get::<Bot>(State(s.clone()), signed.caller.clone(), Path(id.clone())).await?;
    let docs = knowledge(&s, &signed, &id).await?;
    Ok(html(&BotPage { nav: signed.nav("bots"), id: Some(id), f: Fields::of(&bot), error: None, error_field: String::new(), notice: notice(&n), docs }))
}

/// The form again with what was posted and why it was refused (422 and 409 stay on the page).
async fn refused(s: &AppState, signed: &Signed, id: Option<String>, form: &Form, e: ApiError) -> PageResult {
    if !matches!(e.status.as_u16(), 409 | 422) {
        return Err(e.into());
    }
    let docs = match &id {
        Some(id) => knowledge(s, signed, id).await?,
        None => Vec::new(),
    };
    let mut f = Fields::posted(form);
    f.tools = form.get("tools").unwrap_or("").to_string();
    let mut page = html(&BotPage { nav: signed.nav("bots"), id, f, error: Some(e.message), error_field: e.field.unwrap_or_default(), notice: None, docs });
    *page.status_mut() = e.status;
    Ok(page)
}

pub(crate) async fn create(State(s): State<AppState>, signed: Signed, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    let made = match document(&form) {
        Ok(doc) => crate::resources::create::<Bot>(State(s.clone()), signed.caller.clone(), JsonObject(without_nulls(doc))).await,
        Err(e) => Err(e),
    };
    match made {
        Ok((_, axum::Json(bot))) => Ok(see_other(&format!("/bots/{}?notice=created", urlencode(bot["id"].as_str().unwrap_or_default())))),
        Err(e) => refused(&s, &signed, None, &form, e).await,
    }
}

pub(crate) async fn save(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    match form.get("action").unwrap_or("save") {
        "add_doc" => {
            let doc = crate::knowledge::NewDocument { title: form.get("doc_title").unwrap_or("").to_string(), text: form.get("doc_text").unwrap_or("").to_string() };
            return match crate::knowledge::add(State(s.clone()), signed.caller.clone(), Path(id.clone()), crate::extract::Body(doc)).await {
                Ok(_) => Ok(see_other(&format!("/bots/{}?notice=doc_added#knowledge", urlencode(&id)))),
                Err(e) => Err(e.into()),
            };
        }
        "delete_doc" => {
            let doc = form.get("doc_id").unwrap_or("").to_string();
            crate::knowledge::delete(State(s.clone()), signed.caller.clone(), Path((id.clone(), doc))).await?;
            return Ok(see_other(&format!("/bots/{}?notice=doc_deleted#knowledge", urlencode(&id))));
        }
        _ => {}
    }
    let saved = match document(&form) {
        Ok(mut doc) => {
            // The options boxes hold whole maps: what was deleted from them is removed.
            let axum::Json(current) = crate::resources::get::<Bot>(State(s.clone()), signed.caller.clone(), Path(id.clone())).await?;
            for p in PROVIDERS {
                if let Some(options) = doc.get_mut(p).and_then(|v| v.get_mut("options")) {
                    *options = super::replacing(&current[p]["options"], options.take());
                }
            }
            crate::resources::update::<Bot>(State(s.clone()), signed.caller.clone(), Path(id.clone()), JsonObject(doc)).await
        }
        Err(e) => Err(e),
    };
    match saved {
        Ok(_) => Ok(see_other(&format!("/bots/{}?notice=saved", urlencode(&id)))),
        Err(e) => refused(&s, &signed, Some(id), &form, e).await,
    }
}

pub(crate) async fn delete(State(s): State<AppState>, signed: Signed, Path(id): Path<String>, headers: HeaderMap, form: Form) -> PageResult {
    signed.check_form(&headers, &form)?;
    crate::resources::delete::<Bot>(State(s), signed.caller.clone(), Path(id)).await?;
    Ok(see_other("/bots?notice=deleted"))
}
