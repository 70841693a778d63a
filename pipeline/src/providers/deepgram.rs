//! Deepgram live speech-to-text.
/// Placeholder until the adapter lands.
#[derive(Debug)]
pub struct Deepgram;
impl Deepgram {
    /// From the bot's config.
    pub fn from_config(_bot: &crate::config::BotConfig) -> Result<Deepgram, crate::provider::ProviderError> {
        Err(crate::provider::ProviderError::invalid("stt.provider", "not built yet"))
    }
}
impl crate::provider::SttProvider for Deepgram {
    fn input_format(&self) -> crate::provider::AudioFormat { crate::provider::AudioFormat::Mulaw8k }
    fn open(&self, _events: crate::provider::Events) -> crate::provider::SttSession { unreachable!() }
}
