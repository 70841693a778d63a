//! OpenAI-compatible chat and speech.
/// Placeholder until the adapter lands.
#[derive(Debug)]
pub struct OpenAiChat;
impl OpenAiChat {
    /// From the bot's config.
    pub fn from_config(_bot: &crate::config::BotConfig) -> Result<OpenAiChat, crate::provider::ProviderError> {
        Err(crate::provider::ProviderError::invalid("llm.provider", "not built yet"))
    }
}
impl crate::provider::LlmProvider for OpenAiChat {
    fn complete(&self, _turn: u64, _r: crate::provider::ChatRequest, _events: crate::provider::Events) -> crate::provider::Job { unreachable!() }
}
/// Placeholder until the adapter lands.
#[derive(Debug)]
pub struct OpenAiSpeech;
impl OpenAiSpeech {
    /// From the bot's config.
    pub fn from_config(_bot: &crate::config::BotConfig) -> Result<OpenAiSpeech, crate::provider::ProviderError> {
        Err(crate::provider::ProviderError::invalid("tts.provider", "not built yet"))
    }
}
impl crate::provider::TtsProvider for OpenAiSpeech {
    fn output_format(&self) -> crate::provider::AudioFormat { crate::provider::AudioFormat::Pcm16(16000) }
    fn synthesize(&self, _s: u64, _t: String, _events: crate::provider::Events) -> crate::provider::Job { unreachable!() }
}
