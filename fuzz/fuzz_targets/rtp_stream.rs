//! Datagrams of any bytes (separated by 0xFE) into one call's RTP stream, G.711 or Opus (the
//! first byte picks): never a panic, only whole 20 ms frames reach the session, and an Opus
//! payload that libopus cannot read is concealed and counted, never an error for the call.
#![no_main]

use cxb_engine::transport::{RtpCodec, RtpConfig, RtpEvent, RtpTransport};
use cxb_media::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (codec, payload_type, frame) = if pick & 1 == 0 { (RtpCodec::Pcmu, 0, 160) } else { (RtpCodec::Opus, 111, 320) };
    let config = RtpConfig { codec, payload_type, dtmf: Some(101), dtmf_clock: 8000, ssrc: 1, remote: None };
    let Ok(mut rtp) = RtpTransport::new(config) else { return };
    let from = "127.0.0.1:4000".parse().expect("addr");
    // Each datagram may be RTP or not.
    for (i, datagram) in rest.split(|&b| b == 0xfe).enumerate().take(64) {
        let now = Timestamp::from_millis(20 * i as u64);
        if let RtpEvent::Audio { frames, .. } = rtp.on_datagram(now, from, datagram) {
            assert_eq!(frames.len() % frame, 0);
        }
        rtp.handle_timeout(now);
        while rtp.poll_transmit().is_some() {}
    }
});
