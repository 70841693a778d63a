//! Any bytes, fed in pieces of any size, to the Wyoming event reader: events, "need more"
//! or an error, never a panic; every event it yields re-encodes to bytes that read back as
//! the same event, and the same bytes fed whole give the same events.
#![no_main]

use cxb_pipeline::providers::wyoming::{Frame, FrameReader, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

/// Events (or the first error) from `data` fed `piece` bytes at a time.
fn read(data: &[u8], piece: usize) -> (Vec<Frame>, Option<String>) {
    let mut reader = FrameReader::new();
    let mut frames = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        reader.feed(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    (frames, reader.finish().err().map(|e| e.to_string()))
}

fuzz_target!(|input: &[u8]| {
    let Some((&piece, data)) = input.split_first() else { return };
    let (frames, error) = read(data, usize::from(piece));
    assert_eq!(read(data, data.len()), (frames.clone(), error), "piece size changes the result");
    for frame in frames {
        assert!(frame.payload.len() <= MAX_PAYLOAD);
        let mut again = FrameReader::new();
        again.feed(&frame.to_bytes());
        let copy = again.next_frame().expect("an encoded event reads back").expect("whole");
        assert_eq!(again.finish(), Ok(()));
        // Numbers in the data may not survive a text round trip bit for bit; the rest must.
        assert_eq!((&copy.kind, &copy.payload), (&frame.kind, &frame.payload));
        assert!(copy.data.keys().eq(frame.data.keys()));
    }
});
