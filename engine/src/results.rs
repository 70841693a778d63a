//! Where finished calls go: the [`ResultSink`] the engine hands each AI call's result and
//! recording to (the durable outbox in `cxb`, a capture in tests).

pub use cxb_contract::result::CallResult;

/// A finished call's recording, for the result sink.
#[derive(Debug)]
pub enum Recording {
    /// The whole WAV file ([`ResultSink::submit`]).
    Wav(Vec<u8>),
    /// Streamed into the sink's stream, which now holds all of it
    /// ([`ResultSink::submit_streamed`]).
    Streamed(Box<dyn cxb_codecs::wav::RecordingSink>, cxb_codecs::wav::RecordingSummary),
}

/// Where finished calls go: a durable outbox that delivers them to the control plane.
pub trait ResultSink: Send + Sync + std::fmt::Debug {
    /// Stores a finished call's result (the `POST /v1/runtime/results` body) and recording (a
    /// WAV file). The receiver answers once the entry is durable (fsynced): the call's slot
    /// is freed only after that.
    fn submit(&self, result: CallResult, recording: Option<Vec<u8>>) -> flume::Receiver<Result<(), String>>;

    /// Whether the sink can take new calls' results now (not over its disk cap, its last write
    /// did not fail). While it says no, the engine admits no new AI call (503
    /// `outbox_unavailable` before the upgrade); calls already running still submit theirs.
    /// Read on every AI call's admission: keep it to an atomic load. Default: always.
    fn writable(&self) -> bool {
        true
    }

    /// Stores a record for another address of the platform's (the call-end record of a SIP
    /// call the engine dialled, for the dialler's CDR webhook): `body` is posted to `url`,
    /// durably and in order with the results. The receiver answers once it is on disk. `None`
    /// (the default): the sink keeps no records, and the engine posts it itself.
    fn submit_record(&self, url: &str, body: serde_json::Value) -> Option<flume::Receiver<Result<(), String>>> {
        let _ = (url, body);
        None
    }

    /// Queues a handoff to the Agent Desk (the `POST /v1/runtime/handoffs` body) in the
    /// handoff outbox, which is not the results' and delivers on its own. The receiver answers
    /// once it is on disk. `None` (the default): the sink takes no handoffs.
    fn submit_handoff(&self, handoff: serde_json::Value) -> Option<flume::Receiver<Result<(), String>>> {
        let _ = handoff;
        None
    }

    /// Gauges for `/metrics` (name, help, value): the outbox's disk use and queue. Default:
    /// none.
    fn gauges(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }

    /// A sink for a new AI call's recording that takes it to durable storage as the call goes,
    /// so the call's memory stays bounded whatever its length. Its `write` and `spare` are
    /// called on the call's worker thread and must not block. `None` (the default): the
    /// engine keeps the recording in memory and passes the WAV file to [`ResultSink::submit`].
    fn recording_stream(&self) -> Option<Box<dyn cxb_codecs::wav::RecordingSink>> {
        None
    }

    /// Stores a finished call whose recording went to `recording` (made by
    /// [`ResultSink::recording_stream`], everything written to it), `summary` saying what it
    /// holds; otherwise as [`ResultSink::submit`]. The default, for sinks that make no
    /// streams, stores the result without the recording.
    fn submit_streamed(
        &self,
        result: CallResult,
        recording: Box<dyn cxb_codecs::wav::RecordingSink>,
        summary: cxb_codecs::wav::RecordingSummary,
    ) -> flume::Receiver<Result<(), String>> {
        let _ = (recording, summary);
        self.submit(result, None)
    }
}
