//! Usage into the ledger: one batch of usage-stream entries (the proxy's debits and
//! refunds, billing-sync's expiry holds) posted in stream order in one transaction.
//!
//! The rules, all here:
//! - A debit takes from the customer's buckets in spending order, from the class (`nt`,
//!   `tr`) the proxy debited; what the class lacks comes from the other class, and what no
//!   bucket backs is counted as unbacked (drift; a metric).
//! - A refund gives back exactly what its debit took, to the same buckets (an expiring
//!   allowance stays expiring), whether the debit was posted in an earlier batch or earlier
//!   in this one. Only a refund whose debit the ledger never saw (lost with Redis's data)
//!   credits a new bucket, so the ledger still matches Redis.
//! - An expiry hold expires what is left of its bucket at that point of the stream, after
//!   every earlier debit and refund (at most `limit` for a take-back), and the rest of the
//!   hold is given back to Redis when the batch is acknowledged.
//!
//! Exactly once: usage rows are deduplicated by `(request_id, kind)` and expiries by their
//! [`TxnKey`]; a replayed entry posts nothing, and a replayed hold is settled from what its
//! first posting recorded.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use shared::redis::{ExpiryMarker, HoldSettlement, StreamEntry, UsageEvent, UsageKind};
use shared::{CustomerId, Millicredits};
use sqlx::PgPool;
use uuid::Uuid;

use super::buckets::{self, Bucket, BucketKind, neg};
use super::customers::lock_customers;
use super::txn::{self, Entry, SYSTEM_USAGE, Txn, TxnKey};

/// An entry set aside: its stream, its id, and what was wrong with it.
pub type Reject = (String, String, String);

/// What posting a batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Posted {
    /// Entries posted for the first time.
    pub applied: usize,
    /// Entries posted before (replays).
    pub duplicates: usize,
    /// Entries set aside (unreadable, or with an impossible time).
    pub rejected: usize,
    /// Expiry holds to settle in Redis with the acknowledgement.
    pub settlements: Vec<HoldSettlement>,
    /// Usage no bucket backed (drift).
    pub unbacked: Millicredits,
}

/// Posts `entries` (in stream order) and records `rejects`, in one transaction.
pub async fn post_batch(
    db: &PgPool,
    entries: &[StreamEntry],
    rejects: &[Reject],
) -> Result<Posted, sqlx::Error> {
    let mut usage: Vec<(&UsageEvent, DateTime<Utc>)> = Vec::new();
    let mut holds: Vec<&ExpiryMarker> = Vec::new();
    for entry in entries {
        match entry {
            StreamEntry::Usage(e) => {
                let at = DateTime::from_timestamp_millis(e.ts_ms)
                    .expect("the stream parser admits only times from 1970 to 9999");
                usage.push((e, at));
            }
            StreamEntry::Expiry(m) => holds.push(m),
        }
    }
    let mut tx = db.begin().await?;
    let mut posted = Posted {
        rejected: rejects.len(),
        ..Posted::default()
    };
    record_rejects(&mut tx, rejects).await?;

    // Usage rows, deduplicated by (request id, kind): only the new ones are posted.
    let fresh_usage = insert_usage_rows(&mut tx, &usage).await?;
    // Holds whose expiry was posted before settle from what that posting recorded.
    let hold_keys: Vec<String> = holds.iter().map(|m| hold_key(m).to_string()).collect();
    let mut recorded: HashMap<String, Millicredits> = HashMap::new();
    for (key, _, amount) in txn::customer_side(&mut tx, &hold_keys).await? {
        let sum = recorded.entry(key).or_insert(Millicredits::ZERO);
        *sum = Millicredits::new(sum.get() - amount.get());
    }
    let mut fresh_holds: HashSet<&str> = HashSet::new();
    for m in &holds {
        match recorded.get(hold_key(m).as_str()) {
            Some(expired) => {
                posted.duplicates += 1;
                posted.settlements.push(settle(m, *expired));
            }
            None => {
                fresh_holds.insert(m.stream_id.as_str());
            }
        }
    }
    posted.duplicates += usage.len() - fresh_usage.len();
    posted.applied = fresh_usage.len() + fresh_holds.len();
    if posted.applied == 0 {
        tx.commit().await?;
        return Ok(posted);
    }

    // Lock the customers, then load their live buckets plus those refunds and holds name.
    let mut ids: Vec<String> = entries
        .iter()
        .filter(|e| match e {
            StreamEntry::Usage(u) => fresh_usage.contains(&(u.request_id.clone(), u.kind)),
            StreamEntry::Expiry(m) => fresh_holds.contains(m.stream_id.as_str()),
        })
        .map(|e| match e {
            StreamEntry::Usage(u) => u.customer.as_str().to_owned(),
            StreamEntry::Expiry(m) => m.customer.as_str().to_owned(),
        })
        .collect();
    ids.sort();
    ids.dedup();
    let known: HashSet<String> = lock_customers(&mut tx, &ids).await?.into_iter().collect();
    // The refunded requests by their debits' keys.
    let refunded: HashMap<String, &str> = usage
        .iter()
        .filter(|(e, _)| e.kind == UsageKind::Refund)
        .map(|(e, _)| {
            (
                TxnKey::debit(&e.request_id).to_string(),
                e.request_id.as_str(),
            )
        })
        .collect();
    let debit_keys: Vec<String> = refunded.keys().cloned().collect();
    // What committed debits took, per request: (bucket, amount taken).
    let mut took: HashMap<String, Vec<(Uuid, Millicredits)>> = HashMap::new();
    for (key, bucket, amount) in txn::customer_side(&mut tx, &debit_keys).await? {
        if let Some(request) = refunded.get(&key) {
            took.entry((*request).to_owned())
                .or_default()
                .push((bucket, neg(amount)));
        }
    }
    let mut extra: Vec<Uuid> = took.values().flatten().map(|(b, _)| *b).collect();
    extra.extend(holds.iter().filter_map(|m| Uuid::parse_str(&m.bucket).ok()));
    let rows: Vec<Bucket> = sqlx::query_as(
        "SELECT id, customer_id, kind, amount, remaining, transferable, expires_at, created_at
         FROM buckets WHERE customer_id = ANY($1) AND (remaining > 0 OR id = ANY($2))",
    )
    .bind(&ids)
    .bind(&extra)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_customer: HashMap<CustomerId, Vec<Bucket>> = HashMap::new();
    for b in rows {
        by_customer
            .entry(b.customer_id.clone())
            .or_default()
            .push(b);
    }
    for list in by_customer.values_mut() {
        buckets::sort_spending_order(list);
    }

    let mut book = Book {
        by_customer,
        took,
        touched: HashSet::new(),
        new_buckets: Vec::new(),
        txns: Vec::new(),
        unbacked: 0,
    };
    for entry in entries {
        match entry {
            StreamEntry::Usage(e) => {
                if !fresh_usage.contains(&(e.request_id.clone(), e.kind)) {
                    continue;
                }
                if !known.contains(e.customer.as_str()) {
                    tracing::error!(customer_id = %e.customer, request_id = %e.request_id, "usage event of an unknown customer: recorded, not in the ledger");
                    continue;
                }
                match e.kind {
                    UsageKind::Debit => book.debit(e),
                    UsageKind::Refund => book.refund(e),
                }
            }
            StreamEntry::Expiry(m) => {
                if !fresh_holds.contains(m.stream_id.as_str()) {
                    continue;
                }
                let expired = book.expire(m);
                posted.settlements.push(settle(m, expired));
            }
        }
    }
    if !book.new_buckets.is_empty() {
        insert_unknown_refund_buckets(&mut tx, &book.new_buckets).await?;
    }
    let updates: Vec<(Uuid, Millicredits)> = book
        .by_customer
        .values()
        .flatten()
        .filter(|b| book.touched.contains(&b.id))
        .map(|b| (b.id, b.remaining))
        .collect();
    buckets::update_remaining(&mut tx, &updates).await?;
    txn::insert_txns(&mut tx, &book.txns).await?;
    // A posted take-back is done, whatever it found left.
    let (take_back_buckets, take_back_keys): (Vec<Uuid>, Vec<&str>) = holds
        .iter()
        .filter(|m| fresh_holds.contains(m.stream_id.as_str()) && m.limit.is_some())
        .filter_map(|m| Some((Uuid::parse_str(&m.bucket).ok()?, m.key.as_str())))
        .filter(|(_, key)| !key.is_empty())
        .unzip();
    if !take_back_buckets.is_empty() {
        sqlx::query(
            "UPDATE buckets b SET take_back_done_key = v.key
             FROM UNNEST($1::uuid[], $2::text[]) AS v(id, key)
             WHERE b.id = v.id AND b.take_back_key = v.key",
        )
        .bind(&take_back_buckets)
        .bind(&take_back_keys)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    posted.unbacked = Millicredits::new(book.unbacked);
    Ok(posted)
}

/// A hold's ledger key: the take-back's own, or the bucket's expiry at this stream entry.
fn hold_key(m: &ExpiryMarker) -> TxnKey {
    if m.key.is_empty() {
        match Uuid::parse_str(&m.bucket) {
            Ok(bucket) => TxnKey::expiry(bucket, &m.stream_id),
            Err(_) => TxnKey::from_stored(format!("expiry:{}:{}", m.bucket, m.stream_id)),
        }
    } else {
        TxnKey::from_stored(m.key.clone())
    }
}

/// The Redis side of a hold once `expired` of it is in the ledger.
fn settle(m: &ExpiryMarker, expired: Millicredits) -> HoldSettlement {
    HoldSettlement {
        customer: m.customer.clone(),
        bucket: m.bucket.clone(),
        transferable: m.transferable,
        delta: Millicredits::new(m.taken.get() - expired.get()),
    }
}

/// The batch's working state: buckets in memory, in spending order, changed entry by entry.
struct Book {
    by_customer: HashMap<CustomerId, Vec<Bucket>>,
    /// What each debit took (committed ones, and those of this batch as they are posted).
    took: HashMap<String, Vec<(Uuid, Millicredits)>>,
    touched: HashSet<Uuid>,
    new_buckets: Vec<Bucket>,
    txns: Vec<Txn>,
    unbacked: i64,
}

impl Book {
    fn debit(&mut self, e: &UsageEvent) {
        let buckets = self.by_customer.entry(e.customer.clone()).or_default();
        let mut entries = Vec::new();
        let mut took = Vec::new();
        for (transferable, amount) in [
            (false, e.from_non_transferable),
            (true, e.from_transferable),
        ] {
            let (taken, short) = buckets::take_in_order(buckets, transferable, amount);
            took.extend(taken.iter().copied());
            let mut short = short;
            if short.get() > 0 {
                // Redis admitted more than the class holds here: take the rest from the
                // other class, and count what no bucket backs.
                let (more, rest) = buckets::take_in_order(buckets, !transferable, short);
                took.extend(more.iter().copied());
                short = rest;
                self.unbacked += short.get();
            }
        }
        for (bucket, n) in &took {
            self.touched.insert(*bucket);
            entries.push(Entry::customer(&e.customer, *bucket, "usage", neg(*n)));
        }
        self.took.insert(e.request_id.clone(), took);
        self.push(e, "usage", TxnKey::debit(&e.request_id), entries);
    }

    fn refund(&mut self, e: &UsageEvent) {
        let buckets = self.by_customer.entry(e.customer.clone()).or_default();
        let mut parts = self.took.remove(&e.request_id).unwrap_or_default();
        let mut entries = Vec::new();
        for (transferable, amount) in [
            (false, e.from_non_transferable),
            (true, e.from_transferable),
        ] {
            let mut left = amount.get();
            for (bucket_id, taken) in parts.iter_mut() {
                if left <= 0 {
                    break;
                }
                let Some(b) = buckets
                    .iter_mut()
                    .find(|b| b.id == *bucket_id && b.transferable == transferable)
                else {
                    continue;
                };
                let give = taken.get().min(left);
                if give <= 0 {
                    continue;
                }
                *taken = Millicredits::new(taken.get() - give);
                b.remaining = Millicredits::new(b.remaining.get() + give);
                left -= give;
                self.touched.insert(b.id);
                entries.push(Entry::customer(
                    &e.customer,
                    b.id,
                    "refund",
                    Millicredits::new(give),
                ));
            }
            if left > 0 {
                // The ledger never saw the debit (lost with Redis's data): credit a bucket
                // of the same class so the balances still match Redis.
                let b = Bucket {
                    id: Uuid::now_v7(),
                    customer_id: e.customer.clone(),
                    kind: BucketKind::Granted,
                    amount: Millicredits::new(left),
                    remaining: Millicredits::new(left),
                    transferable,
                    expires_at: None,
                    created_at: DateTime::from_timestamp_millis(e.ts_ms).unwrap_or_default(),
                };
                entries.push(Entry::customer(
                    &e.customer,
                    b.id,
                    "refund",
                    Millicredits::new(left),
                ));
                self.new_buckets.push(b.clone());
                self.touched.insert(b.id);
                buckets.push(b);
            }
        }
        self.push(e, "refund", TxnKey::refund(&e.request_id), entries);
    }

    fn push(&mut self, e: &UsageEvent, kind: &'static str, key: TxnKey, mut entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let customer_sum: i64 = entries.iter().map(|e| e.amount.get()).sum();
        entries.push(Entry::system(
            SYSTEM_USAGE,
            kind,
            Millicredits::new(-customer_sum),
        ));
        self.txns
            .push(Txn::new(kind, key, Some(e.stream_id.clone()), entries));
    }

    /// Expires what is left of the hold's bucket here (at most its limit); returns it.
    fn expire(&mut self, m: &ExpiryMarker) -> Millicredits {
        let Ok(id) = Uuid::parse_str(&m.bucket) else {
            return Millicredits::ZERO;
        };
        let Some(bucket) = self
            .by_customer
            .get_mut(&m.customer)
            .and_then(|list| list.iter_mut().find(|b| b.id == id))
        else {
            return Millicredits::ZERO;
        };
        let left = bucket.remaining;
        let amount = m.limit.map_or(left, |limit| limit.min(left));
        if amount.get() <= 0 {
            return Millicredits::ZERO;
        }
        let txn = buckets::expiry_txn(
            bucket,
            amount,
            hold_key(m),
            format!("bucket:{}:{}", bucket.id, m.stream_id),
        );
        self.touched.insert(id);
        self.txns.push(txn);
        amount
    }
}

async fn record_rejects(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rejects: &[Reject],
) -> Result<(), sqlx::Error> {
    if rejects.is_empty() {
        return Ok(());
    }
    let streams: Vec<&str> = rejects.iter().map(|r| r.0.as_str()).collect();
    let ids: Vec<&str> = rejects.iter().map(|r| r.1.as_str()).collect();
    let problems: Vec<&str> = rejects.iter().map(|r| r.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO usage_rejects (stream, stream_id, problem)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&streams)
    .bind(&ids)
    .bind(&problems)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts the usage rows; returns the (request id, kind) pairs that are new.
async fn insert_usage_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    usage: &[(&UsageEvent, DateTime<Utc>)],
) -> Result<HashSet<(String, UsageKind)>, sqlx::Error> {
    if usage.is_empty() {
        return Ok(HashSet::new());
    }
    let request_ids: Vec<&str> = usage.iter().map(|(e, _)| e.request_id.as_str()).collect();
    let kinds: Vec<&str> = usage.iter().map(|(e, _)| e.kind.as_str()).collect();
    let customers: Vec<&str> = usage.iter().map(|(e, _)| e.customer.as_str()).collect();
    let routes: Vec<&str> = usage.iter().map(|(e, _)| e.route.as_str()).collect();
    let costs: Vec<i64> = usage.iter().map(|(e, _)| e.cost.get()).collect();
    let nts: Vec<i64> = usage
        .iter()
        .map(|(e, _)| e.from_non_transferable.get())
        .collect();
    let trs: Vec<i64> = usage
        .iter()
        .map(|(e, _)| e.from_transferable.get())
        .collect();
    let times: Vec<DateTime<Utc>> = usage.iter().map(|(_, at)| *at).collect();
    let stream_ids: Vec<&str> = usage.iter().map(|(e, _)| e.stream_id.as_str()).collect();
    let inserted: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO usage_events (request_id, kind, customer_id, route, cost, nt, tr, occurred_at, stream_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                              $7::int8[], $8::timestamptz[], $9::text[])
         ON CONFLICT (request_id, kind) DO NOTHING
         RETURNING request_id, kind",
    )
    .bind(&request_ids)
    .bind(&kinds)
    .bind(&customers)
    .bind(&routes)
    .bind(&costs)
    .bind(&nts)
    .bind(&trs)
    .bind(&times)
    .bind(&stream_ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted
        .into_iter()
        .filter_map(|(id, kind)| Some((id, UsageKind::parse(&kind)?)))
        .collect())
}

async fn insert_unknown_refund_buckets(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new_buckets: &[Bucket],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = new_buckets.iter().map(|b| b.id).collect();
    let customers: Vec<&str> = new_buckets.iter().map(|b| b.customer_id.as_str()).collect();
    let amounts: Vec<i64> = new_buckets.iter().map(|b| b.amount.get()).collect();
    let transferable: Vec<bool> = new_buckets.iter().map(|b| b.transferable).collect();
    // Inserted empty; the bucket update that follows sets what is left.
    sqlx::query(
        "INSERT INTO buckets (id, customer_id, kind, amount, remaining, transferable)
         SELECT id, c, 'granted', a, 0, t
         FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::bool[]) AS v(id, c, a, t)",
    )
    .bind(&ids)
    .bind(&customers)
    .bind(&amounts)
    .bind(&transferable)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
