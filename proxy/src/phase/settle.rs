//! Settle: runs for every request, also when the client has gone (the request runs as its
//! own task, see [`crate::handler`]). Refunds a debit whose upstream failed (queued for
//! retry when Redis does not take it), turns the outcome into the response with the credit
//! and rate-limit headers, counts and logs.

use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Response};
use shared::Millicredits;

use super::Body;
use crate::App;
use crate::ctx::RequestCtx;
use crate::headers::strip_hop_by_hop;
use crate::metric;
use crate::refunds::RefundJob;
use crate::refusal::Refusal;
use crate::runtime::Runtime;

/// Finishes the request. A 5xx from the upstream is passed on unchanged but refunded
/// (`X-Credits-Cost: 0`); 502/504 are refunded; a 4xx is charged.
pub async fn run(
    app: &App,
    runtime: &Runtime,
    mut ctx: RequestCtx,
    outcome: Result<Response<Incoming>, Refusal>,
    started: Instant,
) -> Response<Body> {
    let refund_reason = match &outcome {
        Ok(resp) if resp.status().is_server_error() => Some("upstream_5xx"),
        Err(Refusal::UpstreamError) => Some("upstream_error"),
        Err(Refusal::UpstreamTimeout) => Some("upstream_timeout"),
        _ => None,
    };
    let charged = match refund_reason {
        Some(reason) => {
            refund(app, &mut ctx, reason).await;
            Millicredits::ZERO
        }
        None => ctx.debit.as_ref().map_or(Millicredits::ZERO, |_| ctx.cost),
    };

    let (mut resp, outcome_label) = match outcome {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            (
                Response::from_parts(parts, body.boxed()),
                if ctx.uncharged.is_some() {
                    "fail_open"
                } else {
                    "forwarded"
                },
            )
        }
        Err(refusal) => {
            let label = refusal.code();
            (refusal.render(runtime, ctx.wants_html), label)
        }
    };
    let status = resp.status().as_u16();
    credit_headers(resp.headers_mut(), &ctx, charged);

    if ctx.uncharged.is_some() && outcome_label == "fail_open" {
        metrics::counter!(metric::FAIL_OPEN).increment(1);
    }
    metrics::counter!(metric::REQUESTS, "outcome" => outcome_label).increment(1);
    tracing::info!(
        request_id = %ctx.request_id,
        customer_id = ctx.identity.as_ref().map(|i| i.customer.as_str()).unwrap_or("-"),
        route = %ctx.route,
        cost_millicredits = charged.get(),
        status,
        outcome = outcome_label,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "request"
    );
    resp
}

async fn refund(app: &App, ctx: &mut RequestCtx, reason: &'static str) {
    let (Some(debit), Some(identity)) = (&ctx.debit, &ctx.identity) else {
        return;
    };
    let now_ms = super::admit::chrono_now_ms();
    match app
        .store
        .refund(
            &identity.customer,
            debit,
            &ctx.route,
            &ctx.request_id,
            now_ms,
            reason,
        )
        .await
    {
        Ok(balance) => {
            metrics::counter!(metric::REFUNDS, "reason" => reason).increment(1);
            ctx.refunded_balance = balance;
        }
        Err(e) => {
            // Retried from the queue until Redis takes it; the refund marker keeps retries
            // from giving back twice. The answer already says the request was not charged.
            metrics::counter!(metric::REDIS_ERRORS).increment(1);
            tracing::warn!(request_id = %ctx.request_id, error = %e, reason, "refund failed; queued");
            app.refunds.enqueue(RefundJob {
                customer: identity.customer.clone(),
                debit: Some(debit.clone()),
                route: ctx.route.clone(),
                request_id: ctx.request_id.clone(),
                reason,
                ts_ms: now_ms,
            });
        }
    }
}

fn credit_headers(headers: &mut HeaderMap, ctx: &RequestCtx, charged: Millicredits) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("x-creditgate-request-id", ctx.request_id.clone());
    if ctx.identity.is_some() {
        set("x-credits-cost", charged.to_string());
        let remaining = ctx
            .refunded_balance
            .or(ctx.debit.as_ref().map(|d| d.remaining));
        if let Some(remaining) = remaining {
            set("x-credits-remaining", remaining.to_string());
        }
    }
    if let Some(rate) = &ctx.rate {
        set(
            "ratelimit-policy",
            format!("\"{}\";q={};w={}", rate.name, rate.quota, rate.window_s),
        );
        set(
            "ratelimit",
            format!("\"{}\";r={};t={}", rate.name, rate.remaining, rate.reset_s),
        );
    }
}
