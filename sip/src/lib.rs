//! SIP for the engine, sans-IO: text in, typed values and text out; no sockets, no clock.
//! The engine's SIP transport drives it with real datagrams and the worker's time.
//!
//! - [`call`]: one inbound call as the called user agent: the INVITE server transaction, the
//!   dialog, CANCEL, BYE either way, INFO keys and re-INVITEs, with RFC 3261's timers.
//! - [`digest`]: digest authentication (RFC 3261 §22, MD5): challenges, credentials, nonces.
//! - [`outbound`]: one outbound call as the calling user agent: the INVITE's client
//!   transaction (Timers A and B, 401/407 answered once, CANCEL), ACKs, the dialog.
//! - [`message`]: requests and responses: parsing (compact forms, header lists, parameters,
//!   TCP framing by `Content-Length`) and responses that copy what RFC 3261 §8.2.6 says.
//! - [`sdp`]: session descriptions for one audio stream and their offer/answer (G.711 and
//!   telephone events).

pub mod call;
pub mod digest;
pub mod message;
pub mod outbound;
pub mod sdp;
