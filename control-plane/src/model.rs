//! The product's resources as typed documents: what a client sends, what is stored (as JSON),
//! and the checks beyond shape. Maps named `secrets` are write-only: stored, handed to the
//! engine through the runtime endpoint, and shown to people only as `secrets_set`, the names.

use std::collections::BTreeMap;

use cxb_contacts::E164;
use cxb_contract::bot;
pub use cxb_contract::bot::{AnsweringMachine, Idle, Inbound, Interruptions, MachineAction, TurnDetection, OutboundGreeting, Provider, Secrets, Tool, ToolKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let n = name.trim().chars().count();
    if n == 0 || n > 200 {
        return Err(ApiError::invalid(field, "between 1 and 200 characters"));
    }
    Ok(())
}

fn check_url(field: &str, url: &str, schemes: &[&str]) -> ApiResult<()> {
    let ok = schemes.iter().any(|s| url.strip_prefix(s).and_then(|r| r.strip_prefix("://")).is_some_and(|h| !h.is_empty()));
    if !ok || url.len() > 2048 || url.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid(field, format!("a {} URL", schemes.join(" or "))));
    }
    Ok(())
}

fn yes() -> bool {
    true
}

fn check_country_code(cc: &str) -> ApiResult<()> {
    if cc.is_empty() || cc.len() > 3 || !cc.bytes().all(|b| b.is_ascii_digit()) || cc.starts_with('0') {
        return Err(ApiError::invalid("default_country_code", "1 to 3 digits, e.g. 1 or 44"));
    }
    Ok(())
}

/// Checks a provider's settings: a known adapter, a URL of an allowed scheme.
fn check_provider(p: &Provider, field: &str, known: &[&str]) -> ApiResult<()> {
    if !p.provider.is_empty() && !known.contains(&p.provider.as_str()) {
        return Err(ApiError::invalid(format!("{field}.provider"), format!("one of {}", known.join(", "))));
    }
    if let Some(url) = &p.base_url {
        check_url(&format!("{field}.base_url"), url, &["http", "https", "ws", "wss", "tcp"])?;
    }
    Ok(())
}

// An engine reads this document, with its id and organization, as `bot::BotConfig`; the
// test `the_engine_reads_every_field_the_api_stores` keeps the two field lists in step.
/// A bot: what the AI agent says and how it listens, thinks and speaks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bot {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// Spoken first, as soon as the call is answered (at most 4,000 bytes).
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub greeting: String,
    /// At most 100,000 bytes.
    #[serde(default)]
    #[schema(max_length = 100000)]
    pub system_prompt: String,
    /// BCP 47, e.g. `en-US` (default).
    #[serde(default = "bot::default_language")]
    #[schema(pattern = "^[A-Za-z0-9-]{1,35}$")]
    pub language: String,
    #[serde(default)]
    pub stt: Provider,
    #[serde(default)]
    pub llm: Provider,
    #[serde(default)]
    pub tts: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    #[serde(default)]
    pub tools: Vec<Tool>,
    #[serde(default)]
    pub answering_machine: AnsweringMachine,
    /// On outbound calls: greet at once, or after the callee's "Hello?".
    #[serde(default)]
    pub outbound_greeting: OutboundGreeting,
    #[serde(default = "bot::default_recording")]
    pub recording: bool,
    /// Calls end after this many seconds (10 to 14,400; default 1,800).
    #[serde(default = "bot::default_max_call_seconds")]
    #[schema(minimum = 10, maximum = 14400)]
    pub max_call_seconds: u32,
    /// What the bot does when the caller goes quiet.
    #[serde(default)]
    pub idle: Idle,
    /// When the caller's turn ends: after a silence, by the turn-completion model, or by
    /// the speech-to-text's endpointing.
    #[serde(default)]
    pub turn_detection: TurnDetection,
    /// What speech over the bot stops it, and which acknowledgements never do.
    #[serde(default)]
    pub interruptions: Interruptions,
    /// Inbound calls a carrier sends on its own, without a call token: what the engine checks.
    #[serde(default)]
    pub inbound: Inbound,
    /// The web call widget: on or off, its key, the origins whose pages may embed it.
    #[serde(default)]
    pub widget: bot::Widget,
    /// How the `search_knowledge` tool searches the bot's knowledge base: passages per search
    /// and the least similarity a passage needs.
    #[serde(default)]
    pub knowledge: bot::Knowledge,
}

impl Bot {
    pub fn check(&self) -> ApiResult<()> {
        check_name("name", &self.name)?;
        if self.language.is_empty() || self.language.len() > 35 || !self.language.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ApiError::invalid("language", "a BCP 47 tag such as en-US"));
        }
        check_provider(&self.stt, "stt", &["deepgram", "wyoming", "none"])?;
        check_provider(&self.llm, "llm", &["openai", "anthropic", "gemini", "script"])?;
        check_provider(&self.tts, "tts", &["elevenlabs", "openai", "wyoming", "espeak"])?;
        // Which program an engine host runs is the host's choice (a local bot file), not an
        // API user's.
        if self.tts.options.contains_key("program") {
            return Err(ApiError::invalid("tts.options.program", "set only in an engine's local bot files"));
        }
        if !(1..=600).contains(&self.idle.reprompt_after_seconds) || self.idle.max_reprompts > 10 {
            return Err(ApiError::invalid("idle", "reprompt_after_seconds 1 to 600, max_reprompts at most 10"));
        }
        if let Some((field, why)) = self.turn_detection.problem() {
            return Err(ApiError::invalid(field, why));
        }
        if let Some((field, why)) = self.knowledge.problem() {
            return Err(ApiError::invalid(field, why));
        }
        let i = &self.interruptions;
        if i.min_speech_ms > 3_000 || i.min_words > 10 {
            return Err(ApiError::invalid("interruptions", "min_speech_ms at most 3000, min_words at most 10"));
        }
        if i.backchannels.len() > 100 || i.backchannels.iter().any(|w| w.is_empty() || w.len() > 40 || w.chars().any(|c| c.is_whitespace() || c.is_uppercase())) {
            return Err(ApiError::invalid("interruptions.backchannels", "at most 100 single lower-case words of up to 40 bytes"));
        }
        if let Some(name) = self.inbound.secrets.keys().find(|k| !matches!(k.as_str(), "twilio_auth_token" | "secret")) {
            return Err(ApiError::invalid(format!("inbound.secrets.{name}"), "twilio_auth_token or secret"));
        }
        if self.inbound.secrets.get("secret").is_some_and(|s| s.len() < 16 || s.len() > 256) {
            return Err(ApiError::invalid("inbound.secrets.secret", "16 to 256 characters"));
        }
        if !(10..=14_400).contains(&self.max_call_seconds) {
            return Err(ApiError::invalid("max_call_seconds", "between 10 and 14400"));
        }
        if self.greeting.len() > 4_000 || self.answering_machine.voicemail_message.len() > 4_000 {
            return Err(ApiError::invalid("greeting", "at most 4000 bytes"));
        }
        if self.system_prompt.len() > 100_000 {
            return Err(ApiError::invalid("system_prompt", "at most 100000 bytes"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, tool) in self.tools.iter().enumerate() {
            let field = format!("tools[{i}]");
            let name = match (tool.kind, &tool.name) {
                (ToolKind::Http, None) => return Err(ApiError::invalid(format!("{field}.name"), "HTTP tools need a name")),
                (_, Some(n)) => n.clone(),
                (kind, None) => kind.as_str().to_string(),
            };
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(ApiError::invalid(format!("{field}.name"), "1 to 64 letters, digits, '_' or '-'"));
            }
            if !names.insert(name) {
                return Err(ApiError::invalid(format!("{field}.name"), "tool names must be unique"));
            }
            if let Some(p) = &tool.parameters
                && p.get("type").and_then(Value::as_str) != Some("object")
            {
                return Err(ApiError::invalid(format!("{field}.parameters"), "a JSON Schema with \"type\": \"object\""));
            }
            if tool.kind == ToolKind::Http {
                check_url(&format!("{field}.url"), tool.url.as_deref().unwrap_or(""), &["http", "https"])?;
                let method = tool.method.as_deref().unwrap_or("POST");
                if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
                    return Err(ApiError::invalid(format!("{field}.method"), "GET, POST, PUT, PATCH or DELETE"));
                }
                if !(100..=30_000).contains(&tool.timeout_ms.unwrap_or(5_000)) {
                    return Err(ApiError::invalid(format!("{field}.timeout_ms"), "between 100 and 30000"));
                }
            }
        }
        Ok(())
    }
}

/// How an answered campaign call is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoutingType {
    AiAssistant,
    AiLoadBalancer,
    Hangup,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    #[serde(rename = "type")]
    pub kind: RoutingType,
    /// The assistant or load balancer; none for `hangup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Calls may start on these days between `start` and `end` (`HH:MM`, local time).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[schema(min_items = 1)]
    pub days: Vec<Weekday>,
    /// `HH:MM`, `00:00` to `23:59`.
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub start: String,
    /// `HH:MM` after `start`, up to `24:00`.
    #[schema(pattern = "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
    pub end: String,
}

fn utc() -> String {
    "UTC".into()
}

/// Weekly calling windows in a time zone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// IANA zone of the windows, e.g. `America/New_York`.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// Empty: any time.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Also keep to the windows in each contact's own time zone, when it has one.
    #[serde(default = "yes")]
    pub contact_local_time: bool,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule { time_zone: utc(), windows: Vec::new(), contact_local_time: true }
    }
}

fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60 && s.len() == 5).then_some(h * 60 + m)
}

/// Call outcomes a retry may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    Busy,
    NoAnswer,
    Failed,
    Voicemail,
}

fn three() -> u32 {
    3
}
fn five_minutes() -> u32 {
    300
}
fn two() -> f64 {
    2.0
}
fn retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Busy, RetryOn::NoAnswer, RetryOn::Failed]
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts per contact in all, the first included (1 to 20).
    #[serde(default = "three")]
    #[schema(minimum = 1, maximum = 20)]
    pub max_attempts: u32,
    /// Wait before the first retry; each later one waits `backoff_multiplier` times longer
    /// (at most 604,800: a week).
    #[serde(default = "five_minutes")]
    #[schema(maximum = 604800)]
    pub backoff_seconds: u32,
    /// 1 to 10.
    #[serde(default = "two")]
    #[schema(minimum = 1, maximum = 10)]
    pub backoff_multiplier: f64,
    /// No wait is longer than this (at most 604,800: a week).
    #[serde(default = "an_hour")]
    #[schema(maximum = 604800)]
    pub max_backoff_seconds: u32,
    #[serde(default = "retry_on")]
    pub retry_on: Vec<RetryOn>,
}

fn an_hour() -> u32 {
    3600
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
    /// `backoff_seconds × backoff_multiplier^(attempt-1)`, at most `max_backoff_seconds`.
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let factor = self.backoff_multiplier.powi(attempt.saturating_sub(1).min(60) as i32);
        let seconds = (f64::from(self.backoff_seconds) * factor).min(f64::from(self.max_backoff_seconds));
        (seconds * 1000.0) as i64
    }
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { max_attempts: 3, backoff_seconds: 300, backoff_multiplier: 2.0, max_backoff_seconds: an_hour(), retry_on: retry_on() }
    }
}

/// Answering-machine detection for the campaign's answered calls.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmdPolicy {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub action: MachineAction,
}

fn ten() -> u32 {
    10
}
fn one() -> f64 {
    1.0
}

/// A campaign: whom to dial, how fast, when, and where answered calls go.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub routing: Routing,
    /// Caller IDs in E.164, used in turn (at most 1,000).
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub caller_ids: Vec<String>,
    /// Concurrent active calls at most (1 to 10,000).
    #[serde(default = "ten")]
    #[schema(minimum = 1, maximum = 10000)]
    pub cac: u32,
    /// Call attempts per second at most (0.01 to 1,000).
    #[serde(default = "one")]
    #[schema(minimum = 0.01, maximum = 1000)]
    pub cps: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub amd: AmdPolicy,
    /// Calling code for contact numbers written without one, e.g. `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[1-9][0-9]{0,2}$")]
    pub default_country_code: Option<String>,
}

impl Campaign {
    /// Checks and normalises (caller IDs to E.164). References are checked by the caller.
    pub fn check(&mut self) -> ApiResult<()> {
        check_name("name", &self.name)?;
        match (self.routing.kind, &self.routing.target_id) {
            (RoutingType::Hangup, Some(_)) => return Err(ApiError::invalid("routing.target_id", "hangup has no target")),
            (RoutingType::AiAssistant | RoutingType::AiLoadBalancer, None) => {
                return Err(ApiError::invalid("routing.target_id", "required for this routing type"));
            }
            _ => {}
        }
        if self.caller_ids.len() > 1_000 {
            return Err(ApiError::invalid("caller_ids", "at most 1000"));
        }
        for (i, id) in self.caller_ids.iter_mut().enumerate() {
            let e = E164::parse(id, self.default_country_code.as_deref())
                .map_err(|e| ApiError::invalid(format!("caller_ids[{i}]"), e.to_string()))?;
            *id = e.as_str().to_string();
        }
        if !(1..=10_000).contains(&self.cac) {
            return Err(ApiError::invalid("cac", "between 1 and 10000"));
        }
        if !(0.01..=1_000.0).contains(&self.cps) {
            return Err(ApiError::invalid("cps", "between 0.01 and 1000"));
        }
        if cxb_contacts::time_zone(&self.schedule.time_zone).is_none() {
            return Err(ApiError::invalid("schedule.time_zone", "an IANA time zone such as America/New_York"));
        }
        for (i, w) in self.schedule.windows.iter().enumerate() {
            let (s, e) = (minutes(&w.start), minutes(&w.end));
            let Some(s) = s else { return Err(ApiError::invalid(format!("schedule.windows[{i}].start"), "HH:MM")) };
            let Some(e) = e else { return Err(ApiError::invalid(format!("schedule.windows[{i}].end"), "HH:MM")) };
            if e <= s {
                return Err(ApiError::invalid(format!("schedule.windows[{i}].end"), "after start"));
            }
            if w.days.is_empty() {
                return Err(ApiError::invalid(format!("schedule.windows[{i}].days"), "at least one day"));
            }
        }
        let r = &self.retry;
        if !(1..=20).contains(&r.max_attempts) {
            return Err(ApiError::invalid("retry.max_attempts", "between 1 and 20"));
        }
        if r.backoff_seconds > 7 * 86_400 {
            return Err(ApiError::invalid("retry.backoff_seconds", "at most 604800 (a week)"));
        }
        if r.max_backoff_seconds > 7 * 86_400 {
            return Err(ApiError::invalid("retry.max_backoff_seconds", "at most 604800 (a week)"));
        }
        if !(1.0..=10.0).contains(&r.backoff_multiplier) {
            return Err(ApiError::invalid("retry.backoff_multiplier", "between 1 and 10"));
        }
        if let Some(cc) = &self.default_country_code {
            check_country_code(cc)?;
        }
        Ok(())
    }
}

/// A campaign's life: DRAFT -> ACTIVE <-> PAUSED -> COMPLETED, and ARCHIVED from any
/// state but ACTIVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CampaignState {
    Draft,
    Active,
    Paused,
    Completed,
    Archived,
}

impl CampaignState {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Draft => "DRAFT",
            CampaignState::Active => "ACTIVE",
            CampaignState::Paused => "PAUSED",
            CampaignState::Completed => "COMPLETED",
            CampaignState::Archived => "ARCHIVED",
        }
    }

    pub fn parse(s: &str) -> Option<CampaignState> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    /// The state an action leads to, and the states it may start from.
    pub fn action(action: &str) -> Option<(CampaignState, &'static [CampaignState])> {
        use CampaignState::*;
        Some(match action {
            "start" => (Active, &[Draft]),
            "pause" => (Paused, &[Active]),
            "resume" => (Active, &[Paused]),
            "complete" => (Completed, &[Active, Paused]),
            "archive" => (Archived, &[Draft, Paused, Completed]),
            _ => return None,
        })
    }
}

/// SIP or WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssistantKind {
    Sip,
    Websocket,
}

/// An AI assistant a campaign routes answered calls to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiAssistant {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    pub kind: AssistantKind,
    /// SIP: the provider name used in `<Service provider="…">`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_provider: Option<String>,
    /// SIP: `sip:` or `sips:` URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024)]
    pub sip_uri: Option<String>,
    /// WebSocket: `ws://` or `wss://` URL with `{session}`, `{from}`, `{to}`, `{bot_id}`,
    /// `{auth_token}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub url_template: Option<String>,
    /// A CX Bridge bot: the URL then points at an engine host picked by free capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_id: Option<String>,
    /// Write-only, e.g. `{"auth_token": "…"}` for the template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: Secrets,
    /// Marked down by an operator: load balancers fail over past it and campaigns routed to it
    /// wait.
    #[serde(default)]
    pub down: bool,
}

impl AiAssistant {
    pub fn check(&self) -> ApiResult<()> {
        check_name("name", &self.name)?;
        match self.kind {
            AssistantKind::Sip => {
                if self.sip_provider.as_deref().is_none_or(|p| p.trim().is_empty() || p.len() > 200) {
                    return Err(ApiError::invalid("sip_provider", "required for SIP assistants"));
                }
                let uri = self.sip_uri.as_deref().unwrap_or("");
                if !(uri.starts_with("sip:") || uri.starts_with("sips:")) || uri.len() < 6 || uri.len() > 1024 {
                    return Err(ApiError::invalid("sip_uri", "a sip: or sips: URI"));
                }
            }
            AssistantKind::Websocket => match (&self.url_template, &self.bot_id) {
                (None, None) => return Err(ApiError::invalid("url_template", "a URL template or a bot_id is required")),
                (Some(t), _) => {
                    check_url("url_template", t, &["ws", "wss"])?;
                    let mut rest = t.as_str();
                    while let Some(open) = rest.find('{') {
                        let close = rest[open..].find('}').ok_or_else(|| ApiError::invalid("url_template", "an unclosed {"))?;
                        let name = &rest[open + 1..open + close];
                        if !["session", "from", "to", "bot_id", "auth_token"].contains(&name) {
                            return Err(ApiError::invalid("url_template", format!("unknown placeholder {{{name}}}")));
                        }
                        rest = &rest[open + close + 1..];
                    }
                }
                _ => {}
            },
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    LeastConnections,
    Random,
    Weighted,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub assistant_id: String,
    /// For `weighted` (1 to 1,000).
    #[serde(default = "one_u32")]
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: u32,
}

fn one_u32() -> u32 {
    1
}

/// Spreads calls over several assistants, failing over when one is down.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    pub strategy: Strategy,
    /// 1 to 100 AI assistants, each listed once.
    #[schema(min_items = 1, max_items = 100)]
    pub members: Vec<Member>,
}

impl LoadBalancer {
    pub fn check(&self) -> ApiResult<()> {
        check_name("name", &self.name)?;
        if self.members.is_empty() || self.members.len() > 100 {
            return Err(ApiError::invalid("members", "1 to 100 members"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.members.iter().enumerate() {
            if !(1..=1_000).contains(&m.weight) {
                return Err(ApiError::invalid(format!("members[{i}].weight"), "between 1 and 1000"));
            }
            if !seen.insert(&m.assistant_id) {
                return Err(ApiError::invalid(format!("members[{i}].assistant_id"), "listed twice"));
            }
        }
        Ok(())
    }
}

/// Events a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Event {
    #[serde(rename = "call.completed")]
    CallCompleted,
    /// A bot handed a caller to people (the Agent Desk).
    #[serde(rename = "handoff.created")]
    HandoffCreated,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::CallCompleted => "call.completed",
            Event::HandoffCreated => "handoff.created",
        }
    }
}

fn call_completed() -> Vec<Event> {
    vec![Event::CallCompleted]
}

/// A CRM integration: events are POSTed to `url`, signed with HMAC-SHA256.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// An `http` or `https` URL.
    #[schema(max_length = 2048)]
    pub url: String,
    #[serde(default = "call_completed")]
    #[schema(min_items = 1)]
    pub events: Vec<Event>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Write-only `{"signing_secret": "…"}`; made for you (and shown once) when omitted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: Secrets,
}

impl Webhook {
    pub fn check(&self) -> ApiResult<()> {
        check_name("name", &self.name)?;
        check_url("url", &self.url, &["http", "https"])?;
        if self.events.is_empty() {
            return Err(ApiError::invalid("events", "at least one event"));
        }
        if self.secrets.get("signing_secret").is_some_and(|s| s.len() < 16) {
            return Err(ApiError::invalid("secrets.signing_secret", "at least 16 characters"));
        }
        Ok(())
    }
}

/// A phone number (or SIP user) that SIP calls reach a bot at: an INVITE whose Request-URI
/// names it is answered by `bot_id`, if it comes from one of `allowed_sources` and/or answers
/// the engine's digest challenge for `digest_username`. At least one of the two is required.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneNumber {
    /// E.164 (`+15550100`), or a SIP user name: 1 to 64 of letters, digits and `+._-`.
    /// Unique across the platform.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9+._-]{1,64}$")]
    pub number: String,
    /// The bot that answers (one of the organization's, or a built-in one: `echo`, `turn-echo`).
    #[schema(min_length = 1, max_length = 128)]
    pub bot_id: String,
    /// The trunk's addresses, as CIDRs (`203.0.113.0/24`, `2001:db8::/32`) or single addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 100)]
    pub allowed_sources: Vec<String>,
    /// The user name the engine challenges INVITEs for (401, RFC 3261 §22), with the
    /// write-only `secrets.digest_password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub digest_username: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Write-only `{"digest_password": "…"}` (at least 12 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: Secrets,
}

impl PhoneNumber {
    pub fn check(&mut self) -> ApiResult<()> {
        let n = &self.number;
        if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b)) {
            return Err(ApiError::invalid("number", "E.164 or a SIP user: 1 to 64 of letters, digits and +._-"));
        }
        if n.starts_with('+') && (n.len() < 8 || n.len() > 16 || !n[1..].bytes().all(|b| b.is_ascii_digit())) {
            return Err(ApiError::invalid("number", "E.164: + and 7 to 15 digits"));
        }
        if self.bot_id.trim().is_empty() || self.bot_id.len() > 128 {
            return Err(ApiError::invalid("bot_id", "a bot id"));
        }
        for (i, source) in self.allowed_sources.iter_mut().enumerate() {
            let parsed = source.parse::<ipnet::IpNet>().or_else(|_| source.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => *source = net.trunc().to_string(),
                Err(_) => return Err(ApiError::invalid(format!("allowed_sources[{i}]"), "a CIDR or an IP address")),
            }
        }
        if self.allowed_sources.len() > 100 {
            return Err(ApiError::invalid("allowed_sources", "at most 100"));
        }
        let password = self.secrets.get("digest_password");
        if self.secrets.keys().any(|k| k != "digest_password") {
            return Err(ApiError::invalid("secrets", "only digest_password"));
        }
        match (&self.digest_username, password) {
            (Some(user), Some(p)) => {
                if user.is_empty() || user.len() > 128 || user.chars().any(|c| c.is_control() || c == '"') {
                    return Err(ApiError::invalid("digest_username", "1 to 128 characters, no quotes or control characters"));
                }
                if p.chars().count() < 12 {
                    return Err(ApiError::invalid("secrets.digest_password", "at least 12 characters"));
                }
            }
            (Some(_), None) => return Err(ApiError::invalid("secrets.digest_password", "required with digest_username")),
            (None, Some(_)) => return Err(ApiError::invalid("digest_username", "required with secrets.digest_password")),
            (None, None) if self.allowed_sources.is_empty() => {
                return Err(ApiError::invalid("allowed_sources", "give the trunk's addresses, digest credentials, or both: a number open to anyone is not allowed"));
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// Which carrier places the organization's calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CarrierKind {
    /// The built-in carrier simulator (no external service).
    #[default]
    Simulator,
    Cloudonix,
    /// A SIP trunk the engines dial through themselves (`carrier.sip`, password in
    /// `carrier.secrets.password`): calls to CX Bridge bots only.
    Sip,
}

/// A SIP trunk (carrier `sip`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SipTrunk {
    /// The trunk's host name or address.
    #[schema(min_length = 1, max_length = 253)]
    pub host: String,
    #[serde(default = "sip_port")]
    pub port: u16,
    /// Digest user name, if the trunk challenges (the password is `carrier.secrets.password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 128)]
    pub username: Option<String>,
    /// The domain in From (default: the engine's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 253)]
    pub from_domain: Option<String>,
    /// `from` (default) or `pai`: the caller ID in From only, or also in P-Asserted-Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(from|pai)$")]
    pub caller_id_header: Option<String>,
    /// `udp` (default) or `tcp`: how the engine reaches the trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(udp|tcp)$")]
    pub transport: Option<String>,
}

fn sip_port() -> u16 {
    5060
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Carrier {
    #[serde(default)]
    pub provider: CarrierKind,
    /// Cloudonix: the domain calls are placed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub api_base: Option<String>,
    /// SIP: the trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<SipTrunk>,
    /// Write-only, e.g. `{"api_key": "…", "webhook_token": "…"}` (SIP: `{"password": "…"}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: Secrets,
}

/// Organization settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub carrier: Carrier,
    /// E.164, used when a call names no caller ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_caller_id: Option<String>,
    /// Calling code for numbers written without one, e.g. `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[1-9][0-9]{0,2}$")]
    pub default_country_code: Option<String>,
    /// The public base URL carriers post call-end (CDR) webhooks to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub webhook_url: Option<String>,
    /// Unit prices by provider and cost item, e.g. `{"deepgram": {"stt_audio": 0.0000717}}`
    /// (per second of audio); a call's cost lines get their amounts from them when its result
    /// arrives. Items: `stt_audio` (second), `llm_prompt_tokens`, `llm_completion_tokens`
    /// (token), `tts_characters` (character).
    #[serde(default)]
    pub prices: BTreeMap<String, BTreeMap<String, f64>>,
    /// The currency of `prices` (ISO 4217, e.g. `USD`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
}

impl Settings {
    pub fn check(&mut self) -> ApiResult<()> {
        if let Some(id) = &self.default_caller_id {
            let e = E164::parse(id, self.default_country_code.as_deref())
                .map_err(|e| ApiError::invalid("default_caller_id", e.to_string()))?;
            self.default_caller_id = Some(e.as_str().to_string());
        }
        if let Some(cc) = &self.default_country_code {
            check_country_code(cc)?;
        }
        if let Some(url) = &self.webhook_url {
            check_url("webhook_url", url, &["http", "https"])?;
        }
        if let Some(url) = &self.carrier.api_base {
            check_url("carrier.api_base", url, &["http", "https"])?;
        }
        if self.prices.len() > 100 || self.prices.values().any(|p| p.len() > 20) {
            return Err(ApiError::invalid("prices", "at most 100 providers of 20 items"));
        }
        for (provider, items) in &self.prices {
            for (item, price) in items {
                let name_ok = |n: &str| !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !name_ok(provider) || !name_ok(item) {
                    return Err(ApiError::invalid(format!("prices.{provider}"), "provider and item names of 1 to 64 letters, digits, '_', '-' or '.'"));
                }
                if !price.is_finite() || *price < 0.0 {
                    return Err(ApiError::invalid(format!("prices.{provider}.{item}"), "a price of zero or more"));
                }
            }
        }
        if self.currency.as_deref().is_some_and(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(ApiError::invalid("currency", "an ISO 4217 code such as USD"));
        }
        if self.carrier.provider == CarrierKind::Sip {
            let Some(trunk) = &self.carrier.sip else {
                return Err(ApiError::invalid("carrier.sip", "a SIP carrier needs its trunk: host, port"));
            };
            let host_ok = |h: &str| !h.is_empty() && h.len() <= 253 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
            if !host_ok(&trunk.host) {
                return Err(ApiError::invalid("carrier.sip.host", "a host name or an address"));
            }
            if trunk.port == 0 {
                return Err(ApiError::invalid("carrier.sip.port", "1 to 65535"));
            }
            if trunk.from_domain.as_deref().is_some_and(|d| !host_ok(d)) {
                return Err(ApiError::invalid("carrier.sip.from_domain", "a host name or an address"));
            }
            if trunk.caller_id_header.as_deref().is_some_and(|h| h != "from" && h != "pai") {
                return Err(ApiError::invalid("carrier.sip.caller_id_header", "from or pai"));
            }
            if trunk.transport.as_deref().is_some_and(|t| t != "udp" && t != "tcp") {
                return Err(ApiError::invalid("carrier.sip.transport", "udp or tcp"));
            }
            if trunk.username.as_deref().is_some_and(|u| u.is_empty() || u.chars().any(|c| c.is_control() || c == '"')) {
                return Err(ApiError::invalid("carrier.sip.username", "no quotes or control characters"));
            }
        }
        Ok(())
    }
}

/// Shows a stored document to a person: every `secrets` map becomes `secrets_set`, the names
/// of the secrets that are set.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(secrets)) = map.remove("secrets") {
                let names: Vec<Value> = secrets.keys().cloned().map(Value::String).collect();
                map.insert("secrets_set".into(), Value::Array(names));
            }
            map.values_mut().for_each(redact);
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// RFC 7396 JSON merge patch; `secrets_set` (read-only) is ignored wherever it appears.
pub fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in patch {
                    if k == "secrets_set" {
                        continue;
                    }
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge_patch(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redaction_hides_every_secret_map() {
        let mut v = json!({"stt": {"provider": "deepgram", "secrets": {"api_key": "k1"}}, "tools": [{"secrets": {"Authorization": "x"}}]});
        redact(&mut v);
        assert_eq!(v, json!({"stt": {"provider": "deepgram", "secrets_set": ["api_key"]}, "tools": [{"secrets_set": ["Authorization"]}]}));
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "s": {"secrets": {"k": "v"}}});
        merge_patch(&mut v, json!({"a": null, "b": {"c": 5}, "s": {"secrets_set": ["k"]}, "n": [1]}));
        assert_eq!(v, json!({"b": {"c": 5, "d": 3}, "s": {"secrets": {"k": "v"}}, "n": [1]}));
    }

    #[test]
    fn offline_providers_are_accepted_but_not_a_program_path() {
        let bot = |extra: Value| {
            let mut v = json!({"name": "Offline", "stt": {"provider": "none"}, "llm": {"provider": "script"}});
            v["tts"] = extra;
            serde_json::from_value::<Bot>(v).expect("a bot")
        };
        assert!(bot(json!({"provider": "espeak", "options": {"rate": 160}})).check().is_ok());
        let err = bot(json!({"provider": "espeak", "options": {"program": "/bin/sh"}})).check().expect_err("refused");
        assert_eq!(err.field.as_deref(), Some("tts.options.program"));
        assert!(bot(json!({"provider": "festival"})).check().is_err());
    }

    /// What the API stores is what `GET /v1/runtime/bots/{id}` serves, and the engine's
    /// [`bot::BotConfig`] must read every field of it back unchanged.
    #[test]
    fn the_engine_reads_every_field_the_api_stores() {
        let provider = |name: &str| {
            json!({"provider": name, "model": "m-1", "base_url": "https://vendor.example/v1", "options": {"temperature": 0.2, "endpointing": 300}, "secrets": {"api_key": format!("{name}-key")}})
        };
        let document = json!({
            "name": "Every field", "greeting": "Hello!", "system_prompt": "Be brief.", "language": "fr-FR",
            "stt": provider("deepgram"), "llm": provider("openai"), "tts": provider("elevenlabs"), "voice": "rachel",
            "tools": [
                {"kind": "end_call", "name": "bye", "description": "Hang up."},
                {"kind": "transfer_call", "description": "To a person.", "transfer_to": "+14155550100"},
                {"kind": "detected_voicemail", "description": "A machine answered."},
                {"kind": "search_knowledge", "description": "Searches the knowledge base.", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}},
                {"kind": "http", "name": "crm", "description": "Looks up an order.", "parameters": {"type": "object"}, "url": "https://crm.example/orders",
                 "method": "PUT", "headers": {"X-Source": "cxb"}, "secrets": {"Authorization": "Bearer t"}, "timeout_ms": 2500},
            ],
            "answering_machine": {"detect": true, "action": "leave_voicemail", "voicemail_message": "Call us back."},
            "outbound_greeting": "after_hello", "recording": false, "max_call_seconds": 600,
            "idle": {"reprompt_after_seconds": 5, "reprompt": "Hello?", "max_reprompts": 3, "goodbye": "Bye."},
            "turn_detection": {"mode": "model", "silence_ms": 800, "model_after_ms": 250, "max_silence_ms": 1800, "threshold": 0.6},
            "interruptions": {"min_speech_ms": 300, "min_words": 2, "backchannels": ["yeah", "ja"]},
            "inbound": {"allow_unsigned": true, "secrets": {"twilio_auth_token": "tw", "secret": "0123456789abcdef"}},
            "widget": {"enabled": true, "key": "wk_0123456789abcdef", "allowed_origins": ["https://shop.example"], "button_text": "Call us", "show_transcript": false},
            "knowledge": {"top_k": 4, "min_similarity": 0.2},
        });
        let bot: Bot = crate::extract::typed_strict(document.clone()).expect("a bot");
        bot.check().expect("a valid bot");
        // Stored exactly as sent: a field added to `Bot` and left out here would show up.
        let mut served = serde_json::to_value(&bot).expect("JSON");
        assert_eq!(served, document);
        served["id"] = "bot_1".into();
        served["org_id"] = "org_1".into();
        served["updated_at"] = "2026-01-01T00:00:00Z".into();
        let runtime = bot::BotConfig::from_json(served.to_string().as_bytes()).expect("the engine reads it");
        assert_eq!((runtime.id.as_str(), runtime.org_id.as_deref()), ("bot_1", Some("org_1")));
        assert_eq!((runtime.widget.enabled, runtime.widget.show_transcript, runtime.widget.button_text.as_str()), (true, false, "Call us"));
        assert_eq!((runtime.stt.api_key(), runtime.tools[4].secrets.get("Authorization").map(String::as_str)), (Some("deepgram-key"), Some("Bearer t")));
        assert_eq!(runtime.inbound.secrets.get("secret").map(String::as_str), Some("0123456789abcdef"));
        let kinds: Vec<_> = runtime.tools.iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [ToolKind::EndCall, ToolKind::TransferCall, ToolKind::DetectedVoicemail, ToolKind::SearchKnowledge, ToolKind::Http]);
        let parts = (&runtime.stt, &runtime.llm, &runtime.tts, &runtime.tools, &runtime.answering_machine, &runtime.idle, &runtime.inbound, &runtime.interruptions, &runtime.turn_detection, &runtime.knowledge);
        assert_eq!(parts, (&bot.stt, &bot.llm, &bot.tts, &bot.tools, &bot.answering_machine, &bot.idle, &bot.inbound, &bot.interruptions, &bot.turn_detection, &bot.knowledge));
        // Everything else, field by field: the engine's config is the document plus id and
        // organization.
        let mut read = serde_json::to_value(&runtime).expect("JSON");
        let map = read.as_object_mut().expect("an object");
        assert_eq!((map.remove("id"), map.remove("org_id")), (Some(json!("bot_1")), Some(json!("org_1"))));
        assert_eq!(read, document);
    }

    #[test]
    fn campaign_transitions() {
        assert_eq!(CampaignState::action("start").map(|a| a.0), Some(CampaignState::Active));
        assert!(CampaignState::action("pause").is_some_and(|(_, from)| from == [CampaignState::Active]));
        assert!(CampaignState::action("explode").is_none());
        assert_eq!(CampaignState::parse("PAUSED"), Some(CampaignState::Paused));
        assert_eq!(minutes("09:30"), Some(570));
        assert_eq!(minutes("24:00"), Some(1440));
        assert_eq!(minutes("9:30"), None);
        assert_eq!(minutes("24:01"), None);
    }
}
