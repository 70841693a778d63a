//! Wyoming local speech.
/// Placeholder until the adapter lands.
#[derive(Debug)]
pub struct WyomingStt;
impl WyomingStt {
    /// From the bot's config.
    pub fn from_config(_bot: &crate::config::BotConfig) -> Result<WyomingStt, crate::provider::ProviderError> {
        Err(crate::provider::ProviderError::invalid("stt.provider", "not built yet"))
    }
}
impl crate::provider::SttProvider for WyomingStt {
    fn input_format(&self) -> crate::provider::AudioFormat { crate::provider::AudioFormat::Mulaw8k }
    fn open(&self, _events: crate::provider::Events) -> crate::provider::SttSession { unreachable!() }
}
/// Placeholder until the adapter lands.
#[derive(Debug)]
pub struct WyomingTts;
impl WyomingTts {
    /// From the bot's config.
    pub fn from_config(_bot: &crate::config::BotConfig) -> Result<WyomingTts, crate::provider::ProviderError> {
        Err(crate::provider::ProviderError::invalid("tts.provider", "not built yet"))
    }
}
impl crate::provider::TtsProvider for WyomingTts {
    fn output_format(&self) -> crate::provider::AudioFormat { crate::provider::AudioFormat::Pcm16(16000) }
    fn synthesize(&self, _s: u64, _t: String, _events: crate::provider::Events) -> crate::provider::Job { unreachable!() }
}
