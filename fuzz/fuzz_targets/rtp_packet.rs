//! RTP datagrams and telephone events of any bytes: errors, never panics; a packet that
//! parses and carries no CSRCs, extension or padding writes back to the same bytes.
#![no_main]

use cxb_codecs::rtp::{DtmfReceiver, RtpPacket, SequenceUnwrapper, TelephoneEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = RtpPacket::parse(data) else { return };
    assert!(packet.payload.len() <= data.len().saturating_sub(12));
    if data[0] & 0x3f == 0 {
        let mut out = Vec::new();
        packet.write(&mut out);
        assert_eq!(&out[..], &data[..out.len()]);
        assert_eq!(out.len(), data.len());
    }
    let mut unwrapper = SequenceUnwrapper::default();
    let first = unwrapper.unwrap(packet.sequence);
    assert_eq!(first, u64::from(packet.sequence));
    if let Some(event) = TelephoneEvent::parse(packet.payload) {
        assert_eq!(TelephoneEvent::parse(&event.to_bytes()).map(|e| e.event), Some(event.event));
        let _ = DtmfReceiver::default().receive(packet.timestamp, event);
    }
});
