//! `cxb dialler`: campaign execution. A dialler process takes a lease on each active campaign it
//! runs, paces attempts by CPS and CAC (one TTL lease per live call), keeps to calling windows
//! and the do-not-call list, rotates caller IDs, routes answered calls to AI assistants with the
//! seed's CXML, and retries by outcome. Carriers sit behind [`carrier::Carrier`]: Cloudonix over
//! its REST API, and a built-in simulator that dials nobody but behaves like a carrier.
//!
//! Without the default `runtime` feature the crate is only its wire formats (CXML, carriers'
//! call-end records), which is what the fuzz targets build.

pub mod balance;
pub mod carrier;
#[cfg(feature = "runtime")]
pub mod carriers;
pub mod cxml;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
mod place;
#[cfg(feature = "runtime")]
pub mod run;
#[cfg(feature = "runtime")]
pub mod schedule;
pub mod simulator;
#[cfg(feature = "runtime")]
pub mod webhook;

#[cfg(feature = "runtime")]
pub use run::{Dialler, DiallerConfig, Shared};
#[cfg(feature = "runtime")]
pub use webhook::DiallerTelephony;
