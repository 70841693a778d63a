//! Server-sent events and OpenAI chat chunks on any bytes: never a panic; however the bytes
//! are split the parser gives the same events; a chat reply ends in exactly one `Done` or
//! `Error`, last, with nothing after it.
//!
//! Input: one byte choosing the chunk size (1 to 17), then the stream.
#![no_main]

use cxb_pipeline::provider::LlmEvent;
use cxb_pipeline::providers::openai::ChatDecoder;
use cxb_pipeline::providers::sse::{SseEvent, SseParser};
use libfuzzer_sys::fuzz_target;

fn events(chunks: &mut dyn Iterator<Item = &[u8]>) -> (Vec<SseEvent>, bool) {
    let mut parser = SseParser::with_limit(4096);
    let mut out = Vec::new();
    for chunk in chunks {
        if parser.push(chunk).is_err() {
            return (out, false);
        }
        out.extend(std::iter::from_fn(|| parser.next_event()));
    }
    (out, true)
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, stream)) = data.split_first() else { return };
    let size = usize::from(size % 17) + 1;

    let (whole, whole_ok) = events(&mut std::iter::once(stream));
    let (split, split_ok) = events(&mut stream.chunks(size));
    assert_eq!(whole_ok, split_ok);
    if whole_ok {
        assert_eq!(whole, split);
    }
    for event in &whole {
        assert!(!event.event.is_empty());
        assert!(event.id.as_deref().is_none_or(|id| !id.contains('\0')));
    }

    let mut decoder = ChatDecoder::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(size) {
        decoder.push(chunk);
        out.extend(std::iter::from_fn(|| decoder.next_event()));
    }
    decoder.end();
    out.extend(std::iter::from_fn(|| decoder.next_event()));
    assert!(decoder.is_finished());
    let ends = out.iter().filter(|e| matches!(e, LlmEvent::Done { .. } | LlmEvent::Error(_))).count();
    assert_eq!(ends, 1, "{out:?}");
    assert!(matches!(out.last(), Some(LlmEvent::Done { .. } | LlmEvent::Error(_))));
    decoder.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"late\"}}]}\n\n");
    assert_eq!(decoder.next_event(), None, "nothing after the end");
});
