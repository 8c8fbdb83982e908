//! The exactly-once usage consumer: Redis usage streams → the ledger.
//!
//! Exactly once, in three steps:
//! 1. Entries are read in a consumer group, so an entry delivered but not acknowledged stays
//!    in the group's pending list and is delivered again after a crash (on start the
//!    consumer claims every pending entry and reads its own pending list before new ones).
//! 2. A batch is posted in one Postgres transaction ([`ledger::usage::post_batch`]): usage
//!    rows deduplicated by `(request_id, kind)`, expiries by their key; a replayed entry
//!    posts nothing, so it changes nothing.
//! 3. Acknowledge only after the commit, with the settlement of the batch's expiry holds in
//!    the same atomic step ([`Store::ack_usage`]). A crash between commit and acknowledgement
//!    means a replay, which step 2 turns into a no-op (a replayed hold settles from what its
//!    first posting recorded); a crash before the commit loses nothing.
//!
//! The stream commands live in `shared::redis` ([`Store::read_usage`] and friends); the
//! posting rules in [`ledger::usage`]. One consumer per deployment is assumed.

use shared::redis::keys;
use shared::redis::{Lag, Store, StoreError, StreamEntry};
use sqlx::PgPool;

use crate::ledger;
use crate::ledger::usage::{self, Reject};

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

/// Creates the consumer group on every shard stream, once.
pub async fn ensure_groups(store: &Store) -> Result<(), StoreError> {
    store.ensure_usage_groups().await
}

/// Moves every pending entry of the group to `consumer`, so the next [`poll`] with
/// `pending` replays it.
pub async fn claim_pending(store: &Store, consumer: &str) -> Result<(), StoreError> {
    store.claim_pending_usage(consumer).await
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
    let batches = store
        .read_usage(shards, consumer, pending, USAGE_BATCH_LEN_MAX)
        .await?;
    let mut entries = Vec::new();
    let mut rejects: Vec<Reject> = Vec::new();
    let mut read = 0;
    for batch in &batches {
        for (id, entry) in &batch.entries {
            read += 1;
            match entry {
                Ok(entry) => entries.push(entry.clone()),
                Err(problem) => {
                    tracing::error!(stream = %batch.stream, stream_id = %id, %problem, "usage entry set aside");
                    rejects.push((batch.stream.clone(), id.clone(), problem.clone()));
                }
            }
        }
    }
    if read == 0 {
        return Ok(Applied::default());
    }
    let posted = usage::post_batch(db, &entries, &rejects).await?;
    store.ack_usage(&batches, &posted.settlements).await?;
    if posted.unbacked.get() > 0 {
        tracing::error!(
            unbacked_millicredits = posted.unbacked.get(),
            "usage exceeded the ledger's balance"
        );
        metrics::counter!("billing_usage_unbacked_millicredits_total")
            .increment(posted.unbacked.get().unsigned_abs());
    }
    metrics::counter!("billing_usage_events_applied_total").increment(posted.applied as u64);
    metrics::counter!("billing_usage_events_duplicate_total").increment(posted.duplicates as u64);
    metrics::counter!("billing_usage_events_rejected_total").increment(posted.rejected as u64);
    Ok(Applied {
        read,
        applied: posted.applied,
        duplicates: posted.duplicates,
        rejected: posted.rejected,
    })
}

/// Applies usage events in one transaction, as a poll would (tests replay batches with it).
/// Returns (applied, duplicates).
pub async fn apply_batch(
    db: &PgPool,
    events: &[shared::redis::UsageEvent],
    rejects: &[Reject],
) -> Result<(usize, usize), sqlx::Error> {
    let entries: Vec<StreamEntry> = events.iter().cloned().map(StreamEntry::Usage).collect();
    let posted = ledger::usage::post_batch(db, &entries, rejects).await?;
    Ok((posted.applied, posted.duplicates))
}

/// Unread usage: (entries, age in seconds of the oldest unread entry at `now_ms`).
pub async fn lag(store: &Store, now_ms: i64) -> Result<(u64, i64), StoreError> {
    let Lag { entries, oldest_ms } = store.usage_lag().await?;
    let age_s = oldest_ms.map_or(0, |ms| (now_ms - ms).max(0) / 1000);
    Ok((entries, age_s))
}
