//! SIP for the engine, sans-IO: text in, typed values and text out; no sockets, no clock.
//! The engine's SIP transport drives it with real datagrams and the worker's time.
//!
//! - [`call`]: one inbound call as the called user agent: the INVITE server transaction, the
//!   dialog, CANCEL, BYE either way, INFO keys and re-INVITEs, with RFC 3261's timers.
//! - [`digest`]: digest authentication (RFC 3261 §22, MD5): challenges, credentials, nonces.
//! - [`message`]: requests and responses: parsing (compact forms, header lists, parameters,
//!   TCP framing by `Content-Length`) and responses that copy what RFC 3261 §8.2.6 says.
//! - [`sdp`]: session descriptions for one audio stream and their offer/answer (G.711 and
//!   telephone events).

pub mod call;
pub mod digest;
pub mod message;
pub mod sdp;
