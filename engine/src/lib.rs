//! `cxb core`: the media engine. Thread-per-core workers on io_uring carry live calls over
//! the carriers' telephony WebSockets, each call living its whole life on one core.
//!
//! - [`server`]: start and stop; the acceptor, workers and control socket.
//! - [`config`]: how the engine runs.
//! - `shared`: what the engine's threads share; the commands a worker takes.
//! - [`results`]: where finished calls go (the outbox's interface).
//! - `worker`: a worker thread's runtime, connections and call loops.
//! - `slots`: a worker's slot table, pure (free, reserved, carrying a call; AI room).
//! - [`session`]: the call whatever carries it, sans-IO: caller audio, keys and time in,
//!   one `poll_output()` out; the [`session::Bot`] interface every bot answers through.
//! - [`transport`]: carriers' wires to the session's inputs and its transmits back: the
//!   carriers' WebSockets (`ws`) and the RTP media of SIP calls (`rtp`).
//! - [`call`]: drives a transport and a session for the worker; their events to metrics.
//! - [`error`]: why a call ended; how a peer broke the protocol.
//! - [`protocol`]: the Twilio / Cloudonix and Exotel wire formats, sans-IO.
//! - [`ws`], [`http`]: WebSocket framing (RFC 6455, sans-IO, zero-copy) and HTTP heads.
//! - [`registry`]: the shared-memory slot registry other processes read.
//! - [`metrics`]: per-worker counters and their Prometheus rendering.
//! - [`bots`]: the built-in bots (`echo`, `turn-echo`, `fault`).
//! - [`agent`]: an AI bot inside a call: providers, audio conversions, recording, result.
//! - [`admission`]: who may start a call (call tokens, carrier signatures, inbound secrets).
//! - [`sip`], `sip_front`: the SIP port (its state; its reading threads): messages routed by
//!   Call-ID to the worker owning the call, whose task (`worker::sip`) runs the dialog
//!   (`cxb-sip`) and the call's RTP socket.
//! - [`tls`]: `wss://` through rustls, sans-IO between the socket and the parsers.
//! - [`limits`]: per-address limits before the upgrade (pending heads, failed admissions).

pub mod admission;
pub mod agent;
pub mod bots;
pub mod call;
pub mod config;
pub mod desk;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod results;
pub mod server;
pub mod session;
mod shared;
pub mod sip;
mod sip_front;
mod slots;
pub mod tls;
pub mod transport;
pub mod turn_model;
mod worker;
pub mod ws;

pub use server::{Engine, EngineConfig, EngineHandle, ResultSink};
