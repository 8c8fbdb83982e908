//! Transfers of transferable credits between customers ("buy me a coffee").

use chrono::{DateTime, Utc};
use shared::{CustomerId, Millicredits};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::buckets::{self, neg};
use super::txn::{self, Entry, Txn, TxnKey};

/// Records a transfer of transferable credits already taken from the sender in Redis:
/// debits the sender's transferable buckets in spending order and credits a `received`
/// bucket. `Ok(Err(shortfall))` when Postgres holds less than Redis did (unread refunds);
/// nothing is written then. The caller holds both customers' locks.
pub async fn record_transfer(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    from: &CustomerId,
    to: &CustomerId,
    amount: Millicredits,
    note: &str,
    now: DateTime<Utc>,
) -> Result<Result<(), Millicredits>, sqlx::Error> {
    let mut live = buckets::live_buckets(&mut **tx, from).await?;
    let (taken, shortfall) = buckets::take_in_order(&mut live, true, amount);
    if shortfall.get() > 0 {
        return Ok(Err(shortfall));
    }
    let updates: Vec<(Uuid, Millicredits)> = live
        .iter()
        .filter(|b| taken.iter().any(|(id, _)| *id == b.id))
        .map(|b| (b.id, b.remaining))
        .collect();
    buckets::update_remaining(tx, &updates).await?;
    let received = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO buckets (id, customer_id, kind, amount, remaining, transferable, created_at)
         VALUES ($1, $2, 'received', $3, $3, TRUE, $4)",
    )
    .bind(received)
    .bind(to.as_str())
    .bind(amount.get())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO transfers (id, from_customer, to_customer, amount, note, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(amount.get())
    .bind(note)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let mut entries: Vec<Entry> = taken
        .iter()
        .map(|(bucket, n)| Entry::customer(from, *bucket, "transfer_out", neg(*n)))
        .collect();
    entries.push(Entry::customer(to, received, "transfer_in", amount));
    let txn = Txn::new(
        "transfer",
        TxnKey::transfer(id),
        Some(format!("transfer:{id}")),
        entries,
    );
    txn::insert_txns(tx, std::slice::from_ref(&txn)).await?;
    Ok(Ok(()))
}

/// Transferred by `customer` since `since` (the daily limit).
pub async fn sent_since(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    since: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let (sum,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount), 0)::int8 FROM transfers
         WHERE from_customer = $1 AND created_at >= $2",
    )
    .bind(customer)
    .bind(since)
    .fetch_one(&mut **tx)
    .await?;
    Ok(sum)
}
