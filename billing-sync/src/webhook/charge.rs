//! `charge.refunded` and `charge.dispute.created`: a pack whose charge was refunded (in
//! part: the same share of its credits) or disputed (all of them) gives back what is left
//! of its credits, never below zero. The take-back is recorded on the bucket here; the
//! expiry sweep holds it in Redis and the consumer posts it where it falls in the usage
//! stream, like an expiry (see [`crate::ledger::usage`]).

use serde_json::Value;
use shared::Millicredits;
use uuid::Uuid;

use super::plan::Effects;
use super::{Event, ProcessError, begin, finish};
use crate::State;
use crate::ledger::{self, TxnKey};

/// Handles both events.
pub async fn handle(state: &State, event: &Event) -> Result<Option<Effects>, ProcessError> {
    let object = &event.object;
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let (charge, reason, share) = if event.type_ == "charge.refunded" {
        let share = match (
            object["amount_refunded"].as_i64(),
            object["amount"].as_i64(),
        ) {
            (Some(refunded), Some(amount)) if amount > 0 && refunded >= 0 => {
                Some((refunded.min(amount), amount))
            }
            _ => None,
        };
        (text(&object["id"]), "refund", share)
    } else {
        (text(&object["charge"]), "dispute", Some((1, 1)))
    };
    let payment_intent = text(&object["payment_intent"]);
    let Some(mut tx) = begin(state, &event.id).await? else {
        return Ok(None);
    };
    let (Some(charge), Some(payment_intent), Some((part, whole))) = (charge, payment_intent, share)
    else {
        tracing::warn!(event_id = %event.id, "charge event without charge, payment intent or amounts; recorded only");
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    let bucket: Option<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT id, customer_id, amount FROM buckets
         WHERE source_ref = $1 AND kind = 'purchased'",
    )
    .bind(&payment_intent)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((bucket, customer, amount)) = bucket else {
        // A charge that bought no pack (a subscription's): nothing to take back here.
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    ledger::lock_customers(&mut tx, std::slice::from_ref(&customer)).await?;
    // The share of the pack's credits this charge's refunds now cover, rounded down.
    let target = i64::try_from(i128::from(amount) * i128::from(part) / i128::from(whole))
        .unwrap_or(amount)
        .clamp(0, amount);
    let (taken,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(-SUM(e.amount), 0)::int8 FROM ledger_entries e
         JOIN ledger_txns t ON t.id = e.txn_id
         WHERE e.bucket_id = $1 AND t.idempotency_key LIKE $2",
    )
    .bind(bucket)
    .bind(TxnKey::TAKE_BACK_PATTERN)
    .fetch_one(&mut **tx)
    .await?;
    let limit = target - taken;
    let mut effects = Effects::on(&customer);
    if limit > 0 {
        let key = TxnKey::take_back(&charge, reason, Millicredits::new(target));
        sqlx::query("UPDATE buckets SET take_back_key = $2, take_back_limit = $3 WHERE id = $1")
            .bind(bucket)
            .bind(key.as_str())
            .bind(limit)
            .execute(&mut **tx)
            .await?;
        effects.expire_at = Some(state.now());
    }
    // Read under the customer's lock: what the consumer may still take from.
    let (remaining,): (i64,) = sqlx::query_as("SELECT remaining FROM buckets WHERE id = $1")
        .bind(bucket)
        .fetch_one(&mut **tx)
        .await?;
    ledger::audit(
        &mut tx,
        "stripe",
        "credits.take_back",
        Some(&customer),
        Some(serde_json::json!({"bucket": bucket, "remaining": Millicredits::new(remaining)})),
        Some(
            serde_json::json!({"bucket": bucket, "charge": charge, "reason": reason,
            "take_back": Millicredits::new(limit.max(0)).min(Millicredits::new(remaining))}),
        ),
    )
    .await?;
    effects.projection = Some(finish(tx, &event.id).await?);
    Ok(Some(effects))
}
