//! `/metrics` for the API: requests by route, method and status, and their latency, through
//! the `metrics` facade and its Prometheus exporter (one recorder per process, shared with a
//! dialler running in the same process).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .ok()?;
            builder.install_recorder().ok()
        })
        .as_ref()
}

/// Counts and times every request. Labels stay bounded whatever clients send: the route's
/// pattern (not its ids; `unmatched` for unknown paths), the method among the standard ones
/// (`other` for the rest) and the status code.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let _ = handle();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("cxb_api_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("cxb_api_request_seconds", "route" => route).record(start.elapsed().as_secs_f64());
    response
}

/// The method as a label: one of the nine standard methods, else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Installs the process's recorder (once; later calls do nothing).
pub fn install() {
    let _ = handle();
}

/// Everything the process's recorder holds, in the Prometheus text format.
pub async fn render() -> Response {
    let body = handle().map(PrometheusHandle::render).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
