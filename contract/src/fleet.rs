//! The fleet channel between engines and the API: an engine host's heartbeat
//! (`POST /v1/runtime/hosts/heartbeat`) and its answer (reservations to hold, reservations to
//! give back, the call-token keys), and the slot a dialler reserves (`POST /v1/fleet/reserve`).
//! The engine's heartbeat client writes [`Heartbeat`] and reads [`HeartbeatAnswer`]; the API
//! reads and writes them the other way round.

use serde::{Deserialize, Serialize};

/// An engine host's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Stable per host process, e.g. `hostname:port` (1 to 200 bytes).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub host_id: String,
    /// Where carriers reach it: `wss://host:port` (a base URL). `ws://` only to a loopback host
    /// (127.0.0.0/8, ::1, `localhost`) unless the API allows plain `ws://`. At most 500 bytes.
    #[cfg_attr(feature = "openapi", schema(max_length = 500))]
    pub address: String,
    #[serde(default)]
    pub version: String,
    pub workers: u32,
    pub slots_total: u64,
    pub slots_free: u64,
    pub live_calls: u64,
    /// Reservation tokens from earlier answers that the host now holds.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub applied: Vec<String>,
    /// Tokens from earlier answers' `release` lists that the host has given back (or did not
    /// hold). Left out when empty, so an API from before releases takes the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub released: Vec<String>,
}

/// A reservation the host must hold for `ttl_ms` more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reservation {
    pub token: String,
    pub ttl_ms: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAnswer {
    /// Heartbeat at least this often, or drop out of the fleet.
    pub ttl_seconds: u64,
    /// Reserve these slots and list their tokens as `applied` in the next heartbeat.
    pub reservations: Vec<Reservation>,
    /// The keys call tokens are verified with, newest first (replace the previous set).
    #[serde(default)]
    pub call_token_keys: Vec<CallTokenKey>,
    /// Reservations whose calls will not come: free their slots (after holding this answer's
    /// `reservations`) and list the tokens as `released` in the next heartbeat.
    #[serde(default)]
    pub release: Vec<String>,
}

/// A call-token key as the fleet channel carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallTokenKey {
    pub id: String,
    /// 32 or more bytes, standard base64.
    pub secret: String,
}

/// Leaves the secret out.
impl std::fmt::Debug for CallTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTokenKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A slot promised on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reserved {
    pub host_id: String,
    pub address: String,
    /// Present it as `?reservation=<token>` when connecting to the host.
    pub token: String,
    pub expires_at: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::*;

    /// Serialises `value`, reads it back, and checks that nothing changed; answers the JSON.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> String {
        let json = serde_json::to_string(value).unwrap();
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, value, "{json}");
        json
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            host_id: "e1:8080".into(),
            address: "wss://e1.example:8443".into(),
            version: "0.1.0".into(),
            workers: 2,
            slots_total: 64,
            slots_free: 60,
            live_calls: 3,
            applied: vec!["ff00000000000001".into()],
            released: vec!["ff00000000000002".into()],
        }
    }

    #[test]
    fn heartbeats_round_trip() {
        let json = round_trip(&heartbeat());
        assert_eq!(
            json,
            r#"{"host_id":"e1:8080","address":"wss://e1.example:8443","version":"0.1.0","workers":2,"slots_total":64,"slots_free":60,"live_calls":3,"applied":["ff00000000000001"],"released":["ff00000000000002"]}"#
        );
        let quiet = Heartbeat { released: vec![], ..heartbeat() };
        assert!(!round_trip(&quiet).contains("released"), "an empty `released` is left out for older APIs");
    }

    #[test]
    fn heartbeats_from_older_engines_and_unknown_fields() {
        let old = r#"{"host_id":"e1","address":"ws://127.0.0.1:8080","workers":1,"slots_total":4,"slots_free":4,"live_calls":0}"#;
        let h: Heartbeat = serde_json::from_str(old).unwrap();
        assert_eq!((h.version.as_str(), h.applied.len(), h.released.len()), ("", 0, 0));
        let extra = r#"{"host_id":"e1","address":"ws://127.0.0.1:8080","workers":1,"slots_total":4,"slots_free":4,"live_calls":0,"x":1}"#;
        assert!(serde_json::from_str::<Heartbeat>(extra).is_err());
    }

    #[test]
    fn answers_round_trip() {
        let answer = HeartbeatAnswer {
            ttl_seconds: 15,
            reservations: vec![Reservation { token: "ff00000000000003".into(), ttl_ms: 30_000 }],
            call_token_keys: vec![CallTokenKey { id: "k2".into(), secret: "c2VjcmV0".into() }],
            release: vec!["ff00000000000004".into()],
        };
        let json = round_trip(&answer);
        assert_eq!(
            json,
            r#"{"ttl_seconds":15,"reservations":[{"token":"ff00000000000003","ttl_ms":30000}],"call_token_keys":[{"id":"k2","secret":"c2VjcmV0"}],"release":["ff00000000000004"]}"#
        );
        let old: HeartbeatAnswer = serde_json::from_str(r#"{"ttl_seconds":15,"reservations":[]}"#).unwrap();
        assert!(old.call_token_keys.is_empty() && old.release.is_empty());
        assert!(!format!("{answer:?}").contains("c2VjcmV0"), "a key's Debug leaves its secret out");
    }

    #[test]
    fn reservations_round_trip() {
        let reserved =
            Reserved { host_id: "e1:8080".into(), address: "wss://e1.example:8443".into(), token: "ff00000000000005".into(), expires_at: "2026-01-01T00:00:00Z".into() };
        round_trip(&reserved);
    }
}
