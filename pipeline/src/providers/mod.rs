//! The adapters, and the choice among them from a bot's config.

use std::rc::Rc;

use crate::config::BotConfig;
use crate::provider::{LlmProvider, ProviderError, SttProvider, TtsProvider};

pub mod anthropic;
pub mod deepgram;
pub mod elevenlabs;
pub mod espeak;
pub mod gemini;
pub mod none;
pub mod openai;
pub mod script;
pub mod sse;
pub mod wyoming;
mod ws;

/// The bot's speech-to-text provider.
pub fn stt(bot: &BotConfig) -> Result<Rc<dyn SttProvider>, ProviderError> {
    Ok(match bot.stt.provider.as_str() {
        "deepgram" => Rc::new(deepgram::Deepgram::from_config(bot)?),
        "wyoming" => Rc::new(wyoming::WyomingStt::from_config(bot)?),
        "none" => Rc::new(none::NoStt::from_config(bot)?),
        other => return Err(ProviderError::Unknown { kind: "stt", name: other.to_string() }),
    })
}

/// The bot's language model.
pub fn llm(bot: &BotConfig) -> Result<Rc<dyn LlmProvider>, ProviderError> {
    Ok(match bot.llm.provider.as_str() {
        "openai" => Rc::new(openai::OpenAiChat::from_config(bot)?),
        "anthropic" => Rc::new(anthropic::AnthropicMessages::from_config(bot)?),
        // The request task shares the adapter (its cached content is looked up per request).
        "gemini" => Rc::new(Rc::new(gemini::Gemini::from_config(bot)?)),
        "script" => Rc::new(script::Script::from_config(bot)?),
        other => return Err(ProviderError::Unknown { kind: "llm", name: other.to_string() }),
    })
}

/// The bot's text-to-speech provider.
pub fn tts(bot: &BotConfig) -> Result<Rc<dyn TtsProvider>, ProviderError> {
    Ok(match bot.tts.provider.as_str() {
        "elevenlabs" => Rc::new(elevenlabs::ElevenLabs::from_config(bot)?),
        "espeak" => Rc::new(espeak::EspeakTts::from_config(bot)?),
        "openai" => Rc::new(openai::OpenAiSpeech::from_config(bot)?),
        "wyoming" => Rc::new(wyoming::WyomingTts::from_config(bot)?),
        other => return Err(ProviderError::Unknown { kind: "tts", name: other.to_string() }),
    })
}

thread_local! {
    static HTTP: Result<cyper::Client, String> = cyper::Client::new().map_err(|e| e.to_string());
}

/// This thread's HTTP client (connections are pooled per worker thread), or why the TLS
/// setup failed.
pub fn http() -> Result<cyper::Client, String> {
    HTTP.with(Clone::clone)
}
