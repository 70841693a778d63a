//! The outbox's handle, configuration and writer thread; the sender is in `sender`.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::future::{Future, IntoFuture};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sender;
use crate::spool::{self, Entry, PendingRecording, Spool};
use cxb_codecs::wav::{FRAME_BYTES, HEADER_LEN, RecordingSink, RecordingSummary, RecordingWriter, WavError, WavInfo};

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
    /// The API path entries are posted to: `/v1/runtime/results`, or `/v1/runtime/handoffs`
    /// for the engine's second outbox, the Agent Desk's.
    pub endpoint: String,
    /// Where recordings are uploaded.
    pub recordings: RecordingStore,
    /// Waits between failed deliveries.
    pub retry: RetryPolicy,
    /// The longest one upload or one API request may take before it counts as failed.
    pub request_timeout: Duration,
    /// Failed attempts in a row after which an entry is parked, if the API then shows that it
    /// takes results (see [`Stats::parked`]); at least 1.
    pub park_after: u32,
    /// Waits between attempts of a parked entry.
    pub park_retry: RetryPolicy,
    /// The disk-usage cap: bytes of every file in the directory (entries, recordings, partial
    /// recordings, `dead/`). At or over it the outbox is not [`writable`](OutboxHandle::writable)
    /// (the engine takes no new AI calls) but still writes what it is given: results of calls
    /// already running, and their recordings up to an eighth over the cap (audio beyond that
    /// is dropped and reads back as silence).
    pub max_bytes: u64,
    /// After a write failed (a full disk), how often the outbox tries a small write to see
    /// whether it can write again.
    pub write_probe: Duration,
}

impl OutboxConfig {
    /// The defaults for a data directory: the outbox in `data_dir/outbox`, recordings in
    /// `data_dir/recordings`, no API.
    pub fn new(data_dir: &Path) -> OutboxConfig {
        OutboxConfig {
            dir: data_dir.join("outbox"),
            api: None,
            endpoint: "/v1/runtime/results".into(),
            recordings: RecordingStore::Local { root: data_dir.to_path_buf() },
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            park_after: 5,
            park_retry: RetryPolicy { initial: Duration::from_secs(120), max: Duration::from_secs(1800) },
            max_bytes: 1 << 30,
            write_probe: Duration::from_secs(5),
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
    pub(crate) fn io(what: &str, e: std::io::Error) -> OutboxError {
        OutboxError::Io(format!("{what}: {e}"))
    }
}

/// Counters since this outbox started (`pending`, `parked` and `bytes_used` count what is on
/// disk).
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
    /// Entries on disk waiting for delivery (parked ones included).
    pub pending: u64,
    /// Of `pending`, entries parked: they kept failing while the API took other results, so
    /// they are tried again on their own slower schedule and hold back nothing.
    pub parked: u64,
    /// Times an entry was parked.
    pub parks: u64,
    /// Bytes of the files in the outbox directory (see [`OutboxConfig::max_bytes`]).
    pub bytes_used: u64,
    /// Whether the outbox can take new calls: under its cap, and its last write did not fail.
    pub writable: bool,
    /// Writes that failed (entries, recordings); an entry that failed was reported to its
    /// submitter.
    pub write_errors: u64,
    /// Recording audio not written (bytes): over the cap's margin, or after its file failed.
    pub recording_bytes_dropped: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) parks: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) recording_bytes_dropped: AtomicU64,
    /// The last write failed (and no write or probe has succeeded since).
    pub(crate) write_failed: AtomicBool,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            delivered: self.delivered.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            parks: self.parks.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            recording_bytes_dropped: self.recording_bytes_dropped.load(Ordering::Relaxed),
            bytes_used: 0,
            writable: false,
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn settled(&self) {
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

/// A recording as submitted: a WAV file whose header was read, a writer still to be
/// finished, or a stream already on disk (in `tmp/`).
enum Recording {
    Wav(Vec<u8>, WavInfo),
    Writer(RecordingWriter),
    Stream { id: u64, summary: RecordingSummary },
}

impl Recording {
    /// WAV bytes, checked.
    fn bytes(wav: Option<Vec<u8>>) -> Result<Option<Recording>, OutboxError> {
        wav.map(|wav| WavInfo::parse(&wav).map(|info| Recording::Wav(wav, info)).map_err(OutboxError::InvalidRecording)).transpose()
    }
}

fn pending(duration: Duration, channels: u16) -> PendingRecording {
    PendingRecording { duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX), channels }
}

enum Msg {
    Submit { result: Value, recording: Option<Recording>, reply: Reply },
    /// A record for `url` (see [`OutboxHandle::submit_record`]).
    Record { url: String, body: Value, reply: Reply },
    /// A recording stream begins; its buffers go back through `back` once written.
    Open { id: u64, back: flume::Sender<Vec<u8>> },
    /// Frames of a recording stream, the first at frame `frame`.
    Chunk { id: u64, frame: u64, data: Vec<u8> },
    /// A recording stream ended without a submission (its call failed to start, or panicked).
    Abandon { id: u64 },
    Stop,
}

/// Submits finished calls. Cheap to clone; every engine worker thread holds one.
#[derive(Clone)]
pub struct OutboxHandle {
    tx: flume::Sender<Msg>,
    counters: Arc<Counters>,
    spool: Arc<Spool>,
    max_bytes: u64,
    next_stream: Arc<AtomicU64>,
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

    /// A recording that streams to a file in the outbox directory (`tmp/`) as the call goes:
    /// give it to a [`RecordingWriter::with_sink`], and the writer to
    /// [`OutboxHandle::submit_stream`] at the end. Dropped without a submission, its file is
    /// removed; a crash leaves at most that file, which the next start removes.
    ///
    /// Its chunks go to the outbox's writer thread through a channel and their buffers come
    /// back for reuse: at most [`RecordingStream::MAX_BUFFERS`] per recording (8 chunks of
    /// [`CHUNK`](cxb_codecs::wav::CHUNK), 4 s of audio), after which the writer is behind and audio
    /// is dropped (it reads back as silence) rather than held. Never blocks.
    pub fn recording_stream(&self) -> RecordingStream {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (back, spares) = flume::bounded(RecordingStream::MAX_BUFFERS);
        let _ = self.tx.send(Msg::Open { id, back });
        RecordingStream { id, tx: self.tx.clone(), spares, buffers: 0, largest: 0, open: true }
    }

    /// [`OutboxHandle::submit`] with a recording streamed to disk: the writer is closed (what
    /// it still holds is written), then the outbox's writer thread completes the file (header,
    /// length, fsync) and moves it beside the entry. If the recording could not be written,
    /// the result is kept without it.
    pub fn submit_stream(&self, result: Value, recording: RecordingWriter<RecordingStream>) -> Receipt {
        let (stream, summary) = recording.close();
        let (reply, rx) = flume::bounded(1);
        self.send_stream(result, stream, summary, Reply::Typed(reply));
        Receipt(rx)
    }

    /// [`OutboxHandle::submit_stream`] for the engine's `ResultSink`, which closes the writer
    /// itself: errors as text, as [`OutboxHandle::submit_plain`].
    pub fn submit_stream_plain(&self, result: Value, stream: RecordingStream, summary: RecordingSummary) -> flume::Receiver<Result<(), String>> {
        let (reply, rx) = flume::bounded(1);
        self.send_stream(result, stream, summary, Reply::Text(reply));
        rx
    }

    /// Queues a streamed recording's submission; refused, the stream is dropped as it is,
    /// which abandons its file.
    fn send_stream(&self, result: Value, mut stream: RecordingStream, summary: RecordingSummary, reply: Reply) {
        if !stream.tx.same_channel(&self.tx) {
            return reply.send(Err(OutboxError::Config("the recording stream is another outbox's".into())));
        }
        if let Err(e) = spool::check_result(&result) {
            return reply.send(Err(OutboxError::InvalidResult(e)));
        }
        stream.open = false;
        self.send(result, Ok(Some(Recording::Stream { id: stream.id, summary })), reply);
    }

    /// Hands the outbox a record for another address of the platform's: `body` is posted to
    /// `url` (`http` or `https`, whatever credential it needs in it; never the fleet token)
    /// until it answers 2xx or 409, in order with the results, surviving restarts and outages
    /// as they do. A 4xx that judges the record moves it to `dead/`. The receiver answers as
    /// [`OutboxHandle::submit_plain`]'s does.
    pub fn submit_record(&self, url: String, body: Value) -> flume::Receiver<Result<(), String>> {
        let (reply, rx) = flume::bounded(1);
        match spool::check_record(&url, &body) {
            Err(e) => Reply::Text(reply).send(Err(OutboxError::InvalidResult(e))),
            Ok(()) => {
                let _ = self.tx.send(Msg::Record { url, body, reply: Reply::Text(reply) });
            }
        }
        rx
    }

    /// Whether the outbox can take new calls: it is under its disk-usage cap and its last
    /// write did not fail. When it is not, the engine refuses new AI calls; what is submitted
    /// is still written if at all possible.
    pub fn writable(&self) -> bool {
        !self.counters.write_failed.load(Ordering::Relaxed) && self.spool.used() < self.max_bytes
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
        Stats { bytes_used: self.spool.used(), writable: self.writable(), ..self.counters.snapshot() }
    }
}

/// A recording streaming to a file in the outbox directory, as a [`RecordingSink`]; made by
/// [`OutboxHandle::recording_stream`].
#[derive(Debug)]
pub struct RecordingStream {
    id: u64,
    tx: flume::Sender<Msg>,
    /// Buffers the writer thread has written and handed back.
    spares: flume::Receiver<Vec<u8>>,
    /// Buffers made for this recording so far (spare or in flight).
    buffers: usize,
    largest: usize,
    /// Not submitted yet: dropping it abandons the file.
    open: bool,
}

impl RecordingStream {
    /// Buffers one recording may have in flight to the writer thread.
    pub const MAX_BUFFERS: usize = 8;

    /// Chunks handed to the writer thread and not yet handed back.
    pub fn in_flight(&self) -> usize {
        self.buffers.saturating_sub(self.spares.len())
    }
}

impl RecordingSink for RecordingStream {
    fn write(&mut self, frame: u64, data: Vec<u8>) {
        self.largest = self.largest.max(data.capacity());
        // A send error: the outbox has stopped; the chunk is dropped with the buffer.
        let _ = self.tx.send(Msg::Chunk { id: self.id, frame, data });
    }

    fn spare(&mut self) -> Option<Vec<u8>> {
        if let Ok(buffer) = self.spares.try_recv() {
            return Some(buffer);
        }
        (self.buffers < RecordingStream::MAX_BUFFERS).then(|| {
            self.buffers += 1;
            Vec::new()
        })
    }

    fn held_bytes(&self) -> usize {
        self.buffers * self.largest
    }
}

impl Drop for RecordingStream {
    fn drop(&mut self) {
        if self.open {
            let _ = self.tx.send(Msg::Abandon { id: self.id });
        }
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
        let used = spool.used();
        if used >= config.max_bytes {
            tracing::warn!(
                "{} holds {used} bytes, at or over its cap of {}: no new AI calls until deliveries free space",
                config.dir.display(),
                config.max_bytes
            );
        }
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
                let parked = spool.parked(&queued).map_err(|e| OutboxError::io("reading the parked entries", e))?;
                let thread = std::thread::Builder::new()
                    .name("cxb-outbox-send".into())
                    .spawn(move || sender.run(queued, parked, written_rx, stop))
                    .map_err(|e| OutboxError::io("starting the sender thread", e))?;
                threads.push(thread);
            }
            None => tracing::info!(
                "no API configured; results are kept in {} ({} waiting)",
                config.dir.display(),
                queued.len()
            ),
        }
        let writer = Writer {
            spool: spool.clone(),
            counters: counters.clone(),
            next_seq,
            written: written_tx,
            streams: HashMap::new(),
            hard_limit: config.max_bytes.saturating_add(config.max_bytes / 8),
            write_probe: config.write_probe,
        };
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
        let handle = OutboxHandle { tx: tx.clone(), counters, spool, max_bytes: config.max_bytes, next_stream: Arc::new(AtomicU64::new(1)) };
        Ok((handle, OutboxGuard { tx, stop_sender: Some(stop_sender), threads, _lock: lock }))
    }
}

/// Submissions written per directory fsync, at most.
const BATCH: usize = 64;

/// Messages handled between two directory fsyncs, at most (recording chunks are many).
const BATCH_MESSAGES: usize = 1024;

/// The writer thread: takes submissions in order, writes them, fsyncs the directory once per
/// batch, answers the receipts and passes the new entries to the sender. Writes recording
/// streams' chunks into their files as they come.
struct Writer {
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    next_seq: u64,
    written: flume::Sender<u64>,
    streams: HashMap<u64, Partial>,
    /// Recording audio is not written at or beyond this many bytes in the directory.
    hard_limit: u64,
    write_probe: Duration,
}

impl Writer {
    fn run(mut self, rx: flume::Receiver<Msg>) {
        let mut probed = Instant::now();
        loop {
            let failed = self.counters.write_failed.load(Ordering::Relaxed);
            let first = if failed {
                match rx.recv_timeout(self.write_probe) {
                    Ok(msg) => Some(msg),
                    Err(flume::RecvTimeoutError::Timeout) => None,
                    Err(flume::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => return,
                }
            };
            if failed && probed.elapsed() >= self.write_probe {
                probed = Instant::now();
                if self.spool.probe().is_ok() {
                    tracing::info!("the directory takes writes again");
                    self.counters.write_failed.store(false, Ordering::Relaxed);
                }
            }
            let Some(first) = first else { continue };
            if self.batch(first, &rx) {
                return;
            }
        }
    }

    /// Handles `first` and what else is queued (up to a batch); whether to stop.
    fn batch(&mut self, first: Msg, rx: &flume::Receiver<Msg>) -> bool {
        let mut batch = Vec::new();
        let mut stop = false;
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Submit { result, recording, reply } => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let wrote = self.write_entry(seq, result, recording);
                    if let Err(e) = &wrote {
                        failed(&self.counters, e);
                    }
                    batch.push((seq, wrote.map_err(|e| OutboxError::io("writing an entry", e)), reply));
                }
                Msg::Record { url, body, reply } => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let wrote = self.spool.write_new(&Entry::record(seq, url, body), None);
                    if let Err(e) = &wrote {
                        failed(&self.counters, e);
                    }
                    batch.push((seq, wrote.map_err(|e| OutboxError::io("writing an entry", e)), reply));
                }
                Msg::Open { id, back } => {
                    self.streams.insert(id, Partial { path: self.spool.partial(id), created: false, len: 0, back, error: None });
                }
                Msg::Chunk { id, frame, data } => self.chunk(id, frame, data),
                Msg::Abandon { id } => {
                    if let Some(partial) = self.streams.remove(&id) {
                        let _ = self.spool.remove_file(&partial.path);
                    }
                }
                Msg::Stop => {
                    stop = true;
                    break;
                }
            }
            handled += 1;
            if batch.len() < BATCH && handled < BATCH_MESSAGES {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let synced = self.spool.sync_dir().map_err(|e| OutboxError::io("syncing the directory", e));
            if batch.iter().any(|(_, wrote, _)| wrote.is_ok()) && synced.is_ok() {
                // The disk takes writes: whatever failed before is over.
                self.counters.write_failed.store(false, Ordering::Relaxed);
            }
            for (seq, wrote, reply) in batch {
                if wrote.is_ok() {
                    // In place (if not yet surely durable when `synced` failed): deliver it.
                    self.counters.pending.fetch_add(1, Ordering::Relaxed);
                    // No sender (no API, or it stopped): the entry waits on disk.
                    let _ = self.written.send(seq);
                }
                reply.send(wrote.and_then(|()| synced.clone()));
            }
        }
        stop
    }

    /// Writes entry `seq` and its recording. A streamed recording that cannot be completed
    /// is left out: the result is kept without it.
    fn write_entry(&mut self, seq: u64, result: Value, recording: Option<Recording>) -> std::io::Result<()> {
        match recording {
            None => self.spool.write_new(&Entry::new(seq, result, None), None),
            Some(Recording::Wav(wav, info)) => {
                let entry = Entry::new(seq, result, Some(pending(info.duration(), info.channels)));
                self.spool.write_new(&entry, Some(&wav))
            }
            Some(Recording::Writer(writer)) => {
                let duration = writer.duration();
                let entry = Entry::new(seq, result, Some(pending(duration, 2)));
                self.spool.write_new(&entry, Some(&writer.finish()))
            }
            Some(Recording::Stream { id, summary }) => match self.complete(id, &summary) {
                Ok(path) => {
                    let entry = Entry::new(seq, result, Some(pending(summary.duration(), 2)));
                    let wrote = self.spool.write_streamed(&entry, &path);
                    if wrote.is_err() {
                        let _ = self.spool.remove_file(&path);
                    }
                    wrote
                }
                Err(why) => {
                    let call = spool::check_result(&result).unwrap_or_default().to_string();
                    tracing::warn!(call = %call, "the recording is lost ({why}); keeping the result without it");
                    self.spool.write_new(&Entry::new(seq, result, None), None)
                }
            },
        }
    }

    /// Completes stream `id`'s file: header, length, fsync. Returns where it is.
    fn complete(&mut self, id: u64, summary: &RecordingSummary) -> Result<PathBuf, String> {
        let Some(mut partial) = self.streams.remove(&id) else {
            return Err("no such recording stream".into());
        };
        let done = match partial.error.take() {
            Some(why) => Err(why),
            None => partial.complete(summary, &self.spool).map_err(|e| {
                failed(&self.counters, &e);
                format!("completing it: {e}")
            }),
        };
        if done.is_err() {
            let _ = self.spool.remove_file(&partial.path);
        }
        done.map(|()| partial.path)
    }

    /// Writes a chunk of stream `id` and hands its buffer back.
    fn chunk(&mut self, id: u64, frame: u64, mut data: Vec<u8>) {
        let Some(partial) = self.streams.get_mut(&id) else { return };
        if partial.error.is_some() || self.spool.used() >= self.hard_limit {
            self.counters.recording_bytes_dropped.fetch_add(data.len() as u64, Ordering::Relaxed);
        } else if let Err(e) = partial.write(frame, &data, &self.spool) {
            partial.error = Some(format!("writing {}: {e}", partial.path.display()));
            self.counters.recording_bytes_dropped.fetch_add(data.len() as u64, Ordering::Relaxed);
            failed(&self.counters, &e);
        }
        data.clear();
        // The stream has room for every buffer it made; it may be gone (its call ended).
        let _ = partial.back.try_send(data);
    }

}

/// A write failed: counted, and the outbox is not writable until a write succeeds again.
fn failed(counters: &Counters, e: &std::io::Error) {
    Counters::bump(&counters.write_errors);
    if !counters.write_failed.swap(true, Ordering::Relaxed) {
        tracing::error!("a write failed ({e}); taking no new calls until the directory takes writes again");
    }
}

/// A recording stream's file on the writer thread. Opened for each write rather than held, so
/// a call's recording costs no file descriptor between its chunks (a chunk is half a second).
struct Partial {
    path: PathBuf,
    /// Whether the file exists yet (it is made by the first chunk).
    created: bool,
    /// The file's length.
    len: u64,
    back: flume::Sender<Vec<u8>>,
    /// Why the file cannot be completed.
    error: Option<String>,
}

impl Partial {
    fn open(&mut self, spool: &Spool) -> std::io::Result<File> {
        if self.created {
            return File::options().write(true).open(&self.path);
        }
        let file = File::options().write(true).create(true).truncate(true).open(&self.path)?;
        // Room for the header, written when the length is known.
        file.write_all_at(&[0; HEADER_LEN], 0)?;
        self.created = true;
        self.grow(HEADER_LEN as u64, spool);
        Ok(file)
    }

    fn write(&mut self, frame: u64, data: &[u8], spool: &Spool) -> std::io::Result<()> {
        let at = frame.saturating_mul(FRAME_BYTES as u64).saturating_add(HEADER_LEN as u64);
        self.open(spool)?.write_all_at(data, at)?;
        self.grow(at + data.len() as u64, spool);
        Ok(())
    }

    /// The header, the length (frames never written read as silence), fsync.
    fn complete(&mut self, summary: &RecordingSummary, spool: &Spool) -> std::io::Result<()> {
        let len = summary.file_len();
        let file = self.open(spool)?;
        file.write_all_at(&summary.header(), 0)?;
        file.set_len(len)?;
        file.sync_all()?;
        let before = self.len;
        self.len = len;
        spool.count(i64::try_from(len).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX));
        Ok(())
    }

    fn grow(&mut self, end: u64, spool: &Spool) {
        if end > self.len {
            spool.count(i64::try_from(end - self.len).unwrap_or(i64::MAX));
            self.len = end;
        }
    }
}
