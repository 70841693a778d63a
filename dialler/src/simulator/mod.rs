//! The built-in carrier simulator: the carrier of `cxb up` and of the tests. It "dials" nobody
//! but behaves like a carrier: [`Simulator::create_call`](crate::carrier::Carrier::create_call)
//! accepts a call at once, then a task rings it, decides the outcome (a fixed [`Rule`] for the
//! number, else a draw from the [`OutcomeMix`]) with realistic ring times, and on an answer runs
//! the call's CXML for real: `<Connect><Stream>` opens the WebSocket to the engine and speaks the
//! Twilio Media Streams protocol with recorded caller audio (a person, or an answering machine's
//! greeting and beep), `<Hangup/>` hangs up, `<Dial><Service>` (SIP) is simulated as talk time.
//! At the end it posts its CDR ([`SimulatorCdr`]) to the call's `cdr_url`, with retries.
//!
//! The CXML reader ([`read_plan`]) and the CDR parser ([`parse_cdr`]) are pure and always
//! compiled (fuzzed); the rest needs the `runtime` feature.

mod cdr;
mod config;
mod plan;

#[cfg(feature = "runtime")]
mod caller;
#[cfg(feature = "runtime")]
mod calls;
#[cfg(feature = "runtime")]
mod stream;

pub use cdr::{CARRIER, Callee, MAX_CDR_BYTES, SimulatorCdr, parse_cdr};
pub use config::{Outcome, OutcomeMix, RingTimes, Rule, SimulatorConfig, Span};
pub use plan::{MAX_CXML_BYTES, MAX_PARAMETERS, Plan, PlanError, read_plan};

#[cfg(feature = "runtime")]
pub use calls::{CallRecord, CdrDelivery, Simulator, SimulatorStats};
