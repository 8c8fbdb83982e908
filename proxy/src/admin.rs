//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process runs), `/readyz`
//! (the proxy can serve: Redis answers and holds a complete projection, or under
//! `fail_open` Redis cannot be reached, which the proxy serves through uncharged).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use shared::policy::StoreErrorMode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::App;

/// Binds the admin listener and serves it until shutdown.
pub async fn serve(
    app: Arc<App>,
    metrics: PrometheusHandle,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                _ = shutdown.changed() => return,
            };
            let app = app.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| route(app.clone(), metrics.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

async fn route(
    app: Arc<App>,
    metrics: PrometheusHandle,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, metrics.render()),
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match app.store.is_ready().await {
            Ok(true) => (StatusCode::OK, "ready\n".to_owned()),
            Ok(false) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "redis holds no projection yet\n".to_owned(),
            ),
            // Under fail_open a proxy that cannot reach Redis still serves (uncharged):
            // reporting it unready would have a load balancer answer 503 in its place.
            Err(e) => match app.runtime.load().policy.proxy.on_store_error {
                StoreErrorMode::FailOpen => (
                    StatusCode::OK,
                    format!("ready (fail_open): redis unreachable, forwarding uncharged: {e}\n"),
                ),
                StoreErrorMode::FailClosed => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("redis unreachable: {e}\n"),
                ),
            },
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}
