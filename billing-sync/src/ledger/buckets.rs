//! Buckets (a balance by source), the spending order, and the postings that create and end
//! them: allowances, grants, purchases, expiries.

use chrono::{DateTime, Utc};
use shared::policy::Plan;
use shared::{CustomerId, Millicredits};
use sqlx::postgres::PgRow;
use sqlx::{Executor, FromRow, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::txn::{self, Entry, SYSTEM_EXPIRY, SYSTEM_ISSUANCE, Txn, TxnKey};

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Its id.
    pub id: Uuid,
    /// Whose.
    pub customer_id: CustomerId,
    /// Its kind.
    pub kind: BucketKind,
    /// Credited in total.
    pub amount: Millicredits,
    /// Left.
    pub remaining: Millicredits,
    /// Whether it counts in Redis's `tr` (else `nt`).
    pub transferable: bool,
    /// When what is left expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// The columns [`Bucket`] reads, in `SELECT` order.
pub const BUCKET_COLUMNS: &str =
    "id, customer_id, kind, amount, remaining, transferable, expires_at, created_at";

impl<'r> FromRow<'r, PgRow> for Bucket {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let decode = |what: String| sqlx::Error::Decode(what.into());
        let customer: String = row.try_get("customer_id")?;
        let kind: String = row.try_get("kind")?;
        Ok(Bucket {
            id: row.try_get("id")?,
            customer_id: CustomerId::parse(&customer).map_err(decode)?,
            kind: BucketKind::parse(&kind)
                .ok_or_else(|| decode(format!("unknown bucket kind {kind:?}")))?,
            amount: Millicredits::new(row.try_get("amount")?),
            remaining: Millicredits::new(row.try_get("remaining")?),
            transferable: row.try_get("transferable")?,
            expires_at: row.try_get("expires_at")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// Sorts one customer's buckets in spending order: allowances first, then the soonest to
/// expire, then the oldest. (The class, `nt` before `tr`, is decided by the proxy's debit.)
pub fn sort_spending_order(buckets: &mut [Bucket]) {
    buckets.sort_by(|a, b| {
        (
            a.kind.rank(),
            a.expires_at.is_none(),
            a.expires_at,
            a.created_at,
            a.id,
        )
            .cmp(&(
                b.kind.rank(),
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
    amount: Millicredits,
) -> (Vec<(Uuid, Millicredits)>, Millicredits) {
    let mut left = amount.get();
    let mut taken = Vec::new();
    for b in buckets.iter_mut() {
        if left <= 0 {
            break;
        }
        if b.transferable != transferable || b.remaining.get() <= 0 {
            continue;
        }
        let take = b.remaining.get().min(left);
        b.remaining = Millicredits::new(b.remaining.get() - take);
        left -= take;
        taken.push((b.id, Millicredits::new(take)));
    }
    (taken, Millicredits::new(left.max(0)))
}

/// Grants `plan`'s monthly allowance for the period `[period_start, period_end)`, once per
/// `key` and per period. Free plans give non-transferable credits, paid plans transferable
/// ones; what is left expires at `period_end`. Returns what was added (`nt`, `tr`).
pub async fn allocate_allowance(
    tx: &mut Transaction<'_, Postgres>,
    customer: &CustomerId,
    plan: &Plan,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    key: Option<TxnKey>,
) -> Result<(Millicredits, Millicredits), sqlx::Error> {
    let amount = plan.credits_per_month;
    let none = (Millicredits::ZERO, Millicredits::ZERO);
    if amount.get() <= 0 {
        return Ok(none);
    }
    let (kind, transferable) = if plan.is_paid() {
        (BucketKind::PlanAllowance, true)
    } else {
        (BucketKind::FreeAllowance, false)
    };
    let key = key.unwrap_or_else(|| TxnKey::allocation(customer, kind, period_start));
    if txn::applied(tx, &key).await? {
        return Ok(none);
    }
    let bucket = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO buckets (id, customer_id, kind, amount, remaining, transferable, expires_at, period_start, created_at)
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $7)
         ON CONFLICT (customer_id, kind, period_start) WHERE period_start IS NOT NULL DO NOTHING",
    )
    .bind(bucket)
    .bind(customer.as_str())
    .bind(kind.as_str())
    .bind(amount.get())
    .bind(transferable)
    .bind(period_end)
    .bind(period_start)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(none);
    }
    let txn = Txn::new(
        "allocation",
        key,
        Some(format!("plan:{}", plan.name)),
        vec![
            Entry::system(SYSTEM_ISSUANCE, "allocation", neg(amount)),
            Entry::customer(customer, bucket, "allocation", amount),
        ],
    );
    // The key was checked above, and a concurrent twin stops at the one-allowance-per-period
    // index of the bucket insert.
    txn::insert_txns(tx, std::slice::from_ref(&txn)).await?;
    Ok(if transferable {
        (Millicredits::ZERO, amount)
    } else {
        (amount, Millicredits::ZERO)
    })
}

/// The negation of an amount the ledger holds (never overflows: amounts are bounded).
pub(super) fn neg(m: Millicredits) -> Millicredits {
    Millicredits::new(-m.get())
}

/// Credits to add as a new bucket: an operator's grant, a pack, an upgrade's difference.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The new bucket's id.
    pub bucket: Uuid,
    /// Its kind.
    pub kind: BucketKind,
    /// Credits.
    pub amount: Millicredits,
    /// Whether they may be transferred.
    pub transferable: bool,
    /// When what is left expires; never when `None`.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why (the ledger's source reference).
    pub reason: String,
    /// What paid for it (a pack's PaymentIntent), to take it back after a refund.
    pub paid_by: Option<String>,
}

/// Credits `grant` as a new bucket under `key`, once; `None` if the key was applied before.
pub async fn credit(
    tx: &mut Transaction<'_, Postgres>,
    customer: &CustomerId,
    grant: &Grant,
    key: TxnKey,
    now: DateTime<Utc>,
) -> Result<Option<Bucket>, sqlx::Error> {
    if txn::applied(tx, &key).await? {
        return Ok(None);
    }
    let Grant {
        bucket,
        kind,
        amount,
        transferable,
        expires_at,
        ..
    } = grant.clone();
    let bucket: Bucket = sqlx::query_as(
        "INSERT INTO buckets (id, customer_id, kind, amount, remaining, transferable, expires_at, created_at, source_ref)
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8)
         RETURNING id, customer_id, kind, amount, remaining, transferable, expires_at, created_at",
    )
    .bind(bucket)
    .bind(customer.as_str())
    .bind(kind.as_str())
    .bind(amount.get())
    .bind(transferable)
    .bind(expires_at)
    .bind(now)
    .bind(&grant.paid_by)
    .fetch_one(&mut **tx)
    .await?;
    let txn = Txn::new(
        "grant",
        key,
        Some(grant.reason.clone()),
        vec![
            Entry::system(SYSTEM_ISSUANCE, "grant", neg(amount)),
            Entry::customer(customer, bucket.id, "grant", amount),
        ],
    );
    txn::insert_txns(tx, std::slice::from_ref(&txn)).await?;
    Ok(Some(bucket))
}

/// A customer's buckets that hold credits, in spending order.
pub async fn live_buckets<'e, E: Executor<'e, Database = Postgres>>(
    exec: E,
    customer: &CustomerId,
) -> Result<Vec<Bucket>, sqlx::Error> {
    let mut buckets: Vec<Bucket> = sqlx::query_as(
        "SELECT id, customer_id, kind, amount, remaining, transferable, expires_at, created_at
         FROM buckets WHERE customer_id = $1 AND remaining > 0",
    )
    .bind(customer.as_str())
    .fetch_all(exec)
    .await?;
    sort_spending_order(&mut buckets);
    Ok(buckets)
}

/// One bucket by id.
pub async fn bucket<'e, E: Executor<'e, Database = Postgres>>(
    exec: E,
    id: Uuid,
) -> Result<Option<Bucket>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, customer_id, kind, amount, remaining, transferable, expires_at, created_at
         FROM buckets WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(exec)
    .await
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
    updates: &[(Uuid, Millicredits)],
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.0).collect();
    let remaining: Vec<i64> = updates.iter().map(|u| u.1.get()).collect();
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

/// The expiry (or take-back) of `amount` of `bucket`, under `key`: the entries, for the
/// caller to insert, and the bucket lowered in memory.
pub fn expiry_txn(bucket: &mut Bucket, amount: Millicredits, key: TxnKey, source: String) -> Txn {
    debug_assert!(amount.get() > 0 && amount.get() <= bucket.remaining.get());
    bucket.remaining = Millicredits::new(bucket.remaining.get() - amount.get());
    Txn::new(
        "expiry",
        key,
        Some(source),
        vec![
            Entry::customer(&bucket.customer_id, bucket.id, "expiry", neg(amount)),
            Entry::system(SYSTEM_EXPIRY, "expiry", amount),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(kind: BucketKind, remaining: i64, transferable: bool, exp: Option<i64>) -> Bucket {
        Bucket {
            id: Uuid::now_v7(),
            customer_id: CustomerId::parse("cus_c").expect("valid id"),
            kind,
            amount: Millicredits::new(remaining),
            remaining: Millicredits::new(remaining),
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
        assert_eq!(b[0].kind, BucketKind::PlanAllowance);
        assert_eq!(b[1].kind, BucketKind::Granted);
        let (taken, short) = take_in_order(&mut b, true, Millicredits::new(12));
        assert_eq!(short, Millicredits::ZERO);
        assert_eq!(
            taken.iter().map(|t| t.1.get()).collect::<Vec<_>>(),
            vec![5, 7]
        );
        let (_, short) = take_in_order(&mut b, true, Millicredits::new(100));
        assert_eq!(short.get(), 100 - 13);
    }
}
