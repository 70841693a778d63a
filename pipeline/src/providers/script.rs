//! The `script` language model: a deterministic dialogue from the bot's config, so calls run
//! with no language model at all (demos, tests, load runs).
//!
//! The script is `bot.llm.options.script`:
//!
//! ```json
//! {
//!   "intents": [
//!     {"name": "hours", "keywords": ["open", "opening hours"],
//!      "reply": "We are open nine to five."},
//!     {"name": "bye", "keywords": ["bye", "goodbye"],
//!      "reply": "Thanks for calling.",
//!      "tool": {"name": "end_call", "arguments": {}},
//!      "after_tool": "Goodbye."}
//!   ],
//!   "fallback": "Sorry, I did not catch that.",
//!   "greeting": "Hello, how can I help?"
//! }
//! ```
//!
//! - The caller's last message is split into words (runs of letters and digits, compared
//!   case-insensitively); an intent matches when one of its keywords, split the same way,
//!   appears as consecutive whole words. The first matching intent wins.
//! - Its `reply` streams as one `Token` per word (the tokens joined give the reply exactly),
//!   then its `tool` (if any) as a `ToolCall` with id `script_<turn>_<intent index>` and the
//!   `arguments` object as JSON text, then `Done` with zero usage.
//! - When the request's last message is a tool result, the script answers with the
//!   `after_tool` text of the intent the last caller message matched, or with nothing (just
//!   `Done`), so a tool never loops.
//! - No intent matches: `fallback` (default: nothing said). No caller message yet: `greeting`,
//!   else `fallback`.
//! - Every intent needs at least one keyword with a word in it; `after_tool` needs a `tool`;
//!   unknown fields are errors. Errors name the field, e.g. `llm.options.script.intents[1].tool.name`.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::BotConfig;
use crate::provider::{
    ChatRequest, Event, Events, Job, LlmEvent, LlmProvider, ProviderError, Role, TokenUsage, ToolCall,
};

/// Where the script lives in the bot's config.
const FIELD: &str = "llm.options.script";

/// The scripted language model.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    intents: Vec<Intent>,
    fallback: String,
    greeting: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Intent {
    /// Each keyword's words, lowercased.
    keywords: Vec<Vec<String>>,
    reply: String,
    tool: Option<(String, String)>,
    after_tool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptJson {
    #[serde(default)]
    intents: Vec<IntentJson>,
    #[serde(default)]
    fallback: String,
    #[serde(default)]
    greeting: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentJson {
    /// For people reading the script.
    #[serde(default, rename = "name")]
    _name: String,
    keywords: Vec<String>,
    #[serde(default)]
    reply: String,
    #[serde(default)]
    tool: Option<ToolJson>,
    #[serde(default)]
    after_tool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolJson {
    name: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

impl Script {
    /// From `bot.llm.options.script`.
    pub fn from_config(bot: &BotConfig) -> Result<Script, ProviderError> {
        match bot.llm.options.get("script") {
            Some(script) => Script::from_json(script),
            None => Err(ProviderError::invalid(FIELD, "missing: the script provider needs a script")),
        }
    }

    /// From the script's JSON (the value of `llm.options.script`).
    pub fn from_json(script: &Value) -> Result<Script, ProviderError> {
        let parsed: ScriptJson = serde_path_to_error::deserialize(script).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { FIELD.to_string() } else { format!("{FIELD}.{path}") };
            ProviderError::invalid(field, e.into_inner().to_string())
        })?;
        let mut intents = Vec::with_capacity(parsed.intents.len());
        for (i, intent) in parsed.intents.into_iter().enumerate() {
            let at = |field: &str| format!("{FIELD}.intents[{i}].{field}");
            if intent.keywords.is_empty() {
                return Err(ProviderError::invalid(at("keywords"), "needs at least one keyword"));
            }
            let mut keywords = Vec::with_capacity(intent.keywords.len());
            for (k, keyword) in intent.keywords.iter().enumerate() {
                let words = words(keyword);
                if words.is_empty() {
                    return Err(ProviderError::invalid(at(&format!("keywords[{k}]")), "has no words"));
                }
                keywords.push(words);
            }
            let tool = match intent.tool {
                Some(tool) if tool.name.trim().is_empty() => {
                    return Err(ProviderError::invalid(at("tool.name"), "must not be empty"));
                }
                Some(tool) => Some((tool.name, Value::Object(tool.arguments).to_string())),
                None if intent.after_tool.is_some() => {
                    return Err(ProviderError::invalid(at("after_tool"), "needs a tool"));
                }
                None => None,
            };
            intents.push(Intent { keywords, reply: intent.reply, tool, after_tool: intent.after_tool });
        }
        Ok(Script { intents, fallback: parsed.fallback, greeting: parsed.greeting })
    }

    /// The index of the first intent `text` matches.
    pub fn intent_for(&self, text: &str) -> Option<usize> {
        let said = words(text);
        self.intents.iter().position(|intent| {
            intent.keywords.iter().any(|k| !k.is_empty() && said.windows(k.len()).any(|w| w == k.as_slice()))
        })
    }

    /// What the script answers to `request` made for `turn`, ending in `Done`.
    pub fn respond(&self, turn: u64, request: &ChatRequest) -> Vec<LlmEvent> {
        let last_said = request.messages.iter().rev().find(|m| m.role == Role::User);
        let matched = last_said.and_then(|m| self.intent_for(&m.content));
        let after_tool = request.messages.last().is_some_and(|m| m.role == Role::Tool);
        let mut events = Vec::new();
        let say = |text: &str, events: &mut Vec<LlmEvent>| {
            events.extend(word_tokens(text).into_iter().map(LlmEvent::Token));
        };
        match (matched.and_then(|i| self.intents.get(i).map(|intent| (i, intent))), after_tool) {
            (Some((_, intent)), true) => say(intent.after_tool.as_deref().unwrap_or_default(), &mut events),
            (None, true) => {}
            (Some((i, intent)), false) => {
                say(&intent.reply, &mut events);
                if let Some((name, arguments)) = &intent.tool {
                    events.push(LlmEvent::ToolCall(ToolCall {
                        id: format!("script_{turn}_{i}"),
                        name: name.clone(),
                        arguments: arguments.clone(),
                    }));
                }
            }
            (None, false) if last_said.is_none() => {
                say(self.greeting.as_deref().unwrap_or(&self.fallback), &mut events);
            }
            (None, false) => say(&self.fallback, &mut events),
        }
        events.push(LlmEvent::Done { usage: TokenUsage::default() });
        events
    }
}

impl LlmProvider for Script {
    fn complete(&self, turn: u64, request: ChatRequest, events: Events) -> Job {
        let answer = self.respond(turn, &request);
        compio::runtime::spawn(async move {
            for event in answer {
                events.push(Event::Llm { turn, event });
            }
        })
    }
}

/// Lowercased runs of letters and digits.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// `text` cut after each word's trailing spaces: the pieces joined give `text` back.
fn word_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space && current.chars().any(|c| !c.is_whitespace()) {
            tokens.push(std::mem::take(&mut current));
            in_space = false;
        } else {
            in_space = false;
        }
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_join_back_to_the_text() {
        assert_eq!(word_tokens("We are  open."), ["We ", "are  ", "open."]);
        assert_eq!(word_tokens("  hi"), ["  hi"]);
        assert!(word_tokens("").is_empty());
        for text in ["a b c", " x ", "one", "über straße  ", "\n\tA\nB"] {
            assert_eq!(word_tokens(text).concat(), text);
        }
    }

    #[test]
    fn keywords_match_whole_words_and_phrases() {
        let script = Script::from_json(&serde_json::json!({"intents": [
            {"keywords": ["opening hours"]},
            {"keywords": ["open"]},
        ]}))
        .expect("valid script");
        assert_eq!(script.intent_for("What are your OPENING hours?"), Some(0));
        assert_eq!(script.intent_for("are you open today"), Some(1));
        assert_eq!(script.intent_for("opening the hours"), None);
        assert_eq!(script.intent_for("reopen"), None);
        assert_eq!(script.intent_for(""), None);
    }
}
