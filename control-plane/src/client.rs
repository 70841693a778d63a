//! The engine's side of the fleet registry: a heartbeat loop that reports a host's capacity to
//! `POST /v1/runtime/hosts/heartbeat`, holds the reservations the API hands back, and confirms
//! them in the next heartbeat. The engine plugs in through [`Host`], so this crate needs no
//! engine types and the engine needs no tokio.

use std::time::Duration;

use cxb_contract::call_token::{CallKey, KeyRing};

use crate::fleet::{Heartbeat, HeartbeatAnswer};

/// What the heartbeat needs from an engine host.
pub trait Host: Send + Sync + 'static {
    /// Workers, total and free slots, live calls: the engine's own current figures.
    fn capacity(&self) -> Capacity;
    /// Holds a slot for a call that will present `token` (hex) within `ttl`. False when the
    /// host has no free slot or the token is malformed. Holding the same token twice is one
    /// reservation.
    fn hold(&self, token: &str, ttl: Duration) -> bool;
    /// Replaces the keys call tokens are verified with (newest first).
    fn set_call_keys(&self, keys: KeyRing);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub workers: u32,
    pub slots_total: u64,
    pub slots_free: u64,
    pub live_calls: u64,
}

/// Where and how to heartbeat.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// The API's base URL, e.g. `http://127.0.0.1:8081`.
    pub api: String,
    pub fleet_token: String,
    pub host_id: String,
    /// The engine's address for carriers, `ws://host:port`.
    pub address: String,
    pub every: Duration,
}

/// Heartbeats forever. Failures are logged once per streak and retried at the next beat;
/// confirmations of held reservations are kept until a heartbeat carrying them succeeds.
pub async fn heartbeat_loop(config: HeartbeatConfig, host: impl Host) {
    let client = match crate::http_client(Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cxb core: no heartbeat: {e:#}");
            return;
        }
    };
    let url = format!("{}/v1/runtime/hosts/heartbeat", config.api.trim_end_matches('/'));
    let mut applied: Vec<String> = Vec::new();
    let mut failing = false;
    loop {
        match beat(&client, &url, &config, &host, &mut applied).await {
            Ok(again) => {
                if failing {
                    eprintln!("cxb core: heartbeat to {} works again", config.api);
                }
                failing = false;
                if again {
                    continue; // confirm new reservations at once
                }
            }
            Err(e) => {
                if !failing {
                    eprintln!("cxb core: heartbeat to {} failed: {e}", config.api);
                }
                failing = true;
            }
        }
        tokio::time::sleep(config.every).await;
    }
}

/// One heartbeat; true when it brought reservations to confirm.
async fn beat(client: &reqwest::Client, url: &str, c: &HeartbeatConfig, host: &impl Host, applied: &mut Vec<String>) -> Result<bool, String> {
    let cap = host.capacity();
    let report = Heartbeat {
        host_id: c.host_id.clone(),
        address: c.address.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        workers: cap.workers,
        slots_total: cap.slots_total,
        slots_free: cap.slots_free,
        live_calls: cap.live_calls,
        applied: applied.clone(),
    };
    let body = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
    let response = client
        .post(url)
        .bearer_auth(&c.fleet_token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    let answer: HeartbeatAnswer = serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))?;
    let keys = answer.call_token_keys.iter().filter_map(|k| match CallKey::from_base64(&k.id, &k.secret) {
        Ok(key) => Some(key),
        Err(e) => {
            eprintln!("cxb core: call-token key {} from the API: {e}", k.id);
            None
        }
    });
    host.set_call_keys(KeyRing::new(keys.collect()));
    applied.clear();
    for r in &answer.reservations {
        if host.hold(&r.token, Duration::from_millis(r.ttl_ms)) {
            applied.push(r.token.clone());
        }
    }
    Ok(!applied.is_empty())
}
