//! Cloudonix: calls through its REST API, call ends through its CDR webhook.
//!
//! What the adapter speaks, and where each piece comes from. Sources: Cloudonix's developer
//! documentation (developers.cloudonix.com, read through its staging mirror:
//! `Documentation/apiWorkflow/callControlAndSessionManagement`, `…/apiCallDetailReports`,
//! `…/authorizationAndAuthentication`, `Documentation/dataModels/session`,
//! `Documentation/cxmlExamples/outboundNotifications/{theOutboundCallRequest,theCdrProcessor}`),
//! its OpenAPI file (`cloudonix/api.core-openapi`, `reference/Cloudonix-API.Core.yaml`), and the
//! open-source clients `cloudonix/pipecat` (`serializers/cloudonix.py`: the hangup),
//! `dograh-hq/dograh` (`CloudonixProvider`: create call with inline CXML, session lookup, CDR
//! dispositions) and `greenfieldtech-nirs/opbx` and `…/cloudonix-voiceagent-lbs` (CDR handling
//! by Cloudonix's own staff).
//!
//! **Authentication.** Every API request carries `Authorization: Bearer <key>`; keys are
//! 34-character strings starting `XI`, scoped to a customer, a domain or an application. A key
//! that does not match the domain in the path is refused with 401.
//!
//! **Placing a call.** `POST /calls/{domain}/application` with a JSON body:
//!
//! ```json
//! {"destination": "+15551230001", "caller-id": "+15559870000",
//!  "cxml": "<Response>…</Response>",
//!  "timeout": 30, "profile": {"cxb-session": "<our session id>"}}
//! ```
//!
//! `destination` and `caller-id` are documented (the caller ID is required in practice); the
//! application is given as `application` (an id or name), `url` (fetched when the callee answers)
//! or `cxml` (the document inline, as dograh sends it): this adapter sends `cxml` for
//! [`Answer::Cxml`](crate::carrier::Answer) and `url` for an answer URL. The docs list
//! `timeLimit` (longest call) and `profile` (free-form session metadata, echoed in session data
//! and CDRs) among the create fields. No public source names the ring timeout; `timeout`
//! (seconds, as in `<Dial timeout>` and as an open-source Cloudonix dialler sends it) is the
//! most plausible field and is what this adapter sends. `profile` carries our session id under
//! `cxb-session`, so the CDR can name it. The answer is the session:
//! `{"domainId": 3, "subscriberId": 372, "destination": "…", "direction": "outbound-api",
//! "token": "16a7294c989b11e7b3d32b9edb8660c7"}`; the `token` is the carrier call id.
//!
//! **A session's state.** `GET /customers/self/domains/{domain}/sessions/{token}` returns the
//! session model: `token`, `status`, `callStartTime`, `callAnswerTime`, `callEndTime` (epoch ms,
//! `0` when not yet), `startTime`/`answerTime`/`endTime` (ISO 8601), `profile`, … The status
//! values are not tabulated publicly; Cloudonix's own integrations handle `new`, `processing`,
//! `ringing`, `connected`, `answer` (live) and `noanswer`, `busy`, `nocredit`, `cancel`,
//! `external`, `error`, `completed` (final). 404: the platform does not know the session.
//!
//! **Hanging up.** `DELETE /customers/self/domains/{domain}/sessions/{token}` (as the
//! `pipecat` serializer does); 404 means the call is already gone, which is success here.
//!
//! **Errors.** 401/403 become [`CarrierError::Config`](crate::carrier::CarrierError) (the key is
//! wrong or lacks rights on the domain: an operator must act, retrying will not help); 408, 429,
//! 5xx and network failures [`Unavailable`](crate::carrier::CarrierError::Unavailable); other
//! 4xx [`Rejected`](crate::carrier::CarrierError::Rejected). A 2xx create without a session
//! token is `Rejected` too: the call may exist, and retrying could ring the callee twice.
//!
//! **The CDR.** Cloudonix delivers one CDR per session, whatever its outcome, by `POST` with
//! `Content-Type: application/json` to the domain's `cdr-endpoint` (a domain-profile property,
//! set once per domain, not per call). Shape (from the documented sample; fields trimmed):
//!
//! ```json
//! {"timestamp": 1716239100, "domain": "example.com", "subscriber": 372,
//!  "from": "12127773456", "to": "63121233333", "application": 345,
//!  "duration": 33, "billsec": 31, "disposition": "CONNECTED",
//!  "call_id": "315df9a8…@10.0.0.1:5060", "vapp_server": "172.24.41.58",
//!  "session": {"id": 9812750, "domain": "example.com", "token": "16a7294c…",
//!              "destination": "63121233333", "callerId": "12127773456",
//!              "profile": {"cxb-session": "…", "qos": {…}},
//!              "callStartTime": 1716239100387, "callAnswerTime": 1716239102610,
//!              "callEndTime": 1716239134343, "status": "connected"}}
//! ```
//!
//! `call_id` is the SIP Call-ID; the session `token` is what matches [`Placed`]. Dispositions
//! are Asterisk-style: `ANSWER`, `BUSY`, `NOANSWER`, `CANCEL`, `FAILED`, `CONGESTION`, written
//! `CONNECTED`, `ANSWERED`, `NO ANSWER`, `CANCELLED` by some deliveries: all are accepted, any
//! case, ignoring spaces, `-` and `_`; an unknown one is [`Disposition::Failed`] with the raw
//! value in the cause. Cloudonix documents no hangup-cause field in the CDR; the parser reads
//! the names integrators use when present (`hangupCause` or `hangup_cause` text, SIP status in
//! `sipCode`/`sip_code`/`sipStatus`/`sip_status`, Q.850 in `hangupCauseCode`/`q850`/…, also a
//! cause like `404 Not Found`), and turns SIP 404/484/604, Q.850 1/28, `UNALLOCATED_NUMBER` or
//! `INVALID_NUMBER_FORMAT` on an unanswered call into [`Disposition::InvalidNumber`].
//!
//! Tolerance: unknown fields are ignored; times may be epoch milliseconds or seconds (told apart
//! by size), numbers or numeric strings, or ISO 8601 strings; `0`, `""` and `null` mean "not
//! set". The start is the session's `callStartTime`/`startTime`, else the record's `timestamp`;
//! the end is `callEndTime`/`endTime`, else start plus `duration`. Missing token, disposition or
//! times, wrong types, times outside 1970–9999 or an end before the start are
//! [`CdrError::Malformed`](crate::carrier::CdrError::Malformed).
//!
//! **Webhook authentication.** Cloudonix documents none for CDRs (Cloudonix's own OPBX
//! identifies the domain from the payload instead), and since the endpoint is per domain the
//! per-call token of [`CallRequest::cdr_url`](crate::carrier::CallRequest) never reaches it.
//! When [`CloudonixConfig::webhook_token`] is set, [`parse_cdr`] requires it as
//! `Authorization: Bearer`, as the password of `Authorization: Basic` (what a
//! `https://cxb:TOKEN@host/…` `cdr-endpoint` sends) or as `X-CX-APIKey` (the header Cloudonix
//! puts on voice-application requests), compared in constant time; without one, records parse
//! with `authenticated: false`.
//!
//! [`Placed`]: crate::carrier::Placed
//! [`Disposition::Failed`]: crate::carrier::Disposition::Failed
//! [`Disposition::InvalidNumber`]: crate::carrier::Disposition::InvalidNumber

mod cdr;
#[cfg(feature = "runtime")]
mod client;
mod time;
#[cfg(feature = "runtime")]
mod wire;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use cdr::parse_cdr;
#[cfg(feature = "runtime")]
pub use client::Cloudonix;

/// The production API.
pub const DEFAULT_API_BASE: &str = "https://api.cloudonix.io";

/// The session-profile key carrying our session id (set on create, echoed in the CDR).
pub const PROFILE_SESSION: &str = "cxb-session";

/// An organization's Cloudonix settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudonixConfig {
    /// The API's root, [`DEFAULT_API_BASE`] unless testing.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// The Cloudonix domain calls are placed in (`acme.cloudonix.net`).
    pub domain: String,
    /// A domain (or customer) API key, the bearer token of every request.
    pub api_key: String,
    /// When set, CDR webhooks must present this token (see the module documentation).
    #[serde(default)]
    pub webhook_token: Option<String>,
}

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

impl CloudonixConfig {
    /// Settings for the production API, without a webhook token.
    pub fn new(domain: impl Into<String>, api_key: impl Into<String>) -> Self {
        let (domain, api_key) = (domain.into(), api_key.into());
        CloudonixConfig { api_base: default_api_base(), domain, api_key, webhook_token: None }
    }
}

/// Secrets stay out of logs.
impl fmt::Debug for CloudonixConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "<empty>" } else { "<redacted>" };
        f.debug_struct("CloudonixConfig")
            .field("api_base", &self.api_base)
            .field("domain", &self.domain)
            .field("api_key", &hidden(&self.api_key))
            .field("webhook_token", &self.webhook_token.as_deref().map(hidden))
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let mut config = CloudonixConfig::new("acme.cloudonix.net", "XI0123456789abcdef0123456789abcdef");
        config.webhook_token = Some("hook-secret".into());
        let shown = format!("{config:?}");
        assert!(shown.contains("acme.cloudonix.net"), "{shown}");
        assert!(!shown.contains("XI0123") && !shown.contains("hook-secret"), "{shown}");
    }

    #[test]
    fn config_defaults_the_api_base() {
        let config: CloudonixConfig = serde_json::from_str(r#"{"domain":"d","api_key":"k"}"#).unwrap();
        assert_eq!(config.api_base, DEFAULT_API_BASE);
        assert_eq!(config.webhook_token, None);
    }
}
