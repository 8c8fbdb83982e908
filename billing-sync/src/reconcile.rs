//! Redis as a projection of Postgres: the rebuild after data loss, drift repair, expiries
//! and period rollovers. All run from the worker, between consumer batches, so no usage
//! batch is half applied while they compare Redis with the ledger.

use chrono::{DateTime, Utc};
use shared::CustomerId;
use shared::Millicredits;
use shared::redis::keys::USAGE_CONSUMER_GROUP;
use shared::redis::{Hold, Reconcile, StoreError};
use uuid::Uuid;

use crate::State;
use crate::consumer;
use crate::ledger;

/// Customers read from Postgres per page.
const PAGE_LEN_MAX: i64 = 500;
/// Expired buckets handled per sweep; the rest wait for the next one.
const EXPIRY_BATCH_LEN_MAX: i64 = 1000;

/// Why a reconciler step failed; the worker retries later.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Postgres failed.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// What a pass over every account found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Accounts compared.
    pub accounts: usize,
    /// Accounts written because they differed (or were missing).
    pub repaired: usize,
    /// Total absolute difference found, in millicredits.
    pub drift_millicredits: i64,
    /// Accounts left alone because too much of their stream is unread (the consumer is
    /// behind; they are compared once it catches up).
    pub lagging: usize,
}

type AccountRow = (String, String, i64, i64);

async fn account_page(state: &State, after: &str) -> Result<Vec<AccountRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.plan,
                COALESCE((SELECT SUM(remaining) FROM buckets b
                          WHERE b.customer_id = c.id AND NOT b.transferable), 0)::int8,
                COALESCE((SELECT SUM(remaining) FROM buckets b
                          WHERE b.customer_id = c.id AND b.transferable), 0)::int8
         FROM customers c WHERE c.id > $1 ORDER BY c.id LIMIT $2",
    )
    .bind(after)
    .bind(PAGE_LEN_MAX)
    .fetch_all(&state.db)
    .await
}

/// Compares every account with the ledger (counting unread stream events) and writes the
/// ones that differ, or all of them with `set`. Holds the projection lock exclusively for
/// each page, so no grant or transfer lands between the read of Postgres and the write to
/// Redis.
pub async fn sync_accounts(state: &State, set: bool) -> Result<Drift, ReconcileError> {
    let mut drift = Drift::default();
    let mut after = String::new();
    loop {
        // Exclusive per page: grants and transfers wait for one page, not the whole pass.
        let _exclusive = state.projection.write().await;
        let page = account_page(state, &after).await?;
        let Some(last) = page.last() else { break };
        after = last.0.clone();
        for (id, plan, nt, tr) in page {
            let Ok(customer) = CustomerId::parse(&id) else {
                continue;
            };
            let r = match state
                .store
                .reconcile_account(
                    &customer,
                    USAGE_CONSUMER_GROUP,
                    &plan,
                    (Millicredits::new(nt), Millicredits::new(tr)),
                    set,
                )
                .await?
            {
                Reconcile::Done(r) => r,
                Reconcile::Lagging => {
                    drift.lagging += 1;
                    continue;
                }
            };
            drift.accounts += 1;
            let diff = (r.found.0.get() - r.expected.0.get()).abs()
                + (r.found.1.get() - r.expected.1.get()).abs();
            if diff != 0 || !r.existed {
                if !set {
                    tracing::warn!(customer_id = %id, found_nt = r.found.0.get(), found_tr = r.found.1.get(),
                        expected_nt = r.expected.0.get(), expected_tr = r.expected.1.get(), "balance drift repaired");
                }
                drift.drift_millicredits += diff;
            }
            if r.written {
                drift.repaired += 1;
            }
        }
    }
    metrics::gauge!("billing_reconcile_drift_millicredits").set(drift.drift_millicredits as f64);
    metrics::gauge!("billing_reconcile_accounts_repaired").set(drift.repaired as f64);
    Ok(drift)
}

/// Rebuilds the whole projection after Redis lost its data: consumer groups, every account
/// (plan and balances from the ledger), every live API key, then the ready flag. Until the
/// flag is set, the proxy refuses unknown keys (fail closed) instead of admitting against an
/// empty cache.
pub async fn rebuild(state: &State) -> Result<Drift, ReconcileError> {
    tracing::warn!("rebuilding the Redis projection from Postgres");
    consumer::ensure_groups(&state.store).await?;
    let drift = sync_accounts(state, true).await?;
    let mut after = String::new();
    loop {
        // Exclusive: a revocation cannot commit between this read and the write below.
        let _exclusive = state.projection.write().await;
        let keys: Vec<(String, String)> = sqlx::query_as(
            "SELECT key_hash, customer_id FROM api_keys
             WHERE revoked_at IS NULL AND key_hash > $1 ORDER BY key_hash LIMIT $2",
        )
        .bind(&after)
        .bind(PAGE_LEN_MAX)
        .fetch_all(&state.db)
        .await?;
        let Some(last) = keys.last() else { break };
        after = last.0.clone();
        for (hash, customer) in keys {
            let Ok(customer) = CustomerId::parse(&customer) else {
                continue;
            };
            state
                .store
                .put_api_key(&shared::ApiKeyHash::from_hex(hash), &customer)
                .await?;
        }
    }
    state.store.mark_ready().await?;
    metrics::counter!("billing_projection_rebuilds_total").increment(1);
    tracing::info!(accounts = drift.accounts, "projection rebuilt; ready");
    Ok(drift)
}

/// Holds what is left of every bucket whose time has come, and of every pending take-back,
/// in Redis, marking the point in the usage stream where it expires. The consumer posts the
/// expiry when it reads the mark, after every debit before it, so what expires is exactly
/// what the ledger says is left then ([`crate::ledger::usage`]). Returns the holds written.
pub async fn expire_due(state: &State, now: DateTime<Utc>) -> Result<usize, ReconcileError> {
    type Due = (Uuid, String, i64, bool, Option<String>, Option<i64>);
    let due: Vec<Due> = sqlx::query_as(
        "SELECT id, customer_id, remaining, transferable, NULL::text, NULL::int8 FROM buckets
         WHERE expires_at <= $1 AND remaining > 0
         UNION ALL
         SELECT id, customer_id, remaining, transferable, take_back_key, take_back_limit FROM buckets
         WHERE take_back_key IS NOT NULL AND take_back_key IS DISTINCT FROM take_back_done_key
           AND remaining > 0 AND (expires_at IS NULL OR expires_at > $1)
         LIMIT $2",
    )
    .bind(now)
    .bind(EXPIRY_BATCH_LEN_MAX)
    .fetch_all(&state.db)
    .await?;
    let mut held = 0;
    for (bucket, customer, remaining, transferable, key, limit) in due {
        let Ok(customer) = CustomerId::parse(&customer) else {
            continue;
        };
        let limit = limit.map(Millicredits::new);
        let amount = limit.map_or(remaining, |l| l.get().min(remaining));
        let hold = state
            .store
            .hold_for_expiry(
                &customer,
                &bucket.to_string(),
                transferable,
                Millicredits::new(amount),
                limit,
                key.as_deref().unwrap_or(""),
                now.timestamp_millis(),
            )
            .await?;
        if let Hold::Marked(_) = hold {
            held += 1;
        }
    }
    Ok(held)
}

/// Starts the next monthly allowance period where the calendar decides it: free plans, and
/// the months inside a yearly plan's paid year (up to Stripe's period end). A paid monthly
/// period starts only when its invoice is paid ([`crate::webhook::invoice`]); its allowance
/// just expires at the period's end meanwhile.
pub async fn roll_over_periods(state: &State, now: DateTime<Utc>) -> Result<usize, ReconcileError> {
    let policy = state.policy();
    let free_plans: Vec<String> = policy
        .plans
        .values()
        .filter(|p| !p.is_paid())
        .map(|p| p.name.clone())
        .collect();
    let due: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM customers WHERE period_end <= $1
           AND (plan = ANY($2) OR (subscription_interval = 'yearly' AND status = 'active'
                                   AND subscription_period_end > period_end))
         ORDER BY period_end LIMIT $3",
    )
    .bind(now)
    .bind(&free_plans)
    .bind(PAGE_LEN_MAX)
    .fetch_all(&state.db)
    .await?;
    let mut rolled = 0;
    for (id,) in due {
        let Ok(customer_id) = CustomerId::parse(&id) else {
            continue;
        };
        let _shared = state.projection.read().await;
        let mut tx = state.db.begin().await?;
        ledger::lock_customers(&mut tx, std::slice::from_ref(&id)).await?;
        let Some(customer) = ledger::customer(&mut *tx, &id).await? else {
            continue;
        };
        if customer.period_end > now {
            continue;
        }
        let Some(plan) = policy.plans.get(&customer.plan) else {
            continue;
        };
        let paid_until = customer.subscription_period_end;
        let mut start = customer.period_end;
        let mut end = ledger::period_end_after(start);
        // Bounded: a customer idle for years skips to the current period.
        for _ in 0..1200 {
            if end > now {
                break;
            }
            start = end;
            end = ledger::period_end_after(start);
        }
        if plan.is_paid() {
            // A yearly plan's month never runs past the paid year.
            match paid_until {
                Some(until) if start < until => end = end.min(until),
                _ => continue,
            }
        }
        let granted =
            ledger::allocate_allowance(&mut tx, &customer_id, plan, start, end, None).await?;
        sqlx::query("UPDATE customers SET period_start = $2, period_end = $3 WHERE id = $1")
            .bind(&id)
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await?;
        ledger::audit(
            &mut tx,
            "system",
            "period.rollover",
            Some(&id),
            Some(serde_json::json!({"period_start": customer.period_start, "period_end": customer.period_end})),
            Some(serde_json::json!({"period_start": start, "period_end": end})),
        )
        .await?;
        tx.commit().await?;
        state
            .store
            .add_credits(&customer_id, granted.0, granted.1)
            .await?;
        rolled += 1;
    }
    Ok(rolled)
}

/// Forgets idempotency records older than two days (the contract keeps them ≥ 24 h).
pub async fn forget_old_idempotency_records(state: &State) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_records WHERE created_at < now() - interval '48 hours'",
    )
    .execute(&state.db)
    .await?;
    Ok(done.rows_affected())
}

/// Customers whose ledger entries do not sum to their buckets (should be none; a metric).
pub async fn ledger_mismatches(state: &State) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM customers c
         WHERE COALESCE((SELECT SUM(amount) FROM ledger_entries e WHERE e.customer_id = c.id), 0)
            <> COALESCE((SELECT SUM(remaining) FROM buckets b WHERE b.customer_id = c.id), 0)",
    )
    .fetch_one(&state.db)
    .await?;
    metrics::gauge!("billing_ledger_mismatched_customers").set(n as f64);
    Ok(n)
}
