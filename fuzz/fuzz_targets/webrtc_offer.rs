//! Any text as a browser's SDP offer to `POST /webrtc/BOT`: answered or refused with an
//! error, never a panic; an answer always carries Opus.
#![no_main]

use std::time::Instant;

use cxb_engine::transport::webrtc::WebRtcTransport;
use cxb_media::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = std::str::from_utf8(data) else { return };
    let local = "127.0.0.1:50000".parse().expect("addr");
    if let Ok((_, answer)) = WebRtcTransport::accept(Timestamp::from_millis(0), Instant::now(), local, offer) {
        assert!(answer.to_ascii_lowercase().contains("opus/48000"));
    }
});
