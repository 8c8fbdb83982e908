//! Admit: the plan's rate limit first (cheap, in memory), then the debit in Redis.
//!
//! The debit is idempotent per request id (the admission marker), so when Redis does not
//! answer it is tried once more with the same id: a first try that ran but whose answer
//! was lost is then reported, not debited twice. When the second try fails as well the
//! request is given up on, and a refund by request id is queued: it gives back whatever a
//! try that did run took, or marks the request so that a try still on its way refuses.

use std::time::Instant;

use shared::policy::StoreErrorMode;
use shared::redis::{Admission, Identity, StoreError};

use crate::App;
use crate::ctx::RequestCtx;
use crate::metric;
use crate::refunds::RefundJob;
use crate::refusal::Refusal;
use crate::runtime::Runtime;

/// Tries of the admission script per request (the first and one retry).
const ADMISSION_TRIES_MAX: u32 = 2;

/// Refuses with 429 over the plan's rate, 402 when the balance does not cover the cost,
/// 503 when Redis cannot answer under `fail_closed` (under `fail_open` the request goes on
/// uncharged). On success `ctx.debit` holds what was taken (none for a free request).
pub async fn run(app: &App, runtime: &Runtime, ctx: &mut RequestCtx) -> Result<(), Refusal> {
    let Some(identity) = ctx.identity.clone() else {
        return Ok(());
    };
    ctx.rate = Some(runtime.limits.check(&identity.plan, &identity.customer)?);
    if ctx.cost.is_zero() {
        return Ok(());
    }
    let started = Instant::now();
    let now_ms = chrono_now_ms();
    let admission = admit(app, &identity, ctx, now_ms).await;
    metrics::histogram!(metric::DEBIT_SECONDS).record(started.elapsed().as_secs_f64());
    match admission {
        Ok(Admission::Admitted(debit)) => {
            ctx.debit = Some(debit);
            Ok(())
        }
        Ok(Admission::Insufficient { balance }) => Err(Refusal::CreditsExhausted {
            balance,
            required: ctx.cost,
        }),
        Ok(Admission::NoAccount) => Err(Refusal::BillingUnavailable),
        // Only a try that reaches Redis after this request was given up on sees this, and
        // this request gives up only after its last try: a request id used twice.
        Ok(Admission::GivenUp) => {
            tracing::error!(request_id = %ctx.request_id, "admission found its request given up");
            Err(Refusal::BillingUnavailable)
        }
        Err(e) => give_up(app, runtime, &identity, ctx, now_ms, &e),
    }
}

/// The admission script, tried up to [`ADMISSION_TRIES_MAX`] times with the same request
/// id; each try is bounded by the store's response timeout.
async fn admit(
    app: &App,
    identity: &Identity,
    ctx: &RequestCtx,
    now_ms: i64,
) -> Result<Admission, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let result = app
            .store
            .admit(
                &identity.customer,
                ctx.cost,
                &ctx.route,
                &ctx.request_id,
                now_ms,
            )
            .await;
        match result {
            Err(e) if tries < ADMISSION_TRIES_MAX => {
                metrics::counter!(metric::REDIS_ERRORS).increment(1);
                tracing::warn!(error = %e, request_id = %ctx.request_id, "debit failed; trying again");
            }
            other => return other,
        }
    }
}

/// No answer from Redis: queue the refund by request id, then answer as the policy says.
fn give_up(
    app: &App,
    runtime: &Runtime,
    identity: &Identity,
    ctx: &mut RequestCtx,
    now_ms: i64,
    error: &StoreError,
) -> Result<(), Refusal> {
    let mode = runtime.policy.proxy.on_store_error;
    let mode_label = match mode {
        StoreErrorMode::FailClosed => "fail_closed",
        StoreErrorMode::FailOpen => "fail_open",
    };
    metrics::counter!(metric::REDIS_ERRORS).increment(1);
    metrics::counter!(metric::ADMISSIONS_GIVEN_UP, "mode" => mode_label).increment(1);
    tracing::warn!(
        error = %error,
        request_id = %ctx.request_id,
        "debit failed twice; refunding it if it went through"
    );
    app.refunds.enqueue(RefundJob {
        customer: identity.customer.clone(),
        debit: None,
        route: ctx.route.clone(),
        request_id: ctx.request_id.clone(),
        reason: "admission_failed",
        ts_ms: now_ms,
    });
    match mode {
        StoreErrorMode::FailClosed => Err(Refusal::BillingUnavailable),
        StoreErrorMode::FailOpen => {
            ctx.uncharged = Some("store_unavailable");
            Ok(())
        }
    }
}

/// Milliseconds since the Unix epoch, for usage events.
pub fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
