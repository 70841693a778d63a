//! The outbound-request guard as a call's providers and tools meet it, on the worker's
//! thread: every request made for a tenant (HTTP tools, provider endpoints, Wyoming hosts,
//! carrier API bases) resolves its host here, keeps only the addresses the policy allows
//! ([`cxb_contract::egress`]) and connects to one of those, so a name that resolves to an
//! internal address is refused and DNS cannot rebind between the check and the connection.
//! HTTP follows no redirects. Requests to the platform itself (the API's runtime endpoints)
//! do not come here.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use compio::net::{TcpStream, ToSocketAddrsAsync};
use compio::ws::tungstenite::http::Uri;
use cxb_contract::egress::EgressPolicy;

thread_local! {
    static POLICY: RefCell<Rc<EgressPolicy>> = RefCell::new(Rc::new(EgressPolicy::public_only()));
    static HTTP: Result<cyper::Client, String> = cyper::Client::builder()
        .custom_resolver(Resolver)
        .redirect(cyper::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string());
}

/// Sets this thread's policy (each engine worker at its start; public addresses only until
/// then).
pub fn set_policy(policy: EgressPolicy) {
    POLICY.with(|p| *p.borrow_mut() = Rc::new(policy));
}

/// This thread's policy.
pub fn policy() -> Rc<EgressPolicy> {
    POLICY.with(|p| p.borrow().clone())
}

/// This thread's HTTP client for requests made on a tenant's behalf: names resolved through
/// the guard, no redirects followed.
pub fn http() -> Result<cyper::Client, String> {
    HTTP.with(Clone::clone)
}

/// The addresses of `host` (a name or an address literal, IPv6 with or without brackets) on
/// `port` that the policy allows. An error says what was refused (`egress_forbidden: …`).
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let found: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match compio::time::timeout(Duration::from_secs(5), (bare, port).to_socket_addrs_async()).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(format!("resolving {bare}: {e}")),
            Err(_) => return Err(format!("resolving {bare}: no answer within 5 s")),
        },
    };
    let policy = policy();
    let mut refused = None;
    let allowed: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| match policy.check(a.ip()) {
            Ok(()) => true,
            Err(why) => {
                refused.get_or_insert((a.ip(), why));
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (false, _) => Ok(allowed),
        (true, Some((ip, why))) => Err(format!("egress_forbidden: {bare} is {why} ({ip}); an operator may allow it with --allow-private-egress")),
        (true, None) => Err(format!("resolving {bare}: no address")),
    }
}

/// A TCP connection to `host:port` through the guard: the first allowed address that answers.
pub async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let mut last = String::new();
    for addr in resolve(host, port).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// The guard as cyper's resolver.
#[derive(Debug, Clone, Copy)]
struct Resolver;

impl cyper::resolve::Resolve for Resolver {
    type Err = std::io::Error;

    async fn resolve(&self, uri: &Uri) -> Result<impl futures_util::Stream<Item = IpAddr> + '_, Self::Err> {
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let addrs = resolve(host, port).await.map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        Ok(futures_util::stream::iter(addrs.into_iter().map(|a| a.ip())))
    }
}

/// An error with its causes, `outer: inner: …` (a refused address sits deep in an HTTP
/// client's error).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
