//! Carriers place the calls. The dialler and the API's direct calls use one contract: create a
//! call (callee, caller ID, CXML or an answer URL, ring deadline, where to post the call-end
//! record), hang up, ask whether a call still lives, and read the carrier's call-end (CDR)
//! webhook. Adapters: [`cloudonix`] (REST API and CDR webhook) and the built-in
//! [`crate::simulator`].

pub mod cloudonix;
pub mod sip;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A boxed future, so carriers can sit behind `dyn Carrier`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the carrier runs when the callee answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A CXML document (`<Response>…</Response>`), executed as is.
    Cxml(String),
    /// A URL the carrier fetches the CXML from when the call is answered.
    Url(String),
}

/// A call to place.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// Our id of the call: the call record's id and the `{session}` placeholder.
    pub session: String,
    /// The callee, E.164 (`+15551230001`).
    pub to: String,
    /// The caller ID shown, E.164.
    pub from: String,
    pub answer: Answer,
    /// Stop ringing after this long; the call then ends as no-answer.
    pub ring_timeout: Duration,
    /// Where the carrier posts its call-end record. It carries a per-call token in its query
    /// (`?token=…`), so a carrier that posts to the URL it was given needs no other secret.
    pub cdr_url: String,
    /// The engine stream of a call routed to a CX Bridge bot (`ws(s)://host/ws/BOT?token=…`):
    /// the `sip` carrier asks that engine to dial.
    pub engine: Option<String>,
}

/// A call the carrier accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The carrier's id of the call (Cloudonix: the session token): used to hang up, to ask
    /// about the call and to match its CDR.
    pub carrier_call_id: String,
}

/// How a call ended, in our terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Someone (or something: answering machines answer too) picked up.
    Answered,
    Busy,
    NoAnswer,
    /// The number does not exist or cannot be reached (SIP 404/484/604, Q.850 1/28): never retried.
    InvalidNumber,
    /// Carrier or network failure (SIP 5xx, 403, 408 before ringing, …).
    Failed,
    /// We (or the API) hung up before the callee answered.
    Canceled,
}

/// A carrier's call-end record, read from its webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdr {
    /// The carrier's id of the call, as in [`Placed`].
    pub carrier_call_id: String,
    /// Our [`CallRequest::session`] when the carrier echoes it back.
    pub session: Option<String>,
    pub disposition: Disposition,
    /// The carrier's reason, e.g. `486 Busy Here` or `NORMAL_CLEARING`.
    pub cause: Option<String>,
    /// Unix ms.
    pub started_at_ms: i64,
    pub answered_at_ms: Option<i64>,
    pub ended_at_ms: i64,
    /// Whether the carrier's own webhook authentication (a configured token or signature) was
    /// present and valid. When `false` the handler requires the per-call token of `cdr_url`.
    pub authenticated: bool,
}

/// Whether a placed call still lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Ringing or connected.
    Live,
    Ended,
    /// The carrier does not know the call (or no longer keeps it).
    Unknown,
}

/// Why a carrier request failed.
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    /// The carrier refused this call for good (bad number, no permission): the attempt failed.
    #[error("the carrier refused the call: {status} {message}")]
    Rejected { status: u16, message: String },
    /// The carrier could not be reached or is overloaded (network, 5xx, 429): try again later;
    /// the attempt does not count against the contact.
    #[error("the carrier is unavailable: {0}")]
    Unavailable(String),
    /// The organization's carrier settings are incomplete or wrong.
    #[error("carrier settings: {0}")]
    Config(String),
}

/// Why a CDR webhook was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CdrError {
    /// A configured token or signature is missing or wrong.
    #[error("the webhook's token or signature is missing or wrong")]
    Unauthorized,
    /// The body is not a CDR this carrier sends.
    #[error("not a call-end record: {0}")]
    Malformed(String),
}

/// A carrier adapter. Implementations are cheap to share (`Arc<dyn Carrier>`).
pub trait Carrier: Send + Sync + std::fmt::Debug {
    /// `cloudonix`, `simulator`.
    fn name(&self) -> &'static str;

    /// Places a call. Returns once the carrier has accepted it (not when it is answered).
    fn create_call<'a>(&'a self, call: &'a CallRequest) -> BoxFuture<'a, Result<Placed, CarrierError>>;

    /// Ends a call, ringing or connected. Hanging up a call that already ended is not an error.
    fn hang_up<'a>(&'a self, carrier_call_id: &'a str) -> BoxFuture<'a, Result<(), CarrierError>>;

    /// Whether the call still lives (the dialler renews a live call's CAC lease with this).
    fn call_state<'a>(&'a self, carrier_call_id: &'a str) -> BoxFuture<'a, Result<CallState, CarrierError>>;

    /// Checks the webhook's carrier-level authentication and reads the CDR. `headers` are the
    /// request's, names lower-case. Never panics, whatever the bytes.
    fn parse_cdr(&self, headers: &[(String, String)], body: &[u8]) -> Result<Cdr, CdrError>;
}

/// Equal contents, compared without an early exit (the length is not secret): for webhook
/// tokens.
pub use cxb_contract::carrier::constant_time_eq;
