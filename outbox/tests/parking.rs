//! No entry blocks the outbox: one that keeps failing while the API takes other results is
//! parked and tried again later, the entries behind it going on in order; an API that is down
//! for everyone parks nothing. And `dead/` never overwrites what it already holds. Against a
//! fake API whose answers each test sets.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config, fake_api, files, outbox_dir, until};
use cxb_outbox::{Outbox, OutboxConfig, RetryPolicy};
use serde_json::{Value, json};

fn result(call_id: &str) -> Value {
    json!({"call_id": call_id, "bot_id": "bot_1"})
}

/// Quick retries; an entry is parked after 3 failures (then the probe and one more), parked
/// entries are tried again after 300 ms, then 600 ms, …
fn parking(data: &std::path::Path, api: cxb_outbox::ApiTarget) -> OutboxConfig {
    let mut config = config(data, Some(api));
    config.retry = RetryPolicy { initial: Duration::from_millis(10), max: Duration::from_millis(40) };
    config.park_after = 3;
    config.park_retry = RetryPolicy { initial: Duration::from_millis(300), max: Duration::from_secs(1) };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_keeps_failing_is_parked_and_the_rest_go_on_in_order() {
    let data = tempfile::tempdir().unwrap();
    let (api, state) = fake_api().await;
    state.lock().unwrap().failing.insert("poison".into());
    let (outbox, guard) = Outbox::start(parking(data.path(), api)).unwrap();
    for id in ["poison", "b", "c", "d"] {
        outbox.submit(result(id), None).await.unwrap();
    }
    let s = until("the others delivered", || outbox.stats(), |s| s.delivered == 3).await;
    assert_eq!((s.pending, s.parked, s.parks, s.dead), (1, 1, 1, 0), "{s:?}");
    assert!(s.retries >= 4, "3 failures, then one more after the probe: {s:?}");
    {
        let state = state.lock().unwrap();
        assert_eq!(state.stored, ["b", "c", "d"], "in order, not held back");
        assert_eq!(state.health_checks, 1, "nothing delivered yet: the probe was GET /health");
    }
    assert_eq!(files(&outbox_dir(data.path()), ".json"), ["00000000000000000001.json"], "the parked entry stays on disk");

    // Later entries do not wait for it either.
    outbox.submit(result("e"), None).await.unwrap();
    until("e delivered", || outbox.stats(), |s| s.delivered == 4).await;

    // Parked, it is tried again on its own schedule; once the API takes it, it is delivered.
    let retries = outbox.stats().retries;
    until("a parked retry", || outbox.stats(), |s| s.retries > retries).await;
    state.lock().unwrap().failing.clear();
    let s = until("the parked entry delivered", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.parked, s.parks, s.dead), (5, 0, 1, 0), "{s:?}");
    assert_eq!(state.lock().unwrap().stored, ["b", "c", "d", "e", "poison"]);
    drop(guard);
}

/// Parked is remembered on disk: after a restart the parked entry does not go back to the
/// front, so the entries behind it go at once, with no failed attempt first; it is tried again
/// on its parking schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_entry_stays_parked_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (api, state) = fake_api().await;
    state.lock().unwrap().failing.insert("poison".into());
    let config = parking(data.path(), api);
    let (outbox, guard) = Outbox::start(config.clone()).unwrap();
    for id in ["poison", "b"] {
        outbox.submit(result(id), None).await.unwrap();
    }
    until("poison parked, b delivered", || outbox.stats(), |s| s.delivered == 1 && s.parked == 1).await;
    drop(guard);
    assert_eq!(files(&outbox_dir(data.path()), ".parked"), ["00000000000000000001.parked"]);

    let mut later = config.clone();
    later.park_retry = RetryPolicy { initial: Duration::from_secs(60), max: Duration::from_secs(60) };
    let (outbox, guard) = Outbox::start(later).unwrap();
    outbox.submit(result("c"), None).await.unwrap();
    let s = until("c delivered", || outbox.stats(), |s| s.delivered == 1).await;
    assert_eq!((s.retries, s.parked, s.pending), (0, 1, 1), "c went first, poison was not tried: {s:?}");
    state.lock().unwrap().failing.clear();
    drop(guard);
    // Delivered at last (a third start, its parking retries quick again): the marker goes too.
    let (outbox, guard) = Outbox::start(config).unwrap();
    until("poison delivered", || outbox.stats(), |s| s.pending == 0).await;
    assert!(files(&outbox_dir(data.path()), ".parked").is_empty());
    assert_eq!(state.lock().unwrap().stored, ["b", "c", "poison"]);
    drop(guard);
}

/// Down for everyone: every entry fails, and so does every probe. Nothing is parked; when the
/// API comes back the entries go in submission order. Both probes are tried: `/health` (all
/// down) and, once a result was delivered, that result again (results down, `/health` up: a
/// database that fails writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_down_for_everyone_parks_nothing() {
    let data = tempfile::tempdir().unwrap();
    let (api, state) = fake_api().await;
    state.lock().unwrap().down = true;
    let (outbox, guard) = Outbox::start(parking(data.path(), api)).unwrap();
    let ids: Vec<String> = (0..6).map(|i| format!("call-{i}")).collect();
    for id in &ids[..3] {
        outbox.submit(result(id), None).await.unwrap();
    }
    let s = until("many failed attempts", || outbox.stats(), |s| s.retries >= 30).await;
    assert_eq!((s.parked, s.parks, s.delivered, s.pending), (0, 0, 0, 3), "{s:?}");
    state.lock().unwrap().down = false;
    until("delivered", || outbox.stats(), |s| s.pending == 0).await;

    state.lock().unwrap().results_down = true;
    for id in &ids[3..] {
        outbox.submit(result(id), None).await.unwrap();
    }
    let retries = outbox.stats().retries;
    let s = until("many failed attempts", || outbox.stats(), |s| s.retries >= retries + 30).await;
    assert_eq!((s.parked, s.parks, s.pending), (0, 0, 3), "{s:?}");
    {
        let state = state.lock().unwrap();
        assert!(state.health_checks == 0, "a delivered result is the probe: {}", state.health_checks);
        assert!(state.duplicates.is_empty(), "its re-posts failed too");
    }
    state.lock().unwrap().results_down = false;
    let s = until("delivered", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.parks, s.dead), (6, 0, 0), "{s:?}");
    assert_eq!(state.lock().unwrap().stored, ids, "in submission order");
    drop(guard);
}

/// Sequence numbers start again at 1 when the directory has emptied; a second entry buried
/// under the same number gets a name of its own, and the first stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burying_twice_with_the_same_seq_keeps_both() {
    let data = tempfile::tempdir().unwrap();
    let (api, state) = fake_api().await;
    state.lock().unwrap().rejecting.extend(["bad-1".to_string(), "bad-2".to_string()]);
    let dead = outbox_dir(data.path()).join("dead");
    for id in ["bad-1", "bad-2"] {
        let (outbox, guard) = Outbox::start(config(data.path(), Some(api.clone()))).unwrap();
        outbox.submit(result(id), None).await.unwrap();
        until("buried", || outbox.stats(), |s| s.dead == 1).await;
        drop(guard);
        assert!(files(&outbox_dir(data.path()), ".json").is_empty(), "the directory has emptied");
    }
    assert_eq!(
        files(&dead, ".json"),
        ["00000000000000000001-1.error.json", "00000000000000000001-1.json", "00000000000000000001.error.json", "00000000000000000001.json"]
    );
    for (name, id) in [("00000000000000000001", "bad-1"), ("00000000000000000001-1", "bad-2")] {
        let entry: Value = serde_json::from_slice(&std::fs::read(dead.join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(entry["result"]["call_id"], id);
        let error: Value = serde_json::from_slice(&std::fs::read(dead.join(format!("{name}.error.json"))).unwrap()).unwrap();
        assert_eq!(error["status"], 422, "{error}");
    }
}
