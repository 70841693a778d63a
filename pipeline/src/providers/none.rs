//! `none`: no speech-to-text. The caller is heard but not transcribed: the call's own voice
//! and turn detection still decide when a turn ends, and each turn end (the conversation's
//! `Finalize`) yields a final transcript of placeholder text, so the conversation answers
//! every turn (and barge-in and idle re-prompts work as with a real transcriber). With the
//! `script` language model this runs a whole call with no speech service at all.
//!
//! The placeholder is `stt.options.placeholder`, default `...`: it has no words, so a script
//! never matches an intent on it and answers with its `fallback`; a placeholder such as
//! `yes` lets a script walk one intent instead. The caller's lines in the transcript are the
//! placeholder.

use std::rc::Rc;

use crate::config::BotConfig;
use crate::provider::{AudioFormat, Event, Events, ProviderError, SttCommand, SttEvent, SttProvider, SttSession, stt_channel};

/// What each caller turn reads as when the config sets no placeholder.
pub const DEFAULT_PLACEHOLDER: &str = "...";
/// The longest placeholder accepted, in bytes.
const MAX_PLACEHOLDER: usize = 1000;

/// Speech-to-text that transcribes nothing: every turn end is a final transcript of the
/// placeholder.
#[derive(Debug, Clone)]
pub struct NoStt {
    placeholder: Rc<str>,
}

impl NoStt {
    /// From the bot's config.
    pub fn from_config(bot: &BotConfig) -> Result<NoStt, ProviderError> {
        let field = "stt.options.placeholder";
        let placeholder = match bot.stt.options.get("placeholder") {
            None => DEFAULT_PLACEHOLDER,
            Some(p) => p.as_str().ok_or_else(|| ProviderError::invalid(field, "must be a string"))?,
        };
        let placeholder = placeholder.trim();
        // A blank placeholder would never end a turn: the conversation waits for words.
        if placeholder.is_empty() || placeholder.len() > MAX_PLACEHOLDER {
            return Err(ProviderError::invalid(field, format!("1 to {MAX_PLACEHOLDER} bytes, not only spaces")));
        }
        Ok(NoStt { placeholder: placeholder.into() })
    }

    /// What each turn reads as.
    pub fn placeholder(&self) -> &str {
        &self.placeholder
    }
}

impl SttProvider for NoStt {
    /// The carrier's audio as it comes: nothing is converted for a session that drops it.
    fn input_format(&self) -> AudioFormat {
        AudioFormat::Mulaw8k
    }

    fn open(&self, events: Events) -> SttSession {
        let (commands, rx) = stt_channel();
        let placeholder = self.placeholder.clone();
        let task = compio::runtime::spawn(async move {
            // The audio is read (so the queue stays empty) and dropped.
            while let Some(command) = rx.recv().await {
                match command {
                    SttCommand::Audio(audio) => rx.recycle(audio),
                    SttCommand::Finalize => {
                        let text = placeholder.to_string();
                        events.push(Event::Stt(SttEvent::Final { text, end_of_turn: true }));
                    }
                    SttCommand::Close => return,
                }
            }
        });
        SttSession::new(commands, task)
    }
}
