//! The operations listener on `sync.admin_listen`: `/metrics`, `/healthz`, `/readyz`.

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::State;

/// The ops router. `/readyz` is 200 once Postgres answers and the Redis projection is
/// complete (`cg:ready`), else 503.
pub fn router(state: State, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.map(|m| m.render()).unwrap_or_default() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(AxState(state): AxState<State>) -> (StatusCode, &'static str) {
    let db = sqlx::query("SELECT 1").execute(&state.db).await.is_ok();
    let redis = state.store.is_ready().await.unwrap_or(false);
    match (db, redis) {
        (true, true) => (StatusCode::OK, "ready"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "postgres unavailable"),
        (true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "redis projection not ready",
        ),
    }
}
