//! Transports: each turns a carrier's wire into the session's inputs (whole 20 ms frames in
//! the call's encoding, keys, confirmed marks) and the session's [`Transmit`]s back into the
//! wire, owning framing, encoding, ordering and the carrier's own messages. Sans-IO: bytes and
//! `now` in, bytes out; the worker owns the sockets.
//!
//! - [`ws`]: the carriers' telephony WebSockets (Twilio / Cloudonix, Exotel).
//! - [`rtp`]: RTP media of a SIP call (G.711 or Opus, RFC 4733 keys), symmetric, paced.
//! - [`webrtc`]: a browser's call (ICE-lite, DTLS-SRTP, Opus, a data channel), through str0m.
//!
//! [`Transmit`]: crate::session::Transmit

pub mod opus;
pub mod rtcp;
pub mod rtp;
pub mod webrtc;
pub mod webrtc_client;
pub mod ws;

pub use rtp::{RtpCodec, RtpConfig, RtpEvent, RtpStats, RtpTransport};
pub use ws::{WsEvent, WsStats, WsTransport};

use cxb_media::Timestamp;

use crate::session::Transmit;

/// What a [`Call`](crate::call::Call) asks of any transport: the session's transmits, and a
/// clock of its own (Exotel's flush timer, RTP's silence).
pub trait Transport {
    /// Carries out what the session asks at `now`.
    fn transmit(&mut self, now: Timestamp, what: Transmit<'_>);
    /// When [`Transport::handle_timeout`] should next run.
    fn deadline(&self) -> Option<Timestamp>;
    /// Runs what is due at `now`.
    fn handle_timeout(&mut self, now: Timestamp);
    /// Marks sent and clears sent, where the wire has them.
    fn marks_and_clears(&self) -> (u64, u64) {
        (0, 0)
    }
}

impl Transport for WsTransport {
    fn transmit(&mut self, now: Timestamp, what: Transmit<'_>) {
        WsTransport::transmit(self, now, what);
    }
    fn deadline(&self) -> Option<Timestamp> {
        WsTransport::deadline(self)
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        WsTransport::handle_timeout(self, now);
    }
    fn marks_and_clears(&self) -> (u64, u64) {
        let s = self.stats();
        (s.marks_sent, s.clears_sent)
    }
}

impl Transport for webrtc::WebRtcTransport {
    fn transmit(&mut self, now: Timestamp, what: Transmit<'_>) {
        webrtc::WebRtcTransport::transmit(self, now, what);
    }
    fn deadline(&self) -> Option<Timestamp> {
        webrtc::WebRtcTransport::deadline(self)
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        webrtc::WebRtcTransport::handle_timeout(self, now);
    }
}

impl Transport for RtpTransport {
    fn transmit(&mut self, now: Timestamp, what: Transmit<'_>) {
        RtpTransport::transmit(self, now, what);
    }
    fn deadline(&self) -> Option<Timestamp> {
        RtpTransport::deadline(self)
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        RtpTransport::handle_timeout(self, now);
    }
}
