//! The jitter buffer under any arrival order: output strictly ordered, counters consistent.
#![no_main]

use cxb_media::jitter::JitterBuffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|arrivals: Vec<(u32, u8)>| {
    let mut jb = JitterBuffer::new(3, 64, 0u8);
    let mut last = None;
    let mut out = Vec::new();
    for &(seq, len) in &arrivals {
        jb.push(u64::from(seq), &vec![0x55; usize::from(len % 4)]);
        while let Some(p) = jb.pop(&mut out) {
            assert!(last.is_none_or(|l| p.seq > l));
            last = Some(p.seq);
        }
    }
    let s = jb.stats();
    assert_eq!(s.received + s.late + s.duplicate, arrivals.len() as u64);
});
