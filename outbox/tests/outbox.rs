//! The outbox against a real `cxb api` on SQLite: outages, restarts of both sides, recordings,
//! rejected results and damaged files.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::time::Duration;

use common::{Api, config, files, outbox_dir, result, until};
use cxb_codecs::SampleRate;
use cxb_codecs::wav::{Channel, RecordingWriter, WavError};
use cxb_outbox::{ApiTarget, Outbox, OutboxError, RecordingStore, S3Config};
use serde_json::{Value, json};

/// The headline: results submitted while the API is down, across a restart of the outbox,
/// all arrive once the API is back, each exactly once, in submission order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_and_an_outbox_restart_lose_nothing_and_duplicate_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut api = Api::start(&data.path().join("api")).await;
    api.stop().await;
    let config = config(data.path(), Some(api.target()));
    let ids: Vec<String> = (0..20).map(|i| format!("call-{i:02}")).collect();

    let (outbox, guard) = Outbox::start(config.clone()).unwrap();
    for id in &ids[..10] {
        outbox.submit(result(id, &api.bot_id), None).await.unwrap();
    }
    let s = until("failed deliveries", || outbox.stats(), |s| s.retries >= 3).await;
    assert_eq!((s.pending, s.delivered, s.dead), (10, 0, 0));
    assert_eq!(files(&outbox_dir(data.path()), ".json").len(), 10);

    // Stop the outbox: nothing is written any more, everything stays on disk.
    drop(guard);
    assert_eq!(outbox.submit(result("late", &api.bot_id), None).await, Err(OutboxError::Stopped));
    assert_eq!(files(&outbox_dir(data.path()), ".json").len(), 10);

    let (outbox, guard) = Outbox::start(config).unwrap();
    assert_eq!(outbox.stats().pending, 10, "picked up from disk");
    for id in &ids[10..] {
        // As the engine submits, through its `ResultSink`.
        outbox.submit_plain(result(id, &api.bot_id), None).recv_async().await.unwrap().unwrap();
    }
    assert_eq!(files(&outbox_dir(data.path()), ".json").len(), 20);

    api.restart().await;
    let s = until("every result delivered", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.duplicates, s.dead), (20, 0, 0), "{s:?}");
    assert!(s.retries >= 1);
    assert!(files(&outbox_dir(data.path()), ".json").is_empty());

    let stored = api.call_ids().await;
    assert_eq!(stored.len(), 20, "{stored:?}");
    assert_eq!(stored.iter().collect::<BTreeSet<_>>(), ids.iter().collect::<BTreeSet<_>>());
    assert_eq!(api.stored_order().await, ids, "delivered in submission order");
    let call = api.get("/v1/calls/call-07").await;
    assert_eq!((call["outcome"].as_str(), call["duration_ms"].as_i64()), (Some("completed"), Some(58_000)));
    assert_eq!(call["transcript"][0]["text"], "hello");
    drop(guard);
}

/// The fault suite's queue: 1,000 results submitted while the API is down all arrive once it
/// is back, none twice, none parked (the API was down for everyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_results_queued_through_an_api_outage_arrive_once() {
    let data = tempfile::tempdir().unwrap();
    let mut api = Api::start(&data.path().join("api")).await;
    api.stop().await;
    let (outbox, guard) = Outbox::start(config(data.path(), Some(api.target()))).unwrap();
    let ids: Vec<String> = (0..1_000).map(|i| format!("q-{i:04}")).collect();
    let receipts: Vec<_> = ids.iter().map(|id| outbox.submit_plain(result(id, &api.bot_id), None)).collect();
    for r in receipts {
        r.recv_async().await.unwrap().unwrap();
    }
    let s = until("failed deliveries", || outbox.stats(), |s| s.retries >= 2).await;
    assert_eq!((s.pending, s.delivered), (1_000, 0));
    api.restart().await;
    let s = until("every result delivered", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.duplicates, s.dead, s.parked), (1_000, 0, 0, 0), "{s:?}");
    let stored = api.stored_order().await;
    assert_eq!(stored.len(), 1_000, "one row per call");
    assert_eq!(stored.iter().collect::<BTreeSet<_>>(), ids.iter().collect::<BTreeSet<_>>(), "each once");
    drop(guard);
}

/// One second: the caller throughout, the bot in the second half.
fn writer() -> RecordingWriter {
    let mut w = RecordingWriter::new(SampleRate::Hz8000, Duration::from_secs(60));
    w.write(Channel::Caller, Duration::ZERO, &[1000; 8000]);
    w.write(Channel::Bot, Duration::from_millis(500), &[-1000; 4000]);
    w
}

fn recording() -> Vec<u8> {
    writer().finish()
}

/// The recording goes to the local store once, even when posting the result has to be
/// retried: the entry remembers the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_is_uploaded_once_and_the_call_points_at_it() {
    let data = tempfile::tempdir().unwrap();
    let mut api = Api::start(&data.path().join("api")).await;
    api.stop().await;
    let (outbox, guard) = Outbox::start(config(data.path(), Some(api.target()))).unwrap();
    let wav = recording();
    let mut call = result("rec-1", &api.bot_id);
    call["org_id"] = json!(api.org_id);
    // The writer itself: finished into a WAV file on the outbox's thread.
    outbox.submit_recording(call, writer()).await.unwrap();

    until("a failed post", || outbox.stats(), |s| s.retries >= 2).await;
    let stored = data.path().join("recordings").join(&api.org_id).join("rec-1.wav");
    assert_eq!(std::fs::read(&stored).unwrap(), wav);
    let spool = outbox_dir(data.path());
    assert!(files(&spool, ".wav").is_empty(), "the spool's copy is gone once uploaded");
    let entry: Value = serde_json::from_slice(&std::fs::read(spool.join(&files(&spool, ".json")[0])).unwrap()).unwrap();
    let location = entry["result"]["recording"]["location"].as_str().unwrap().to_string();
    assert_eq!(location, format!("file://{}", stored.canonicalize().unwrap().display()));

    // Were the upload repeated, the file would come back.
    std::fs::remove_file(&stored).unwrap();
    api.restart().await;
    let s = until("delivery", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.dead), (1, 0));
    assert!(!stored.exists(), "uploaded a second time");

    let call = api.get("/v1/calls/rec-1").await;
    assert_eq!(call["recording"], json!({"location": location, "duration_ms": 1000, "channels": 2}));
    drop(guard);
}

/// An S3-compatible store: the recording is PUT path-style with a SigV4 signature; S3's
/// `503 SlowDown` is retried (once inside `object_store`, then by the outbox's backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_go_to_an_s3_compatible_store() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(&data.path().join("api")).await;
    let (s3, requests) = common::fake_s3(2).await;
    let mut config = config(data.path(), Some(api.target()));
    config.recordings = RecordingStore::S3(S3Config {
        bucket: "calls".into(),
        region: "eu-west-1".into(),
        endpoint: Some(format!("http://{s3}")),
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "secret".into(),
        allow_http: true,
    });
    assert!(!format!("{config:?}").contains("secret\""), "the secret key is redacted");
    let (outbox, guard) = Outbox::start(config).unwrap();
    let wav = recording();
    outbox.submit(result("s3-1", &api.bot_id), Some(wav.clone())).await.unwrap();
    let s = until("delivery", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.dead), (1, 0));
    assert!(s.retries >= 1, "{s:?}");

    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let key = format!("recordings/{}/s3-1.wav", api.bot_id);
    for r in &requests {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", format!("/calls/{key}").as_str()));
        assert!(r.header("authorization").unwrap().starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"), "{r:?}");
        assert!(r.header("x-amz-date").is_some() && r.header("x-amz-content-sha256").is_some(), "{r:?}");
        assert_eq!(r.body, wav);
    }
    let call = api.get("/v1/calls/s3-1").await;
    assert_eq!(call["recording"], json!({"location": format!("s3://calls/{key}"), "duration_ms": 1000, "channels": 2}));
    drop(guard);
}

/// A result the API rejects (422) is buried in `dead/` at once and does not hold up the next;
/// a wrong fleet token (401) is the engine's problem, not the result's: retried, never buried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_results_go_to_dead_and_auth_failures_are_retried() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(&data.path().join("api")).await;
    let (outbox, guard) = Outbox::start(config(data.path(), Some(api.target()))).unwrap();
    outbox.submit(result("not a valid id!", &api.bot_id), None).await.unwrap();
    outbox.submit(result("good-1", &api.bot_id), None).await.unwrap();
    let s = until("delivery", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.dead, s.retries), (1, 1, 0), "{s:?}");
    let dead = outbox_dir(data.path()).join("dead");
    assert_eq!(files(&dead, ".json"), ["00000000000000000001.error.json", "00000000000000000001.json"]);
    let error: Value = serde_json::from_slice(&std::fs::read(dead.join("00000000000000000001.error.json")).unwrap()).unwrap();
    assert_eq!(error["status"], 422, "{error}");
    assert_eq!(error["answer"]["error"]["field"], "call_id", "{error}");
    let buried: Value = serde_json::from_slice(&std::fs::read(dead.join("00000000000000000001.json")).unwrap()).unwrap();
    assert_eq!(buried["result"]["call_id"], "not a valid id!");
    assert_eq!(api.call_ids().await, ["good-1"]);
    drop(guard);

    let data = tempfile::tempdir().unwrap();
    let wrong = ApiTarget { base_url: api.base_url(), fleet_token: "cxf_wrong".into() };
    let (outbox, guard) = Outbox::start(config(data.path(), Some(wrong))).unwrap();
    outbox.submit(result("good-2", &api.bot_id), None).await.unwrap();
    let s = until("retries", || outbox.stats(), |s| s.retries >= 3).await;
    assert_eq!((s.pending, s.dead, s.delivered), (1, 0, 0));
    drop(guard);
}

/// What a crash or a damaged disk leaves: a truncated entry and one of the wrong shape go to
/// `dead/` with the reason; half-written `.tmp` files and orphaned recordings are removed;
/// the good entry is delivered and new ones number after the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_are_moved_aside_not_fatal() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(&data.path().join("api")).await;
    let spool = outbox_dir(data.path());
    {
        // A good entry, written by an outbox without an API.
        let (outbox, _guard) = Outbox::start(config(data.path(), None)).unwrap();
        outbox.submit(result("kept-1", &api.bot_id), None).await.unwrap();
        assert_eq!(outbox.stats().pending, 1);
    }
    let good = std::fs::read(spool.join("00000000000000000001.json")).unwrap();
    std::fs::write(spool.join("00000000000000000002.json"), &good[..good.len() / 2]).unwrap();
    std::fs::write(spool.join("00000000000000000003.json"), br#"{"hello": 1}"#).unwrap();
    std::fs::write(spool.join("00000000000000000004.json.tmp"), b"half").unwrap();
    std::fs::write(spool.join("00000000000000000009.wav"), b"orphan").unwrap();
    std::fs::write(spool.join("notes.txt"), b"not ours").unwrap();

    {
        let (outbox, _guard) = Outbox::start(config(data.path(), None)).unwrap();
        assert!(files(&spool, ".tmp").is_empty() && files(&spool, ".wav").is_empty());
        outbox.submit(result("new-1", &api.bot_id), None).await.unwrap();
        assert!(spool.join("00000000000000000004.json").exists(), "numbered after the old entries");
    }
    let (outbox, guard) = Outbox::start(config(data.path(), Some(api.target()))).unwrap();
    assert_eq!(outbox.stats().pending, 4);
    let s = until("delivery", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.dead), (2, 2), "{s:?}");
    let dead = spool.join("dead");
    for seq in [2, 3] {
        assert!(dead.join(format!("{seq:020}.json")).exists());
        let error: Value = serde_json::from_slice(&std::fs::read(dead.join(format!("{seq:020}.error.json"))).unwrap()).unwrap();
        assert!(error["error"].as_str().unwrap().contains("unreadable entry"), "{error}");
    }
    assert!(spool.join("notes.txt").exists());
    let mut stored = api.call_ids().await;
    stored.sort();
    assert_eq!(stored, ["kept-1", "new-1"]);
    drop(guard);
}

/// Checks at submission, the directory lock, and an outbox without an API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_results_wait_on_disk_and_bad_submissions_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let (outbox, guard) = Outbox::start(config(data.path(), None)).unwrap();
    assert!(matches!(Outbox::start(config(data.path(), None)), Err(OutboxError::Config(_))), "one outbox per directory");

    assert_eq!(outbox.submit(json!(5), None).await, Err(OutboxError::InvalidResult("not a JSON object")));
    assert_eq!(outbox.submit(json!({"call_id": ""}), None).await, Err(OutboxError::InvalidResult("no call_id")));
    assert_eq!(outbox.submit(json!({"call_id": "a"}), Some(b"RIFF".to_vec())).await, Err(OutboxError::InvalidRecording(WavError::NotWave)));
    // Awaited without tokio (only a waker), and a blocking wait, each from a plain thread.
    let handle = outbox.clone();
    let wav = recording();
    std::thread::spawn(move || common::block_on(handle.submit(json!({"call_id": "a", "org_id": "org_x"}), Some(wav)).into_future()))
        .join()
        .unwrap()
        .unwrap();
    let handle = outbox.clone();
    std::thread::spawn(move || handle.submit(json!({"call_id": "b", "org_id": "org_x"}), None).wait()).join().unwrap().unwrap();
    // The engine's `ResultSink` shape: errors as text.
    assert_eq!(outbox.submit_plain(json!([]), None).recv_async().await, Ok(Err("not a call result: not a JSON object".to_string())));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = outbox.stats();
    assert_eq!((s.pending, s.retries, s.delivered), (2, 0, 0));
    let spool = outbox_dir(data.path());
    assert_eq!(files(&spool, ".json"), ["00000000000000000001.json", "00000000000000000002.json"]);
    assert_eq!(files(&spool, ".wav"), ["00000000000000000001.wav"]);
    drop(guard);
    assert!(Outbox::start(config(data.path(), None)).is_ok(), "the lock is released on drop");
}
