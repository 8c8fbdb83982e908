//! The HTTP edge: accept loop, body limit, routing between the Stripe API (`/v1/…`), the
//! control endpoints (`/__standin/…`) and the browser pages; API key check, idempotency and
//! recording for `/v1/…`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::api::{self, Call, Ctx};
use crate::error::ApiError;
use crate::params::Params;
use crate::state::{IdempotentResult, RecordedRequest, State};
use crate::webhook::{self, Job, WebhookConfig, lock};
use crate::{control, form, ids};

/// Connections served at once; further ones wait to be accepted.
pub const CONNECTIONS_MAX: usize = 256;

/// Longest `Idempotency-Key` accepted, as in Stripe.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// What the running server shares between connections and the handle.
pub(crate) struct Inner {
    /// The account; see [`State`] for why a std mutex.
    pub state: Arc<Mutex<State>>,
    /// Webhook URL and secret, read at each delivery.
    pub webhook: Arc<Mutex<WebhookConfig>>,
    /// The delivery worker's queue.
    pub deliveries: mpsc::Sender<Job>,
    /// Base URL with a trailing `/`, used in `url` fields and pages.
    pub base_url: String,
    /// Recorded requests kept (oldest dropped first).
    pub requests_max: usize,
    /// Largest request body accepted, in bytes (413 beyond).
    pub request_body_bytes_max: usize,
    /// Automatic tax rate in basis points.
    pub tax_rate_bps: i64,
}

/// Serves connections until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    inner: Arc<Inner>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(inner, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// One request, any path.
async fn handle(inner: Arc<Inner>, req: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let body = match Limited::new(req.into_body(), inner.request_body_bytes_max)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return error_response(&ApiError::body_too_large(inner.request_body_bytes_max)),
    };
    let response = if let Some(rest) = path.strip_prefix("/v1/") {
        api_request(&inner, &method, &path, rest, &query, &headers, &body).await
    } else if let Some(rest) = path.strip_prefix("/__standin/") {
        control::handle(&inner, &method, rest, &query, &headers, &body).await
    } else {
        control::page(&inner, &method, &path)
    };
    tracing::info!(method = %method, path = %path, status = response.status().as_u16(), "request");
    response
}

/// A `/v1/…` request: key check, parameters, idempotency, dispatch, recording, events.
async fn api_request(
    inner: &Arc<Inner>,
    method: &Method,
    path: &str,
    rest: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let request_id = ids::new_id("req");
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query_params = form::parse(query.as_bytes());
    let form_params = form::parse(body);
    let mut record = RecordedRequest {
        method: method.to_string(),
        path: path.to_owned(),
        query: query_params.clone().unwrap_or(Value::Null),
        form: form_params.clone().unwrap_or(Value::Null),
        idempotency_key: idempotency_key.clone(),
        status: 0,
    };

    let outcome = (|| {
        check_api_key(headers)?;
        if idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > IDEMPOTENCY_KEY_BYTES_MAX)
        {
            return Err(ApiError::invalid(format!(
                "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} characters"
            )));
        }
        let query_params = query_params?;
        let form_params = form_params?;
        // Stripe reads GET and DELETE parameters from the query, POST ones from the body.
        let params = if *method == Method::POST || (*method == Method::DELETE && !body.is_empty()) {
            form_params
        } else {
            query_params
        };
        Ok::<_, ApiError>(params)
    })();

    let ctx = Ctx {
        base_url: inner.base_url.clone(),
        now: crate::now(),
        tax_rate_bps: inner.tax_rate_bps,
        request_id: Some(request_id.clone()),
        idempotency_key: idempotency_key.clone(),
    };
    let mut replayed = false;
    let mut event_ids = Vec::new();
    let result: Result<(u16, Value), ApiError> = {
        let mut state = lock(&inner.state);
        let result = match outcome {
            Err(e) => Err(e),
            Ok(params) => {
                let idempotent = *method == Method::POST && idempotency_key.is_some();
                let previous = idempotency_key
                    .as_ref()
                    .filter(|_| idempotent)
                    .and_then(|k| state.idempotency.get(k));
                match previous {
                    Some(prev)
                        if prev.method == method.as_str()
                            && prev.path == path
                            && prev.form == params =>
                    {
                        replayed = true;
                        Ok((prev.status, prev.body.clone()))
                    }
                    Some(_) => Err(ApiError::idempotency_mismatch(
                        idempotency_key.as_deref().unwrap_or(""),
                    )),
                    None => {
                        let call = Call {
                            method,
                            segments: rest.split('/').filter(|s| !s.is_empty()).collect(),
                            params: Params(&params),
                            ctx: &ctx,
                        };
                        match api::dispatch(&mut state, &call) {
                            Ok(reply) => {
                                for new in reply.events {
                                    event_ids.push(webhook::create_event(
                                        &mut state,
                                        ctx.now,
                                        ctx.request_id.as_deref(),
                                        ctx.idempotency_key.as_deref(),
                                        new,
                                    ));
                                }
                                if idempotent && let Some(key) = &idempotency_key {
                                    state.remember_idempotent(
                                        key.clone(),
                                        IdempotentResult {
                                            method: method.to_string(),
                                            path: path.to_owned(),
                                            form: params.clone(),
                                            status: 200,
                                            body: reply.body.clone(),
                                        },
                                    );
                                }
                                Ok((200, reply.body))
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
            }
        };
        record.status = match &result {
            Ok((status, _)) => *status,
            Err(e) => e.status.as_u16(),
        };
        state.record(record, inner.requests_max);
        result
    };
    if !event_ids.is_empty() {
        // Not awaited beyond queueing: Stripe sends events after answering the request.
        let _ = inner
            .deliveries
            .send(Job {
                event_ids,
                done: None,
            })
            .await;
    }

    let mut response = match result {
        Ok((status, body)) => json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            &body,
        ),
        Err(e) => error_response(&e),
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("request-id", v);
    }
    if let Some(key) = idempotency_key
        .as_deref()
        .and_then(|k| HeaderValue::from_str(k).ok())
    {
        h.insert("idempotency-key", key);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Some(version) = headers.get("stripe-version") {
        h.insert("stripe-version", version.clone());
    }
    response
}

/// Accepts `Authorization: Bearer sk_test_…` (or `rk_test_…`) or `Basic base64(sk_test_…:)`. The key itself is
/// never logged or echoed.
fn check_api_key(headers: &HeaderMap) -> Result<(), ApiError> {
    let missing = || {
        ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY').",
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let key = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_owned()
    } else if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| missing())?;
        let text = String::from_utf8(decoded).map_err(|_| missing())?;
        text.split(':').next().unwrap_or("").to_owned()
    } else {
        return Err(missing());
    };
    if key.starts_with("sk_live_") || key.starts_with("rk_live_") {
        return Err(ApiError::unauthorized(
            "The Stripe stand-in accepts only test-mode keys (sk_test_…); a live key was sent.",
        ));
    }
    let test_key = ["sk_test_", "rk_test_"]
        .iter()
        .any(|prefix| key.len() > prefix.len() && key.starts_with(prefix));
    if !test_key {
        return Err(ApiError::unauthorized(
            "Invalid API Key provided. The Stripe stand-in accepts any test-mode secret \
             (sk_test_…) or restricted (rk_test_…) key.",
        ));
    }
    Ok(())
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A Stripe-shaped error answer; 4xx ones tell async-stripe not to retry.
pub(crate) fn error_response(error: &ApiError) -> Response<Full<Bytes>> {
    let mut response = json_response(error.status, &error.to_json());
    if error.status.is_client_error() {
        response
            .headers_mut()
            .insert("stripe-should-retry", HeaderValue::from_static("false"));
    }
    response
}
