//! The sender thread: delivers entries in submission order. For each, uploads the recording
//! (once: the entry records the upload), posts the result, and forgets the entry on 2xx,
//! buries it on a 4xx that judges the result (400, 413, 422, …), and tries again after a
//! jittered exponential backoff on anything else: 5xx, connection errors, timeouts, 408, 429,
//! and 401/403/404, which say the engine's token or API address is wrong, not the result, and
//! must not bury every result of a misconfigured engine. An entry that keeps failing while the
//! API takes other results is parked and tried again later, so it holds back nothing;
//! [`crate::queue`] decides what goes when. A tokio current-thread runtime owned by this
//! thread; nothing else runs on it.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::{Path as Key, PathPart};
use object_store::{ClientOptions, ObjectStoreExt, RetryConfig};
use serde_json::{Value, json};

use crate::outbox::Counters;
use crate::queue::{Next, Outcome, Queue, QueuePolicy};
use crate::spool::{Entry, PendingRecording, ReadError, Spool};
use crate::{ApiTarget, OutboxConfig, OutboxError, RecordingStore};

/// Where recordings are put.
enum Store {
    Local(LocalFileSystem),
    S3 { store: AmazonS3, bucket: String },
}

impl Store {
    fn new(config: &RecordingStore, timeout: Duration) -> Result<Store, OutboxError> {
        let invalid = |e: &dyn std::fmt::Display| OutboxError::Config(format!("recording store: {e}"));
        match config {
            RecordingStore::Local { root } => {
                std::fs::create_dir_all(root).map_err(|e| invalid(&e))?;
                // fsync: the spool forgets its copy once the upload returns.
                Ok(Store::Local(LocalFileSystem::new_with_prefix(root).map_err(|e| invalid(&e))?.with_fsync(true)))
            }
            RecordingStore::S3(s3) => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key)
                    // (The client options carry `allow_http`: set on the builder first, it
                    // would be replaced by these.)
                    .with_client_options(ClientOptions::new().with_allow_http(s3.allow_http).with_timeout(timeout).with_connect_timeout(timeout))
                    // The outbox retries with its own backoff; one quick retry inside is enough.
                    .with_retry(RetryConfig { max_retries: 1, retry_timeout: timeout, ..RetryConfig::default() });
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                let store = builder.build().map_err(|e| invalid(&e))?;
                Ok(Store::S3 { store, bucket: s3.bucket.clone() })
            }
        }
    }

    /// Stores `bytes` at `key`; returns the recording's location.
    async fn put(&self, key: &Key, bytes: Vec<u8>) -> Result<String, String> {
        let failed = |e: object_store::Error| format!("uploading {key}: {e}");
        match self {
            Store::Local(store) => {
                store.put(key, bytes.into()).await.map_err(failed)?;
                let path = store.path_to_filesystem(key).map_err(failed)?;
                let url = reqwest::Url::from_file_path(&path).map_err(|()| format!("{} is not an absolute path", path.display()))?;
                Ok(url.to_string())
            }
            Store::S3 { store, bucket } => {
                store.put(key, bytes.into()).await.map_err(failed)?;
                Ok(format!("s3://{bucket}/{key}"))
            }
        }
    }
}

/// Everything the sender thread owns.
pub(crate) struct Sender {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
    health_url: String,
    token: String,
    store: Store,
    timeout: Duration,
    policy: QueuePolicy,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    /// The body of the last result the API took, and when: posted again, it is the probe (the
    /// API stores a call id once and answers 200).
    last_delivered: RefCell<Option<(tokio::time::Instant, Vec<u8>)>>,
}

impl Sender {
    pub(crate) fn new(config: &OutboxConfig, api: &ApiTarget, spool: Arc<Spool>, counters: Arc<Counters>) -> Result<Sender, OutboxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OutboxError::io("starting the sender runtime", e))?;
        // reqwest is built without a bundled TLS provider, as in the control plane.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .user_agent(concat!("cxb-outbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OutboxError::Config(format!("HTTP client: {e}")))?;
        let store = Store::new(&config.recordings, config.request_timeout)?;
        let base = api.base_url.trim_end_matches('/');
        Ok(Sender {
            runtime,
            client,
            url: format!("{base}{}", config.endpoint),
            health_url: format!("{base}/health"),
            token: api.fleet_token.clone(),
            store,
            timeout: config.request_timeout,
            policy: QueuePolicy { park_after: config.park_after.max(1), retry: config.retry, park: config.park_retry },
            spool,
            counters,
            last_delivered: RefCell::new(None),
        })
    }

    /// Delivers `queued`, then whatever the writer passes on, until `stop` is dropped.
    pub(crate) fn run(self, queued: Vec<u64>, parked: Vec<u64>, written: flume::Receiver<u64>, stop: flume::Receiver<()>) {
        self.runtime.block_on(async {
            tokio::select! {
                () = self.deliver_all(queued, parked, written) => {}
                _ = stop.recv_async() => {}
            }
        });
    }

    async fn deliver_all(&self, queued: Vec<u64>, parked: Vec<u64>, written: flume::Receiver<u64>) {
        let epoch = tokio::time::Instant::now();
        let mut queue = Queue::new(self.policy, queued, &parked);
        self.counters.parked.store(queue.parked() as u64, Ordering::Relaxed);
        let mut writer_open = true;
        let mut failures = 0u64;
        loop {
            while writer_open {
                match written.try_recv() {
                    Ok(seq) => queue.push(seq),
                    Err(flume::TryRecvError::Empty) => break,
                    Err(flume::TryRecvError::Disconnected) => writer_open = false,
                }
            }
            match queue.next(epoch.elapsed()) {
                Next::Attempt(seq) => {
                    let outcome = match self.deliver(seq).await {
                        Ok(()) => {
                            if failures > 0 {
                                tracing::info!("delivering again after {failures} failed attempts");
                            }
                            failures = 0;
                            Outcome::Settled
                        }
                        Err(e) => {
                            Counters::bump(&self.counters.retries);
                            if failures == 0 {
                                tracing::warn!("{e}; retrying with backoff");
                            }
                            failures += 1;
                            Outcome::Failed
                        }
                    };
                    if queue.attempted(seq, epoch.elapsed(), outcome) {
                        // Remembered on disk: after a restart it starts parked, holding nothing.
                        if let Err(e) = self.spool.mark_parked(seq) {
                            tracing::warn!("marking entry {seq} parked: {e}");
                        }
                        Counters::bump(&self.counters.parks);
                        tracing::warn!(
                            "entry {seq} keeps failing while the API takes results; parked, tried again in {} s",
                            self.policy.park.initial.as_secs()
                        );
                    }
                    self.counters.parked.store(queue.parked() as u64, Ordering::Relaxed);
                }
                Next::Probe => {
                    let up = self.probe().await;
                    queue.probed(epoch.elapsed(), up);
                }
                Next::Wait(at) => {
                    let sleep = tokio::time::sleep_until(epoch + at);
                    if writer_open {
                        tokio::select! {
                            () = sleep => {}
                            next = written.recv_async() => match next {
                                Ok(seq) => queue.push(seq),
                                Err(_) => writer_open = false,
                            },
                        }
                    } else {
                        sleep.await;
                    }
                }
                Next::Idle => match written.recv_async().await {
                    Ok(seq) => queue.push(seq),
                    // The writer has stopped and everything is delivered.
                    Err(_) => return,
                },
            }
        }
    }

    /// Whether the API takes results now, asked without changing anything: the last result
    /// it took (in the past ten minutes), posted again (it answers 200, a duplicate), or `GET
    /// /health` (which checks its database) when there is none or the API now judges that one
    /// (say its bot was deleted).
    async fn probe(&self) -> bool {
        // Only a recent one: a result stored long ago may have been removed since, and posting
        // it again would store it anew.
        let last = self.last_delivered.borrow().as_ref().filter(|(at, _)| at.elapsed() < PROBE_WITH_RESULT_FOR).map(|(_, body)| body.clone());
        if let Some(body) = last {
            let sent = self
                .client
                .post(&self.url)
                .bearer_auth(&self.token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            match sent.map(|r| r.status()) {
                Ok(status) if status.is_success() => return true,
                Ok(status) if judges_result(status) => *self.last_delivered.borrow_mut() = None,
                _ => return false,
            }
        }
        matches!(self.client.get(&self.health_url).send().await, Ok(r) if r.status().is_success())
    }

    /// `Ok`: the entry is settled (delivered, buried, or already gone). `Err`: try again.
    async fn deliver(&self, seq: u64) -> Result<(), String> {
        let mut entry = match self.spool.read(seq) {
            Ok(entry) => entry,
            Err(ReadError::Missing) => {
                self.counters.settled();
                return Ok(());
            }
            Err(ReadError::Corrupt(why)) => return self.bury(seq, json!({ "error": why })),
            Err(ReadError::Io(e)) => return Err(format!("reading entry {seq}: {e}")),
        };
        if let Some(recording) = entry.recording {
            self.upload(&mut entry, recording).await?;
        }
        let body = serde_json::to_vec(&entry.result).map_err(|e| format!("encoding entry {seq}: {e}"))?;
        if let Some(url) = &entry.deliver_to {
            return self.deliver_record(seq, url, body).await;
        }
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| format!("posting a result to {}: {e}", self.url))?;
        let status = response.status();
        let answer = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            let duplicate = serde_json::from_slice::<Value>(&answer).ok().and_then(|v| v.get("duplicate")?.as_bool()) == Some(true);
            *self.last_delivered.borrow_mut() = Some((tokio::time::Instant::now(), body));
            self.spool.remove(seq).map_err(|e| format!("removing delivered entry {seq}: {e}"))?;
            Counters::bump(&self.counters.delivered);
            if duplicate {
                Counters::bump(&self.counters.duplicates);
            }
            self.counters.settled();
            Ok(())
        } else if judges_result(status) {
            let answer = serde_json::from_slice::<Value>(&answer)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(answer.get(..4096).unwrap_or(&answer)).into_owned()));
            self.bury(seq, json!({ "error": format!("the API rejected the result: {status}"), "status": status.as_u16(), "answer": answer }))
        } else {
            Err(format!("the API answered {status}"))
        }
    }

    /// Posts record `seq` to its URL (no fleet token: the URL carries its own credential). A
    /// 409 means the receiver has it already.
    async fn deliver_record(&self, seq: u64, url: &str, body: Vec<u8>) -> Result<(), String> {
        // The URL's query holds its credential: errors name the host only.
        let host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("posting a record to {host}: {}", e.without_url()))?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::CONFLICT {
            self.spool.remove(seq).map_err(|e| format!("removing delivered entry {seq}: {e}"))?;
            Counters::bump(&self.counters.delivered);
            self.counters.settled();
            Ok(())
        } else if judges_result(status) {
            self.bury(seq, json!({ "error": format!("{host} rejected the record: {status}"), "status": status.as_u16() }))
        } else {
            Err(format!("{host} answered {status}"))
        }
    }

    /// Uploads the recording and records where it went, in the entry on disk, so a later
    /// attempt does not upload it again.
    async fn upload(&self, entry: &mut Entry, recording: PendingRecording) -> Result<(), String> {
        let seq = entry.seq;
        let wav = self.spool.read_wav(seq).map_err(|e| format!("reading the recording of entry {seq}: {e}"))?;
        match (wav, entry.result.as_object_mut()) {
            (Some(wav), Some(result)) => {
                let key = recording_key(result);
                let location = tokio::time::timeout(self.timeout, self.store.put(&key, wav))
                    .await
                    .map_err(|_| format!("uploading {key}: timed out"))??;
                result.insert(
                    "recording".into(),
                    json!({ "location": location, "duration_ms": recording.duration_ms, "channels": recording.channels }),
                );
            }
            _ => tracing::warn!("the recording of entry {seq} is missing; delivering the result without it"),
        }
        entry.recording = None;
        self.spool.rewrite(entry).map_err(|e| format!("updating entry {seq}: {e}"))?;
        self.spool.remove_wav(seq).map_err(|e| format!("removing the recording of entry {seq}: {e}"))
    }

    fn bury(&self, seq: u64, error: Value) -> Result<(), String> {
        self.spool.bury(seq, &error).map_err(|e| format!("moving entry {seq} to dead/: {e}"))?;
        tracing::warn!("entry {seq} moved to dead/: {error}");
        Counters::bump(&self.counters.dead);
        self.counters.settled();
        Ok(())
    }
}

/// `recordings/{org_id or bot_id}/{call_id}.wav`; odd characters are escaped by
/// [`PathPart`], so an id cannot climb out of its folder.
fn recording_key(result: &serde_json::Map<String, Value>) -> Key {
    let text = |field: &str| result.get(field).and_then(Value::as_str).filter(|s| !s.is_empty());
    let owner = text("org_id").or_else(|| text("bot_id")).unwrap_or("unknown");
    let call = format!("{}.wav", text("call_id").unwrap_or("unknown"));
    Key::from_iter([PathPart::from("recordings"), PathPart::from(owner), PathPart::from(call.as_str())])
}

/// How long after its delivery a result serves as the probe.
const PROBE_WITH_RESULT_FOR: Duration = Duration::from_secs(600);

/// A 4xx that judges the result (400, 413, 422, …), not the engine's token or address
/// (401, 403, 404) or the moment (408, 429).
fn judges_result(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 404 | 408 | 429)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_in_their_folder() {
        let result = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(recording_key(&result(json!({"call_id": "c-1", "org_id": "org_1", "bot_id": "bot_1"}))).as_ref(), "recordings/org_1/c-1.wav");
        assert_eq!(recording_key(&result(json!({"call_id": "c-1", "bot_id": "bot_1"}))).as_ref(), "recordings/bot_1/c-1.wav");
        let odd = recording_key(&result(json!({"call_id": "../../etc/x", "org_id": ".."})));
        assert_eq!(odd.parts().count(), 3);
        assert!(!odd.as_ref().contains("/../"), "{odd}");
    }
}
