//! Any text frame through the ElevenLabs stream-input parser: a message or an error, never a
//! panic; parsed audio re-encoded as an AudioOutput message parses back to the same bytes.
#![no_main]

use cxb_codecs::payload;
use cxb_pipeline::providers::elevenlabs::{ServerMessage, parse_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(ServerMessage::Output { audio, is_final }) = parse_message(text) {
        let mut b64 = String::new();
        payload::encode_into(&audio, &mut b64);
        let again = serde_json::json!({ "audio": b64, "isFinal": is_final }).to_string();
        assert_eq!(parse_message(&again), Ok(ServerMessage::Output { audio, is_final }));
    }
});
