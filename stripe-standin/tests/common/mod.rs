//! Shared test helpers: a stand-in, an async-stripe client pointed at it, a webhook receiver.

#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stripe::{Client, ClientBuilder};
use stripe_standin::{StandinConfig, StandinHandle, StripeStandin};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// An obviously fake test key: the stand-in accepts any `sk_test_…`.
pub const FAKE_KEY: &str = "sk_test_standin_fake";

/// The signing secret the tests share with the receiver.
pub const WEBHOOK_SECRET: &str = "whsec_standin_test_secret";

/// A stand-in on a free port.
pub async fn standin() -> StandinHandle {
    StripeStandin::start(StandinConfig {
        webhook_secret: Some(WEBHOOK_SECRET.to_owned()),
        ..StandinConfig::default()
    })
    .await
    .expect("the stand-in starts")
}

/// async-stripe's client pointed at the stand-in, as billing-sync builds it.
pub fn client(standin: &StandinHandle) -> Client {
    ClientBuilder::new(FAKE_KEY)
        .url(standin.url())
        .build()
        .expect("client builds")
}

/// One webhook delivery as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: Option<String>,
    pub payload: String,
}

/// A tiny hyper server that answers 200 to every POST and hands over what it got.
pub async fn webhook_receiver() -> (SocketAddr, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let signature = req
                            .headers()
                            .get("stripe-signature")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let payload = String::from_utf8_lossy(&body).into_owned();
                        let _ = tx.send(Received { signature, payload }).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// A raw HTTP request to the stand-in: `(status, headers, body as JSON or string)`.
pub async fn raw(
    standin: &StandinHandle,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, serde_json::Value) {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}{}", standin.url(), path.trim_start_matches('/'));
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request builds");
    let response = client.request(request).await.expect("the stand-in answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, headers, json)
}

/// `Authorization` header with the fake key.
pub fn auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {FAKE_KEY}"))
}
