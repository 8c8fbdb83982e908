//! A small product API to put behind the proxy: `/status/<code>`, `/slow/<ms>`,
//! `/slow/<ms>/status/<code>`, `/hop` and, for every other path, an echo of what arrived
//! (method, path, query, headers, body size).
//! Bodies are counted as they stream in, never buffered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A running upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests it received.
    pub hits: Arc<AtomicU64>,
}

impl Upstream {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Upstream {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("upstream binds");
        let addr = listener.local_addr().expect("bound");
        let hits = Arc::new(AtomicU64::new(0));
        let upstream = Upstream {
            addr,
            hits: hits.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let hits = hits.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, hits.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        upstream
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn handle(
    req: Request<Incoming>,
    hits: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    if let Some(code) = path.strip_prefix("/status/") {
        let code = code.parse::<u16>().unwrap_or(500);
        let mut resp = Response::new(Full::new(Bytes::from(format!("status {code}\n"))));
        *resp.status_mut() =
            hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(resp);
    }
    if let Some(rest) = path.strip_prefix("/slow/") {
        let (ms, code) = match rest.split_once("/status/") {
            Some((ms, code)) => (ms, code.parse::<u16>().unwrap_or(500)),
            None => (rest, 200),
        };
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        let mut resp = Response::new(Full::new(Bytes::from_static(b"slow\n")));
        *resp.status_mut() =
            hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(resp);
    }
    if path == "/hop" {
        let resp = Response::builder()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-upstream-public", "ok")
            .body(Full::new(Bytes::from_static(b"hop\n")))
            .expect("static response");
        return Ok(resp);
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_owned);
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let value = serde_json::Value::String(value.to_str().unwrap_or("<binary>").to_owned());
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(list)) => list.push(value),
            Some(first) => *first = serde_json::Value::Array(vec![first.clone(), value]),
            None => {
                headers.insert(name.as_str().to_owned(), value);
            }
        }
    }
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let echo = serde_json::json!({
        "method": method, "path": path, "query": query, "headers": headers, "body_bytes": body_bytes,
    });
    let resp = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(echo.to_string())))
        .expect("static response");
    Ok(resp)
}
