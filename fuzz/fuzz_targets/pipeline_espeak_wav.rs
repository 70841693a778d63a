//! Any bytes, fed in pieces of any size, to the streamed WAV reader of the `espeak` adapter:
//! samples, "need more" or an error, never a panic; whole samples only, never more bytes out
//! than went in, and the same bytes fed whole give the same samples and the same error.
#![no_main]

use cxb_pipeline::providers::espeak::{SAMPLE_RATE, WavStream};
use libfuzzer_sys::fuzz_target;

/// The samples (and the first error, or the end-of-stream check) from `data` fed `piece`
/// bytes at a time.
fn read(data: &[u8], piece: usize) -> (Vec<u8>, Option<String>) {
    let mut wav = WavStream::new(SAMPLE_RATE);
    let mut samples = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        match wav.feed(chunk) {
            Ok(out) => {
                assert_eq!(out.len() % 2, 0, "whole samples only");
                samples.extend(out);
            }
            Err(e) => return (samples, Some(e.to_string())),
        }
    }
    (samples, wav.finish().err().map(|e| e.to_string()))
}

fuzz_target!(|input: &[u8]| {
    let Some((&piece, data)) = input.split_first() else { return };
    let (samples, error) = read(data, usize::from(piece));
    assert!(samples.len() <= data.len());
    assert_eq!(read(data, data.len()), (samples, error), "piece size changes the result");
});
