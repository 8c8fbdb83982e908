//! Ledger transactions: entries that sum to zero, applied at most once per [`TxnKey`].

use shared::{CustomerId, Millicredits};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::buckets::BucketKind;

/// Where allocations and grants come from.
pub const SYSTEM_ISSUANCE: &str = "system:issuance";
/// Where usage goes (and refunds come back from).
pub const SYSTEM_USAGE: &str = "system:usage";
/// Where expired (and taken-back) credits go.
pub const SYSTEM_EXPIRY: &str = "system:expiry";

/// A ledger transaction's idempotency key: every format lives here, so two writers of the
/// same fact always compute the same key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxnKey(String);

impl TxnKey {
    /// A plan allowance for the period starting at `period_start` (free plans, the months of
    /// a yearly plan).
    pub fn allocation(
        customer: &CustomerId,
        kind: BucketKind,
        period_start: chrono::DateTime<chrono::Utc>,
    ) -> TxnKey {
        TxnKey(format!(
            "allocation:{customer}:{}:{}",
            kind.as_str(),
            period_start.timestamp_millis()
        ))
    }
    /// A paid period's allowance, granted by the invoice that paid it.
    pub fn allocation_by_invoice(customer: &CustomerId, invoice: &str) -> TxnKey {
        TxnKey(format!("allocation:{customer}:invoice:{invoice}"))
    }
    /// An operator's grant under the caller's idempotency key.
    pub fn grant(customer: &CustomerId, key: &str) -> TxnKey {
        TxnKey(format!("grant:{customer}:{key}"))
    }
    /// A mid-period upgrade's prorated difference, granted by its invoice.
    pub fn upgrade(customer: &CustomerId, invoice: &str) -> TxnKey {
        TxnKey(format!("grant:{customer}:invoice:{invoice}"))
    }
    /// A credit pack bought through a Checkout Session.
    pub fn purchase(session: &str) -> TxnKey {
        TxnKey(format!("purchase:{session}"))
    }
    /// A request's debit.
    pub fn debit(request_id: &str) -> TxnKey {
        TxnKey(format!("usage:debit:{request_id}"))
    }
    /// A request's refund.
    pub fn refund(request_id: &str) -> TxnKey {
        TxnKey(format!("usage:refund:{request_id}"))
    }
    /// A bucket's expiry at the stream entry `stream_id` of its hold.
    pub fn expiry(bucket: Uuid, stream_id: &str) -> TxnKey {
        TxnKey(format!("expiry:{bucket}:{stream_id}"))
    }
    /// Taking back a pack's credits after its charge was refunded or disputed, up to a
    /// cumulative `target` (so a later, larger refund takes only the difference).
    pub fn take_back(charge: &str, reason: &str, target: Millicredits) -> TxnKey {
        TxnKey(format!("take_back:{charge}:{reason}:{}", target.get()))
    }
    /// A SQL `LIKE` pattern matching every [`TxnKey::take_back`] key.
    pub const TAKE_BACK_PATTERN: &str = "take_back:%";
    /// A transfer.
    pub fn transfer(id: Uuid) -> TxnKey {
        TxnKey(format!("transfer:{id}"))
    }
    /// A key read back from storage (a stream marker carries one).
    pub fn from_stored(key: String) -> TxnKey {
        TxnKey(key)
    }
    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TxnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One side of a ledger transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `customer:<id>` or a `system:*` account.
    pub account: String,
    /// The customer and the bucket changed, for customer-side entries.
    pub bucket: Option<(CustomerId, Uuid)>,
    /// allocation, grant, usage, refund, expiry, transfer_out, transfer_in, adjustment.
    pub kind: &'static str,
    /// Into the account (negative: out of it).
    pub amount: Millicredits,
}

impl Entry {
    /// A customer-side entry on one bucket.
    pub fn customer(
        customer: &CustomerId,
        bucket: Uuid,
        kind: &'static str,
        amount: Millicredits,
    ) -> Entry {
        Entry {
            account: format!("customer:{customer}"),
            bucket: Some((customer.clone(), bucket)),
            kind,
            amount,
        }
    }

    /// A system-side entry.
    pub fn system(account: &str, kind: &'static str, amount: Millicredits) -> Entry {
        Entry {
            account: account.to_owned(),
            bucket: None,
            kind,
            amount,
        }
    }
}

/// A ledger transaction ready to insert.
#[derive(Clone, Debug)]
pub struct Txn {
    /// Its id.
    pub id: Uuid,
    /// allocation, grant, usage, refund, expiry, transfer, adjustment.
    pub kind: &'static str,
    /// Applied once per key.
    pub key: TxnKey,
    /// Where it came from (stream entry, transfer id, reason).
    pub source_ref: Option<String>,
    /// Its entries; they sum to zero.
    pub entries: Vec<Entry>,
}

impl Txn {
    /// A transaction of `kind` under `key`.
    pub fn new(
        kind: &'static str,
        key: TxnKey,
        source_ref: Option<String>,
        entries: Vec<Entry>,
    ) -> Txn {
        Txn {
            id: Uuid::now_v7(),
            kind,
            key,
            source_ref,
            entries,
        }
    }
}

/// Inserts transactions whose keys the caller knows are new (the consumer, after its usage
/// insert deduplicated them). A key seen before fails the whole insert.
pub async fn insert_txns(
    tx: &mut Transaction<'_, Postgres>,
    txns: &[Txn],
) -> Result<(), sqlx::Error> {
    if txns.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(txns.len());
    let mut kinds = Vec::with_capacity(txns.len());
    let mut keys = Vec::with_capacity(txns.len());
    let mut refs = Vec::with_capacity(txns.len());
    let (mut e_txn, mut e_account, mut e_customer, mut e_bucket, mut e_kind, mut e_amount) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for t in txns {
        debug_assert_eq!(
            t.entries.iter().map(|e| e.amount.get()).sum::<i64>(),
            0,
            "ledger transaction {} is unbalanced",
            t.key
        );
        ids.push(t.id);
        kinds.push(t.kind);
        keys.push(t.key.as_str());
        refs.push(t.source_ref.as_deref());
        for e in &t.entries {
            e_txn.push(t.id);
            e_account.push(e.account.as_str());
            e_customer.push(e.bucket.as_ref().map(|(c, _)| c.as_str()));
            e_bucket.push(e.bucket.as_ref().map(|(_, b)| *b));
            e_kind.push(e.kind);
            e_amount.push(e.amount.get());
        }
    }
    sqlx::query(
        "INSERT INTO ledger_txns (id, kind, idempotency_key, source_ref)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&keys)
    .bind(&refs)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO ledger_entries (txn_id, account, customer_id, bucket_id, kind, amount)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::int8[])",
    )
    .bind(&e_txn)
    .bind(&e_account)
    .bind(&e_customer)
    .bind(&e_bucket)
    .bind(&e_kind)
    .bind(&e_amount)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether a transaction with `key` was applied.
pub async fn applied(
    tx: &mut Transaction<'_, Postgres>,
    key: &TxnKey,
) -> Result<bool, sqlx::Error> {
    let found: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM ledger_txns WHERE idempotency_key = $1")
            .bind(key.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    Ok(found.is_some())
}

/// What the customer side of the transaction with `key` moved, per customer bucket
/// (negative: out of the bucket). Empty when no such transaction was applied.
pub async fn customer_side(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[String],
) -> Result<Vec<(String, Uuid, Millicredits)>, sqlx::Error> {
    let rows: Vec<(String, Uuid, i64)> = sqlx::query_as(
        "SELECT t.idempotency_key, e.bucket_id, e.amount FROM ledger_txns t
         JOIN ledger_entries e ON e.txn_id = t.id
         WHERE t.idempotency_key = ANY($1) AND e.bucket_id IS NOT NULL ORDER BY e.id",
    )
    .bind(keys)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, b, n)| (k, b, Millicredits::new(n)))
        .collect())
}
