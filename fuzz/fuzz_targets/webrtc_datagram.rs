//! Datagrams of any bytes (each after its length, two bytes big-endian: DTLS records hold
//! 0xFE, so no byte can separate them) into a browser call's WebRTC session after its
//! offer was answered: STUN, DTLS, SRTP and RTCP demultiplexed and read by str0m, never a
//! panic, and only whole 20 ms frames reach the session.
#![no_main]

use std::time::Instant;

use cxb_engine::transport::webrtc::{WebRtcEvent, WebRtcTransport};
use cxb_engine::transport::webrtc_client::WebRtcClient;
use cxb_media::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let epoch = Instant::now();
    let from = "127.0.0.1:40000".parse().expect("addr");
    let Ok((_, offer)) = WebRtcClient::new(epoch, from, false) else { return };
    let Ok((mut rtc, _)) = WebRtcTransport::accept(Timestamp::from_millis(0), epoch, "127.0.0.1:50000".parse().expect("addr"), &offer) else { return };
    let mut rest = data;
    for i in 0..64 {
        let [a, b, tail @ ..] = rest else { break };
        let n = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (datagram, next) = tail.split_at(n);
        rest = next;
        let now = Timestamp::from_millis(20 * i as u64);
        if let WebRtcEvent::Audio { frames, .. } = rtc.on_datagram(now, from, datagram) {
            assert_eq!(frames.len() % 320, 0);
        }
        rtc.handle_timeout(now);
        while rtc.poll_transmit().is_some() {}
    }
});
