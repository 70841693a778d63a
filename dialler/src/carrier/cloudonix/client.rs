//! The adapter itself: [`Carrier`] over Cloudonix's REST API. The wire formats are in
//! [`super::wire`] and [`super::cdr`]; this file only moves bytes.

use std::error::Error as _;

use reqwest::{Method, StatusCode};

use super::wire::{self, CreateCall};
use super::{CloudonixConfig, cdr};
use crate::carrier::{BoxFuture, CallRequest, CallState, Carrier, CarrierError, Cdr, CdrError, Placed};

/// Most of a response body read; Cloudonix's answers are a few hundred bytes.
const MAX_RESPONSE: usize = 64 * 1024;

/// Cloudonix as a [`Carrier`]. Requests time out as the given client does.
#[derive(Debug, Clone)]
pub struct Cloudonix {
    http: reqwest::Client,
    config: CloudonixConfig,
}

impl Cloudonix {
    /// An adapter sending through `http` (TLS already set up, e.g.
    /// `cxb_control_plane::http_client`).
    pub fn new(http: reqwest::Client, config: CloudonixConfig) -> Self {
        Cloudonix { http, config }
    }

    /// The settings this adapter uses.
    pub fn config(&self) -> &CloudonixConfig {
        &self.config
    }

    /// Sends one authenticated request; the status and (capped) body, or why nothing came back.
    async fn send(
        &self,
        method: Method,
        url: String,
        body: Option<&CreateCall<'_>>,
    ) -> Result<(StatusCode, Vec<u8>), CarrierError> {
        if self.config.domain.trim().is_empty() || self.config.api_key.trim().is_empty() {
            return Err(CarrierError::Config("the Cloudonix domain and API key must both be set".into()));
        }
        let mut request = self.http.request(method, url).bearer_auth(&self.config.api_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            let room = MAX_RESPONSE - bytes.len();
            bytes.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            if bytes.len() == MAX_RESPONSE {
                break;
            }
        }
        Ok((status, bytes))
    }

    fn session_url(&self, token: &str) -> String {
        wire::session_url(&self.config.api_base, &self.config.domain, token)
    }
}

/// A transport failure, with its causes (reqwest's own text is only the outermost).
fn unavailable(e: reqwest::Error) -> CarrierError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    CarrierError::Unavailable(text)
}

impl Carrier for Cloudonix {
    fn name(&self) -> &'static str {
        "cloudonix"
    }

    fn create_call<'a>(&'a self, call: &'a CallRequest) -> BoxFuture<'a, Result<Placed, CarrierError>> {
        Box::pin(async move {
            let url = wire::create_call_url(&self.config.api_base, &self.config.domain);
            let (status, body) = self.send(Method::POST, url, Some(&CreateCall::new(call))).await?;
            if !status.is_success() {
                return Err(wire::status_error(status.as_u16(), &body));
            }
            match wire::created_token(&body) {
                Some(carrier_call_id) => Ok(Placed { carrier_call_id }),
                None => Err(CarrierError::Rejected {
                    status: status.as_u16(),
                    message: "Cloudonix accepted the call but sent no session token".into(),
                }),
            }
        })
    }

    fn hang_up<'a>(&'a self, carrier_call_id: &'a str) -> BoxFuture<'a, Result<(), CarrierError>> {
        Box::pin(async move {
            let (status, body) = self.send(Method::DELETE, self.session_url(carrier_call_id), None).await?;
            match status {
                s if s.is_success() => Ok(()),
                StatusCode::NOT_FOUND | StatusCode::GONE => Ok(()),
                s => Err(wire::status_error(s.as_u16(), &body)),
            }
        })
    }

    fn call_state<'a>(&'a self, carrier_call_id: &'a str) -> BoxFuture<'a, Result<CallState, CarrierError>> {
        Box::pin(async move {
            let (status, body) = self.send(Method::GET, self.session_url(carrier_call_id), None).await?;
            match status {
                s if s.is_success() => wire::session_state(&body),
                StatusCode::NOT_FOUND | StatusCode::GONE => Ok(CallState::Unknown),
                s => Err(wire::status_error(s.as_u16(), &body)),
            }
        })
    }

    fn parse_cdr(&self, headers: &[(String, String)], body: &[u8]) -> Result<Cdr, CdrError> {
        cdr::parse_cdr(self.config.webhook_token.as_deref(), headers, body)
    }
}
