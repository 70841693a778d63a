//! SIP for the engine, sans-IO: text in, typed values and text out; no sockets, no clock.
//! The engine's SIP transport drives it with real datagrams and the worker's time.
//!
//! - [`sdp`]: session descriptions for one audio stream and their offer/answer (G.711 and
//!   telephone events).

pub mod sdp;
