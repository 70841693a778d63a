//! Call tokens: what lets a call the platform placed onto an AI bot.
//!
//! A token is `ct1.KID.CLAIMS.MAC`: `KID` names the key (letters, digits, `_`, `-`), `CLAIMS`
//! is the JSON of [`CallClaims`] and `MAC` is HMAC-SHA256 over `ct1.KID.CLAIMS` with that key,
//! both base64url without padding. The MAC is checked before the claims are parsed, so only
//! the API's own JSON ever reaches the parser after a key matched. Expiry is checked here;
//! single use (the `jti`), the bot and the host are the engine's to check, since only it
//! knows which tokens it has seen and who it is.
//!
//! Keys rotate: a [`KeyRing`] signs with its first key and verifies with any key it holds, so
//! during a rotation the new and the old key are both valid.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::{BotId, CallId, CampaignId, ContactId, OrgId};
use crate::phone::PhoneNumber;

/// Every token starts with this.
pub const PREFIX: &str = "ct1.";
/// Tokens longer than this are refused unread.
pub const MAX_LEN: usize = 2048;
/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Which way a call goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    #[default]
    Outbound,
}

/// What a call token says about its call. The engine takes these, never the carrier's
/// `customParameters`, for the call's identity in its result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallClaims {
    /// Unique per token: a token is used once.
    pub jti: String,
    pub bot_id: BotId,
    pub call_id: CallId,
    pub org_id: OrgId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<CampaignId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<ContactId>,
    /// Unix seconds after which the token is refused.
    pub exp: u64,
    /// The engine host the call was placed on (its fleet host id); others refuse the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// The fleet reservation holding the call's slot on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PhoneNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<PhoneNumber>,
    /// The campaign's answering-machine action (`hangup`, `continue`, `leave_voicemail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd: Option<String>,
    /// A person on the Agent Desk takes over the live call `call_id` (its handoff): the token
    /// admits only that, at the engine's `POST /webrtc/takeover`, and no new call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub takeover: bool,
}

/// One signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct CallKey {
    id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// Why a key cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("a key id is 1 to 32 letters, digits, '_' or '-'")]
    BadId,
    #[error("a key is at least {MIN_KEY_LEN} bytes (base64)")]
    BadSecret,
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl CallKey {
    /// A key from its id and secret bytes.
    pub fn new(id: &str, secret: &[u8]) -> Result<CallKey, KeyError> {
        if !valid_id(id) {
            return Err(KeyError::BadId);
        }
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyError::BadSecret);
        }
        Ok(CallKey { id: id.to_string(), secret: secret.to_vec() })
    }

    /// A key from its id and its secret in standard base64 (as the fleet channel carries it).
    pub fn from_base64(id: &str, secret: &str) -> Result<CallKey, KeyError> {
        let bytes = STANDARD.decode(secret.trim()).map_err(|_| KeyError::BadSecret)?;
        CallKey::new(id, &bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret in standard base64, for the fleet channel.
    pub fn secret_base64(&self) -> String {
        STANDARD.encode(&self.secret)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of every length")
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token names a key this host does not hold")]
    UnknownKey,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

impl TokenError {
    /// A short label, for metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
        }
    }
}

/// The keys a process signs with (the first) and verifies with (any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: Vec<CallKey>,
}

impl KeyRing {
    /// A ring from keys, newest first. Keys with a repeated id after the first are dropped.
    pub fn new(keys: Vec<CallKey>) -> KeyRing {
        let mut ring: Vec<CallKey> = Vec::with_capacity(keys.len());
        for k in keys {
            if !ring.iter().any(|r| r.id == k.id) {
                ring.push(k);
            }
        }
        KeyRing { keys: ring }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[CallKey] {
        &self.keys
    }

    /// Signs `claims` with the newest key; `None` when the ring is empty.
    pub fn sign(&self, claims: &CallClaims) -> Option<String> {
        let key = self.keys.first()?;
        let json = serde_json::to_vec(claims).expect("claims are plain strings and numbers");
        let mut token = format!("{PREFIX}{}.", key.id);
        URL_SAFE_NO_PAD.encode_string(json, &mut token);
        let mut mac = key.mac();
        mac.update(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
        Some(token)
    }

    /// Checks a token's form, key, signature and expiry at `now` (Unix seconds) and returns
    /// its claims.
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<CallClaims, TokenError> {
        if token.len() > MAX_LEN {
            return Err(TokenError::Malformed);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (kid, rest) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let (claims, mac) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        if !valid_id(kid) {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(claims).map_err(|_| TokenError::Malformed)?;
        let key = self.keys.iter().find(|k| k.id == kid).ok_or(TokenError::UnknownKey)?;
        let mut check = key.mac();
        check.update(&token.as_bytes()[..token.len() - mac.len() - 1]);
        check.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
        let claims: CallClaims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if now_unix_s > claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: &str, byte: u8) -> KeyRing {
        KeyRing::new(vec![CallKey::new(id, &[byte; 32]).expect("key")])
    }

    fn claims() -> CallClaims {
        CallClaims {
            jti: "j1".into(),
            bot_id: "bot_1".into(),
            call_id: "cl_1".into(),
            org_id: "org_1".into(),
            campaign_id: Some("cmp_1".into()),
            contact_id: Some("ct_1".into()),
            exp: 1_000,
            host_id: Some("h:8080".into()),
            reservation: Some("ff00000000000001".into()),
            ..CallClaims::default()
        }
    }

    #[test]
    fn numbers_keep_their_json_and_stay_out_of_debug() {
        let c = CallClaims { from: Some("+14155550123".into()), to: Some("anonymous".into()), ..claims() };
        let json = serde_json::to_value(&c).expect("json");
        assert_eq!((json["from"].as_str(), json["to"].as_str()), (Some("+14155550123"), Some("anonymous")));
        assert_eq!(serde_json::from_value::<CallClaims>(json).ok(), Some(c.clone()));
        let debug = format!("{c:?}");
        assert!(!debug.contains("+14155550123") && !debug.contains("4155550") && !debug.contains("anonymous"), "{debug}");
        assert!(debug.contains("…0123") && debug.contains("…mous"), "{debug}");
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let r = ring("k1", 7);
        let t = r.sign(&claims()).expect("signed");
        assert!(t.starts_with("ct1.k1."));
        assert_eq!(r.verify(&t, 999), Ok(claims()));
        assert_eq!(r.verify(&t, 1_000), Ok(claims()));
        assert_eq!(r.verify(&t, 1_001), Err(TokenError::Expired));
    }

    #[test]
    fn another_key_a_changed_claim_or_a_cut_token_is_refused() {
        let r = ring("k1", 7);
        let t = r.sign(&claims()).expect("signed");
        assert_eq!(ring("k1", 8).verify(&t, 0), Err(TokenError::BadSignature));
        assert_eq!(ring("k2", 7).verify(&t, 0), Err(TokenError::UnknownKey));
        let mut other = claims();
        other.bot_id = "bot_2".into();
        let forged = r.sign(&other).expect("signed");
        let (head, _) = t.rsplit_once('.').expect("mac");
        let (_, mac) = forged.rsplit_once('.').expect("mac");
        assert_eq!(r.verify(&format!("{head}.{mac}"), 0), Err(TokenError::BadSignature));
        for bad in ["", "ct1.", "ct1.k1", "ct1.k1.e30", "ct1.k1.e30.", "ct2.k1.e30.AA", "ct1.k!.e30.AA", &t[..t.len() - 1]] {
            assert!(r.verify(bad, 0).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(r.verify(&"a".repeat(MAX_LEN + 1), 0), Err(TokenError::Malformed));
    }

    #[test]
    fn a_rotation_keeps_the_old_key_valid_and_signs_with_the_new() {
        let old = ring("k1", 7);
        let t_old = old.sign(&claims()).expect("signed");
        let both = KeyRing::new(vec![CallKey::new("k2", &[9; 32]).expect("key"), CallKey::new("k1", &[7; 32]).expect("key")]);
        assert!(both.verify(&t_old, 0).is_ok());
        let t_new = both.sign(&claims()).expect("signed");
        assert!(t_new.starts_with("ct1.k2."));
        assert_eq!(old.verify(&t_new, 0), Err(TokenError::UnknownKey));
    }

    #[test]
    fn keys_must_be_long_and_named() {
        assert_eq!(CallKey::new("k", &[0; 31]), Err(KeyError::BadSecret));
        assert_eq!(CallKey::new("", &[0; 32]), Err(KeyError::BadId));
        assert_eq!(CallKey::new("a.b", &[0; 32]), Err(KeyError::BadId));
        let k = CallKey::new("k", &[5; 32]).expect("key");
        assert_eq!(CallKey::from_base64("k", &k.secret_base64()), Ok(k.clone()));
        assert!(!format!("{k:?}").contains(&k.secret_base64()));
        assert_eq!(KeyRing::default().sign(&claims()), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_strings_never_verify(s in ".{0,300}") {
            proptest::prop_assert!(ring("k1", 7).verify(&s, 0).is_err());
        }
    }
}
