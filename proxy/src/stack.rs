//! The server: listener, hyper connection settings, the tower layers around the handler,
//! and graceful shutdown. Also the upstream client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use shared::policy::ProxyConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::App;
use crate::handler::handle;

/// The pooled, keep-alive HTTP/1.1 client to the upstream.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// Time to open a TCP connection to the upstream (counts against `upstream_timeout_ms`).
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle upstream connections are closed after this.
const UPSTREAM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle upstream connections kept.
const UPSTREAM_POOL_IDLE_MAX: usize = 512;

/// Builds the upstream client.
pub fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(UPSTREAM_POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(UPSTREAM_POOL_IDLE_MAX)
        .build(connector)
}

/// A watch that flips to `true` on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown requested; draining in-flight requests");
        let _ = tx.send(true);
    });
    rx
}

/// Serves the proxy until shutdown, then lets in-flight requests finish for
/// `shutdown_grace_ms`.
pub async fn serve(
    app: Arc<App>,
    config: &ProxyConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(listen = %config.listen, upstream = %config.upstream, "creditgate-proxy listening");

    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        // A client must send its whole request head in time (slowloris).
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        // Caps the request head; a bigger one is refused by hyper.
        .max_buf_size(config.header_bytes_max);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.header_bytes_max).unwrap_or(u32::MAX));

    // One semaphore for all connections: at most `requests_in_flight_max` requests are
    // handled at once; more wait for a slot rather than exhaust memory or Redis.
    let in_flight = GlobalConcurrencyLimitLayer::new(config.requests_in_flight_max);
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = ServiceBuilder::new()
            .layer(in_flight.clone())
            .service_fn(move |req| request(app.clone(), remote, req));
        let conn = http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %remote, "connection closed with an error");
            }
        });
    }

    drop(listener);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            grace_ms = config.shutdown_grace_ms,
            "grace period over; closing remaining connections"
        ),
    }
    Ok(())
}

async fn request(
    app: Arc<App>,
    remote: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<crate::phase::Body>, Infallible> {
    Ok(handle(app, remote, req).await)
}
