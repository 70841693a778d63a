//! The engine's side of the fleet registry: a heartbeat loop that reports a host's capacity to
//! `POST /v1/runtime/hosts/heartbeat`, holds the reservations the API hands back, gives back
//! the ones it says will not be used, and confirms both in the next heartbeat. The engine plugs
//! in through [`Host`], so this crate needs no engine types and the engine needs no tokio.

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
    /// Gives back the slot held for reservation `token`: its call will not come (it ended
    /// unanswered, or never reached this host). False when no slot is held for it (already used,
    /// lapsed or never held). The default keeps the slot until the reservation lapses.
    fn release(&self, token: &str) -> bool {
        let _ = token;
        false
    }
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
    /// A fleet token of scope `engine`; it heartbeats as one host only (the one it was made
    /// for, or else the first `host_id` it heartbeats with).
    pub fleet_token: String,
    pub host_id: String,
    /// The engine's address for carriers, `wss://host:port` (`ws://` is accepted only to a
    /// loopback host, unless the API allows plain `ws://`).
    pub address: String,
    pub every: Duration,
}

/// Heartbeats forever. Failures are logged once per streak and retried at the next beat;
/// confirmations of held and released reservations are kept until a heartbeat carrying them
/// succeeds.
pub async fn heartbeat_loop(config: HeartbeatConfig, host: impl Host) {
    let client = match crate::http_client(Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %format_args!("{e:#}"), "no heartbeat: building the HTTP client failed");
            return;
        }
    };
    let url = format!("{}/v1/runtime/hosts/heartbeat", config.api.trim_end_matches('/'));
    let mut confirm = Confirmations::default();
    let mut failing = false;
    loop {
        match beat(&client, &url, &config, &host, &mut confirm).await {
            Ok(again) => {
                if failing {
                    tracing::info!(api = %config.api, "heartbeat works again");
                }
                failing = false;
                if again {
                    continue; // confirm new reservations and releases at once
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(api = %config.api, error = %e, "heartbeat failed; retrying at each beat");
                }
                failing = true;
            }
        }
        tokio::time::sleep(config.every).await;
    }
}

/// What the next heartbeat confirms.
#[derive(Debug, Default)]
struct Confirmations {
    /// Reservations now held.
    applied: Vec<String>,
    /// Releases carried out (or found nothing to release).
    released: Vec<String>,
}

/// One heartbeat; true when it brought reservations or releases to confirm.
async fn beat(client: &reqwest::Client, url: &str, c: &HeartbeatConfig, host: &impl Host, confirm: &mut Confirmations) -> Result<bool, String> {
    let cap = host.capacity();
    let report = Heartbeat {
        host_id: c.host_id.clone(),
        address: c.address.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        workers: cap.workers,
        slots_total: cap.slots_total,
        slots_free: cap.slots_free,
        live_calls: cap.live_calls,
        applied: confirm.applied.clone(),
        released: confirm.released.clone(),
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
        return Err(refusal(status, &bytes, c));
    }
    let answer: HeartbeatAnswer = serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))?;
    let keys = answer.call_token_keys.iter().filter_map(|k| match CallKey::from_base64(&k.id, &k.secret) {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::warn!(key = %k.id, error = %e, "ignoring an unreadable call-token key from the API");
            None
        }
    });
    host.set_call_keys(KeyRing::new(keys.collect()));
    confirm.applied.clear();
    confirm.released.clear();
    for r in &answer.reservations {
        if host.hold(&r.token, Duration::from_millis(r.ttl_ms)) {
            confirm.applied.push(r.token.clone());
        }
    }
    // After the holds: a token offered and withdrawn in one answer ends up free.
    for token in &answer.release {
        host.release(token);
        confirm.released.push(token.clone());
    }
    Ok(!confirm.applied.is_empty() || !confirm.released.is_empty())
}

/// Why the API refused a heartbeat, with what to do about the refusals that only the operator
/// can fix (retrying will not help until they do).
fn refusal(status: reqwest::StatusCode, body: &[u8], c: &HeartbeatConfig) -> String {
    let error: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = error["error"]["code"].as_str().unwrap_or_default();
    let message = error["error"]["message"].as_str().map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_string);
    let hint = match (code, error["error"]["field"].as_str()) {
        ("wrong_host", _) => {
            format!(" (this engine heartbeats as `{}`: give it the token made for that host, or a new one: cxb admin create-fleet-token --host-id {})", c.host_id, c.host_id)
        }
        ("wrong_scope", _) => " (engines need a token of scope engine: cxb admin create-fleet-token --scope engine)".to_string(),
        (_, Some("address")) => " (serve TLS with --tls-cert/--tls-key so the engine advertises wss://)".to_string(),
        _ => String::new(),
    };
    format!("{status}: {message}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_do() {
        let c = HeartbeatConfig { api: "http://api".into(), fleet_token: "cxf_x".into(), host_id: "e2:8080".into(), address: "ws://10.0.0.2:8080".into(), every: Duration::from_secs(2) };
        let wrong = br#"{"error":{"code":"wrong_host","message":"this fleet token is bound to host `e1:8080`"}}"#;
        let text = refusal(reqwest::StatusCode::FORBIDDEN, wrong, &c);
        assert!(text.starts_with("403 Forbidden: this fleet token is bound to host `e1:8080`"), "{text}");
        assert!(text.contains("--host-id e2:8080"), "{text}");
        let address = br#"{"error":{"code":"validation_failed","message":"address: ws:// is accepted only to a loopback host","field":"address"}}"#;
        assert!(refusal(reqwest::StatusCode::UNPROCESSABLE_ENTITY, address, &c).contains("--tls-cert"));
        assert_eq!(refusal(reqwest::StatusCode::BAD_GATEWAY, b"upstream", &c), "502 Bad Gateway: upstream");
    }
}
