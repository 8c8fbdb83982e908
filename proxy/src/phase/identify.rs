//! Identify: which route the request takes (it says whether a key is needed) and, if one
//! is, whose key it carries. Routes are matched on the normalised path ([`crate::path`]),
//! the one the upstream receives.

use hyper::{HeaderMap, Request};
use shared::ApiKey;
use shared::policy::{Auth, StoreErrorMode};
use shared::redis::Lookup;

use crate::App;
use crate::ctx::RequestCtx;
use crate::metric;
use crate::refusal::Refusal;
use crate::runtime::Runtime;

/// Normalises the path (400 when it has no normal form) and matches the route on it, then
/// resolves the API key (`Authorization: Bearer` or `X-Api-Key`) to a customer and plan.
/// No key, an unknown or a revoked one: 401.
pub async fn run<B>(
    app: &App,
    runtime: &Runtime,
    ctx: &mut RequestCtx,
    req: &Request<B>,
) -> Result<(), Refusal> {
    let path = crate::path::normalise(req.uri().path())
        .map_err(|e| Refusal::BadRequest { reason: e.reason() })?;
    let priced = runtime.policy.price(req.method().as_str(), &path);
    ctx.path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    ctx.auth = priced.auth;
    ctx.route = priced
        .route
        .map(|r| r.label())
        .unwrap_or_else(|| String::from("default"));
    ctx.cost = priced.cost;
    if priced.auth == Auth::None {
        return Ok(());
    }
    let key = api_key(req).ok_or(Refusal::Unauthorized)?;
    let hash = key.hash();
    if let Some(identity) = app.keys.get(&hash) {
        ctx.identity = Some(identity);
        return Ok(());
    }
    match app.store.lookup(&hash).await {
        Ok(Lookup::Found(identity)) => {
            app.keys.put(hash, identity.clone());
            ctx.identity = Some(identity);
            Ok(())
        }
        Ok(Lookup::Unknown) => Err(Refusal::Unauthorized),
        // Redis is up but empty (it lost its data): nothing it says about keys can be
        // trusted until billing-sync has rebuilt it, whatever the failure mode.
        Ok(Lookup::NotReady) => Err(Refusal::BillingUnavailable),
        Err(e) => {
            metrics::counter!(metric::REDIS_ERRORS).increment(1);
            tracing::warn!(error = %e, "api key lookup failed");
            match runtime.policy.proxy.on_store_error {
                StoreErrorMode::FailClosed => Err(Refusal::BillingUnavailable),
                StoreErrorMode::FailOpen => {
                    ctx.uncharged = Some("store_unavailable");
                    Ok(())
                }
            }
        }
    }
}

/// The API key the request carries, if it has the key's shape.
pub fn api_key<B>(req: &Request<B>) -> Option<ApiKey> {
    let headers = req.headers();
    bearer_key(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ApiKey::parse(v.trim()))
    })
}

/// Whether `Authorization` carries one of our keys (then it is not forwarded).
pub fn api_key_in_authorization(headers: &HeaderMap) -> bool {
    bearer_key(headers).is_some()
}

fn bearer_key(headers: &HeaderMap) -> Option<ApiKey> {
    let auth = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    // The scheme is case-insensitive (RFC 9110 §11.1): Bearer, bearer, BEARER.
    let (scheme, token) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    ApiKey::parse(token.trim())
}

#[cfg(test)]
mod bearer_tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let key = ApiKey::generate();
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let mut headers = HeaderMap::new();
            let value = format!("{scheme} {}", key.expose());
            headers.insert(
                hyper::header::AUTHORIZATION,
                value.parse().expect("a valid header"),
            );
            assert_eq!(
                bearer_key(&headers).map(|k| k.hash()),
                Some(key.hash()),
                "{scheme}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            hyper::header::AUTHORIZATION,
            format!("Basic {}", key.expose()).parse().expect("valid"),
        );
        assert!(bearer_key(&headers).is_none());
    }
}
