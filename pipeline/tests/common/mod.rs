//! Helpers shared by the provider tests: waiting for events and collecting a sentence.

#![allow(dead_code)]

use std::time::Duration;

use cxb_pipeline::{Event, Events, TtsEvent};

/// The next event, or a panic after 5 s.
pub(crate) async fn next(events: &Events) -> Event {
    let wait = async {
        loop {
            if let Some((_, event)) = events.pop() {
                return event;
            }
            events.ready().await;
        }
    };
    compio::time::timeout(Duration::from_secs(5), wait).await.expect("an event within 5 s")
}

/// Every event of sentence 7, up to and including Done or Error.
pub(crate) async fn sentence(events: &Events) -> Vec<TtsEvent> {
    let mut out = Vec::new();
    loop {
        match next(events).await {
            Event::Tts { sentence: 7, event } => {
                let end = matches!(event, TtsEvent::Done | TtsEvent::Error(_));
                out.push(event);
                if end {
                    return out;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The audio bytes of a sentence's events.
pub(crate) fn audio(out: &[TtsEvent]) -> Vec<u8> {
    out.iter().filter_map(|e| if let TtsEvent::Audio(a) = e { Some(a.clone()) } else { None }).flatten().collect()
}
