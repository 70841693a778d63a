//! A bot's settings, defined once for the API that stores them and the engine that runs them.
//!
//! The parts of a bot (providers, tools, answering-machine and silence handling, inbound
//! credentials) and every default are defined here and nowhere else. The control plane's
//! `Bot` document is made of them, with the API's checks; [`BotConfig`] is the same document
//! as an engine reads it from `GET /v1/runtime/bots/{id}` (secrets included) or from a local
//! bot file.
//!
//! Nothing here refuses unknown fields: the engine ignores them, so an older engine keeps
//! working against a newer API. The API refuses them itself, in its request reader and its
//! OpenAPI document (`additionalProperties: false`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Write-only values by name (API keys, tokens, secret headers).
pub type Secrets = BTreeMap<String, String>;

/// A bot's language unless it names one.
pub fn default_language() -> String {
    "en-US".into()
}

/// Calls are recorded unless the bot says otherwise.
pub const fn default_recording() -> bool {
    true
}

/// A call's length limit unless the bot sets one, seconds.
pub const fn default_max_call_seconds() -> u32 {
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

/// Speech-to-text, language-model or text-to-speech settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Provider {
    /// The adapter, e.g. `deepgram`, `openai`, `elevenlabs`, `wyoming`, `script`, `espeak`, `none`;
    /// empty: unset.
    #[serde(default)]
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// For self-hosted or OpenAI-compatible servers, and Wyoming's `tcp://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    pub base_url: Option<String>,
    /// Adapter options passed through (e.g. `endpointing`, `temperature`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub options: Map<String, Value>,
    /// Write-only, e.g. `{"api_key": "…"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: Secrets,
}

impl Provider {
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

/// What a tool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Press keys (DTMF) on the call, to navigate a phone menu: RFC 4733 events where the
    /// call negotiated them (SIP), tones in the audio otherwise.
    SendDtmf,
    /// Hand the caller to people (the Agent Desk): the reason, a summary and the transcript so
    /// far go to the desk; with `transfer_to` the call is then transferred there, else the bot
    /// tells the caller someone will follow up.
    Handoff,
    /// A custom HTTP tool.
    Http,
}

impl ToolKind {
    /// The wire name, which is also the name a built-in tool goes by.
    pub const fn as_str(self) -> &'static str {
        match self {
            ToolKind::EndCall => "end_call",
            ToolKind::TransferCall => "transfer_call",
            ToolKind::DetectedVoicemail => "detected_voicemail",
            ToolKind::SearchKnowledge => "search_knowledge",
            ToolKind::SendDtmf => "send_dtmf",
            ToolKind::Handoff => "handoff",
            ToolKind::Http => "http",
        }
    }
}

/// A tool the language model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tool {
    pub kind: ToolKind,
    /// Required for HTTP tools; built-ins are named by their kind. Unique among the bot's tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub parameters: Option<Value>,
    /// HTTP tools: the `http` or `https` URL called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    pub url: Option<String>,
    /// HTTP tools: `GET`, `POST` (the default), `PUT`, `PATCH` or `DELETE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are secret (write-only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: Secrets,
    /// HTTP tools: 100 to 30,000 (default 5,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// `transfer_call`, `handoff`: the default destination, a number or SIP URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_to: Option<String>,
}

impl Tool {
    /// The name the language model uses: its own, or a built-in's kind.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.as_str())
    }
}

/// What to do when a machine answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// When the bot greets on an outbound call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// The bot's answering-machine handling.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AnsweringMachine {
    #[serde(default)]
    pub detect: bool,
    #[serde(default)]
    pub action: MachineAction,
    /// Spoken after the beep when the action is `leave_voicemail` (at most 4,000 bytes).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4000))]
    pub voicemail_message: String,
}

/// Who may call a bot without a call token (calls the platform places always carry one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inbound {
    /// Take inbound calls that carry no credential at all. Off by default; shown on every read
    /// so no one can miss that a bot is open.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Write-only: `twilio_auth_token` (the engine verifies Twilio's `X-Twilio-Signature` with
    /// it) and `secret` (a carrier presents it as `?secret=` in the stream URL or as the
    /// HTTP Basic password).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: Secrets,
}

/// How the end of the caller's turn is decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TurnMode {
    /// After `silence_ms` of silence.
    #[default]
    Silence,
    /// The turn-completion model decides at each pause of `model_after_ms`; a pause of
    /// `max_silence_ms` ends the turn whatever it says.
    Model,
    /// The speech-to-text's own endpointing (Deepgram's `speech_final`, `UtteranceEnd`); a
    /// pause of `max_silence_ms` ends the turn if it says nothing.
    Stt,
}

/// Turn detection: when the caller has finished speaking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TurnDetection {
    #[serde(default)]
    pub mode: TurnMode,
    /// `silence`: the pause that ends a turn, ms (200 to 5,000; default 700).
    #[serde(default = "default_silence_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 200, maximum = 5000))]
    pub silence_ms: u32,
    /// `model`: the pause at which the model is asked, ms (100 to 2,000; default 200).
    #[serde(default = "default_model_after_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 100, maximum = 2000))]
    pub model_after_ms: u32,
    /// `model` and `stt`: the pause that ends a turn anyway, ms (300 to 10,000; default 2,000).
    #[serde(default = "default_max_silence_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 300, maximum = 10000))]
    pub max_silence_ms: u32,
    /// `model`: the probability of "done" at or above which the turn ends (0.05 to 0.95;
    /// default 0.5).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
}

impl Default for TurnDetection {
    fn default() -> TurnDetection {
        TurnDetection {
            mode: TurnMode::default(),
            silence_ms: default_silence_ms(),
            model_after_ms: default_model_after_ms(),
            max_silence_ms: default_max_silence_ms(),
            threshold: default_threshold(),
        }
    }
}

fn default_silence_ms() -> u32 {
    700
}

fn default_model_after_ms() -> u32 {
    200
}

fn default_max_silence_ms() -> u32 {
    2000
}

fn default_threshold() -> f64 {
    0.5
}

impl TurnDetection {
    /// The pause after which the turn detector ends a turn by itself.
    pub fn end_silence_ms(&self) -> u32 {
        match self.mode {
            TurnMode::Silence => self.silence_ms,
            TurnMode::Model | TurnMode::Stt => self.max_silence_ms,
        }
    }

    /// What is out of range, if anything: the field and why.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if !(200..=5_000).contains(&self.silence_ms) {
            return Some(("turn_detection.silence_ms", "between 200 and 5000"));
        }
        if !(100..=2_000).contains(&self.model_after_ms) {
            return Some(("turn_detection.model_after_ms", "between 100 and 2000"));
        }
        if !(300..=10_000).contains(&self.max_silence_ms) || self.max_silence_ms <= self.model_after_ms {
            return Some(("turn_detection.max_silence_ms", "between 300 and 10000, and above model_after_ms"));
        }
        if !(0.05..=0.95).contains(&self.threshold) {
            return Some(("turn_detection.threshold", "between 0.05 and 0.95"));
        }
        None
    }
}

/// How the bot's `search_knowledge` tool searches its knowledge base (the API applies it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Knowledge {
    /// Passages a search answers, 1 to 20 (default 3); a request's `limit` wins.
    #[serde(default = "default_top_k")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 20))]
    pub top_k: u32,
    /// Passages less similar to the question than this (cosine, 0 to 1) are left out, so a
    /// question the base cannot answer finds nothing (default 0.05).
    #[serde(default = "default_min_similarity")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub min_similarity: f64,
}

fn default_top_k() -> u32 {
    3
}

fn default_min_similarity() -> f64 {
    0.05
}

impl Default for Knowledge {
    fn default() -> Knowledge {
        Knowledge { top_k: default_top_k(), min_similarity: default_min_similarity() }
    }
}

impl Knowledge {
    /// What is out of range, if anything: the field and why.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if !(1..=20).contains(&self.top_k) || !(0.0..=1.0).contains(&self.min_similarity) {
            return Some(("knowledge", "top_k 1 to 20, min_similarity 0 to 1"));
        }
        None
    }
}

/// When the caller's speech over the bot stops it (a barge-in), and what does not: short
/// acknowledgements ("yeah", "mm-hmm") and noise let the bot go on; they are kept in the
/// transcript and not answered while the bot speaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Interruptions {
    /// Voiced speech over the bot, in ms, that stops it: 0 to 3,000 (default 500; 0: any
    /// speech stops it at once).
    #[serde(default = "default_min_speech_ms")]
    #[cfg_attr(feature = "openapi", schema(maximum = 3000))]
    pub min_speech_ms: u32,
    /// Where the speech-to-text gives interim words: this many words that are not
    /// acknowledgements stop the bot before `min_speech_ms`: 0 to 10 (default 1; 0: speech
    /// length only).
    #[serde(default = "default_min_words")]
    #[cfg_attr(feature = "openapi", schema(maximum = 10))]
    pub min_words: u32,
    /// Words that acknowledge rather than interrupt, lower case (at most 100): speech made
    /// only of these (four words at most) never stops the bot.
    #[serde(default = "default_backchannels")]
    #[cfg_attr(feature = "openapi", schema(max_items = 100))]
    pub backchannels: Vec<String>,
}

impl Default for Interruptions {
    fn default() -> Interruptions {
        Interruptions { min_speech_ms: default_min_speech_ms(), min_words: default_min_words(), backchannels: default_backchannels() }
    }
}

fn default_min_speech_ms() -> u32 {
    500
}

fn default_min_words() -> u32 {
    1
}

fn default_backchannels() -> Vec<String> {
    [
        "yeah", "yes", "yep", "yup", "ok", "okay", "mm-hmm", "mhm", "mm", "hmm", "uh-huh", "uh", "um", "ah", "oh", "right", "sure", "alright",
        "all", "i", "see", "got", "it", "cool", "great", "fine", "good", "wow", "really",
    ]
    .map(String::from)
    .to_vec()
}

impl Interruptions {
    /// Whether `text` is only acknowledgement (or nothing): at most four words, each one of
    /// `backchannels` once lower-cased and stripped of punctuation.
    pub fn is_backchannel(&self, text: &str) -> bool {
        let words: Vec<String> = words(text).collect();
        words.len() <= 4 && words.iter().all(|w| self.backchannels.iter().any(|b| b == w))
    }

    /// The words of `text` that are not acknowledgements.
    pub fn substantive_words(&self, text: &str) -> usize {
        words(text).filter(|w| !self.backchannels.iter().any(|b| b == w)).count()
    }
}

/// Lower-cased words without the punctuation around them ("Okay," → "okay"; "mm-hmm" stays).
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|w| !w.is_empty())
}

/// Silence handling: a re-prompt after `reprompt_after_seconds` of silence, at most
/// `max_reprompts` times, then `goodbye` and a hang-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Idle {
    /// 1 to 600 (default 8).
    #[serde(default = "default_reprompt_after")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 600))]
    pub reprompt_after_seconds: u32,
    #[serde(default = "default_reprompt")]
    pub reprompt: String,
    /// At most 10 (default 2).
    #[serde(default = "default_max_reprompts")]
    #[cfg_attr(feature = "openapi", schema(maximum = 10))]
    pub max_reprompts: u32,
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

/// A bot as an engine runs it: the API's bot document with its secrets open, its id and its
/// organization (`GET /v1/runtime/bots/{id}`), or a local bot file. Every field has a
/// default, and fields it does not know are ignored.
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
    pub stt: Provider,
    /// The language model.
    #[serde(default)]
    pub llm: Provider,
    /// Text-to-speech.
    #[serde(default)]
    pub tts: Provider,
    /// The TTS voice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// Tools the language model may call.
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// What to do when a machine answers.
    #[serde(default)]
    pub answering_machine: AnsweringMachine,
    /// When the bot greets on an outbound call (inbound calls are greeted at once).
    #[serde(default)]
    pub outbound_greeting: OutboundGreeting,
    /// Whether calls are recorded.
    #[serde(default = "default_recording")]
    pub recording: bool,
    /// Calls end after this many seconds.
    #[serde(default = "default_max_call_seconds")]
    pub max_call_seconds: u32,
    /// Silence handling.
    #[serde(default)]
    pub idle: Idle,
    /// When the caller's turn ends.
    #[serde(default)]
    pub turn_detection: TurnDetection,
    /// What speech over the bot stops it.
    #[serde(default)]
    pub interruptions: Interruptions,
    /// Who may call the bot without a call token.
    #[serde(default)]
    pub inbound: Inbound,
    /// The web call widget.
    #[serde(default)]
    pub widget: Widget,
    /// How its knowledge base is searched.
    #[serde(default)]
    pub knowledge: Knowledge,
}

/// The web call widget: a page that embeds `/widget.js` with the bot's id and key gets a call
/// token from `POST /v1/widget/sessions` when its `Origin` is one of `allowed_origins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Widget {
    /// Take web calls through the widget. Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// What a page presents as `data-key`. Public, like the page that embeds it: it names
    /// this bot's widget, and replacing it retires every page that has the old one. The API
    /// makes one when the widget is enabled without a key.
    #[serde(default)]
    pub key: String,
    /// Origins (`https://shop.example.com`, scheme, host and port as a browser sends
    /// `Origin`) whose pages may start calls. None by default: the widget works nowhere until
    /// an origin is named.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// The call button's label.
    #[serde(default = "default_button_text")]
    pub button_text: String,
    /// Send the live transcript to the caller's page over the data channel.
    #[serde(default = "default_show_transcript")]
    pub show_transcript: bool,
}

impl Default for Widget {
    fn default() -> Widget {
        Widget { enabled: false, key: String::new(), allowed_origins: Vec::new(), button_text: default_button_text(), show_transcript: default_show_transcript() }
    }
}

fn default_button_text() -> String {
    "Talk to us".to_string()
}

fn default_show_transcript() -> bool {
    true
}

impl BotConfig {
    /// Parses a bot from JSON (the API's runtime answer or a local file).
    pub fn from_json(bytes: &[u8]) -> Result<BotConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_bot_takes_every_default() {
        let bot = BotConfig::from_json(b"{}").expect("a bot");
        assert_eq!((bot.language.as_str(), bot.recording, bot.max_call_seconds), ("en-US", true, 1800));
        assert_eq!(bot.idle, Idle::default());
        assert_eq!((bot.idle.reprompt_after_seconds, bot.idle.max_reprompts), (8, 2));
        assert_eq!(bot.answering_machine.action, MachineAction::Hangup);
        assert_eq!(bot.outbound_greeting, OutboundGreeting::Immediate);
        assert_eq!((bot.interruptions.min_speech_ms, bot.interruptions.min_words), (500, 1));
    }

    #[test]
    fn acknowledgements_are_told_from_words_that_interrupt() {
        let i = Interruptions::default();
        for ack in ["Mm-hmm.", "yeah", "Okay, okay!", "Uh-huh", "right, I see", "", "..."] {
            assert!(i.is_backchannel(ack), "{ack:?}");
        }
        for words in ["wait", "Okay, but what about Friday?", "no", "yeah yeah yeah yeah yeah"] {
            assert!(!i.is_backchannel(words), "{words:?}");
        }
        assert_eq!(i.substantive_words("Okay wait, stop"), 2);
        let custom = Interruptions { backchannels: vec!["ja".into()], ..Interruptions::default() };
        assert!(custom.is_backchannel("Ja.") && !custom.is_backchannel("okay"));
    }

    #[test]
    fn unknown_fields_are_ignored_at_every_level() {
        let bot = BotConfig::from_json(
            br#"{"name": "n", "later": 1, "stt": {"provider": "none", "later": {}}, "tools": [{"kind": "end_call", "later": []}],
                "idle": {"max_reprompts": 1, "later": true}, "inbound": {"later": 0}, "answering_machine": {"later": ""}}"#,
        )
        .expect("a bot");
        assert_eq!((bot.stt.provider.as_str(), bot.tools[0].name(), bot.idle.max_reprompts), ("none", "end_call", 1));
    }
}
