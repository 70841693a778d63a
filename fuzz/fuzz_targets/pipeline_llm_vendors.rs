//! Anthropic's and Gemini's streamed replies on any bytes: never a panic, and a reply ends in
//! exactly one `Done` or `Error`, last, with nothing after it, however the bytes are split.
//!
//! Input: one byte choosing the decoder (even: Anthropic, odd: Gemini) and the chunk size (1
//! to 17), then the stream.
#![no_main]

use cxb_pipeline::provider::LlmEvent;
use cxb_pipeline::providers::anthropic::MessagesDecoder;
use cxb_pipeline::providers::gemini::GeminiDecoder;
use cxb_pipeline::providers::openai::ReplyDecoder;
use libfuzzer_sys::fuzz_target;

fn run(decoder: &mut dyn ReplyDecoder, stream: &[u8], size: usize) -> Vec<LlmEvent> {
    let mut out = Vec::new();
    for chunk in stream.chunks(size) {
        decoder.push(chunk);
        out.extend(std::iter::from_fn(|| decoder.next_event()));
    }
    decoder.end();
    out.extend(std::iter::from_fn(|| decoder.next_event()));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, stream)) = data.split_first() else { return };
    let size = usize::from(choice / 2 % 17) + 1;
    let mut anthropic = MessagesDecoder::new();
    let mut gemini = GeminiDecoder::new(1);
    let decoder: &mut dyn ReplyDecoder = if choice % 2 == 0 { &mut anthropic } else { &mut gemini };
    let out = run(decoder, stream, size);
    assert!(decoder.is_finished());
    let ends = out.iter().filter(|e| matches!(e, LlmEvent::Done { .. } | LlmEvent::Error(_))).count();
    assert_eq!(ends, 1, "{out:?}");
    assert!(matches!(out.last(), Some(LlmEvent::Done { .. } | LlmEvent::Error(_))));
    for event in &out {
        if let LlmEvent::ToolCall(call) = event {
            assert!(!call.name.is_empty() && serde_json::from_str::<serde_json::Value>(&call.arguments).is_ok() || choice % 2 == 0, "{call:?}");
        }
    }
    decoder.push(b"event: message_stop\ndata: {}\n\ndata: {\"candidates\":[]}\n\n");
    assert_eq!(decoder.next_event(), None, "nothing after the end");
});
