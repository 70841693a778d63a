//! The pure audio path every call runs through: resampling, voice activity, turn detection,
//! the playout clock and inbound jitter handling.
//!
//! Architecture invariant: nothing in this crate reads a clock, spawns a thread or touches a
//! socket. Time enters as a [`Timestamp`] argument and leaves as a deadline for the caller to
//! wake us at, so every state machine here runs the same on a virtual clock in tests as on a
//! worker's timer in the engine.



pub mod amd;
pub mod resample;
pub mod jitter;
pub mod mel;
pub mod path;
pub mod playout;
pub mod time;
pub mod turn;
pub mod vad;



pub use time::Timestamp;
