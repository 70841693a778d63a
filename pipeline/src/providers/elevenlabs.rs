//! ElevenLabs streaming text-to-speech.
/// Placeholder until the adapter lands.
#[derive(Debug)]
pub struct ElevenLabs;
impl ElevenLabs {
    /// From the bot's config.
    pub fn from_config(_bot: &crate::config::BotConfig) -> Result<ElevenLabs, crate::provider::ProviderError> {
        Err(crate::provider::ProviderError::invalid("tts.provider", "not built yet"))
    }
}
impl crate::provider::TtsProvider for ElevenLabs {
    fn output_format(&self) -> crate::provider::AudioFormat { crate::provider::AudioFormat::Pcm16(16000) }
    fn synthesize(&self, _s: u64, _t: String, _events: crate::provider::Events) -> crate::provider::Job { unreachable!() }
}
