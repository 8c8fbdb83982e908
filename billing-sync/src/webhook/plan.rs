//! Plan changes and what they leave to do in Redis after the commit.

use chrono::{DateTime, Utc};
use shared::redis::StoreError;
use shared::{CustomerId, Millicredits};
use sqlx::{Postgres, Transaction};

use super::ProcessError;
use crate::State;
use crate::ledger::{self, Customer, TxnKey};

/// What a committed event changes in the Redis projection.
#[derive(Debug, Default)]
pub struct Effects {
    /// Whose account.
    pub customer: Option<CustomerId>,
    /// The plan to write, if it changed.
    pub plan: Option<String>,
    /// Non-transferable millicredits added.
    pub nt: i64,
    /// Transferable millicredits added.
    pub tr: i64,
    /// When buckets were set to expire, if they were ([`crate::reconcile::expire_due`] as of
    /// then takes them out of Redis and writes the expiry entries).
    pub expire_at: Option<DateTime<Utc>>,
    /// The projection lock the handler took, held until [`Effects::write_projection`].
    pub projection: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
}

impl Effects {
    /// Nothing to do.
    pub fn none() -> Effects {
        Effects::default()
    }

    /// Effects on `customer`.
    pub fn on(customer: &str) -> Effects {
        Effects {
            customer: CustomerId::parse(customer).ok(),
            ..Effects::default()
        }
    }

    /// Writes the plan and added credits to Redis. Increments, never overwrites, so
    /// concurrent debits by the proxy are kept. The caller holds `State::projection` (read)
    /// from before its Postgres commit until this returns, so a rebuild never counts the
    /// change twice.
    pub async fn write_projection(&self, state: &State) -> Result<(), ProcessError> {
        let Some(customer) = &self.customer else {
            return Ok(());
        };
        if let Some(plan) = &self.plan {
            state.store.set_plan(customer, plan).await?;
        }
        if self.nt != 0 || self.tr != 0 {
            state
                .store
                .add_credits(
                    customer,
                    Millicredits::new(self.nt),
                    Millicredits::new(self.tr),
                )
                .await?;
        }
        Ok(())
    }

    /// Takes the buckets set to expire out of Redis and writes their expiry entries
    /// ([`crate::reconcile::expire_due`], which takes the projection lock itself: call it
    /// after releasing yours).
    pub async fn expire(&self, state: &State) -> Result<(), ProcessError> {
        if let Some(at) = self.expire_at {
            crate::reconcile::expire_due(state, at.max(state.now()))
                .await
                .map_err(|e| {
                    ProcessError::Store(StoreError::Reply(format!(
                        "expiring the old allowance: {e}"
                    )))
                })?;
        }
        Ok(())
    }
}

/// Moves `customer` to `new_plan` at `now`. The old plan's allowance ends (its buckets
/// expire now). With `allocate` (a free plan, which no invoice pays for) a new monthly period
/// starts now with the new plan's allowance; a paid plan's allowance waits for its invoice.
pub async fn switch(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    customer: &Customer,
    new_plan: &str,
    allocate: bool,
    now: DateTime<Utc>,
    effects: &mut Effects,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE buckets SET expires_at = $2
         WHERE customer_id = $1 AND kind IN ('free_allowance', 'plan_allowance') AND remaining > 0
           AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(&customer.id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE customers SET plan = $2 WHERE id = $1")
        .bind(&customer.id)
        .bind(new_plan)
        .execute(&mut **tx)
        .await?;
    effects.expire_at = Some(now);
    effects.plan = Some(new_plan.to_owned());
    if allocate {
        let end = ledger::period_end_after(now);
        start_period(tx, state, &customer.id, new_plan, now, end, None, effects).await?;
    }
    ledger::audit(
        tx,
        "stripe",
        "plan.changed",
        Some(&customer.id),
        Some(serde_json::json!({"plan": customer.plan})),
        Some(serde_json::json!({"plan": new_plan})),
    )
    .await
}

/// Starts an allowance period `[start, end)` and grants `plan`'s allowance for it, once
/// (per `key`, and per period whatever the key). `end` is Stripe's for a paid period, the
/// calendar's for a free one.
#[allow(clippy::too_many_arguments)]
pub async fn start_period(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    customer: &str,
    plan: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    key: Option<TxnKey>,
    effects: &mut Effects,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE customers SET period_start = $2, period_end = $3, allowance_plan = $4 WHERE id = $1")
        .bind(customer)
        .bind(start)
        .bind(end)
        .bind(plan)
        .execute(&mut **tx)
        .await?;
    if let Some(plan) = state.policy().plans.get(plan) {
        let typed = ledger::stored_customer_id(customer)?;
        let (nt, tr) = ledger::allocate_allowance(tx, &typed, plan, start, end, key).await?;
        effects.nt += nt.get();
        effects.tr += tr.get();
    }
    Ok(())
}

/// The customer whose Stripe Customer is `stripe_customer`, or whose id is in the object's
/// metadata; locked for the transaction.
pub async fn find_customer(
    tx: &mut Transaction<'_, Postgres>,
    stripe_customer: Option<&str>,
    our_id: Option<&str>,
) -> Result<Option<Customer>, sqlx::Error> {
    let id: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM customers WHERE ($1::text IS NOT NULL AND stripe_customer_id = $1) OR ($2::text IS NOT NULL AND id = $2)
         ORDER BY (stripe_customer_id = $1) DESC NULLS LAST LIMIT 1",
    )
    .bind(stripe_customer)
    .bind(our_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((id,)) = id else { return Ok(None) };
    ledger::lock_customers(tx, std::slice::from_ref(&id)).await?;
    ledger::customer(&mut **tx, &id).await
}
