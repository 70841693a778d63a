//! The outbound-request guard for what the API and the dialler send on a tenant's behalf
//! (webhooks, carrier API calls): names are resolved through the policy
//! ([`cxb_contract::egress`]) and the connection goes to an address that passed, so DNS cannot
//! rebind between check and connect; an address literal in the URL is judged before the
//! request is sent; redirects are never followed. URLs written into documents are judged when
//! they are written ([`check_document`]): a literal forbidden address answers 422
//! `egress_forbidden` naming the field.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cxb_contract::egress::{EgressPolicy, Forbidden};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// A guarded HTTP client and its policy.
#[derive(Debug, Clone)]
pub struct Egress {
    policy: Arc<EgressPolicy>,
    client: reqwest::Client,
}

/// Why a guarded request was not sent or failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress_forbidden: {host} is {why}")]
    Forbidden { host: String, why: Forbidden },
    #[error("{0}")]
    Request(String),
}

impl Egress {
    /// A client with `timeout` per request that reaches only what `policy` allows.
    pub fn new(policy: EgressPolicy, timeout: Duration) -> anyhow::Result<Egress> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("cxb/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Resolver(policy.clone())))
            .build()
            .context("building the guarded HTTP client")?;
        Ok(Egress { policy, client })
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The client, for building requests; send them with [`Egress::execute`].
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` if its URL may be reached: an address literal is judged here, a name
    /// by the client's resolver.
    pub async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response, EgressError> {
        let url = request.url();
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::Request(format!("{}: only http and https", url.scheme())));
        }
        let host = url.host_str().unwrap_or_default();
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            self.policy.check(ip).map_err(|why| EgressError::Forbidden { host: ip.to_string(), why })?;
        }
        self.client.execute(request).await.map_err(|e| EgressError::Request(error_chain(&e)))
    }
}

/// An error with its causes (a refused address sits deep in the client's error).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Resolves with the system resolver and keeps the addresses the policy allows.
struct Resolver(Arc<EgressPolicy>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| policy.check(a.ip()).map_err(|why| refused.get_or_insert(why)).is_ok())
                .collect();
            match (allowed.is_empty(), refused) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
                (true, Some(why)) => Err(Box::new(EgressError::Forbidden { host, why }) as Box<dyn std::error::Error + Send + Sync>),
                (true, None) => Err(format!("{host}: no address").into()),
            }
        })
    }
}

/// Field names that hold an address requests go to.
const URL_FIELDS: [&str; 6] = ["url", "base_url", "url_template", "api_base", "webhook_url", "transfer_url"];

/// Judges every URL a document holds (fields named as in [`URL_FIELDS`], at any depth): a
/// forbidden address literal (or `localhost`) is 422 `egress_forbidden` naming the field.
pub fn check_document(doc: &Value, policy: &EgressPolicy) -> ApiResult<()> {
    walk(doc, &mut String::new(), policy)
}

fn walk(value: &Value, path: &mut String, policy: &EgressPolicy) -> ApiResult<()> {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                if let (true, Value::String(url)) = (URL_FIELDS.contains(&key.as_str()), v) {
                    policy.check_url(url).map_err(|why| forbidden(path, why))?;
                }
                walk(v, path, policy)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(v, path, policy)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn forbidden(field: &str, why: Forbidden) -> ApiError {
    ApiError {
        field: Some(field.to_string()),
        ..ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "egress_forbidden",
            format!("{field}: points at {why}; requests for tenants may not reach it (an operator may allow the range with --allow-private-egress)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literal_internal_addresses_in_documents_name_their_field() {
        let p = EgressPolicy::public_only();
        let bot = json!({"tools": [{"url": "https://api.example.com"}, {"url": "http://169.254.169.254/latest"}]});
        let e = check_document(&bot, &p).expect_err("refused");
        assert_eq!((e.code, e.field.as_deref()), ("egress_forbidden", Some("tools[1].url")));
        let stt = json!({"stt": {"base_url": "tcp://localhost:10300"}});
        assert_eq!(check_document(&stt, &p).expect_err("refused").field.as_deref(), Some("stt.base_url"));
        assert!(check_document(&stt, &EgressPolicy::with_loopback()).is_ok());
        assert!(check_document(&json!({"carrier": {"api_base": "https://api.cloudonix.io"}}), &p).is_ok());
        assert!(check_document(&json!({"name": "http://127.0.0.1"}), &p).is_ok(), "only address fields");
    }
}
