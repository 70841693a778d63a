//! The AI call pipeline: speech-to-text, a language model and text-to-speech around a
//! phone call, with turn-taking, tools, recordings and the call's result.
//!
//! The conversation logic is sans-IO ([`conversation`]): audio, provider events and the
//! clock go in, actions come out, and tests drive it under a virtual clock. Provider adapters
//! ([`providers`]) are tasks on the call's worker runtime (compio), so a call's media, its
//! provider sockets and its timers all stay on one core.

pub mod config;
pub mod conversation;
pub mod egress;
pub mod provider;
pub mod providers;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tools;

pub use config::BotConfig;
pub use provider::{AudioFormat, Event, Events, LlmEvent, SttEvent, TtsEvent};
