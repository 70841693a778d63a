//! Tools the language model calls during a call, run on the call's worker thread.
//!
//! [`Tools`] is built from the bot's `tools` config. It offers their [`ToolSpec`]s to the
//! model and sorts each [`ToolCall`] into what the conversation must do ([`ToolAction`]):
//! end the call, transfer it, treat it as voicemail, or wait for a tool with I/O, which runs
//! as a task on the call's runtime and reports through the call's [`Events`] as
//! [`Event::Tool`]. Every run of an I/O tool (custom HTTP, `search_knowledge`, a carrier
//! transfer) leaves a [`ToolTelemetry`] record in the [`ToolLog`] for the call's result.
//!
//! Whatever the model or a remote server sends, a tool answers with a [`ToolOutput`] the
//! model can read (failed, with the reason); nothing here panics on it.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::{BotConfig, ToolConfig, ToolKind};
use crate::provider::{Event, Events, Job, ProviderError, ToolCall, ToolOutput, ToolSpec};

/// An HTTP tool's answer (and a carrier's error text) is cut to this many bytes for the model.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024;
/// An HTTP tool's timeout when its config sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);
/// The longest timeout an HTTP tool may set.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(30_000);
/// Twilio's REST API.
pub const TWILIO_API: &str = "https://api.twilio.com";
/// How long the knowledge search and a carrier's transfer request may take.
const PLATFORM_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest knowledge-search answer read.
const MAX_SEARCH_BYTES: usize = 256 * 1024;

/// Where the control plane is, for `search_knowledge`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiLink {
    /// `http(s)://host:port` of `cxb api`.
    pub base_url: String,
    /// A fleet token (`cxf_…`).
    pub fleet_token: String,
}

impl std::fmt::Debug for ApiLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiLink").field("base_url", &self.base_url).field("fleet_token", &"…").finish()
    }
}

/// The carriers whose calls can be transferred through their API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CarrierKind {
    /// Twilio Media Streams: the call is updated with new TwiML.
    Twilio,
}

/// A carrier's REST API and credentials, from the organization's carrier settings.
#[derive(Clone, PartialEq, Eq)]
pub struct CarrierLink {
    /// Which carrier.
    pub kind: CarrierKind,
    /// Its API, e.g. [`TWILIO_API`].
    pub base_url: String,
    /// Twilio's Account SID (the basic-auth user).
    pub account_sid: String,
    /// Twilio's Auth Token (the basic-auth password).
    pub auth_token: String,
}

impl CarrierLink {
    /// Twilio's production API with these credentials.
    pub fn twilio(account_sid: impl Into<String>, auth_token: impl Into<String>) -> CarrierLink {
        CarrierLink { kind: CarrierKind::Twilio, base_url: TWILIO_API.into(), account_sid: account_sid.into(), auth_token: auth_token.into() }
    }
}

impl std::fmt::Debug for CarrierLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarrierLink")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"…")
            .finish()
    }
}

/// One run of an I/O tool, for the call's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolTelemetry {
    /// The tool's name.
    pub name: String,
    /// The model's id for the call.
    pub call_id: String,
    /// From the model's call to the answer.
    pub duration_ms: u64,
    /// The HTTP status the remote end answered, if it answered.
    pub status: Option<u16>,
    /// Whether the tool succeeded.
    pub ok: bool,
}

/// The call's tool telemetry: tasks append, the conversation takes it for the call's result.
#[derive(Debug, Clone, Default)]
pub struct ToolLog(Rc<RefCell<Vec<ToolTelemetry>>>);

impl ToolLog {
    /// An empty log.
    pub fn new() -> ToolLog {
        ToolLog::default()
    }

    /// Takes every record so far, oldest first.
    pub fn take(&self) -> Vec<ToolTelemetry> {
        std::mem::take(&mut self.0.borrow_mut())
    }

    /// A copy of every record so far.
    pub fn records(&self) -> Vec<ToolTelemetry> {
        self.0.borrow().clone()
    }

    fn record(&self, name: &str, call_id: &str, started: Instant, status: Option<u16>, ok: bool) {
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.borrow_mut().push(ToolTelemetry { name: name.into(), call_id: call_id.into(), duration_ms, status, ok });
    }
}

/// Where a call is transferred to: a phone number or a SIP URI. `Debug` shows only a number's
/// last four digits.
#[derive(Clone, PartialEq, Eq)]
pub enum Destination {
    /// Digits with an optional leading `+` (separators removed).
    Number(String),
    /// `sip:` or `sips:` URI.
    Sip(String),
}

impl Destination {
    /// Reads a number (`+1 (415) 555-0100`) or SIP URI; the error says why not, for the model.
    pub fn parse(text: &str) -> Result<Destination, String> {
        let text = text.trim();
        let lower = text.get(..5).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("sip:") || lower.starts_with("sips:") {
            let ok = text.len() <= 256 && text.len() > lower.find(':').map_or(0, |i| i + 1) && !text.chars().any(|c| c.is_whitespace() || c.is_control());
            return if ok { Ok(Destination::Sip(text.to_string())) } else { Err(format!("`{}` is not a usable SIP URI", clip(text, 80))) };
        }
        let number: String = text.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.')).collect();
        let digits = number.strip_prefix('+').unwrap_or(&number);
        if (3..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Destination::Number(number))
        } else {
            Err(format!("`{}` is not a phone number (E.164, e.g. +14155550100) or SIP URI", clip(text, 80)))
        }
    }

    /// The number or URI as given (separators removed from numbers).
    pub fn as_str(&self) -> &str {
        match self {
            Destination::Number(s) | Destination::Sip(s) => s,
        }
    }

    /// TwiML that dials it: `<Response><Dial>NUMBER</Dial></Response>` or
    /// `<Response><Dial><Sip>URI</Sip></Dial></Response>`, XML-escaped.
    pub fn twiml(&self) -> String {
        match self {
            Destination::Number(n) => format!("<Response><Dial>{}</Dial></Response>", xml_escape(n)),
            Destination::Sip(uri) => format!("<Response><Dial><Sip>{}</Sip></Dial></Response>", xml_escape(uri)),
        }
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Number(n) => write!(f, "Number(…{})", &n[n.len().saturating_sub(4)..]),
            Destination::Sip(uri) => write!(f, "Sip({uri})"),
        }
    }
}

/// XML text with `&`, `<`, `>`, `"` and `'` escaped.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// What the conversation must do about a tool call.
#[derive(Debug)]
pub enum ToolAction {
    /// Hang up after the current reply.
    EndCall {
        /// Why, as the model said (may be empty).
        reason: String,
    },
    /// Hand the call over (through [`Tools::transfer`] for carrier WebSocket calls).
    Transfer {
        /// Where to.
        destination: Destination,
        /// Why, as the model said (may be empty).
        reason: String,
    },
    /// A machine answered.
    Voicemail,
    /// A task is running; its answer comes as [`Event::Tool`] with the call's id. Dropping
    /// the job cancels it (and no answer comes).
    Run(Job),
}

/// An HTTP method a custom tool may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        Some(match s.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }

    /// GET and DELETE carry the arguments in the query string, the others as a JSON body.
    fn uses_query(self) -> bool {
        matches!(self, Method::Get | Method::Delete)
    }
}

/// A custom HTTP tool, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTool {
    name: String,
    url: String,
    method: Method,
    /// Declared headers, then secret ones.
    headers: Vec<(String, String)>,
    timeout: Duration,
    parameters: Value,
}

impl HttpTool {
    /// Checks an `http` tool's config: a name the model can call (letters, digits, `_`, `-`;
    /// at most 64), an http(s) URL, a known method, header names and values that can be sent,
    /// and an object schema. `field` names the tool in errors (`tools[2]`).
    pub fn from_config(tool: &ToolConfig, field: &str) -> Result<HttpTool, ProviderError> {
        let name = tool.name.clone().unwrap_or_default();
        check_name(&name, field)?;
        let url = tool.url.clone().unwrap_or_default();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            return Err(ProviderError::invalid(format!("{field}.url"), "an http:// or https:// URL"));
        }
        let method = match tool.method.as_deref() {
            None => Method::Post,
            Some(m) => Method::parse(m).ok_or_else(|| ProviderError::invalid(format!("{field}.method"), "GET, POST, PUT, PATCH or DELETE"))?,
        };
        let mut headers = Vec::new();
        for (which, map) in [("headers", &tool.headers), ("secrets", &tool.secrets)] {
            for (k, v) in map {
                let name_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                let value_ok = v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
                if !name_ok || !value_ok {
                    return Err(ProviderError::invalid(format!("{field}.{which}.{k}"), "not a valid HTTP header"));
                }
                headers.push((k.clone(), v.clone()));
            }
        }
        let parameters = match &tool.parameters {
            None => json!({ "type": "object", "properties": {} }),
            Some(p @ Value::Object(o)) if o.get("required").is_none_or(|r| r.as_array().is_some_and(|a| a.iter().all(Value::is_string))) => p.clone(),
            Some(_) => return Err(ProviderError::invalid(format!("{field}.parameters"), "a JSON Schema object whose `required` lists names")),
        };
        let timeout = tool.timeout_ms.map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(u64::from(ms.max(1))).min(MAX_TIMEOUT));
        Ok(HttpTool { name, url, method, headers, timeout, parameters })
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long a request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn check_name(name: &str, field: &str) -> Result<(), ProviderError> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(ProviderError::invalid(format!("{field}.name"), "1 to 64 letters, digits, `_` or `-`"));
    }
    Ok(())
}

/// One tool the bot offers, checked.
#[derive(Debug, Clone, PartialEq)]
enum Tool {
    EndCall,
    Transfer { default: Option<Destination> },
    Handoff { default: Option<Destination> },
    Voicemail,
    Search,
    SendDtmf,
    Http(Rc<HttpTool>),
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    name: String,
    description: String,
    tool: Tool,
}

/// The bot's tools: their specs for the model, and what each call of one means.
#[derive(Debug, Clone)]
pub struct Tools {
    entries: Vec<Entry>,
    bot_id: String,
    api: Option<Rc<ApiLink>>,
    log: ToolLog,
}

impl Tools {
    /// The tools of `bot`. `api` is where `search_knowledge` asks (none: it answers that
    /// there is no knowledge base). Fails on a tool that could never run.
    pub fn new(bot: &BotConfig, api: Option<ApiLink>) -> Result<Tools, ProviderError> {
        let mut entries: Vec<Entry> = Vec::with_capacity(bot.tools.len());
        for (i, t) in bot.tools.iter().enumerate() {
            let field = format!("tools[{i}]");
            let tool = match t.kind {
                ToolKind::EndCall => Tool::EndCall,
                ToolKind::DetectedVoicemail => Tool::Voicemail,
                ToolKind::SearchKnowledge => Tool::Search,
                ToolKind::SendDtmf => Tool::SendDtmf,
                ToolKind::TransferCall | ToolKind::Handoff => {
                    let default = match t.transfer_to.as_deref().filter(|d| !d.trim().is_empty()) {
                        Some(d) => Some(Destination::parse(d).map_err(|e| ProviderError::invalid(format!("{field}.transfer_to"), e))?),
                        None => None,
                    };
                    if t.kind == ToolKind::Handoff { Tool::Handoff { default } } else { Tool::Transfer { default } }
                }
                ToolKind::Http => Tool::Http(Rc::new(HttpTool::from_config(t, &field)?)),
            };
            let name = t.name().to_string();
            check_name(&name, &field)?;
            if entries.iter().any(|e| e.name == name) {
                return Err(ProviderError::invalid(format!("{field}.name"), format!("another tool is called `{name}`")));
            }
            let description = if t.description.trim().is_empty() { default_description(&tool) } else { t.description.clone() };
            entries.push(Entry { name, description, tool });
        }
        Ok(Tools { entries, bot_id: bot.id.clone(), api: api.map(Rc::new), log: ToolLog::new() })
    }

    /// The tools as the language model sees them.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.entries.iter().map(|e| ToolSpec { name: e.name.clone(), description: e.description.clone(), parameters: parameters(&e.tool) }).collect()
    }

    /// The call's tool telemetry.
    pub fn log(&self) -> &ToolLog {
        &self.log
    }

    /// What the conversation must do about `call`. Tools with I/O (and calls that cannot run:
    /// an unknown name, bad arguments, a transfer with nowhere to go) start a task whose
    /// answer comes to `events`.
    pub fn classify(&self, call: &ToolCall, events: &Events) -> ToolAction {
        let Some(entry) = self.entries.iter().find(|e| e.name == call.name) else {
            let content = format!("There is no tool called `{}`.", clip(&call.name, 64));
            return ToolAction::Run(answer(call.id.clone(), ToolOutput { content, failed: true }, events.clone()));
        };
        // Built-ins read what they can: a model's malformed arguments must not stop a hang-up.
        let args = || parse_arguments(&call.arguments).unwrap_or_default();
        let text = |args: &Map<String, Value>, key: &str| args.get(key).and_then(Value::as_str).unwrap_or_default().trim().to_string();
        match &entry.tool {
            Tool::EndCall => ToolAction::EndCall { reason: text(&args(), "reason") },
            Tool::Voicemail => ToolAction::Voicemail,
            Tool::Transfer { default } => {
                let args = args();
                let asked = text(&args, "destination");
                let destination = if asked.is_empty() {
                    default.clone().ok_or_else(|| "No destination was given and the bot has no default transfer number.".to_string())
                } else {
                    Destination::parse(&asked)
                };
                match destination {
                    Ok(destination) => ToolAction::Transfer { destination, reason: text(&args, "reason") },
                    Err(why) => ToolAction::Run(answer(call.id.clone(), ToolOutput { content: why, failed: true }, events.clone())),
                }
            }
            // The conversation presses the keys and hands over itself; the model's calls never come here.
            Tool::SendDtmf | Tool::Handoff { .. } => ToolAction::Run(answer(call.id.clone(), ToolOutput { content: "Keys are pressed by the call.".into(), failed: true }, events.clone())),
            Tool::Search => ToolAction::Run(search_knowledge(self.api.clone(), &self.bot_id, call, events.clone(), self.log.clone())),
            Tool::Http(tool) => ToolAction::Run(http_tool(tool.clone(), call, events.clone(), self.log.clone())),
        }
    }

    /// Transfers the call through its carrier (for calls that came over a carrier's
    /// WebSocket) and answers `call_id` when the carrier has taken the request.
    pub fn transfer(&self, carrier: Option<&CarrierLink>, call_sid: &str, destination: &Destination, call_id: &str, events: &Events) -> Job {
        transfer(carrier, call_sid, destination, call_id, events.clone(), self.log.clone())
    }
}

fn default_description(tool: &Tool) -> String {
    match tool {
        Tool::EndCall => "Hang up the call. Use it after saying goodbye, when the conversation is finished or the caller asks to end the call.".into(),
        Tool::Transfer { default: Some(_) } => {
            "Transfer the caller to a person. Tell the caller first. Leave out the destination to use the default number.".into()
        }
        Tool::Transfer { default: None } => "Transfer the caller to another phone number or SIP address. Tell the caller first.".into(),
        Tool::Voicemail => "Call this when an answering machine or voicemail greeting answered instead of a person.".into(),
        Tool::Handoff { default: Some(_) } => {
            "Hand the caller to a person: when they ask for one, or you cannot help. Give the reason and a short summary of what the caller needs; tell the caller you are connecting them.".into()
        }
        Tool::Handoff { default: None } => {
            "Pass the caller's request to the team, who will follow up: when they ask for a person, or you cannot help. Give the reason and a short summary of what the caller needs; tell the caller someone will get back to them.".into()
        }
        Tool::Search => {
            "Search the knowledge base for facts to answer the caller. Use it before answering questions about policies, products, prices or procedures.".into()
        }
        Tool::Http(_) => "Call an external service.".into(),
        Tool::SendDtmf => "Press keys on the phone keypad, to choose options in an automated phone menu.".into(),
    }
}

fn parameters(tool: &Tool) -> Value {
    let reason = json!({ "type": "string", "description": "Why, in a few words." });
    match tool {
        Tool::EndCall => json!({ "type": "object", "properties": { "reason": reason }, "required": [] }),
        Tool::Transfer { default } => {
            let destination = json!({ "type": "string", "description": "A phone number in E.164 form (+14155550100) or a SIP URI (sip:agent@example.com)." });
            let required: Vec<&str> = if default.is_some() { vec![] } else { vec!["destination"] };
            json!({ "type": "object", "properties": { "destination": destination, "reason": reason }, "required": required })
        }
        Tool::Voicemail => json!({ "type": "object", "properties": {}, "required": [] }),
        Tool::Handoff { .. } => json!({
            "type": "object",
            "properties": {
                "reason": reason,
                "summary": { "type": "string", "description": "What the caller needs and what was said so far, in two or three sentences, for the person who takes over." },
            },
            "required": ["reason", "summary"],
        }),
        Tool::Search => json!({
            "type": "object",
            "properties": { "query": { "type": "string", "description": "What to look up, in a few words." } },
            "required": ["query"],
        }),
        Tool::Http(t) => t.parameters.clone(),
        Tool::SendDtmf => json!({
            "type": "object",
            "properties": { "digits": { "type": "string", "pattern": "^[0-9*#A-D]{1,32}$", "description": "The keys to press, in order, e.g. 1 or 4421#." } },
            "required": ["digits"],
        }),
    }
}

/// The model's arguments as a JSON object. An empty string counts as `{}` (models send it
/// for tools without parameters).
fn parse_arguments(arguments: &str) -> Result<Map<String, Value>, String> {
    if arguments.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("The arguments must be a JSON object.".into()),
        Err(e) => Err(format!("The arguments are not valid JSON ({e}).")),
    }
}

/// Parses the model's `arguments` and checks them against `schema`: every name in
/// `required` present (and not null), and top-level properties of the declared `type`.
/// The error is a sentence for the model.
pub fn check_arguments(schema: &Value, arguments: &str) -> Result<Map<String, Value>, String> {
    let args = parse_arguments(arguments)?;
    let required = schema.get("required").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for name in required.iter().filter_map(Value::as_str) {
        if args.get(name).is_none_or(Value::is_null) {
            return Err(format!("The required argument `{name}` is missing."));
        }
    }
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return Ok(args) };
    for (name, value) in &args {
        let Some(declared) = properties.get(name).and_then(|p| p.get("type")) else { continue };
        let types: Vec<&str> = match declared {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let fits = |t: &str| match t {
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "null" => value.is_null(),
            _ => true,
        };
        if !types.is_empty() && !types.iter().any(|t| fits(t)) {
            return Err(format!("The argument `{}` must be of type {}.", clip(name, 64), types.join(" or ")));
        }
    }
    Ok(args)
}

/// A task that answers `call_id` with `output` at once.
fn answer(call_id: String, output: ToolOutput, events: Events) -> Job {
    compio::runtime::spawn(async move { events.push(Event::Tool { call_id, output }) })
}

fn failed(content: impl Into<String>) -> ToolOutput {
    ToolOutput { content: content.into(), failed: true }
}

/// Runs a custom HTTP tool for `call`: arguments checked against the tool's schema, then one
/// request (GET and DELETE with the arguments as the query string, the others with them as a
/// JSON body) with the declared and secret headers, within the tool's timeout. A 2xx answer's
/// body (cut to [`MAX_OUTPUT_BYTES`]) is the output; anything else is a failed output that
/// says what happened. One [`ToolTelemetry`] record goes to `log`.
pub fn http_tool(tool: Rc<HttpTool>, call: &ToolCall, events: Events, log: ToolLog) -> Job {
    let (call_id, arguments) = (call.id.clone(), call.arguments.clone());
    let started = Instant::now();
    compio::runtime::spawn(async move {
        let (output, status) = match check_arguments(&tool.parameters, &arguments) {
            Err(why) => (failed(format!("The tool `{}` was not called: {why}", tool.name)), None),
            Ok(args) => match compio::time::timeout(tool.timeout, send_http(&tool, &args)).await {
                Ok(Ok((status, body))) if (200..300).contains(&status) => {
                    let content = if body.is_empty() { format!("Done (HTTP {status}).") } else { body };
                    (ToolOutput { content, failed: false }, Some(status))
                }
                Ok(Ok((status, body))) => (failed(format!("The service answered HTTP {status}: {body}")), Some(status)),
                Ok(Err(e)) => (failed(format!("The service could not be reached: {e}")), None),
                Err(_) => (failed(format!("The service did not answer within {} ms.", tool.timeout.as_millis())), None),
            },
        };
        log.record(&tool.name, &call_id, started, status, !output.failed);
        events.push(Event::Tool { call_id, output });
    })
}

async fn send_http(tool: &HttpTool, args: &Map<String, Value>) -> Result<(u16, String), String> {
    let client = crate::egress::http()?;
    let url = tool.url.as_str();
    let request = match tool.method {
        Method::Get => client.get(url),
        Method::Post => client.post(url),
        Method::Put => client.put(url),
        Method::Patch => client.patch(url),
        Method::Delete => client.delete(url),
    };
    let mut request = request.map_err(|e| e.to_string())?;
    for (name, value) in &tool.headers {
        request = request.header(name.as_str(), value.as_str()).map_err(|e| e.to_string())?;
    }
    request = if tool.method.uses_query() {
        let pairs: Vec<(&str, String)> = args
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.as_str(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        request.query(&pairs).map_err(|e| e.to_string())?
    } else {
        let body = serde_json::to_string(args).map_err(|e| e.to_string())?;
        if !tool.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request = request.header("content-type", "application/json").map_err(|e| e.to_string())?;
        }
        request.body(body)
    };
    let response = request.send().await.map_err(|e| crate::egress::error_chain(&e))?;
    let status = response.status().as_u16();
    let body = read_text(response, MAX_OUTPUT_BYTES).await?;
    Ok((status, body))
}

/// The response body as text, at most `limit` bytes (cut on a character boundary and marked
/// when cut); the rest is not read.
async fn read_text(response: cyper::Response, limit: usize) -> Result<String, String> {
    let mut body: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut stream = std::pin::pin!(response.bytes_stream());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    let mut end = body.len();
    if cut {
        // Drop a character split by the cut (at most 3 bytes of one).
        while end > 0 && body.len() - end < 4 && std::str::from_utf8(&body[..end]).is_err() {
            end -= 1;
        }
    }
    let mut text = String::from_utf8_lossy(&body[..end]).into_owned();
    if cut {
        text.push_str(" […]");
    }
    Ok(text)
}

/// `text` cut to `max` characters.
fn clip(text: &str, max: usize) -> &str {
    text.char_indices().nth(max).map_or(text, |(i, _)| &text[..i])
}

#[derive(Deserialize)]
struct Found {
    #[serde(default)]
    matches: Vec<FoundMatch>,
}

#[derive(Deserialize)]
struct FoundMatch {
    #[serde(default)]
    title: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    citation: Option<Citation>,
}

/// Where a passage comes from, as the API labels it (`Title › Heading (passage N)`).
#[derive(Deserialize)]
struct Citation {
    #[serde(default)]
    label: String,
}

/// Runs `search_knowledge` for `call`: asks the control plane for the bot's best chunks for
/// the `query` argument and answers with their titles and text. One [`ToolTelemetry`]
/// record goes to `log`.
pub fn search_knowledge(api: Option<Rc<ApiLink>>, bot_id: &str, call: &ToolCall, events: Events, log: ToolLog) -> Job {
    let (call_id, arguments, bot_id) = (call.id.clone(), call.arguments.clone(), bot_id.to_string());
    let started = Instant::now();
    compio::runtime::spawn(async move {
        let query = parse_arguments(&arguments).map(|a| a.get("query").and_then(Value::as_str).unwrap_or_default().trim().to_string());
        let (output, status) = match (api, query) {
            (None, _) => (failed("No knowledge base is configured."), None),
            (_, Err(why)) => (failed(format!("The search was not run: {why}")), None),
            (_, Ok(q)) if q.is_empty() => (failed("The search was not run: give a `query`."), None),
            (Some(api), Ok(query)) => match compio::time::timeout(PLATFORM_TIMEOUT, ask_knowledge(&api, &bot_id, &query)).await {
                Ok(Ok((output, status))) => (output, Some(status)),
                Ok(Err(e)) => (failed(format!("The knowledge base could not be reached: {e}")), None),
                Err(_) => (failed("The knowledge base did not answer in time."), None),
            },
        };
        log.record("search_knowledge", &call_id, started, status, !output.failed);
        events.push(Event::Tool { call_id, output });
    })
}

async fn ask_knowledge(api: &ApiLink, bot_id: &str, query: &str) -> Result<(ToolOutput, u16), String> {
    let client = crate::providers::http()?;
    let url = format!("{}/v1/runtime/knowledge/search", api.base_url.trim_end_matches('/'));
    // As many passages as the bot's `knowledge.top_k` (the API's default for it).
    let body = json!({ "bot_id": bot_id, "query": query }).to_string();
    let response = client
        .post(url)
        .and_then(|r| r.bearer_auth(&api.fleet_token))
        .and_then(|r| r.header("content-type", "application/json"))
        .map_err(|e| e.to_string())?
        .body(body)
        .send()
        .await
        .map_err(|e| crate::egress::error_chain(&e))?;
    let status = response.status().as_u16();
    let text = read_text(response, MAX_SEARCH_BYTES).await?;
    if !(200..300).contains(&status) {
        return Ok((failed(format!("The knowledge search failed (HTTP {status}).")), status));
    }
    let found: Found = serde_json::from_str(&text).map_err(|_| "the knowledge search answered something unreadable".to_string())?;
    if found.matches.is_empty() {
        return Ok((ToolOutput { content: "Nothing in the knowledge base matches.".into(), failed: false }, status));
    }
    let content = found
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let source = m.citation.as_ref().map(|c| c.label.as_str()).filter(|l| !l.is_empty()).unwrap_or(&m.title);
            format!("[{}] {source}\n{}", i + 1, m.text)
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    Ok((ToolOutput { content, failed: false }, status))
}

/// Twilio's SIDs: letters and digits only (they go into the request's path).
fn is_sid(s: &str) -> bool {
    (2..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Transfers a carrier's WebSocket call to `destination` through the carrier's API and
/// answers `call_id` when the carrier has taken (or refused) the request. For Twilio: `POST
/// {base}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with the form parameter
/// `Twiml=<Response><Dial>…</Dial></Response>` and basic auth (Account SID, Auth Token), as
/// Twilio documents for updating a live call. One [`ToolTelemetry`] record goes to `log`.
pub fn transfer(carrier: Option<&CarrierLink>, call_sid: &str, destination: &Destination, call_id: &str, events: Events, log: ToolLog) -> Job {
    let carrier = carrier.cloned();
    let (call_sid, twiml, call_id) = (call_sid.to_string(), destination.twiml(), call_id.to_string());
    let shown = destination.as_str().to_string();
    let started = Instant::now();
    compio::runtime::spawn(async move {
        let (output, status) = match carrier {
            None => (failed("This call cannot be transferred (its carrier has no transfer API configured)."), None),
            Some(c) if !is_sid(&c.account_sid) || !is_sid(&call_sid) => (failed("This call cannot be transferred (no valid call or account id)."), None),
            Some(c) => match compio::time::timeout(PLATFORM_TIMEOUT, update_call(&c, &call_sid, &twiml)).await {
                Ok(Ok((status, _))) if (200..300).contains(&status) => {
                    (ToolOutput { content: format!("The call is being transferred to {shown}."), failed: false }, Some(status))
                }
                Ok(Ok((status, body))) => {
                    let message = serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("message").and_then(Value::as_str).map(String::from)).unwrap_or(body);
                    (failed(format!("The carrier refused the transfer (HTTP {status}): {}", clip(&message, 300))), Some(status))
                }
                Ok(Err(e)) => (failed(format!("The carrier could not be reached: {e}")), None),
                Err(_) => (failed("The carrier did not answer the transfer in time."), None),
            },
        };
        log.record("transfer_call", &call_id, started, status, !output.failed);
        events.push(Event::Tool { call_id, output });
    })
}

/// Asks the carrier to run `twiml` on the live call: its answer's status and body.
async fn update_call(carrier: &CarrierLink, call_sid: &str, twiml: &str) -> Result<(u16, String), String> {
    match carrier.kind {
        CarrierKind::Twilio => twilio_update(carrier, call_sid, twiml).await,
    }
}

async fn twilio_update(carrier: &CarrierLink, call_sid: &str, twiml: &str) -> Result<(u16, String), String> {
    let client = crate::egress::http()?;
    let url = format!("{}/2010-04-01/Accounts/{}/Calls/{call_sid}.json", carrier.base_url.trim_end_matches('/'), carrier.account_sid);
    let response = client
        .post(url)
        .and_then(|r| r.basic_auth(&carrier.account_sid, Some(&carrier.auth_token)))
        .and_then(|r| r.form(&[("Twiml", twiml)]))
        .map_err(|e| e.to_string())?
        .send()
        .await
        .map_err(|e| crate::egress::error_chain(&e))?;
    let status = response.status().as_u16();
    Ok((status, read_text(response, MAX_OUTPUT_BYTES).await?))
}
