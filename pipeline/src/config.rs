//! A bot's runtime config: the JSON `GET /v1/runtime/bots/{id}` returns (secrets included),
//! or a local bot file for `cxb core` without an API. Unknown fields are ignored so an older
//! engine keeps working against a newer API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything a call needs to know about its bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotConfig {
    /// The bot's id (a local file's name when it has none).
    #[serde(default)]
    pub id: String,
    /// The owning organization, when the bot came from the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// The bot's name.
    #[serde(default)]
    pub name: String,
    /// Spoken as soon as the call is answered; empty: the bot waits for the caller.
    #[serde(default)]
    pub greeting: String,
    /// The language model's instructions.
    #[serde(default)]
    pub system_prompt: String,
    /// BCP 47, e.g. `en-US`.
    #[serde(default = "default_language")]
    pub language: String,
    /// Speech-to-text.
    #[serde(default)]
    pub stt: ProviderConfig,
    /// The language model.
    #[serde(default)]
    pub llm: ProviderConfig,
    /// Text-to-speech.
    #[serde(default)]
    pub tts: ProviderConfig,
    /// The TTS voice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// Tools the language model may call.
    #[serde(default)]
    pub tools: Vec<ToolConfig>,
    /// What to do when a machine answers.
    #[serde(default)]
    pub answering_machine: AnsweringMachine,
    /// When the bot greets on an outbound call.
    #[serde(default)]
    pub outbound_greeting: OutboundGreeting,
    /// Whether calls are recorded.
    #[serde(default = "yes")]
    pub recording: bool,
    /// Calls end after this many seconds.
    #[serde(default = "default_max_call")]
    pub max_call_seconds: u32,
    /// Silence handling.
    #[serde(default)]
    pub idle: Idle,
    /// Who may call the bot without a call token.
    #[serde(default)]
    pub inbound: Inbound,
}

/// One provider's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfig {
    /// The adapter: `deepgram`, `openai`, `elevenlabs`, `wyoming`, `script`, `espeak`, `none`.
    #[serde(default)]
    pub provider: String,
    /// The vendor's model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Where the vendor's API is (self-hosted servers, Wyoming's `tcp://host:port`, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Adapter options passed through.
    #[serde(default)]
    pub options: serde_json::Map<String, Value>,
    /// Secrets, e.g. `api_key`.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

impl ProviderConfig {
    /// The `api_key` secret, if set.
    pub fn api_key(&self) -> Option<&str> {
        self.secrets.get("api_key").map(String::as_str)
    }

    /// A string option.
    pub fn option_str(&self, name: &str) -> Option<&str> {
        self.options.get(name).and_then(Value::as_str)
    }

    /// A number option.
    pub fn option_f64(&self, name: &str) -> Option<f64> {
        self.options.get(name).and_then(Value::as_f64)
    }
}

/// The kinds of tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// Hang up after the current reply.
    EndCall,
    /// Hand the call to a number or SIP URI.
    TransferCall,
    /// A machine answered: leave the voicemail message, then hang up.
    DetectedVoicemail,
    /// Look something up in the bot's knowledge base.
    SearchKnowledge,
    /// A custom HTTP endpoint.
    Http,
}

impl ToolKind {
    /// The name a built-in tool goes by.
    pub const fn as_str(self) -> &'static str {
        match self {
            ToolKind::EndCall => "end_call",
            ToolKind::TransferCall => "transfer_call",
            ToolKind::DetectedVoicemail => "detected_voicemail",
            ToolKind::SearchKnowledge => "search_knowledge",
            ToolKind::Http => "http",
        }
    }
}

/// A tool as the bot declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolConfig {
    /// What kind.
    pub kind: ToolKind,
    /// The name the language model calls; built-ins default to their kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// HTTP tools: the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP tools: the method (default POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP tools: headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// HTTP tools: secret headers.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// HTTP tools: how long to wait (default 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// `transfer_call`: the default destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_to: Option<String>,
}

impl ToolConfig {
    /// The name the language model uses.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.as_str())
    }
}

/// What to do when a machine answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineAction {
    /// Hang up at once.
    #[default]
    Hangup,
    /// Carry on as with a person.
    Continue,
    /// Speak the voicemail message, then hang up.
    LeaveVoicemail,
}

/// When the bot greets on an outbound call (inbound calls are greeted at once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundGreeting {
    /// As soon as the call is answered.
    #[default]
    Immediate,
    /// After the callee's first words ("Hello?") and half a second of silence, or after 1 s
    /// in which no one spoke: people answer the phone with a word, and a greeting started
    /// at once is talked over.
    AfterHello,
}

/// Inbound calls a carrier sends on its own (no call token): what the engine checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    /// Take inbound calls that carry no credential at all. Off unless the owner sets it.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// `twilio_auth_token`: Twilio's `X-Twilio-Signature` is verified with it; `secret`: a
    /// shared secret the carrier presents as `?secret=` or as the HTTP Basic password.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// Answering-machine settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnsweringMachine {
    /// Whether to detect machines.
    #[serde(default)]
    pub detect: bool,
    /// What to do on one.
    #[serde(default)]
    pub action: MachineAction,
    /// The message left after the beep.
    #[serde(default)]
    pub voicemail_message: String,
}

/// What the bot does when the caller goes quiet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Idle {
    /// Silence (after the bot finishes speaking) before a re-prompt.
    #[serde(default = "default_reprompt_after")]
    pub reprompt_after_seconds: u32,
    /// What the re-prompt says.
    #[serde(default = "default_reprompt")]
    pub reprompt: String,
    /// Re-prompts before the bot says goodbye and hangs up.
    #[serde(default = "default_max_reprompts")]
    pub max_reprompts: u32,
    /// Said before hanging up for silence.
    #[serde(default = "default_goodbye")]
    pub goodbye: String,
}

impl Default for Idle {
    fn default() -> Idle {
        Idle {
            reprompt_after_seconds: default_reprompt_after(),
            reprompt: default_reprompt(),
            max_reprompts: default_max_reprompts(),
            goodbye: default_goodbye(),
        }
    }
}

fn default_language() -> String {
    "en-US".into()
}
fn yes() -> bool {
    true
}
fn default_max_call() -> u32 {
    1800
}
fn default_reprompt_after() -> u32 {
    8
}
fn default_reprompt() -> String {
    "Are you still there?".into()
}
fn default_max_reprompts() -> u32 {
    2
}
fn default_goodbye() -> String {
    "I'll let you go now. Goodbye.".into()
}

impl BotConfig {
    /// Parses a bot from JSON (the API's runtime answer or a local file).
    pub fn from_json(bytes: &[u8]) -> Result<BotConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
