//! The `sip` carrier: the organization's own SIP trunk, dialled by the engine that runs the
//! call. Creating a call asks that engine (the one whose slot the routing reserved, named by
//! the call's stream URL) to dial through the trunk: `POST /sip/dial/BOT?token=…` with the
//! callee, the caller ID and the trunk. The engine answers with the call's SIP Call-ID (the
//! carrier's id of the call here), reports whether it lives (`GET /sip/calls/{id}`), hangs it
//! up (`DELETE`), and posts the call-end record to the call's CDR URL itself. Only calls to
//! CX Bridge bots can go this way: a trunk has no engine for any other destination.

#[cfg(feature = "runtime")]
use std::time::Duration;

use serde::Deserialize;

#[cfg(feature = "runtime")]
use super::{BoxFuture, CallRequest, CallState, Carrier, CarrierError, Placed};
use super::{Cdr, CdrError, Disposition};

/// The carrier.
#[cfg(feature = "runtime")]
#[derive(Debug, Clone)]
pub struct SipTrunk {
    /// For engines (fleet addresses, not a tenant's: no egress guard).
    client: reqwest::Client,
    /// The trunk as the organization's settings give it, and its digest password (a secret).
    trunk: cxb_control_plane::model::SipTrunk,
    password: Option<String>,
}

#[cfg(feature = "runtime")]
impl SipTrunk {
    pub fn new(client: reqwest::Client, trunk: cxb_control_plane::model::SipTrunk, password: Option<String>) -> SipTrunk {
        SipTrunk { client, trunk, password }
    }
}

/// The engine's HTTP base and the bot and token of a stream URL `ws(s)://host/ws/BOT?token=T`.
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
fn engine_of(stream: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = stream.split_once("://")?;
    let http = match scheme {
        "ws" => "http",
        "wss" => "https",
        _ => return None,
    };
    let (host, path) = rest.split_once("/ws/")?;
    let (bot, query) = path.split_once('?')?;
    let token = query.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    Some((format!("{http}://{host}"), bot.to_string(), token.to_string()))
}

/// The carrier id of a call: the engine's base and the call's SIP Call-ID.
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
fn call_id(engine: &str, sip_call_id: &str) -> String {
    format!("{engine}|{sip_call_id}")
}

#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
fn call_url(carrier_call_id: &str) -> Option<String> {
    let (engine, id) = carrier_call_id.split_once('|')?;
    let id: String = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).collect();
    Some(format!("{engine}/sip/calls/{id}"))
}

#[cfg(feature = "runtime")]
fn unavailable(e: impl std::fmt::Display) -> CarrierError {
    CarrierError::Unavailable(e.to_string())
}

/// The engine's call-end record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineCdr {
    carrier_call_id: String,
    session: String,
    disposition: String,
    cause: Option<String>,
    started_at_ms: i64,
    answered_at_ms: Option<i64>,
    ended_at_ms: i64,
}

/// Reads the engine's call-end record (never panics, whatever the bytes). It carries no
/// signature of its own: the handler requires the call's token from the CDR URL
/// (`authenticated: false`).
pub fn parse_engine_cdr(body: &[u8]) -> Result<Cdr, CdrError> {
    let r: EngineCdr = serde_json::from_slice(body).map_err(|e| CdrError::Malformed(e.to_string()))?;
    let disposition = match r.disposition.as_str() {
        "answered" => Disposition::Answered,
        "busy" => Disposition::Busy,
        "no_answer" => Disposition::NoAnswer,
        "invalid_number" => Disposition::InvalidNumber,
        "failed" => Disposition::Failed,
        "canceled" => Disposition::Canceled,
        other => return Err(CdrError::Malformed(format!("disposition `{}`", other.chars().take(32).collect::<String>()))),
    };
    if r.carrier_call_id.len() > 512 || r.session.len() > 128 || r.cause.as_ref().is_some_and(|c| c.len() > 256) {
        return Err(CdrError::Malformed("a field is too long".into()));
    }
    Ok(Cdr {
        carrier_call_id: r.carrier_call_id,
        session: Some(r.session),
        disposition,
        cause: r.cause,
        started_at_ms: r.started_at_ms,
        answered_at_ms: r.answered_at_ms,
        ended_at_ms: r.ended_at_ms,
        authenticated: false,
    })
}

#[cfg(feature = "runtime")]
impl Carrier for SipTrunk {
    fn name(&self) -> &'static str {
        "sip"
    }

    fn create_call<'a>(&'a self, call: &'a CallRequest) -> BoxFuture<'a, Result<Placed, CarrierError>> {
        Box::pin(async move {
            let Some((engine, bot, token)) = call.engine.as_deref().and_then(engine_of) else {
                return Err(CarrierError::Rejected { status: 400, message: "a SIP trunk carries calls to CX Bridge bots only".into() });
            };
            // The settings' fields are the dial request's, plus the password.
            let mut trunk = serde_json::to_value(&self.trunk).unwrap_or_default();
            trunk["password"] = self.password.clone().into();
            let body = serde_json::json!({
                "to": call.to,
                "from": call.from,
                "ring_timeout_ms": call.ring_timeout.as_millis() as u64,
                "cdr_url": call.cdr_url,
                "trunk": trunk,
            });
            let url = format!("{engine}/sip/dial/{bot}?token={token}");
            let response = self.client.post(url).json(&body).timeout(Duration::from_secs(10)).send().await.map_err(unavailable)?;
            let status = response.status().as_u16();
            let answer: serde_json::Value = response.json().await.unwrap_or_default();
            match status {
                202 => match answer["sip_call_id"].as_str() {
                    Some(id) => Ok(Placed { carrier_call_id: call_id(&engine, id) }),
                    None => Err(CarrierError::Rejected { status, message: "the engine sent no SIP Call-ID".into() }),
                },
                500.. | 429 => Err(CarrierError::Unavailable(format!("the engine answered {status}: {}", answer["error"]["message"]))),
                _ => Err(CarrierError::Rejected { status, message: answer["error"]["message"].as_str().unwrap_or_default().to_string() }),
            }
        })
    }

    fn hang_up<'a>(&'a self, carrier_call_id: &'a str) -> BoxFuture<'a, Result<(), CarrierError>> {
        Box::pin(async move {
            let Some(url) = call_url(carrier_call_id) else { return Ok(()) };
            let response = self.client.delete(url).timeout(Duration::from_secs(5)).send().await.map_err(unavailable)?;
            match response.status().as_u16() {
                200..=299 | 404 => Ok(()),
                s => Err(CarrierError::Unavailable(format!("the engine answered {s}"))),
            }
        })
    }

    fn call_state<'a>(&'a self, carrier_call_id: &'a str) -> BoxFuture<'a, Result<CallState, CarrierError>> {
        Box::pin(async move {
            let Some(url) = call_url(carrier_call_id) else { return Ok(CallState::Unknown) };
            let response = self.client.get(url).timeout(Duration::from_secs(5)).send().await.map_err(unavailable)?;
            match response.status().as_u16() {
                200 => Ok(CallState::Live),
                404 => Ok(CallState::Ended),
                s => Err(CarrierError::Unavailable(format!("the engine answered {s}"))),
            }
        })
    }

    fn parse_cdr(&self, _headers: &[(String, String)], body: &[u8]) -> Result<Cdr, CdrError> {
        parse_engine_cdr(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_name_the_engine_bot_and_token() {
        assert_eq!(
            engine_of("ws://127.0.0.1:8080/ws/bot_1?token=ct1.k.c.m&x=1"),
            Some(("http://127.0.0.1:8080".into(), "bot_1".into(), "ct1.k.c.m".into()))
        );
        assert_eq!(engine_of("wss://e.example/ws/b?token=t").map(|e| e.0), Some("https://e.example".into()));
        for bad in ["http://e/ws/b?token=t", "ws://e/ws/b", "ws://e/x/b?token=t", "nonsense"] {
            assert_eq!(engine_of(bad), None, "{bad}");
        }
        assert_eq!(call_url(&call_id("http://e:1", "a1@h")).as_deref(), Some("http://e:1/sip/calls/a1%40h"));
    }

    #[test]
    fn the_engines_records_read_and_malformed_ones_are_refused() {
        let ok = br#"{"carrier_call_id":"a1@h","session":"call_1","disposition":"busy","cause":"486","started_at_ms":1,"answered_at_ms":null,"ended_at_ms":2}"#;
        let cdr = parse_engine_cdr(ok).expect("a record");
        assert_eq!((cdr.disposition, cdr.session.as_deref(), cdr.authenticated), (Disposition::Busy, Some("call_1"), false));
        for bad in [&b"{}"[..], b"not json", br#"{"carrier_call_id":"a","session":"s","disposition":"maybe","cause":null,"started_at_ms":1,"answered_at_ms":null,"ended_at_ms":2}"#] {
            assert!(parse_engine_cdr(bad).is_err());
        }
    }
}
