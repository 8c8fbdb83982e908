//! Admit: the plan's rate limit first (cheap, in memory), then the debit in Redis.

use std::time::Instant;

use shared::policy::StoreErrorMode;
use shared::redis::Admission;

use crate::App;
use crate::ctx::RequestCtx;
use crate::metric;
use crate::refusal::Refusal;
use crate::runtime::Runtime;

/// Refuses with 429 over the plan's rate, 402 when the balance does not cover the cost,
/// 503 when Redis cannot answer under `fail_closed`. On success `ctx.debit` holds what was
/// taken (none for a free request).
pub async fn run(app: &App, runtime: &Runtime, ctx: &mut RequestCtx) -> Result<(), Refusal> {
    let Some(identity) = &ctx.identity else {
        return Ok(());
    };
    ctx.rate = Some(runtime.limits.check(&identity.plan, &identity.customer)?);
    if ctx.cost.is_zero() {
        return Ok(());
    }
    let started = Instant::now();
    let now_ms = chrono_now_ms();
    let admission = app
        .store
        .admit(
            &identity.customer,
            ctx.cost,
            &ctx.route,
            &ctx.request_id,
            now_ms,
        )
        .await;
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
        Err(e) => {
            metrics::counter!(metric::REDIS_ERRORS).increment(1);
            tracing::warn!(error = %e, request_id = %ctx.request_id, "debit failed");
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

/// Milliseconds since the Unix epoch, for usage events.
pub fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
