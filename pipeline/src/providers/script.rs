//! The script language model.
/// Placeholder until the adapter lands.
#[derive(Debug)]
pub struct Script;
impl Script {
    /// From the bot's config.
    pub fn from_config(_bot: &crate::config::BotConfig) -> Result<Script, crate::provider::ProviderError> {
        Err(crate::provider::ProviderError::invalid("llm.provider", "not built yet"))
    }
}
impl crate::provider::LlmProvider for Script {
    fn complete(&self, _turn: u64, _r: crate::provider::ChatRequest, _events: crate::provider::Events) -> crate::provider::Job { unreachable!() }
}
