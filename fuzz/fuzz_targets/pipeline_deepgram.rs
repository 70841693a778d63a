//! Any text frame through the Deepgram live-message parser: a message or an error, never a
//! panic; a reported transcript is never empty and never has surrounding whitespace.
#![no_main]

use cxb_pipeline::SttEvent;
use cxb_pipeline::providers::deepgram::parse_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(message) = parse_message(text) {
        match message.event() {
            Some(SttEvent::Interim { text } | SttEvent::Final { text, .. }) => {
                assert!(!text.is_empty());
                assert_eq!(text.trim(), text);
            }
            Some(SttEvent::UtteranceEnd) | None => {}
            Some(SttEvent::Error(_)) => panic!("the parser never reports an error event"),
        }
    }
});
