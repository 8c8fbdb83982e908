//! Metric names and the Prometheus recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests by outcome (`forwarded`, `unauthorized`, `credits_exhausted`, …).
pub const REQUESTS: &str = "creditgate_proxy_requests_total";
/// Time of the admission script round trip.
pub const DEBIT_SECONDS: &str = "creditgate_proxy_debit_seconds";
/// Failed Redis calls.
pub const REDIS_ERRORS: &str = "creditgate_proxy_redis_errors_total";
/// Requests forwarded uncharged because Redis was unreachable under `fail_open`.
pub const FAIL_OPEN: &str = "creditgate_proxy_fail_open_total";
/// Refunds of debited requests, by reason.
pub const REFUNDS: &str = "creditgate_proxy_refunds_total";
/// Refunds that could not be applied at once and were queued for retry, by reason.
pub const REFUNDS_QUEUED: &str = "creditgate_proxy_refunds_queued_total";
/// Failed refund attempts from the queue (each is retried).
pub const REFUND_RETRIES: &str = "creditgate_proxy_refund_retries_total";
/// Refunds given up on, by why (`queue_full`, `retry_window`, `shutdown`): the debit
/// stands; the log line has the request id so an operator can grant it back.
pub const REFUNDS_LOST: &str = "creditgate_proxy_refunds_lost_total";
/// Refunds waiting in the queue.
pub const REFUND_QUEUE_LEN: &str = "creditgate_proxy_refund_queue_len";
/// Admissions whose answer never came (Redis error or timeout, twice), by mode.
pub const ADMISSIONS_GIVEN_UP: &str = "creditgate_proxy_admissions_given_up_total";
/// Policy reloads by result (`ok`, `error`).
pub const POLICY_RELOADS: &str = "creditgate_policy_reloads_total";

/// Installs the global recorder; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, String> {
    const DEBIT_BUCKETS: [f64; 12] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DEBIT_SECONDS.to_owned()), &DEBIT_BUCKETS)
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))
}
