//! The ledger: credit buckets, double-entry transactions and the spending order.
//!
//! Every movement of credits is a ledger transaction: a set of entries that sums to zero,
//! applied at most once per idempotency key. Customer-side entries name the bucket they
//! change; the other side is a `system:*` account (issuance, usage, expiry). So for every
//! customer, the sum of their entries equals the sum of their buckets' `remaining`.
//!
//! Functions here take `&mut Transaction`; the caller begins and commits, so an effect, its
//! idempotency record and its audit record land together or not at all. A caller that
//! changes a customer's buckets first locks the customer rows with [`lock_customers`]
//! (always in id order, so transactions touching several customers cannot deadlock).

use chrono::{DateTime, Months, Utc};
use shared::policy::Plan;
use shared::{CustomerId, Millicredits, Policy};
use sqlx::{Executor, FromRow, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Where allocations and grants come from.
pub const SYSTEM_ISSUANCE: &str = "system:issuance";
/// Where usage goes (and refunds come back from).
pub const SYSTEM_USAGE: &str = "system:usage";
/// Where expired credits go.
pub const SYSTEM_EXPIRY: &str = "system:expiry";

/// A bucket's source, which decides its place in the spending order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BucketKind {
    /// The free plan's monthly allowance: never transferable, spent first.
    FreeAllowance,
    /// A paid plan's monthly allowance: transferable.
    PlanAllowance,
    /// A credit pack.
    Purchased,
    /// An operator's grant (transferable when it says so).
    Granted,
    /// A transfer from another customer.
    Received,
}

impl BucketKind {
    /// The name stored in Postgres and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BucketKind::FreeAllowance => "free_allowance",
            BucketKind::PlanAllowance => "plan_allowance",
            BucketKind::Purchased => "purchased",
            BucketKind::Granted => "granted",
            BucketKind::Received => "received",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<BucketKind> {
        Some(match s {
            "free_allowance" => BucketKind::FreeAllowance,
            "plan_allowance" => BucketKind::PlanAllowance,
            "purchased" => BucketKind::Purchased,
            "granted" => BucketKind::Granted,
            "received" => BucketKind::Received,
            _ => return None,
        })
    }

    /// Allowances first, then everything else.
    fn rank(self) -> u8 {
        match self {
            BucketKind::FreeAllowance => 0,
            BucketKind::PlanAllowance => 1,
            _ => 2,
        }
    }
}

/// A balance by source.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct Bucket {
    /// Its id.
    pub id: Uuid,
    /// Whose.
    pub customer_id: String,
    /// Its kind, as stored.
    pub kind: String,
    /// Credited in total.
    pub amount: i64,
    /// Left.
    pub remaining: i64,
    /// Whether it counts in Redis's `tr` (else `nt`).
    pub transferable: bool,
    /// When what is left expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl Bucket {
    fn rank(&self) -> u8 {
        BucketKind::parse(&self.kind).map_or(2, BucketKind::rank)
    }
}

/// Sorts one customer's buckets in spending order: allowances first, then the soonest to
/// expire, then the oldest. (The class, `nt` before `tr`, is decided by the proxy's debit.)
pub fn sort_spending_order(buckets: &mut [Bucket]) {
    buckets.sort_by(|a, b| {
        (
            a.rank(),
            a.expires_at.is_none(),
            a.expires_at,
            a.created_at,
            a.id,
        )
            .cmp(&(
                b.rank(),
                b.expires_at.is_none(),
                b.expires_at,
                b.created_at,
                b.id,
            ))
    });
}

/// Takes `amount` from the buckets of one class (`transferable`) in the order given,
/// lowering their `remaining`. Returns what was taken from which bucket and the shortfall
/// (zero unless the class holds less than `amount`).
pub fn take_in_order(
    buckets: &mut [Bucket],
    transferable: bool,
    amount: i64,
) -> (Vec<(Uuid, i64)>, i64) {
    let mut left = amount;
    let mut taken = Vec::new();
    for b in buckets.iter_mut() {
        if left <= 0 {
            break;
        }
        if b.transferable != transferable || b.remaining <= 0 {
            continue;
        }
        let take = b.remaining.min(left);
        b.remaining -= take;
        left -= take;
        taken.push((b.id, take));
    }
    (taken, left.max(0))
}

/// One side of a ledger transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `customer:<id>` or a `system:*` account.
    pub account: String,
    /// The customer, for customer-side entries.
    pub customer: Option<String>,
    /// The bucket changed, for customer-side entries.
    pub bucket: Option<Uuid>,
    /// allocation, grant, usage, refund, expiry, transfer_out, transfer_in, adjustment.
    pub kind: &'static str,
    /// Millicredits into the account (negative: out of it).
    pub amount: i64,
}

impl Entry {
    /// A customer-side entry on one bucket.
    pub fn customer(customer: &str, bucket: Uuid, kind: &'static str, amount: i64) -> Entry {
        Entry {
            account: format!("customer:{customer}"),
            customer: Some(customer.to_owned()),
            bucket: Some(bucket),
            kind,
            amount,
        }
    }

    /// A system-side entry.
    pub fn system(account: &str, kind: &'static str, amount: i64) -> Entry {
        Entry {
            account: account.to_owned(),
            customer: None,
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
    pub idempotency_key: String,
    /// Where it came from (stream entry, transfer id, reason).
    pub source_ref: Option<String>,
    /// Its entries; they sum to zero.
    pub entries: Vec<Entry>,
}

/// Inserts transactions whose idempotency keys the caller knows are new (the consumer,
/// after its usage insert deduplicated them). A key seen before fails the whole insert.
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
            t.entries.iter().map(|e| e.amount).sum::<i64>(),
            0,
            "ledger transaction {} is unbalanced",
            t.idempotency_key
        );
        ids.push(t.id);
        kinds.push(t.kind);
        keys.push(t.idempotency_key.as_str());
        refs.push(t.source_ref.as_deref());
        for e in &t.entries {
            e_txn.push(t.id);
            e_account.push(e.account.as_str());
            e_customer.push(e.customer.as_deref());
            e_bucket.push(e.bucket);
            e_kind.push(e.kind);
            e_amount.push(e.amount);
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

/// Inserts one transaction unless its idempotency key was applied before; `false` then.
pub async fn post(tx: &mut Transaction<'_, Postgres>, txn: &Txn) -> Result<bool, sqlx::Error> {
    let fresh: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM ledger_txns WHERE idempotency_key = $1")
            .bind(&txn.idempotency_key)
            .fetch_optional(&mut **tx)
            .await?;
    if fresh.is_some() {
        return Ok(false);
    }
    insert_txns(tx, std::slice::from_ref(txn)).await?;
    Ok(true)
}

/// Locks the rows of `ids` that exist, in id order; returns those ids.
pub async fn lock_customers(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A customer as stored.
#[derive(Clone, Debug, FromRow)]
pub struct Customer {
    /// `cus_…`, the id used everywhere.
    pub id: String,
    /// The operator's id for them.
    pub external_id: String,
    /// Contact.
    pub email: String,
    /// Plan name.
    pub plan: String,
    /// active, past_due, canceled.
    pub status: String,
    /// Stripe subscription, if any.
    pub stripe_subscription_id: Option<String>,
    /// monthly or yearly.
    pub subscription_interval: Option<String>,
    /// Stripe's status of the subscription.
    pub subscription_status: Option<String>,
    /// Whether the subscription ends with the period.
    pub cancel_at_period_end: bool,
    /// none, exempt, reverse.
    pub tax_exempt: String,
    /// Start of the current allowance period.
    pub period_start: DateTime<Utc>,
    /// End of the current allowance period.
    pub period_end: DateTime<Utc>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

const CUSTOMER_COLUMNS_SELECT: &str = "SELECT id, external_id, email, plan, status, stripe_subscription_id, subscription_interval, subscription_status, cancel_at_period_end, tax_exempt, period_start, period_end, created_at FROM customers WHERE id = $1";

/// A customer by id.
pub async fn customer<'e, E: Executor<'e, Database = Postgres>>(
    exec: E,
    id: &str,
) -> Result<Option<Customer>, sqlx::Error> {
    sqlx::query_as(CUSTOMER_COLUMNS_SELECT)
        .bind(id)
        .fetch_optional(exec)
        .await
}

/// The end of a monthly period that starts at `start`.
pub fn period_end_after(start: DateTime<Utc>) -> DateTime<Utc> {
    start
        .checked_add_months(Months::new(1))
        .unwrap_or(start + chrono::Duration::days(31))
}

/// Creates a customer on the policy's default plan with its whole allowance, or finds the
/// one with this `external_id`. Returns it, whether it was created, and the balances
/// granted (`nt`, `tr`) to add to Redis.
pub async fn create_customer(
    tx: &mut Transaction<'_, Postgres>,
    policy: &Policy,
    external_id: &str,
    email: &str,
    now: DateTime<Utc>,
) -> Result<(Customer, bool, (i64, i64)), sqlx::Error> {
    let id = format!("cus_{}", Uuid::now_v7().simple());
    let period_end = period_end_after(now);
    let inserted: Option<(String,)> = sqlx::query_as(
        "INSERT INTO customers (id, external_id, email, plan, period_start, period_end, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $5)
         ON CONFLICT (external_id) DO NOTHING RETURNING id",
    )
    .bind(&id)
    .bind(external_id)
    .bind(email)
    .bind(&policy.default_plan)
    .bind(now)
    .bind(period_end)
    .fetch_optional(&mut **tx)
    .await?;
    let (id, created) = match inserted {
        Some((id,)) => (id, true),
        None => {
            let (id,): (String,) =
                sqlx::query_as("SELECT id FROM customers WHERE external_id = $1")
                    .bind(external_id)
                    .fetch_one(&mut **tx)
                    .await?;
            (id, false)
        }
    };
    let mut granted = (0, 0);
    if created && let Some(plan) = policy.plans.get(&policy.default_plan) {
        granted = allocate_allowance(tx, &id, plan, now, period_end).await?;
    }
    let customer = customer(&mut **tx, &id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok((customer, created, granted))
}

/// Grants `plan`'s monthly allowance for the period, once (keyed by customer and period
/// start). Free plans give non-transferable credits, paid plans transferable ones. Returns
/// what was added (`nt`, `tr`).
pub async fn allocate_allowance(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    plan: &Plan,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
) -> Result<(i64, i64), sqlx::Error> {
    let amount = plan.credits_per_month.get();
    if amount <= 0 {
        return Ok((0, 0));
    }
    let (kind, transferable) = if plan.is_paid() {
        (BucketKind::PlanAllowance, true)
    } else {
        (BucketKind::FreeAllowance, false)
    };
    let bucket = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO buckets (id, customer_id, kind, amount, remaining, transferable, expires_at, period_start)
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7)
         ON CONFLICT (customer_id, kind, period_start) WHERE period_start IS NOT NULL DO NOTHING",
    )
    .bind(bucket)
    .bind(customer)
    .bind(kind.as_str())
    .bind(amount)
    .bind(transferable)
    .bind(period_end)
    .bind(period_start)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok((0, 0));
    }
    let txn = Txn {
        id: Uuid::now_v7(),
        kind: "allocation",
        idempotency_key: format!(
            "allocation:{customer}:{}:{}",
            kind.as_str(),
            period_start.timestamp_millis()
        ),
        source_ref: Some(format!("plan:{}", plan.name)),
        entries: vec![
            Entry::system(SYSTEM_ISSUANCE, "allocation", -amount),
            Entry::customer(customer, bucket, "allocation", amount),
        ],
    };
    post(tx, &txn).await?;
    Ok(if transferable {
        (0, amount)
    } else {
        (amount, 0)
    })
}

/// An operator's grant.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Credits granted.
    pub amount: Millicredits,
    /// Whether they may be transferred.
    pub transferable: bool,
    /// When what is left expires; never when `None`.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why (kept in the ledger's source reference).
    pub reason: String,
}

/// Credits a grant as a new bucket; returns the bucket.
pub async fn grant(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
    grant: &Grant,
    idempotency_key: &str,
    bucket_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Bucket, sqlx::Error> {
    let amount = grant.amount.get();
    let bucket: Bucket = sqlx::query_as(
        "INSERT INTO buckets (id, customer_id, kind, amount, remaining, transferable, expires_at, created_at)
         VALUES ($1, $2, 'granted', $3, $3, $4, $5, $6)
         RETURNING id, customer_id, kind, amount, remaining, transferable, expires_at, created_at",
    )
    .bind(bucket_id)
    .bind(customer)
    .bind(amount)
    .bind(grant.transferable)
    .bind(grant.expires_at)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let txn = Txn {
        id: Uuid::now_v7(),
        kind: "grant",
        idempotency_key: format!("grant:{customer}:{idempotency_key}"),
        source_ref: Some(grant.reason.clone()),
        entries: vec![
            Entry::system(SYSTEM_ISSUANCE, "grant", -amount),
            Entry::customer(customer, bucket_id, "grant", amount),
        ],
    };
    insert_txns(tx, std::slice::from_ref(&txn)).await?;
    Ok(bucket)
}

/// A customer's buckets that hold credits, in spending order.
pub async fn live_buckets<'e, E: Executor<'e, Database = Postgres>>(
    exec: E,
    customer: &str,
) -> Result<Vec<Bucket>, sqlx::Error> {
    let mut buckets: Vec<Bucket> = sqlx::query_as(
        "SELECT id, customer_id, kind, amount, remaining, transferable, expires_at, created_at
         FROM buckets WHERE customer_id = $1 AND remaining > 0",
    )
    .bind(customer)
    .fetch_all(exec)
    .await?;
    sort_spending_order(&mut buckets);
    Ok(buckets)
}

/// A customer's balances by class in Postgres: (`nt`, `tr`).
pub async fn balances<'e, E: Executor<'e, Database = Postgres>>(
    exec: E,
    customer: &str,
) -> Result<(i64, i64), sqlx::Error> {
    let (nt, tr): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(remaining) FILTER (WHERE NOT transferable), 0)::int8,
                COALESCE(SUM(remaining) FILTER (WHERE transferable), 0)::int8
         FROM buckets WHERE customer_id = $1",
    )
    .bind(customer)
    .fetch_one(exec)
    .await?;
    Ok((nt, tr))
}

/// The sum of a customer's ledger entries (what conservation compares with the buckets).
pub async fn ledger_balance(pool: &PgPool, customer: &str) -> Result<i64, sqlx::Error> {
    let (sum,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries WHERE customer_id = $1",
    )
    .bind(customer)
    .fetch_one(pool)
    .await?;
    Ok(sum)
}

/// Writes new bucket remainders.
pub async fn update_remaining(
    tx: &mut Transaction<'_, Postgres>,
    updates: &[(Uuid, i64)],
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.0).collect();
    let remaining: Vec<i64> = updates.iter().map(|u| u.1).collect();
    sqlx::query(
        "UPDATE buckets b SET remaining = v.remaining
         FROM UNNEST($1::uuid[], $2::int8[]) AS v(id, remaining) WHERE b.id = v.id",
    )
    .bind(&ids)
    .bind(&remaining)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a transfer of transferable credits already taken from the sender in Redis:
/// debits the sender's transferable buckets in spending order and credits a `received`
/// bucket. `Ok(Err(shortfall))` when Postgres holds less than Redis did (unread refunds);
/// nothing is written then. The caller holds both customers' locks.
#[allow(clippy::too_many_arguments)]
pub async fn record_transfer(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    from: &CustomerId,
    to: &CustomerId,
    amount: Millicredits,
    note: &str,
    now: DateTime<Utc>,
) -> Result<Result<(), i64>, sqlx::Error> {
    let mut buckets = live_buckets(&mut **tx, from.as_str()).await?;
    let (taken, shortfall) = take_in_order(&mut buckets, true, amount.get());
    if shortfall > 0 {
        return Ok(Err(shortfall));
    }
    let updates: Vec<(Uuid, i64)> = buckets
        .iter()
        .filter(|b| taken.iter().any(|(id, _)| *id == b.id))
        .map(|b| (b.id, b.remaining))
        .collect();
    update_remaining(tx, &updates).await?;
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
        .map(|(bucket, n)| Entry::customer(from.as_str(), *bucket, "transfer_out", -n))
        .collect();
    entries.push(Entry::customer(
        to.as_str(),
        received,
        "transfer_in",
        amount.get(),
    ));
    let txn = Txn {
        id: Uuid::now_v7(),
        kind: "transfer",
        idempotency_key: format!("transfer:{id}"),
        source_ref: Some(format!("transfer:{id}")),
        entries,
    };
    insert_txns(tx, std::slice::from_ref(&txn)).await?;
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

/// Expires `amount` of a bucket (at most its `remaining`).
pub async fn expire(
    tx: &mut Transaction<'_, Postgres>,
    bucket: &Bucket,
    amount: i64,
) -> Result<(), sqlx::Error> {
    let amount = amount.min(bucket.remaining);
    if amount <= 0 {
        return Ok(());
    }
    update_remaining(tx, &[(bucket.id, bucket.remaining - amount)]).await?;
    let txn = Txn {
        id: Uuid::now_v7(),
        kind: "expiry",
        idempotency_key: format!("expiry:{}:{}", bucket.id, Uuid::now_v7()),
        source_ref: Some(format!("bucket:{}", bucket.id)),
        entries: vec![
            Entry::customer(&bucket.customer_id, bucket.id, "expiry", -amount),
            Entry::system(SYSTEM_EXPIRY, "expiry", amount),
        ],
    };
    insert_txns(tx, std::slice::from_ref(&txn)).await
}

/// Writes an audit record.
pub async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    actor: &str,
    action: &str,
    customer: Option<&str>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, customer_id, before, after) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(customer)
    .bind(before)
    .bind(after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(kind: BucketKind, remaining: i64, transferable: bool, exp: Option<i64>) -> Bucket {
        Bucket {
            id: Uuid::now_v7(),
            customer_id: "c".into(),
            kind: kind.as_str().into(),
            amount: remaining,
            remaining,
            transferable,
            expires_at: exp.and_then(|s| DateTime::from_timestamp(s, 0)),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn allowances_are_spent_before_purchases_and_soonest_expiry_first() {
        let mut b = vec![
            bucket(BucketKind::Purchased, 10, true, None),
            bucket(BucketKind::Granted, 10, true, Some(100)),
            bucket(BucketKind::PlanAllowance, 5, true, Some(500)),
        ];
        sort_spending_order(&mut b);
        assert_eq!(b[0].kind, "plan_allowance");
        assert_eq!(b[1].kind, "granted");
        let (taken, short) = take_in_order(&mut b, true, 12);
        assert_eq!(short, 0);
        assert_eq!(taken.iter().map(|t| t.1).collect::<Vec<_>>(), vec![5, 7]);
        let (_, short) = take_in_order(&mut b, true, 100);
        assert_eq!(short, 100 - 13);
    }
}
