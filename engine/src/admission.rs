//! Who may start a call, decided from the request head before the WebSocket upgrade.
//!
//! A call to an AI bot needs one credential: a call token the platform signed
//! ([`cxb_contract::call_token`]: the right bot, this host, not expired, not used before), or
//! for inbound calls a carrier sends on its own, what that carrier offers: Twilio's
//! `X-Twilio-Signature` when the bot holds `inbound.secrets.twilio_auth_token`, or the bot's
//! `inbound.secrets.secret` as `?secret=` or the HTTP Basic password. A bot takes calls with
//! none of these only when its owner set `inbound.allow_unsigned`. Refusals carry a reason for
//! the metrics and the log; the token itself is never logged.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use base64::Engine as _;
use cxb_contract::call_token::{CallClaims, KeyRing, TokenError};
use cxb_contract::carrier::{constant_time_eq, twilio_signature_valid};
use cxb_pipeline::config::Inbound;

use crate::http::Request;

/// How a call was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// A call token: the call's identity comes from its claims.
    Token(Box<CallClaims>),
    /// Twilio signed the handshake.
    TwilioSignature,
    /// The bot's inbound secret was presented.
    InboundSecret,
    /// The bot accepts unsigned inbound calls.
    Unsigned,
    /// A built-in demo bot (`--demo-bots`), open to anyone who can reach the engine.
    Demo,
}

impl Admitted {
    /// The token's claims, for calls the platform placed.
    pub fn claims(&self) -> Option<&CallClaims> {
        match self {
            Admitted::Token(c) => Some(c),
            _ => None,
        }
    }
}

/// Why a call was refused (a `401`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No credential at all.
    Missing,
    /// The token is malformed, unsigned by a key held here, forged or expired.
    Token(TokenError),
    /// A valid token for another bot (or another organization's bot).
    WrongBot,
    /// A valid token for another engine host.
    WrongHost,
    /// A token that was already used.
    Replayed,
    /// `X-Twilio-Signature` does not match.
    BadSignature,
    /// A secret that does not match the bot's.
    BadSecret,
    /// A SIP INVITE from an address its number does not allow.
    WrongSource,
    /// SIP digest credentials that do not match the number's.
    BadCredentials,
}

impl Refusal {
    /// Every reason, for the metrics.
    pub const ALL: [&'static str; 11] = [
        "missing",
        "malformed_token",
        "unknown_key",
        "bad_signature",
        "expired",
        "wrong_bot",
        "wrong_host",
        "replayed",
        "bad_secret",
        "wrong_source",
        "bad_credentials",
    ];

    /// The metric and log label.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Token(e) => e.label(),
            Refusal::WrongBot => "wrong_bot",
            Refusal::WrongHost => "wrong_host",
            Refusal::Replayed => "replayed",
            // A Twilio signature that fails and a token whose MAC fails are both forgeries.
            Refusal::BadSignature => "bad_signature",
            Refusal::BadSecret => "bad_secret",
            Refusal::WrongSource => "wrong_source",
            Refusal::BadCredentials => "bad_credentials",
        }
    }

    /// The message a refused client reads.
    pub const fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "this bot takes calls only with a call token or the carrier's credentials",
            Refusal::Token(TokenError::Expired) => "the call token has expired",
            Refusal::Token(_) => "the call token is not valid",
            Refusal::WrongBot => "the call token is for another bot",
            Refusal::WrongHost => "the call token is for another engine host",
            Refusal::Replayed => "the call token was already used",
            Refusal::BadSignature => "the carrier's signature does not match",
            Refusal::BadSecret => "the inbound secret does not match",
            Refusal::WrongSource => "calls to this number may not come from this address",
            Refusal::BadCredentials => "the digest credentials do not match",
        }
    }
}

/// Tokens seen are remembered until they expire; beyond this many, new ones are refused
/// rather than forgetting old ones (a flood of valid tokens cannot open a replay window).
const MAX_SEEN: usize = 200_000;

/// The engine's admission state, shared by its workers: the keys, its host id, and the tokens
/// already used. Touched once per call attempt, never on the media path.
#[derive(Debug, Default)]
pub struct Gate {
    keys: RwLock<KeyRing>,
    /// Keys from the command line (kept across fleet updates).
    local_keys: KeyRing,
    host_id: Option<String>,
    seen: Mutex<HashMap<String, u64>>,
}

impl Gate {
    pub fn new(local_keys: KeyRing, host_id: Option<String>) -> Gate {
        Gate { keys: RwLock::new(local_keys.clone()), local_keys, host_id, seen: Mutex::default() }
    }

    /// Replaces the fleet's keys (the heartbeat's answer); local keys stay valid.
    pub fn set_keys(&self, fleet: KeyRing) {
        let mut all = fleet.keys().to_vec();
        all.extend(self.local_keys.keys().iter().cloned());
        if let Ok(mut keys) = self.keys.write() {
            *keys = KeyRing::new(all);
        }
    }

    /// Whether any key is held (a host without keys cannot admit placed calls).
    pub fn has_keys(&self) -> bool {
        self.keys.read().is_ok_and(|k| !k.is_empty())
    }

    /// Checks a call token for `bot_id` at `now_s` (Unix seconds) and marks it used. A
    /// takeover token admits no call.
    pub fn check_token(&self, token: &str, bot_id: &str, now_s: u64) -> Result<CallClaims, Refusal> {
        let claims = self.verify(token, now_s)?;
        if claims.bot_id != bot_id || claims.takeover {
            return Err(Refusal::WrongBot);
        }
        self.admit(claims, now_s)
    }

    /// Checks a takeover token (a person on the Agent Desk joining the live call its claims
    /// name) at `now_s` and marks it used.
    pub fn check_takeover(&self, token: &str, now_s: u64) -> Result<CallClaims, Refusal> {
        let claims = self.verify(token, now_s)?;
        if !claims.takeover {
            return Err(Refusal::WrongBot);
        }
        self.admit(claims, now_s)
    }

    fn verify(&self, token: &str, now_s: u64) -> Result<CallClaims, Refusal> {
        self.keys.read().map_err(|_| Refusal::Token(TokenError::UnknownKey))?.verify(token, now_s).map_err(Refusal::Token)
    }

    /// The host and replay checks every token passes.
    fn admit(&self, claims: CallClaims, now_s: u64) -> Result<CallClaims, Refusal> {
        if let (Some(want), Some(me)) = (&claims.host_id, &self.host_id)
            && want != me
        {
            return Err(Refusal::WrongHost);
        }
        let mut seen = self.seen.lock().map_err(|_| Refusal::Replayed)?;
        if seen.len() >= MAX_SEEN / 2 {
            seen.retain(|_, exp| *exp >= now_s);
        }
        if seen.contains_key(&claims.jti) || seen.len() >= MAX_SEEN {
            return Err(Refusal::Replayed);
        }
        seen.insert(claims.jti.clone(), claims.exp);
        Ok(claims)
    }
}

/// A query parameter's value, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

/// An inbound call without a token: what the carrier offers against the bot's settings.
/// `urls` are the URLs the carrier may have signed (the advertised address and the request's
/// `Host`, each with the request's path and query).
pub fn check_inbound(inbound: &Inbound, req: &Request, urls: &[String]) -> Result<Admitted, Refusal> {
    let twilio = inbound.secrets.get("twilio_auth_token").filter(|t| !t.is_empty());
    if let (Some(auth_token), Some(signature)) = (twilio, req.twilio_signature.as_deref()) {
        return if twilio_signature_valid(auth_token, urls.iter().map(String::as_str), signature) {
            Ok(Admitted::TwilioSignature)
        } else {
            Err(Refusal::BadSignature)
        };
    }
    let presented = query_param(req.query.as_deref(), "secret").or_else(|| basic_password(req.authorization.as_deref()));
    if let Some(secret) = inbound.secrets.get("secret").filter(|s| !s.is_empty())
        && let Some(presented) = presented
    {
        return if constant_time_eq(secret.as_bytes(), presented.as_bytes()) {
            Ok(Admitted::InboundSecret)
        } else {
            Err(Refusal::BadSecret)
        };
    }
    if inbound.allow_unsigned {
        return Ok(Admitted::Unsigned);
    }
    Err(Refusal::Missing)
}

/// The password of an HTTP Basic `Authorization` header.
fn basic_password(header: Option<&str>) -> Option<String> {
    let (scheme, value) = header?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, p)| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxb_contract::call_token::CallKey;
    use cxb_contract::carrier::twilio_signature;

    fn ring() -> KeyRing {
        KeyRing::new(vec![CallKey::new("k1", &[3; 32]).expect("key")])
    }

    fn claims(jti: &str) -> CallClaims {
        CallClaims { jti: jti.into(), bot_id: "bot_a".into(), call_id: "cl_1".into(), org_id: "org_1".into(), exp: 100, host_id: Some("h1".into()), ..CallClaims::default() }
    }

    fn request(query: Option<&str>, auth: Option<&str>, sig: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            path: "/ws/bot_a".into(),
            query: query.map(str::to_string),
            upgrade: true,
            ws_key: Some("k".into()),
            ws_version: Some("13".into()),
            host: Some("engine.example".into()),
            authorization: auth.map(str::to_string),
            twilio_signature: sig.map(str::to_string),
            content_length: None,
        }
    }

    #[test]
    fn a_token_is_good_once_for_its_bot_and_host() {
        let gate = Gate::new(ring(), Some("h1".into()));
        let t = ring().sign(&claims("j1")).expect("token");
        assert_eq!(gate.check_token(&t, "bot_b", 50), Err(Refusal::WrongBot));
        assert_eq!(gate.check_token(&t, "bot_a", 50).map(|c| c.call_id), Ok("cl_1".into()));
        assert_eq!(gate.check_token(&t, "bot_a", 50), Err(Refusal::Replayed));
        assert_eq!(gate.check_token(&t, "bot_a", 101), Err(Refusal::Token(TokenError::Expired)));
        let elsewhere = Gate::new(ring(), Some("h2".into()));
        let t2 = ring().sign(&claims("j2")).expect("token");
        assert_eq!(elsewhere.check_token(&t2, "bot_a", 50), Err(Refusal::WrongHost));
        assert_eq!(Gate::default().check_token(&t2, "bot_a", 50), Err(Refusal::Token(TokenError::UnknownKey)));
    }

    #[test]
    fn fleet_keys_replace_fleet_keys_and_keep_local_ones() {
        let local = KeyRing::new(vec![CallKey::new("local", &[1; 32]).expect("key")]);
        let gate = Gate::new(local.clone(), None);
        gate.set_keys(ring());
        assert!(gate.check_token(&ring().sign(&claims("a")).expect("t"), "bot_a", 0).is_ok());
        assert!(gate.check_token(&local.sign(&claims("b")).expect("t"), "bot_a", 0).is_ok());
        gate.set_keys(KeyRing::default());
        let refused = gate.check_token(&ring().sign(&claims("c")).expect("t"), "bot_a", 0);
        assert_eq!(refused, Err(Refusal::Token(TokenError::UnknownKey)));
    }

    #[test]
    fn inbound_calls_need_what_the_bot_asks_for() {
        let mut inbound = Inbound::default();
        assert_eq!(check_inbound(&inbound, &request(None, None, None), &[]), Err(Refusal::Missing));
        inbound.allow_unsigned = true;
        assert_eq!(check_inbound(&inbound, &request(None, None, None), &[]), Ok(Admitted::Unsigned));
        inbound.allow_unsigned = false;
        inbound.secrets.insert("secret".into(), "s3cr:t&x".into());
        assert_eq!(check_inbound(&inbound, &request(Some("secret=s3cr%3At%26x"), None, None), &[]), Ok(Admitted::InboundSecret));
        assert_eq!(check_inbound(&inbound, &request(Some("secret=nope"), None, None), &[]), Err(Refusal::BadSecret));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("exotel:s3cr:t&x"));
        assert_eq!(check_inbound(&inbound, &request(None, Some(&basic), None), &[]), Ok(Admitted::InboundSecret));
        assert_eq!(check_inbound(&inbound, &request(None, Some("Basic !!"), None), &[]), Err(Refusal::Missing));
        inbound.secrets.insert("twilio_auth_token".into(), "tok".into());
        let url = "wss://engine.example/ws/bot_a".to_string();
        let sig = twilio_signature("tok", &url, &[]);
        assert_eq!(check_inbound(&inbound, &request(None, None, Some(&sig)), std::slice::from_ref(&url)), Ok(Admitted::TwilioSignature));
        assert_eq!(check_inbound(&inbound, &request(None, None, Some("AAAA")), &[url]), Err(Refusal::BadSignature));
    }
}
