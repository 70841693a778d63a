//! Records for other addresses of the platform's (a SIP call's call-end record for the
//! dialler) through the outbox: durable, in order with results, across outages and restarts,
//! never with the fleet token, and refused or buried when they are not records.

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, fake_api, files, outbox_dir, result, until};
use cxb_outbox::Outbox;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_an_outage_and_a_restart_and_go_to_their_own_url_without_the_fleet_token() {
    let data = tempfile::tempdir().unwrap();
    let (api, state) = fake_api().await;
    state.lock().unwrap().down = true;
    let base = api.base_url.clone();
    let config = config(data.path(), Some(api));
    let (outbox, guard) = Outbox::start(config.clone()).unwrap();
    let url = |n: usize| format!("{base}/cdr/{n}?token=cdr-secret-{n}");
    for n in 0..3 {
        outbox.submit_record(url(n), json!({"id": format!("r{n}"), "status": "completed"})).recv_async().await.unwrap().unwrap();
    }
    outbox.submit(result("call-1", "bot_1"), None).await.unwrap();
    outbox.submit_record(url(3), json!({"id": "r3", "status": "busy"})).recv_async().await.unwrap().unwrap();
    until("failed deliveries", || outbox.stats(), |s| s.retries >= 2).await;
    drop(guard);
    assert_eq!(files(&outbox_dir(data.path()), ".json").len(), 5, "all on disk");

    // The receiver is back; the outbox restarts and picks the records up from disk.
    state.lock().unwrap().down = false;
    let (outbox, guard) = Outbox::start(config).unwrap();
    let s = until("every entry delivered", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.dead), (5, 0), "{s:?}");
    let st = state.lock().unwrap();
    let paths: Vec<&str> = st.records.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(paths, ["/cdr/0?token=cdr-secret-0", "/cdr/1?token=cdr-secret-1", "/cdr/2?token=cdr-secret-2", "/cdr/3?token=cdr-secret-3"], "in order, each once");
    assert!(st.records.iter().all(|(_, authorized, _)| !authorized), "the fleet token never goes to a record's URL");
    assert_eq!(st.records[3].2["status"], "busy");
    assert_eq!(st.stored, ["call-1"]);
    drop(st);
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_is_not_one_is_refused_and_one_its_receiver_rejects_is_buried() {
    let data = tempfile::tempdir().unwrap();
    let (api, state) = fake_api().await;
    state.lock().unwrap().rejecting_records.insert("bad".into());
    let base = api.base_url.clone();
    let (outbox, guard) = Outbox::start(config(data.path(), Some(api))).unwrap();
    for (url, body) in [("file:///etc/passwd".to_string(), json!({})), (format!("{base}/cdr"), json!([1, 2])), (format!("{base}/cdr\n"), json!({}))] {
        assert!(outbox.submit_record(url, body).recv_async().await.unwrap().is_err(), "refused before it is written");
    }
    outbox.submit_record(format!("{base}/cdr?token=t"), json!({"id": "bad"})).recv_async().await.unwrap().unwrap();
    outbox.submit_record(format!("{base}/cdr?token=t"), json!({"id": "good"})).recv_async().await.unwrap().unwrap();
    let s = until("both settled", || outbox.stats(), |s| s.pending == 0).await;
    assert_eq!((s.delivered, s.dead), (1, 1), "{s:?}");
    assert_eq!(files(&outbox_dir(data.path()).join("dead"), ".error.json").len(), 1);
    assert_eq!(state.lock().unwrap().records.len(), 1);
    drop(guard);
}
