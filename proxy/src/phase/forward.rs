//! Forward: send the request upstream, streaming its body, and wait (bounded) for the
//! response head.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, Uri, Version};

use crate::App;
use crate::ctx::RequestCtx;
use crate::headers::{strip_creditgate, strip_hop_by_hop};
use crate::refusal::Refusal;
use crate::runtime::Runtime;

/// Rewrites the request for the upstream and sends it. The body is passed through as it
/// arrives, never buffered. No answer within `upstream_timeout_ms`: 504; a connection
/// failure or a broken answer: 502 (settle refunds both).
pub async fn run(
    app: &App,
    runtime: &Runtime,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Refusal> {
    let req = upstream_request(runtime, ctx, req)?;
    let timeout = Duration::from_millis(runtime.policy.proxy.upstream_timeout_ms);
    match tokio::time::timeout(timeout, app.client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "upstream request failed");
            Err(Refusal::UpstreamError)
        }
        Err(_) => Err(Refusal::UpstreamTimeout),
    }
}

fn upstream_request(
    runtime: &Runtime,
    ctx: &RequestCtx,
    req: Request<Incoming>,
) -> Result<Request<Incoming>, Refusal> {
    let (mut parts, body) = req.into_parts();
    // Exactly the path the route was matched and priced on.
    parts.uri = Uri::builder()
        .scheme(runtime.upstream.scheme.clone())
        .authority(runtime.upstream.authority.clone())
        .path_and_query(ctx.path_and_query.as_str())
        .build()
        .map_err(|_| Refusal::UpstreamError)?;
    parts.version = Version::HTTP_11;

    let headers = &mut parts.headers;
    let original_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(headers);
    strip_creditgate(headers);
    // The API key is ours; the product never sees it.
    if crate::phase::identify::api_key_in_authorization(headers) {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove("x-api-key");
    headers.remove(header::HOST);
    if let Ok(host) = HeaderValue::from_str(runtime.upstream.authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    let client_ip = ctx.remote.ip().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client_ip}"),
        None => client_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert("x-creditgate-request-id", v);
    }
    if let Some(identity) = &ctx.identity {
        // Customer ids and plan names are validated to header-safe characters.
        if let Ok(v) = HeaderValue::from_str(identity.customer.as_str()) {
            headers.insert("x-creditgate-customer", v);
        }
        if let Ok(v) = HeaderValue::from_str(&identity.plan) {
            headers.insert("x-creditgate-plan", v);
        }
    }
    Ok(Request::from_parts(parts, body))
}
