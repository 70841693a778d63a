//! The HTTP server under the route table: hyper's HTTP/1 connections with a deadline for each
//! request head, and around every request an in-flight limit and a deadline, so that slow or
//! numerous clients cost bounded time and memory and are answered with the API's JSON errors
//! instead of queueing without end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tower::ServiceExt;

use crate::error::ApiError;
use crate::{AppState, metrics, routes};

/// Routes that take large uploads (CSV contact imports, up to 32 MiB): their deadline is
/// [`crate::ApiConfig::upload_timeout`] instead of [`crate::ApiConfig::request_timeout`].
pub(crate) const UPLOADS: &[&str] = &["/v1/campaigns/{id}/contacts/import", "/campaigns/{id}/import"];

/// Routes outside the in-flight limit: liveness probes and metric scrapes must keep answering
/// while the API is saturated (a probe that fails then would restart a server that is only
/// busy). Both are cheap and still under the request deadline.
const UNLIMITED: &[&str] = &["/health", "/metrics"];

/// What every request passes through before its handler.
#[derive(Debug)]
struct Limits {
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
    upload_timeout: Duration,
}

/// The routes with their middleware, outermost first: metrics (so refusals are counted too),
/// the URL screen and in-flight limit, the deadline.
pub(crate) fn app(state: AppState) -> Router {
    let limits = Arc::new(Limits {
        in_flight: Arc::new(Semaphore::new(state.config.max_in_flight.min(Semaphore::MAX_PERMITS))),
        request_timeout: state.config.request_timeout,
        upload_timeout: state.config.upload_timeout,
    });
    routes::build()
        .router
        .merge(crate::console::router())
        .layer(from_fn_with_state(limits.clone(), deadline))
        .layer(from_fn_with_state(limits, admit))
        .layer(from_fn(metrics::track))
        .with_state(state)
}

fn route(req: &Request) -> Option<&str> {
    req.extensions().get::<MatchedPath>().map(MatchedPath::as_str)
}

/// True when a URL carries a percent-encoded C0 control character or DEL (`%00`–`%1F`,
/// `%7F`): path ids and query values are bound to SQL as text, and PostgreSQL refuses NUL.
fn encoded_control(s: &str) -> bool {
    s.as_bytes().windows(3).any(|w| w[0] == b'%' && (matches!(w[1], b'0' | b'1') && w[2].is_ascii_hexdigit() || w[1] == b'7' && matches!(w[2], b'f' | b'F')))
}

/// Refuses URLs with encoded control characters (400), then takes an in-flight slot or
/// answers 503 `overloaded` with `Retry-After` at once: a full server sheds load rather than
/// queueing requests it would answer too late.
async fn admit(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let uri = req.uri();
    if encoded_control(uri.path()) || uri.query().is_some_and(encoded_control) {
        return ApiError::bad_request("the URL holds an encoded control character").into_response();
    }
    if route(&req).is_some_and(|r| UNLIMITED.contains(&r)) {
        return next.run(req).await;
    }
    let Ok(_slot) = limits.in_flight.clone().try_acquire_owned() else {
        return ApiError::unavailable("overloaded", 1, "too many requests in flight; retry shortly").into_response();
    };
    next.run(req).await
}

/// Ends a request that has not produced its response within its deadline (reading its body
/// included) with 503 `timeout`; the handler is dropped, which rolls back its transaction.
async fn deadline(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let upload = route(&req).is_some_and(|r| UPLOADS.contains(&r));
    let limit = if upload { limits.upload_timeout } else { limits.request_timeout };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable("timeout", 1, format!("the request did not finish within {limit:?}")).into_response(),
    }
}

/// Accepts connections until `stop` fires and serves each on its own task: HTTP/1.1 with
/// keep-alive, a client that has not sent a whole request head `head_timeout` after the
/// connection opened (or after its previous response) is disconnected. After `stop`, idle
/// connections close and requests in flight finish, for at most `drain`.
pub(crate) async fn serve(listener: TcpListener, app: Router, head_timeout: Duration, drain: Duration, mut stop: oneshot::Receiver<()>) {
    let (stopping, stopping_rx) = watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::error!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, app.clone(), head_timeout, stopping_rx.clone()));
    }
    drop(listener);
    let _ = stopping.send(true);
    drop(stopping_rx);
    // Every connection task holds a receiver; all gone means all connections are done.
    if tokio::time::timeout(drain, stopping.closed()).await.is_err() {
        tracing::warn!(drain_ms = drain.as_millis() as u64, "stopped with connections still open after the drain time");
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

async fn connection(stream: tokio::net::TcpStream, peer: SocketAddr, app: Router, head_timeout: Duration, mut stopping: watch::Receiver<bool>) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(head_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_controls_are_found_in_either_case() {
        for bad in ["/v1/calls/%00", "a=%1f", "a=%0A", "x%7F", "x%7f"] {
            assert!(encoded_control(bad), "{bad}");
        }
        for good in ["/v1/calls/CA1", "a=%20b", "%2F", "%", "%7", "%7E", "%C2%A0", "a=%e2%82%ac"] {
            assert!(!encoded_control(good), "{good}");
        }
    }
}
