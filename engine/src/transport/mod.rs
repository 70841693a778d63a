//! Transports: each turns a carrier's wire into the session's inputs (whole 20 ms frames in
//! the call's encoding, keys, confirmed marks) and the session's [`Transmit`]s back into the
//! wire, owning framing, encoding, ordering and the carrier's own messages. Sans-IO: bytes and
//! `now` in, bytes out; the worker owns the sockets.
//!
//! - [`ws`]: the carriers' telephony WebSockets (Twilio / Cloudonix, Exotel).
//! - [`rtp`]: RTP media of a SIP call (G.711 and RFC 4733 keys), symmetric, paced.
//!
//! [`Transmit`]: crate::session::Transmit

pub mod rtp;
pub mod ws;

pub use ws::{WsEvent, WsStats, WsTransport};
