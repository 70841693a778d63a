//! Local servers that speak each vendor's protocol.

pub mod deepgram;
pub mod elevenlabs;
pub mod openai;
pub mod tools;
pub mod vendors;
pub mod ws;
pub mod wyoming;
