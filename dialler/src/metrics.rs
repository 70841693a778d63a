//! The dialler's Prometheus metrics, through the `metrics` facade and the process's one
//! recorder (the API's, `cxb_control_plane::metrics`): campaign tasks, leases held, claims,
//! pacing waits, carrier requests and errors. Labels are bounded: a carrier's name, an
//! operation, a result kind and an HTTP status.
//!
//! `cxb dialler --metrics-listen ADDR` serves them at `/metrics` on a port of their own;
//! `cxb up`, which runs the API in the same process, shows them in the API's `/metrics` too.

use std::time::Duration;

use crate::carrier::CarrierError;

/// Campaign tasks running in this process and the leases it holds.
pub(crate) fn held(campaign_tasks: usize, campaign_leases: i64, call_leases: i64) {
    metrics::gauge!("cxb_dialler_campaign_tasks").set(campaign_tasks as f64);
    metrics::gauge!("cxb_dialler_leases_held", "kind" => "campaign").set(campaign_leases as f64);
    metrics::gauge!("cxb_dialler_leases_held", "kind" => "call").set(call_leases as f64);
}

/// A contact claimed for a call, or a claim refused (paused, lease lost, CAC reached, taken).
pub(crate) fn claim(claimed: bool) {
    let result = if claimed { "claimed" } else { "refused" };
    metrics::counter!("cxb_dialler_claims_total", "result" => result).increment(1);
}

/// Time a call waited for its place in the campaign's calls-per-second pacing.
pub(crate) fn pacing_wait(waited: Duration) {
    metrics::histogram!("cxb_dialler_pacing_wait_seconds").record(waited.as_secs_f64());
}

/// One request to a carrier's API: `op` is `create_call` or `call_state`.
pub(crate) fn carrier_request<T>(carrier: &'static str, op: &'static str, result: &Result<T, CarrierError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(CarrierError::Rejected { .. }) => "rejected",
        Err(CarrierError::Unavailable(_)) => "unavailable",
        Err(CarrierError::Config(_)) => "config",
    };
    metrics::counter!("cxb_dialler_carrier_requests_total", "carrier" => carrier, "op" => op, "result" => outcome).increment(1);
    if let Err(e) = result {
        let code = match e {
            CarrierError::Rejected { status, .. } => status.to_string(),
            CarrierError::Unavailable(_) => "unavailable".to_string(),
            CarrierError::Config(_) => "config".to_string(),
        };
        metrics::counter!("cxb_dialler_carrier_errors_total", "carrier" => carrier, "op" => op, "code" => code).increment(1);
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    cxb_control_plane::metrics::install();
    let app = axum::Router::new().route("/metrics", axum::routing::get(cxb_control_plane::metrics::render));
    axum::serve(listener, app).await
}
