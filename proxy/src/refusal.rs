//! Every refusal the proxy answers with, rendered in one place: JSON
//! `{"error":{"code","message",…}}`, or an HTML page for clients that prefer `text/html`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use shared::Millicredits;

use crate::phase::Body;
use crate::runtime::Runtime;

/// Why a request was not (fully) served. Phases return these; they never build bodies.
#[derive(Debug)]
pub enum Refusal {
    /// 400: the request path has no normal form (see [`crate::path`]).
    BadRequest {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// 401: no key, an unknown key or a revoked one.
    Unauthorized,
    /// 402: the balance does not cover the cost.
    CreditsExhausted {
        /// The balance.
        balance: Millicredits,
        /// The cost.
        required: Millicredits,
    },
    /// 429: over the plan's rate limit.
    RateLimited {
        /// Seconds until a request would be allowed.
        retry_after_s: u64,
    },
    /// 503: Redis unreachable under `fail_closed`, or its data is being rebuilt.
    BillingUnavailable,
    /// 502: the upstream could not be reached or broke the connection.
    UpstreamError,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
}

impl Refusal {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadRequest { .. } => "bad_request",
            Refusal::Unauthorized => "unauthorized",
            Refusal::CreditsExhausted { .. } => "credits_exhausted",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::BillingUnavailable => "billing_unavailable",
            Refusal::UpstreamError => "upstream_error",
            Refusal::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::CreditsExhausted { .. } => StatusCode::PAYMENT_REQUIRED,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BillingUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UpstreamError => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::BadRequest { reason } => format!("the request path is not valid: {reason}"),
            Refusal::Unauthorized => {
                "a valid API key is required (Authorization: Bearer cg_… or X-Api-Key)".into()
            }
            Refusal::CreditsExhausted { balance, required } => {
                format!(
                    "this request costs {required} credits and the balance is {balance}: upgrade your plan or top up"
                )
            }
            Refusal::RateLimited { retry_after_s } => {
                format!("rate limit of your plan exceeded; retry in {retry_after_s} s")
            }
            Refusal::BillingUnavailable => {
                "billing is temporarily unavailable; retry shortly".into()
            }
            Refusal::UpstreamError => {
                "the service could not be reached; the request was not charged".into()
            }
            Refusal::UpstreamTimeout => {
                "the service did not answer in time; the request was not charged".into()
            }
        }
    }

    /// The response: status, body in the client's preferred form, and headers
    /// (`WWW-Authenticate`, `Retry-After`, `X-Credits-Remaining`).
    pub fn render(&self, runtime: &Runtime, html: bool) -> Response<Body> {
        let mut error = serde_json::json!({ "code": self.code(), "message": self.message() });
        if let Refusal::CreditsExhausted { balance, required } = self {
            error["balance"] = serde_json::Value::String(balance.to_string());
            error["required"] = serde_json::Value::String(required.to_string());
            error["upgrade_url"] = serde_json::Value::String(runtime.upgrade_url.clone());
            error["top_up_url"] = serde_json::Value::String(runtime.top_up_url.clone());
            error["plans"] = runtime.plans_offer.clone();
        }
        let (content_type, body) = if html {
            ("text/html; charset=utf-8", html_page(self.status(), &error))
        } else {
            (
                "application/json",
                serde_json::json!({ "error": error }).to_string(),
            )
        };
        let mut resp = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.extra_headers(headers);
        resp
    }

    fn extra_headers(&self, headers: &mut HeaderMap) {
        match self {
            Refusal::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"creditgate\""),
                );
            }
            Refusal::RateLimited { retry_after_s } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            Refusal::BillingUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Refusal::CreditsExhausted { balance, .. } => {
                if let Ok(v) = HeaderValue::from_str(&balance.to_string()) {
                    headers.insert("x-credits-remaining", v);
                }
            }
            Refusal::BadRequest { .. } | Refusal::UpstreamError | Refusal::UpstreamTimeout => {}
        }
    }
}

/// Whether the client prefers HTML: `text/html` in `Accept` ahead of any JSON type.
pub fn wants_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let html = accept.find("text/html");
    let json = accept.find("application/json");
    match (html, json) {
        (Some(h), Some(j)) => h < j,
        (Some(_), None) => true,
        _ => false,
    }
}

fn html_page(status: StatusCode, error: &serde_json::Value) -> String {
    let text = |key: &str| escape(error[key].as_str().unwrap_or_default());
    let mut links = String::new();
    if error.get("upgrade_url").is_some() {
        links = format!(
            "<p><a href=\"{}\">Upgrade your plan</a> · <a href=\"{}\">Buy credits</a></p>",
            text("upgrade_url"),
            text("top_up_url")
        );
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\
         <body><h1>{reason}</h1><p>{message}</p>{links}<p><code>{code_name}</code></p></body></html>",
        code = status.as_u16(),
        reason = status.canonical_reason().unwrap_or(""),
        message = text("message"),
        code_name = text("code"),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_chosen_only_when_preferred() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert!(wants_html(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/html"),
        );
        assert!(!wants_html(&h));
    }
}
