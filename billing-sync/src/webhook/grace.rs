//! The grace period after a failed payment: a customer past due for longer than
//! `stripe.past_due_grace_days` drops to the default plan.

use chrono::{DateTime, Duration, Utc};

use super::ProcessError;
use super::plan::{self, Effects};
use crate::State;
use crate::ledger;

/// Customers dropped per pass.
const GRACE_BATCH_LEN_MAX: i64 = 100;

/// Drops every customer whose grace period is over; returns how many.
pub async fn drop_overdue(state: &State, now: DateTime<Utc>) -> Result<usize, ProcessError> {
    let cutoff = now - Duration::days(i64::from(state.policy().stripe.past_due_grace_days));
    let due: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM customers WHERE status = 'past_due' AND past_due_since <= $1 AND plan <> $2
         ORDER BY past_due_since LIMIT $3",
    )
    .bind(cutoff)
    .bind(&state.policy().default_plan)
    .bind(GRACE_BATCH_LEN_MAX)
    .fetch_all(&state.db)
    .await?;
    let mut dropped = 0;
    for (id,) in due {
        let projection = state.projection.read().await;
        let mut tx = state.db.begin().await?;
        ledger::lock_customers(&mut tx, std::slice::from_ref(&id)).await?;
        let Some(customer) = ledger::customer(&mut *tx, &id).await? else {
            continue;
        };
        if customer.status != "past_due" || customer.plan == state.policy().default_plan {
            continue;
        }
        let mut effects = Effects::on(&id);
        plan::switch(
            &mut tx,
            state,
            &customer,
            &state.policy().default_plan,
            true,
            now,
            &mut effects,
        )
        .await?;
        sqlx::query(
            "UPDATE customers SET status = 'canceled', past_due_since = NULL WHERE id = $1",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        ledger::audit(
            &mut tx,
            "system",
            "grace.expired",
            Some(&id),
            Some(serde_json::json!({"plan": customer.plan})),
            None,
        )
        .await?;
        tx.commit().await?;
        effects.write_projection(state).await?;
        drop(projection);
        effects.expire(state).await?;
        dropped += 1;
    }
    Ok(dropped)
}
