//! The engine's result outbox: a finished call's result (and its recording) goes to disk,
//! durably, before the call's slot is freed; a thread of its own then uploads the recording to
//! an object store and posts the result to `cxb api` (`POST /v1/runtime/results`), retrying
//! until the API has it. An API outage or a crash loses nothing: the API stores a call id once.
//!
//! The engine only ever calls [`OutboxHandle::submit`] (or [`OutboxHandle::submit_recording`],
//! [`OutboxHandle::submit_stream`]) and awaits the [`Receipt`] it returns,
//! which is runtime-agnostic (a flume channel), so a compio worker awaits it without blocking.
//! Everything else runs on the outbox's own two threads: a writer (plain blocking file I/O,
//! one directory fsync per batch of submissions) and a sender (a tokio current-thread runtime
//! with reqwest and `object_store`). The recording writer the engine uses on its own thread
//! is `cxb_codecs::wav`; it has no runtime in it.
//!
//! **Recordings stream to disk during the call.** A [`RecordingStream`]
//! ([`OutboxHandle::recording_stream`]) is the sink of the engine's `cxb_codecs::wav::RecordingWriter`:
//! the writer keeps the last second of the call's timeline and hands older audio on in
//! half-second chunks; the stream sends each chunk through the writer thread's channel, the
//! writer thread writes it at its place in `tmp/{id}.partial.wav` and hands the buffer back
//! (at most 8 per recording, then audio is dropped rather than held), so a call's memory is
//! bounded whatever its length and the engine's worker thread never touches the disk. At the
//! end the submission completes the file (header, length, fsync) and moves it beside its entry.
//!
//! **Records** ([`OutboxHandle::submit_record`]) take the same path to another address of the
//! platform's: a JSON object posted to its own URL (the credential in the URL, never the fleet
//! token), in order with the results: the engine's call-end records of the SIP calls it dials.
//!
//! **Nothing blocks the queue.** Entries are delivered in order; one that keeps failing while
//! the API shows it takes results (a probe that changes nothing) is parked and tried again on
//! its own slower schedule; an API that is down for everyone parks nothing (see `queue`). A
//! parked entry is marked on disk (`{seq}.parked`), so a restart keeps it parked.
//!
//! **A disk-usage cap** ([`OutboxConfig::max_bytes`], 1 GiB by default) on everything in the
//! directory: at or over it, or after a write failed (a full disk) until a write succeeds
//! again, [`OutboxHandle::writable`] says no and the engine takes no new AI calls; what is
//! submitted is still written if the disk takes it.
//!
//! Architecture invariant: tokio and `object_store` run only on the sender thread; nothing
//! the engine calls touches them.

mod outbox;
mod queue;
mod sender;
mod spool;

pub use outbox::{
    ApiTarget, Outbox, OutboxConfig, OutboxError, OutboxGuard, OutboxHandle, Receipt, ReceiptFuture, RecordingStore, RecordingStream, RetryPolicy,
    S3Config, Stats,
};
