//! RTCP compound packets of any bytes: an error or packets, never a panic; a sender report
//! with its block written back reads the same.
#![no_main]

use cxb_codecs::rtcp::{RtcpPacket, parse_compound, write_report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packets) = parse_compound(data) else { return };
    for packet in packets {
        if let RtcpPacket::SenderReport { ssrc, info, blocks } = packet {
            let block = blocks.first().map(|b| cxb_codecs::rtcp::ReportBlock { cumulative_lost: b.cumulative_lost & 0x7f_ffff, ..*b });
            let mut out = Vec::new();
            write_report(ssrc, &info, block.as_ref(), "cxb", &mut out);
            let back = parse_compound(&out).expect("our report parses");
            assert_eq!(back[0], RtcpPacket::SenderReport { ssrc, info, blocks: block.into_iter().collect() });
        }
    }
});
