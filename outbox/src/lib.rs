//! The engine's result outbox: a finished call's result (and its recording) goes to disk,
//! durably, before the call's slot is freed; a thread of its own then uploads the recording to
//! an object store and posts the result to `cxb api` (`POST /v1/runtime/results`), retrying
//! until the API has it. An API outage or a crash loses nothing: the API stores a call id once.
//!
//! The engine only ever calls [`OutboxHandle::submit`] (or [`OutboxHandle::submit_recording`])
//! and awaits the [`Receipt`] it returns,
//! which is runtime-agnostic (a flume channel), so a compio worker awaits it without blocking.
//! Everything else runs on the outbox's own two threads: a writer (plain blocking file I/O,
//! one directory fsync per batch of submissions) and a sender (a tokio current-thread runtime
//! with reqwest and `object_store`). [`wav`] is the recording writer the engine uses on its
//! own thread; it has no runtime in it.
//!
//! Architecture invariant: tokio and `object_store` run only on the sender thread; nothing
//! the engine calls touches them.
//!
//! Features: `delivery` (default) is the outbox itself; without it the crate is only [`wav`],
//! with no runtime, HTTP or object-store dependencies (what the fuzz targets build).

#[cfg(feature = "delivery")]
mod outbox;
#[cfg(feature = "delivery")]
mod sender;
#[cfg(feature = "delivery")]
mod spool;
pub mod wav;

#[cfg(feature = "delivery")]
pub use outbox::{
    ApiTarget, Outbox, OutboxConfig, OutboxError, OutboxGuard, OutboxHandle, Receipt, ReceiptFuture, RecordingStore, RetryPolicy, S3Config,
    Stats,
};
