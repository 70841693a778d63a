//! The contract between CX Bridge's processes: what one signs and another checks. Pure: no
//! clock reads, no randomness, no I/O; time and nonces are arguments.
//!
//! - [`bot`]: a bot's settings, as the API stores them and the engine runs them.
//! - [`call_token`]: the signed, expiring, single-use call token the API and dialler put in
//!   a stream URL and the engine checks before the WebSocket upgrade.
//! - [`carrier`]: carriers' own request signatures (Twilio's `X-Twilio-Signature`) and the
//!   constant-time comparison every credential check uses.
//! - [`egress`]: which addresses a request made on a tenant's behalf may reach.
//! - [`fleet`]: an engine host's heartbeat and the API's answer (reservations, releases,
//!   call-token keys), and the slot a dialler reserves.
//! - [`ids`]: typed ids of calls, organizations, bots, campaigns and contacts.
//! - [`phone`]: phone numbers as calls carry them, whose `Debug` shows only the last four
//!   characters.
//! - [`result`]: a finished call's result, as the engine writes it and the API stores it.

pub mod bot;
pub mod call_token;
pub mod carrier;
pub mod egress;
pub mod fleet;
pub mod http;
pub mod ids;
pub mod phone;
pub mod result;
