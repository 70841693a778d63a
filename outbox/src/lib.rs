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

mod sender;
mod spool;
pub mod wav;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::spool::{Entry, PendingRecording, Spool};
use crate::wav::{RecordingWriter, WavError, WavInfo};

/// Where `cxb api` is and the fleet token the engine presents to it.
#[derive(Clone)]
pub struct ApiTarget {
    /// `http://host:port`, without a trailing `/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`.
    pub fleet_token: String,
}

impl fmt::Debug for ApiTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiTarget").field("base_url", &self.base_url).field("fleet_token", &"<redacted>").finish()
    }
}

/// An S3-compatible bucket for recordings.
#[derive(Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// For S3-compatible stores (MinIO, R2, …): `https://host[:port]`; `None` for AWS.
    pub endpoint: Option<String>,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// Allow a plain `http://` endpoint (a store on the same host or network).
    pub allow_http: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Where recordings go. Keys are `recordings/{org or bot id}/{call_id}.wav`.
#[derive(Debug, Clone)]
pub enum RecordingStore {
    /// A folder on this host: keys are paths below `root` (so recordings land in
    /// `root/recordings/…`); locations are `file://` URLs.
    Local {
        /// The folder that holds `recordings/`.
        root: PathBuf,
    },
    /// An S3-compatible bucket; locations are `s3://bucket/key`.
    S3(S3Config),
}

/// How long to wait before trying a failed delivery again: `initial`, doubling up to `max`,
/// each wait jittered into its upper half (between d/2 and d).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

/// How to run the outbox.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The outbox directory (created if missing; one outbox at a time may use it).
    pub dir: PathBuf,
    /// `None`: results are only kept on disk (and the outbox says so when it starts).
    pub api: Option<ApiTarget>,
    /// Where recordings are uploaded.
    pub recordings: RecordingStore,
    /// Waits between failed deliveries.
    pub retry: RetryPolicy,
    /// The longest one upload or one API request may take before it counts as failed.
    pub request_timeout: Duration,
}

impl OutboxConfig {
    /// The defaults for a data directory: the outbox in `data_dir/outbox`, recordings in
    /// `data_dir/recordings`, no API.
    pub fn new(data_dir: &Path) -> OutboxConfig {
        OutboxConfig {
            dir: data_dir.join("outbox"),
            api: None,
            recordings: RecordingStore::Local { root: data_dir.to_path_buf() },
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What went wrong with the outbox or a submission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The result is not a JSON object with a `call_id`.
    #[error("not a call result: {0}")]
    InvalidResult(&'static str),
    /// The recording is not a 16-bit PCM WAV file.
    #[error("the recording is not a 16-bit PCM WAV file: {0}")]
    InvalidRecording(WavError),
    /// Writing to (or opening) the outbox directory failed.
    #[error("outbox directory: {0}")]
    Io(String),
    /// The configuration cannot work (a store that cannot be built, a directory in use).
    #[error("outbox configuration: {0}")]
    Config(String),
    /// The outbox has been stopped; nothing was written.
    #[error("the outbox has stopped")]
    Stopped,
}

impl OutboxError {
    fn io(what: &str, e: std::io::Error) -> OutboxError {
        OutboxError::Io(format!("{what}: {e}"))
    }
}

/// Counters since this outbox started (`pending` counts what is on disk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Results the API accepted (201, or 200 for one it already had).
    pub delivered: u64,
    /// Of `delivered`, those the API already had (a redelivery after a crash).
    pub duplicates: u64,
    /// Failed attempts that will be tried again.
    pub retries: u64,
    /// Entries moved to `dead/`: rejected by the API (4xx) or unreadable on disk.
    pub dead: u64,
    /// Entries on disk waiting for delivery.
    pub pending: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    dead: AtomicU64,
    pending: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            delivered: self.delivered.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn settled(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where the writer answers a submission.
enum Reply {
    Typed(flume::Sender<Result<(), OutboxError>>),
    /// For the engine's `ResultSink`, whose receipts carry the error as text.
    Text(flume::Sender<Result<(), String>>),
}

impl Reply {
    fn send(self, outcome: Result<(), OutboxError>) {
        // A send error: the submitter stopped waiting; nothing to do then.
        match self {
            Reply::Typed(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Text(tx) => {
                let _ = tx.send(outcome.map_err(|e| e.to_string()));
            }
        }
    }
}

/// A recording as submitted: a WAV file whose header was read, or a writer still to be
/// finished.
enum Recording {
    Wav(Vec<u8>, WavInfo),
    Writer(RecordingWriter),
}

impl Recording {
    /// WAV bytes, checked.
    fn bytes(wav: Option<Vec<u8>>) -> Result<Option<Recording>, OutboxError> {
        wav.map(|wav| WavInfo::parse(&wav).map(|info| Recording::Wav(wav, info)).map_err(OutboxError::InvalidRecording)).transpose()
    }

    fn into_wav(self) -> (Vec<u8>, PendingRecording) {
        let (wav, duration, channels) = match self {
            Recording::Wav(wav, info) => (wav, info.duration(), info.channels),
            Recording::Writer(writer) => {
                let duration = writer.duration();
                (writer.finish(), duration, 2)
            }
        };
        (wav, PendingRecording { duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX), channels })
    }
}

enum Msg {
    Submit { result: Value, recording: Option<Recording>, reply: Reply },
    Stop,
}

/// Submits finished calls. Cheap to clone; every engine worker thread holds one.
#[derive(Clone)]
pub struct OutboxHandle {
    tx: flume::Sender<Msg>,
    counters: Arc<Counters>,
}

impl fmt::Debug for OutboxHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxHandle").field("stats", &self.stats()).finish()
    }
}

impl OutboxHandle {
    /// Hands a finished call to the outbox: `result` shaped like the API's `CallResult`
    /// (without `recording`), `recording` a complete WAV file. The [`Receipt`] completes once
    /// both are written and fsynced; free the call's slot after that.
    ///
    /// Never blocks: the checks here read only the WAV header, the writing happens on the
    /// outbox's writer thread. The queue to that thread is unbounded; what bounds it is the
    /// engine's call slots, each held until its receipt completes.
    pub fn submit(&self, result: Value, recording: Option<Vec<u8>>) -> Receipt {
        let (reply, rx) = flume::bounded(1);
        self.send(result, Recording::bytes(recording), Reply::Typed(reply));
        Receipt(rx)
    }

    /// [`OutboxHandle::submit`] for the engine's `ResultSink` contract: the receiver answers
    /// `Ok(())` once durable, `Err` with the error's text, or disconnects if the outbox stops.
    pub fn submit_plain(&self, result: Value, recording: Option<Vec<u8>>) -> flume::Receiver<Result<(), String>> {
        let (reply, rx) = flume::bounded(1);
        self.send(result, Recording::bytes(recording), Reply::Text(reply));
        rx
    }

    /// [`OutboxHandle::submit`] with the recording still in its writer: the two channels are
    /// interleaved into the WAV file on the outbox's writer thread, so a long recording costs
    /// the engine's worker thread nothing but the move.
    pub fn submit_recording(&self, result: Value, recording: RecordingWriter) -> Receipt {
        let (reply, rx) = flume::bounded(1);
        self.send(result, Ok(Some(Recording::Writer(recording))), Reply::Typed(reply));
        Receipt(rx)
    }

    /// Checks the result's shape and queues the submission for the writer.
    fn send(&self, result: Value, recording: Result<Option<Recording>, OutboxError>, reply: Reply) {
        if let Err(e) = spool::check_result(&result) {
            return reply.send(Err(OutboxError::InvalidResult(e)));
        }
        let recording = match recording {
            Ok(recording) => recording,
            Err(e) => return reply.send(Err(e)),
        };
        // A send error means the writer has stopped; dropping `reply` tells the submitter.
        let _ = self.tx.send(Msg::Submit { result, recording, reply });
    }

    /// The outbox's counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

/// Completes when a submission is on disk (`Ok`) or could not be written (`Err`). Await it
/// (`.await` works on any runtime) or call [`Receipt::wait`] from a thread that may block.
#[derive(Debug)]
pub struct Receipt(flume::Receiver<Result<(), OutboxError>>);

impl Receipt {
    /// Blocks until the submission is on disk or failed.
    pub fn wait(self) -> Result<(), OutboxError> {
        self.0.recv().unwrap_or(Err(OutboxError::Stopped))
    }
}

impl IntoFuture for Receipt {
    type Output = Result<(), OutboxError>;
    type IntoFuture = ReceiptFuture;

    fn into_future(self) -> ReceiptFuture {
        ReceiptFuture(self.0.into_recv_async())
    }
}

/// A [`Receipt`] being awaited.
pub struct ReceiptFuture(flume::r#async::RecvFut<'static, Result<(), OutboxError>>);

impl fmt::Debug for ReceiptFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReceiptFuture")
    }
}

impl Future for ReceiptFuture {
    type Output = Result<(), OutboxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(OutboxError::Stopped)))
    }
}

/// Keeps the outbox running; dropping it stops it: submissions already made are written, a
/// delivery in flight is abandoned (it is tried again at the next start: the API stores a call
/// id once), and both threads are joined.
pub struct OutboxGuard {
    tx: flume::Sender<Msg>,
    stop_sender: Option<flume::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    _lock: std::fs::File,
}

impl fmt::Debug for OutboxGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxGuard").field("threads", &self.threads.len()).finish()
    }
}

impl Drop for OutboxGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        self.stop_sender.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The outbox.
#[derive(Debug)]
pub struct Outbox;

impl Outbox {
    /// Opens the directory (taking an exclusive lock on it), picks up every entry already
    /// there and starts the writer and sender threads.
    pub fn start(config: OutboxConfig) -> Result<(OutboxHandle, OutboxGuard), OutboxError> {
        let spool = Spool::open(&config.dir).map_err(|e| OutboxError::io(&format!("opening {}", config.dir.display()), e))?;
        let lock = std::fs::File::create(config.dir.join(".lock")).map_err(|e| OutboxError::io("creating .lock", e))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => OutboxError::Config(format!("{} is in use by another outbox", config.dir.display())),
            std::fs::TryLockError::Error(e) => OutboxError::io("locking .lock", e),
        })?;
        let queued = spool.scan().map_err(|e| OutboxError::io("reading the directory", e))?;
        let counters = Arc::new(Counters::default());
        counters.pending.store(queued.len() as u64, Ordering::Relaxed);
        let next_seq = queued.last().map_or(1, |last| last + 1);
        let spool = Arc::new(spool);

        let (tx, rx) = flume::unbounded();
        let (written_tx, written_rx) = flume::unbounded();
        let (stop_sender, stop) = flume::bounded(1);
        let mut threads = Vec::new();
        match &config.api {
            Some(api) => {
                let sender = sender::Sender::new(&config, api, spool.clone(), counters.clone())?;
                let thread = std::thread::Builder::new()
                    .name("cxb-outbox-send".into())
                    .spawn(move || sender.run(queued, written_rx, stop))
                    .map_err(|e| OutboxError::io("starting the sender thread", e))?;
                threads.push(thread);
            }
            None => eprintln!(
                "cxb outbox: no API configured; results are kept in {} ({} waiting)",
                config.dir.display(),
                queued.len()
            ),
        }
        let writer = Writer { spool, counters: counters.clone(), next_seq, written: written_tx };
        let thread = std::thread::Builder::new().name("cxb-outbox-write".into()).spawn(move || writer.run(rx));
        match thread {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Stop the sender before reporting.
                drop(stop_sender);
                for t in threads {
                    let _ = t.join();
                }
                return Err(OutboxError::io("starting the writer thread", e));
            }
        }
        let handle = OutboxHandle { tx: tx.clone(), counters };
        Ok((handle, OutboxGuard { tx, stop_sender: Some(stop_sender), threads, _lock: lock }))
    }
}

/// Submissions written per directory fsync, at most.
const BATCH: usize = 64;

/// The writer thread: takes submissions in order, writes them, fsyncs the directory once per
/// batch, answers the receipts and passes the new entries to the sender.
struct Writer {
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    next_seq: u64,
    written: flume::Sender<u64>,
}

impl Writer {
    fn run(mut self, rx: flume::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut stop = false;
            for msg in std::iter::once(first).chain(rx.try_iter().take(BATCH - 1)) {
                match msg {
                    Msg::Submit { result, recording, reply } => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        let (wav, pending) = recording.map(Recording::into_wav).unzip();
                        let entry = Entry::new(seq, result, pending);
                        let wrote = self.spool.write_new(&entry, wav.as_deref());
                        batch.push((seq, wrote.map_err(|e| OutboxError::io("writing an entry", e)), reply));
                    }
                    Msg::Stop => {
                        stop = true;
                        break;
                    }
                }
            }
            let synced = self.spool.sync_dir().map_err(|e| OutboxError::io("syncing the directory", e));
            for (seq, wrote, reply) in batch {
                if wrote.is_ok() {
                    // In place (if not yet surely durable when `synced` failed): deliver it.
                    self.counters.pending.fetch_add(1, Ordering::Relaxed);
                    // No sender (no API, or it stopped): the entry waits on disk.
                    let _ = self.written.send(seq);
                }
                reply.send(wrote.and_then(|()| synced.clone()));
            }
            if stop {
                return;
            }
        }
    }
}
