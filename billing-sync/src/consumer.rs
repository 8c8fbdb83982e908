//! The exactly-once usage consumer: Redis usage streams → the ledger.
//!
//! Exactly once, in three steps:
//! 1. Entries are read with `XREADGROUP` in a consumer group, so an entry delivered but not
//!    acknowledged stays in the group's pending list and is delivered again after a crash
//!    (on start the consumer claims every pending entry, `XAUTOCLAIM`, and reads its own
//!    pending list, id `0`, before new entries, id `>`).
//! 2. A batch is applied in one Postgres transaction: the usage rows are inserted with
//!    `ON CONFLICT (request_id, kind) DO NOTHING`, and only the rows actually inserted get
//!    ledger entries and bucket changes. A replayed entry inserts nothing, so it changes
//!    nothing.
//! 3. `XACK` only after the commit. A crash between commit and ack means a replay, which
//!    step 2 turns into a no-op; a crash before the commit loses nothing, since the entries
//!    stay pending.
//!
//! Acknowledged entries are trimmed from the stream (`XTRIM MINID`), which keeps the
//! reconciler's scan of unread entries short. One consumer per deployment is assumed.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use redis::Value;
use redis::streams::{StreamKey, StreamReadReply};
use shared::redis::keys::{self, USAGE_CONSUMER_GROUP};
use shared::redis::{Store, StoreError, UsageEvent, UsageKind};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ledger::{self, Bucket, Entry, SYSTEM_USAGE, Txn};

/// Entries read per stream per poll; a batch is at most `SHARDS` times this. Large, because
/// each poll costs a few round trips whatever its size: with one hot customer (one stream)
/// 1024 kept the consumer at a third of the proxy's rate on two cores, 16384 keeps up
/// (`scripts/bench-pipeline`). A full batch is about 3 MB in memory per stream.
pub const USAGE_BATCH_LEN_MAX: usize = 16384;

/// Why a poll failed; the worker retries after a pause.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Redis failed (unreachable, or the group vanished with its data).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Postgres failed; nothing was acknowledged.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// What one poll did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries read.
    pub read: usize,
    /// Entries applied to the ledger for the first time.
    pub applied: usize,
    /// Entries already applied before (replays).
    pub duplicates: usize,
    /// Entries set aside as unreadable.
    pub rejected: usize,
}

/// Creates the consumer group on every shard stream (from the stream's start), once.
pub async fn ensure_groups(store: &Store) -> Result<(), StoreError> {
    for shard in 0..keys::SHARDS {
        let created = store
            .query::<()>(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(keys::usage_stream(shard))
                    .arg(USAGE_CONSUMER_GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        match created {
            Ok(()) => {}
            Err(StoreError::Redis(e)) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves every pending entry of the group, whoever it was delivered to, to `consumer`, so
/// the next [`poll`] with `pending` replays it.
pub async fn claim_pending(store: &Store, consumer: &str) -> Result<(), StoreError> {
    for shard in 0..keys::SHARDS {
        let mut start = "0-0".to_owned();
        // Bounded: each round moves the cursor forward; 10_000 rounds cover 10M entries.
        for _ in 0..10_000 {
            let reply: Value = store
                .query(
                    redis::cmd("XAUTOCLAIM")
                        .arg(keys::usage_stream(shard))
                        .arg(USAGE_CONSUMER_GROUP)
                        .arg(consumer)
                        .arg(0)
                        .arg(&start)
                        .arg("COUNT")
                        .arg(1000)
                        .arg("JUSTID"),
                )
                .await?;
            let next = match &reply {
                Value::Array(items) => match items.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::SimpleString(s)) => s.clone(),
                    _ => "0-0".to_owned(),
                },
                _ => "0-0".to_owned(),
            };
            if next == "0-0" {
                break;
            }
            start = next;
        }
    }
    Ok(())
}

/// Reads one batch from each half of the shard streams (the consumer's own pending entries
/// with `pending`, else new ones) and applies the halves concurrently, each in one
/// transaction on its own connection, then acknowledges and trims. Customers never span
/// shards, so the halves never wait on each other's locks; two keep both cores of a small
/// machine busy.
pub async fn poll(
    store: &Store,
    db: &PgPool,
    consumer: &str,
    pending: bool,
) -> Result<Applied, ConsumerError> {
    let half = keys::SHARDS / 2;
    let (a, b) = tokio::join!(
        poll_shards(store, db, consumer, pending, 0..half),
        poll_shards(store, db, consumer, pending, half..keys::SHARDS),
    );
    let (a, b) = (a?, b?);
    Ok(Applied {
        read: a.read + b.read,
        applied: a.applied + b.applied,
        duplicates: a.duplicates + b.duplicates,
        rejected: a.rejected + b.rejected,
    })
}

/// Reads and applies one batch from the streams of `shards`.
pub async fn poll_shards(
    store: &Store,
    db: &PgPool,
    consumer: &str,
    pending: bool,
    shards: std::ops::Range<u16>,
) -> Result<Applied, ConsumerError> {
    // One XREADGROUP per stream, pipelined: each command names keys of one hash slot, so
    // the same code runs on Redis Cluster.
    let mut pipe = redis::pipe();
    for shard in shards {
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(USAGE_CONSUMER_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(USAGE_BATCH_LEN_MAX)
            .arg("STREAMS")
            .arg(keys::usage_stream(shard))
            .arg(if pending { "0" } else { ">" });
    }
    let replies: Vec<Option<StreamReadReply>> = store.query_pipeline(&pipe).await?;
    let streams: Vec<StreamKey> = replies.into_iter().flatten().flat_map(|r| r.keys).collect();

    let mut events = Vec::new();
    let mut rejects: Vec<(String, String, String)> = Vec::new();
    let mut read = 0;
    for stream in &streams {
        for entry in &stream.ids {
            read += 1;
            match UsageEvent::from_fields(&entry.id, &entry.map) {
                Ok(event) => events.push(event),
                Err(problem) => {
                    tracing::error!(stream = %stream.key, stream_id = %entry.id, %problem, "usage entry set aside");
                    rejects.push((stream.key.clone(), entry.id.clone(), problem));
                }
            }
        }
    }
    if read == 0 {
        return Ok(Applied::default());
    }
    let (applied, duplicates) = apply_batch(db, &events, &rejects).await?;
    // Acknowledge (after the commit) and trim, every stream in one round trip.
    let mut pipe = redis::pipe();
    for stream in &streams {
        let Some(last) = stream.ids.last() else {
            continue;
        };
        let mut ack = redis::cmd("XACK");
        ack.arg(&stream.key).arg(USAGE_CONSUMER_GROUP);
        for entry in &stream.ids {
            ack.arg(&entry.id);
        }
        pipe.add_command(ack).ignore();
        pipe.cmd("XTRIM")
            .arg(&stream.key)
            .arg("MINID")
            .arg(&last.id)
            .ignore();
    }
    store.query_pipeline::<()>(&pipe).await?;
    metrics::counter!("billing_usage_events_applied_total").increment(applied as u64);
    metrics::counter!("billing_usage_events_duplicate_total").increment(duplicates as u64);
    metrics::counter!("billing_usage_events_rejected_total").increment(rejects.len() as u64);
    Ok(Applied {
        read,
        applied,
        duplicates,
        rejected: rejects.len(),
    })
}

/// Applies events in one transaction: usage rows deduplicated by `(request_id, kind)`, and
/// for each new one a ledger transaction and its bucket changes. Returns (applied,
/// duplicates).
pub async fn apply_batch(
    db: &PgPool,
    events: &[UsageEvent],
    rejects: &[(String, String, String)],
) -> Result<(usize, usize), sqlx::Error> {
    let mut tx = db.begin().await?;
    if !rejects.is_empty() {
        let (streams, ids, problems): (Vec<&str>, Vec<&str>, Vec<&str>) = rejects.iter().fold(
            (vec![], vec![], vec![]),
            |(mut s, mut i, mut p), (stream, id, problem)| {
                s.push(stream.as_str());
                i.push(id.as_str());
                p.push(problem.as_str());
                (s, i, p)
            },
        );
        sqlx::query(
            "INSERT INTO usage_rejects (stream, stream_id, problem)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&streams)
        .bind(&ids)
        .bind(&problems)
        .execute(&mut *tx)
        .await?;
    }
    if events.is_empty() {
        tx.commit().await?;
        return Ok((0, 0));
    }

    let kind_name = |k: UsageKind| match k {
        UsageKind::Debit => "debit",
        UsageKind::Refund => "refund",
    };
    let request_ids: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| kind_name(e.kind)).collect();
    let customers: Vec<&str> = events.iter().map(|e| e.customer.as_str()).collect();
    let routes: Vec<&str> = events.iter().map(|e| e.route.as_str()).collect();
    let costs: Vec<i64> = events.iter().map(|e| e.cost.get()).collect();
    let nts: Vec<i64> = events
        .iter()
        .map(|e| e.from_non_transferable.get())
        .collect();
    let trs: Vec<i64> = events.iter().map(|e| e.from_transferable.get()).collect();
    let times: Vec<DateTime<Utc>> = events
        .iter()
        .map(|e| DateTime::from_timestamp_millis(e.ts_ms).unwrap_or_else(Utc::now))
        .collect();
    let stream_ids: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
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
    .fetch_all(&mut *tx)
    .await?;
    let mut fresh: HashSet<(String, String)> = inserted.into_iter().collect();
    // Keep each new (request, kind) once, in stream order.
    let new_events: Vec<&UsageEvent> = events
        .iter()
        .filter(|e| fresh.remove(&(e.request_id.clone(), kind_name(e.kind).to_owned())))
        .collect();
    let applied = new_events.len();
    let duplicates = events.len() - applied;
    if new_events.is_empty() {
        tx.commit().await?;
        return Ok((0, duplicates));
    }

    let mut ids: Vec<String> = new_events
        .iter()
        .map(|e| e.customer.as_str().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    let known: HashSet<String> = ledger::lock_customers(&mut tx, &ids)
        .await?
        .into_iter()
        .collect();
    // Buckets that hold credits, plus those the refunded debits took from.
    let refund_keys: Vec<String> = new_events
        .iter()
        .filter(|e| e.kind == UsageKind::Refund)
        .map(|e| format!("usage:debit:{}", e.request_id))
        .collect();
    let debit_parts: Vec<(String, Uuid, i64)> = if refund_keys.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT t.idempotency_key, e.bucket_id, -e.amount FROM ledger_txns t
             JOIN ledger_entries e ON e.txn_id = t.id
             WHERE t.idempotency_key = ANY($1) AND e.bucket_id IS NOT NULL",
        )
        .bind(&refund_keys)
        .fetch_all(&mut *tx)
        .await?
    };
    let extra: Vec<Uuid> = debit_parts.iter().map(|p| p.1).collect();
    let rows: Vec<Bucket> = sqlx::query_as(
        "SELECT id, customer_id, kind, amount, remaining, transferable, expires_at, created_at
         FROM buckets WHERE customer_id = ANY($1) AND (remaining > 0 OR id = ANY($2))",
    )
    .bind(&ids)
    .bind(&extra)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_customer: HashMap<String, Vec<Bucket>> = HashMap::new();
    for b in rows {
        by_customer
            .entry(b.customer_id.clone())
            .or_default()
            .push(b);
    }
    for list in by_customer.values_mut() {
        ledger::sort_spending_order(list);
    }
    let mut parts_by_debit: HashMap<String, Vec<(Uuid, i64)>> = HashMap::new();
    for (key, bucket, amount) in debit_parts {
        parts_by_debit
            .entry(key)
            .or_default()
            .push((bucket, amount));
    }

    let mut txns = Vec::with_capacity(applied);
    let mut touched: HashSet<Uuid> = HashSet::new();
    let mut new_buckets: Vec<Bucket> = Vec::new();
    let mut unbacked: i64 = 0;
    for event in &new_events {
        let customer = event.customer.as_str();
        if !known.contains(customer) {
            tracing::error!(customer_id = customer, request_id = %event.request_id, "usage event of an unknown customer: recorded, not in the ledger");
            continue;
        }
        let buckets = by_customer.entry(customer.to_owned()).or_default();
        let mut entries = Vec::new();
        match event.kind {
            UsageKind::Debit => {
                for (transferable, amount) in [
                    (false, event.from_non_transferable.get()),
                    (true, event.from_transferable.get()),
                ] {
                    let (taken, mut short) = ledger::take_in_order(buckets, transferable, amount);
                    for (bucket, n) in taken {
                        touched.insert(bucket);
                        entries.push(Entry::customer(customer, bucket, "usage", -n));
                    }
                    if short > 0 {
                        // Redis admitted more than the class holds here: take the rest from
                        // the other class, and count what no bucket backs (drift).
                        let (taken, rest) = ledger::take_in_order(buckets, !transferable, short);
                        for (bucket, n) in taken {
                            touched.insert(bucket);
                            entries.push(Entry::customer(customer, bucket, "usage", -n));
                        }
                        short = rest;
                        unbacked += short;
                    }
                }
            }
            UsageKind::Refund => {
                let mut parts = parts_by_debit
                    .remove(&format!("usage:debit:{}", event.request_id))
                    .unwrap_or_default();
                for (transferable, amount) in [
                    (false, event.from_non_transferable.get()),
                    (true, event.from_transferable.get()),
                ] {
                    let mut left = amount;
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
                        let give = (*taken).min(left);
                        if give <= 0 {
                            continue;
                        }
                        *taken -= give;
                        b.remaining += give;
                        left -= give;
                        touched.insert(b.id);
                        entries.push(Entry::customer(customer, b.id, "refund", give));
                    }
                    if left > 0 {
                        // The debit is unknown here (lost with Redis data): credit a bucket
                        // of the same class so the balances still match Redis.
                        let b = Bucket {
                            id: Uuid::now_v7(),
                            customer_id: customer.to_owned(),
                            kind: "granted".into(),
                            amount: left,
                            remaining: left,
                            transferable,
                            expires_at: None,
                            created_at: Utc::now(),
                        };
                        entries.push(Entry::customer(customer, b.id, "refund", left));
                        new_buckets.push(b.clone());
                        buckets.push(b);
                    }
                }
            }
        }
        let customer_sum: i64 = entries.iter().map(|e| e.amount).sum();
        if customer_sum == 0 && entries.is_empty() {
            continue;
        }
        let (kind, key) = match event.kind {
            UsageKind::Debit => ("usage", format!("usage:debit:{}", event.request_id)),
            UsageKind::Refund => ("refund", format!("usage:refund:{}", event.request_id)),
        };
        entries.push(Entry::system(SYSTEM_USAGE, kind, -customer_sum));
        txns.push(Txn {
            id: Uuid::now_v7(),
            kind,
            idempotency_key: key,
            source_ref: Some(event.stream_id.clone()),
            entries,
        });
    }
    if !new_buckets.is_empty() {
        let ids: Vec<Uuid> = new_buckets.iter().map(|b| b.id).collect();
        let customers: Vec<&str> = new_buckets.iter().map(|b| b.customer_id.as_str()).collect();
        let amounts: Vec<i64> = new_buckets.iter().map(|b| b.amount).collect();
        let transferable: Vec<bool> = new_buckets.iter().map(|b| b.transferable).collect();
        sqlx::query(
            "INSERT INTO buckets (id, customer_id, kind, amount, remaining, transferable)
             SELECT id, c, 'granted', a, 0, t
             FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::bool[]) AS v(id, c, a, t)",
        )
        .bind(&ids)
        .bind(&customers)
        .bind(&amounts)
        .bind(&transferable)
        .execute(&mut *tx)
        .await?;
        touched.extend(ids);
    }
    let updates: Vec<(Uuid, i64)> = by_customer
        .values()
        .flatten()
        .filter(|b| touched.contains(&b.id))
        .map(|b| (b.id, b.remaining))
        .collect();
    ledger::update_remaining(&mut tx, &updates).await?;
    ledger::insert_txns(&mut tx, &txns).await?;
    tx.commit().await?;
    if unbacked > 0 {
        tracing::error!(
            unbacked_millicredits = unbacked,
            "usage exceeded the ledger's balance"
        );
        metrics::counter!("billing_usage_unbacked_millicredits_total").increment(unbacked as u64);
    }
    Ok((applied, duplicates))
}

/// Unread usage: (entries, age in seconds of the oldest unread entry).
pub async fn lag(store: &Store) -> Result<(u64, f64), StoreError> {
    let mut entries = 0u64;
    let mut oldest_ms: Option<i64> = None;
    for shard in 0..keys::SHARDS {
        let stream = keys::usage_stream(shard);
        let groups: Vec<HashMap<String, Value>> = match store
            .query(redis::cmd("XINFO").arg("GROUPS").arg(&stream))
            .await
        {
            Ok(g) => g,
            Err(_) => continue,
        };
        let Some(group) = groups.iter().find(|g| {
            matches!(g.get("name"), Some(Value::BulkString(b)) if b == USAGE_CONSUMER_GROUP.as_bytes())
        }) else {
            continue;
        };
        if let Some(Value::Int(n)) = group.get("lag") {
            entries += u64::try_from(*n).unwrap_or(0);
        }
        let last = match group.get("last-delivered-id") {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => continue,
        };
        let next: Vec<(String, HashMap<String, Value>)> = store
            .query(
                redis::cmd("XRANGE")
                    .arg(&stream)
                    .arg(format!("({last}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        if let Some((id, _)) = next.first()
            && let Some(ms) = id.split('-').next().and_then(|m| m.parse::<i64>().ok())
        {
            oldest_ms = Some(oldest_ms.map_or(ms, |o| o.min(ms)));
        }
    }
    let age_ms = oldest_ms.map_or(0, |ms| (Utc::now().timestamp_millis() - ms).max(0));
    // Milliseconds to seconds for the gauge; display only, never used in arithmetic.
    #[allow(clippy::float_arithmetic)]
    let age_s = age_ms as f64 / 1000.0;
    Ok((entries, age_s))
}
