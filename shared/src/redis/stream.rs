//! The usage-stream protocol billing-sync consumes with: the consumer group on every shard
//! stream, claiming what a crashed consumer left pending, reading a batch, acknowledging
//! it (with the settlement of expiry holds, atomically) and trimming, the lag, and writing
//! expiry holds. Only this module knows the stream commands.
//!
//! Every command names keys of one hash slot (one shard's stream, and accounts of that
//! shard), so the same code runs on Redis Cluster.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::LazyLock;

use redis::streams::{StreamKey, StreamReadReply};
use redis::{Script, Value};

use super::keys::{self, USAGE_CONSUMER_GROUP, field};
use super::projection::int_at;
use super::store::{Store, StoreError};
use super::usage::StreamEntry;
use crate::credits::Millicredits;
use crate::ids::CustomerId;

static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("unread.lua"),
        include_str!("expire.lua")
    ))
});

/// Entries `XAUTOCLAIM` moves per call while claiming a crashed consumer's pending list.
const CLAIM_PAGE_LEN_MAX: usize = 1000;
/// Claim calls per shard; with [`CLAIM_PAGE_LEN_MAX`] they cover 10M pending entries, past
/// which the rest stay pending for the next start.
const CLAIM_PAGES_MAX: usize = 10_000;
/// How long an expiry hold blocks a second hold of the same bucket (seconds): the consumer
/// normally settles it within a poll; after this a sweep may hold again (the consumer then
/// gives the second hold back whole).
const EXPIRY_HOLD_TTL_S: u64 = 300;

/// The entries one stream gave in one read.
#[derive(Clone, Debug)]
pub struct StreamBatch {
    /// The stream key.
    pub stream: String,
    /// Its entries in stream order: the id and the entry, or why it could not be read (such
    /// an entry is set aside, never guessed at).
    pub entries: Vec<(String, Result<StreamEntry, String>)>,
}

/// What settling one expiry hold changes in Redis: `delta` back into the bucket's field
/// (negative: taken as well), and the hold's marker cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldSettlement {
    /// Whose account.
    pub customer: CustomerId,
    /// The bucket the hold was for.
    pub bucket: String,
    /// `tr` (else `nt`).
    pub transferable: bool,
    /// Given back (the hold minus what expired).
    pub delta: Millicredits,
}

/// The outcome of [`Store::hold_for_expiry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Marked in the stream, with this much taken out of the field.
    Marked(Millicredits),
    /// A hold of this bucket is already in flight; nothing changed.
    InFlight,
    /// Redis has no such account (lost its data); nothing changed.
    NoAccount,
}

/// The consumer group's backlog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Entries not yet delivered to the group, over all shards.
    pub entries: u64,
    /// The time of the oldest undelivered entry (Unix ms), if any.
    pub oldest_ms: Option<i64>,
}

impl Store {
    /// Creates the consumer group on every shard stream (from the stream's start), once.
    pub async fn ensure_usage_groups(&self) -> Result<(), StoreError> {
        for shard in 0..keys::SHARDS {
            let created = self
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

    /// Moves every pending entry of the group, whoever it was delivered to, to `consumer`,
    /// so its next read of its own pending list replays them.
    pub async fn claim_pending_usage(&self, consumer: &str) -> Result<(), StoreError> {
        for shard in 0..keys::SHARDS {
            let mut start = "0-0".to_owned();
            for _ in 0..CLAIM_PAGES_MAX {
                let reply: Value = self
                    .query(
                        redis::cmd("XAUTOCLAIM")
                            .arg(keys::usage_stream(shard))
                            .arg(USAGE_CONSUMER_GROUP)
                            .arg(consumer)
                            .arg(0)
                            .arg(&start)
                            .arg("COUNT")
                            .arg(CLAIM_PAGE_LEN_MAX)
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

    /// Reads up to `count` entries from each stream of `shards`, one pipelined
    /// `XREADGROUP` per stream: `consumer`'s own pending entries with `pending`, else new
    /// ones. Streams that gave nothing are left out.
    pub async fn read_usage(
        &self,
        shards: Range<u16>,
        consumer: &str,
        pending: bool,
        count: usize,
    ) -> Result<Vec<StreamBatch>, StoreError> {
        let mut pipe = redis::pipe();
        for shard in shards {
            pipe.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(USAGE_CONSUMER_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(keys::usage_stream(shard))
                .arg(if pending { "0" } else { ">" });
        }
        let replies: Vec<Option<StreamReadReply>> = self.query_pipeline(&pipe).await?;
        let streams: Vec<StreamKey> = replies.into_iter().flatten().flat_map(|r| r.keys).collect();
        Ok(streams
            .into_iter()
            .filter(|s| !s.ids.is_empty())
            .map(|s| StreamBatch {
                entries: s
                    .ids
                    .iter()
                    .map(|e| (e.id.clone(), StreamEntry::from_fields(&e.id, &e.map)))
                    .collect(),
                stream: s.key,
            })
            .collect())
    }

    /// Acknowledges the batches (after their commit) and trims what they cover. A stream
    /// whose entries settle expiry holds gets the settlements, its acknowledgement and trim
    /// in one `MULTI` (one slot), so a hold is settled exactly when its marker is
    /// acknowledged; the others share one pipeline.
    pub async fn ack_usage(
        &self,
        batches: &[StreamBatch],
        settlements: &[HoldSettlement],
    ) -> Result<(), StoreError> {
        let mut by_stream: HashMap<String, Vec<&HoldSettlement>> = HashMap::new();
        for s in settlements {
            by_stream
                .entry(keys::usage_stream_of(&s.customer))
                .or_default()
                .push(s);
        }
        let mut plain = redis::pipe();
        let mut plain_len = 0;
        for batch in batches {
            let Some((last, _)) = batch.entries.last() else {
                continue;
            };
            let mut ack = redis::cmd("XACK");
            ack.arg(&batch.stream).arg(USAGE_CONSUMER_GROUP);
            for (id, _) in &batch.entries {
                ack.arg(id);
            }
            let mut trim = redis::cmd("XTRIM");
            trim.arg(&batch.stream).arg("MINID").arg(last);
            match by_stream.remove(&batch.stream) {
                Some(holds) => {
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    for h in holds {
                        let field = if h.transferable {
                            field::TRANSFERABLE
                        } else {
                            field::NON_TRANSFERABLE
                        };
                        if !h.delta.is_zero() {
                            pipe.hincr(keys::account(&h.customer), field, h.delta.get())
                                .ignore();
                        }
                        pipe.del(keys::expiry_hold(&h.customer, &h.bucket)).ignore();
                    }
                    pipe.add_command(ack).ignore();
                    pipe.add_command(trim).ignore();
                    self.query_pipeline::<()>(&pipe).await?;
                }
                None => {
                    plain.add_command(ack).ignore();
                    plain.add_command(trim).ignore();
                    plain_len += 1;
                }
            }
        }
        if plain_len > 0 {
            self.query_pipeline::<()>(&plain).await?;
        }
        Ok(())
    }

    /// The consumer group's backlog over every shard.
    pub async fn usage_lag(&self) -> Result<Lag, StoreError> {
        let mut lag = Lag::default();
        for shard in 0..keys::SHARDS {
            let stream = keys::usage_stream(shard);
            let groups: Vec<HashMap<String, Value>> = match self
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
                lag.entries += u64::try_from(*n).unwrap_or(0);
            }
            let last = match group.get("last-delivered-id") {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => continue,
            };
            let next: Vec<(String, HashMap<String, Value>)> = self
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
                lag.oldest_ms = Some(lag.oldest_ms.map_or(ms, |o| o.min(ms)));
            }
        }
        Ok(lag)
    }

    /// Holds up to `amount` (plus the customer's unread refunds in that field, which may
    /// restore credits to the bucket first) of one field of `customer`'s account for the
    /// expiry (or, with `limit`, the partial take-back) of `bucket`, and marks the point in the usage stream
    /// where it happens, atomically with the proxy's debits. The consumer settles the hold
    /// when it reads the marker; `key` becomes the ledger transaction's idempotency key.
    #[allow(clippy::too_many_arguments)]
    pub async fn hold_for_expiry(
        &self,
        customer: &CustomerId,
        bucket: &str,
        transferable: bool,
        amount: Millicredits,
        limit: Option<Millicredits>,
        key: &str,
        now_ms: i64,
    ) -> Result<Hold, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Vec<Value> = EXPIRE
            .key(keys::account(customer))
            .key(keys::usage_stream_of(customer))
            .key(keys::expiry_hold(customer, bucket))
            .arg(if transferable {
                field::TRANSFERABLE
            } else {
                field::NON_TRANSFERABLE
            })
            .arg(amount.get().max(0))
            .arg(customer.as_str())
            .arg(bucket)
            .arg(limit.map_or(String::new(), |l| l.get().to_string()))
            .arg(key)
            .arg(now_ms)
            .arg(EXPIRY_HOLD_TTL_S)
            .arg(USAGE_CONSUMER_GROUP)
            .arg(super::projection::RECONCILE_UNREAD_LEN_MAX)
            .invoke_async(&mut conn)
            .await?;
        let int = |i: usize| int_at(&reply, i, "expire");
        match int(0)? {
            1 => Ok(Hold::Marked(Millicredits::new(int(1)?))),
            0 => Ok(Hold::InFlight),
            -1 => Ok(Hold::NoAccount),
            other => Err(StoreError::Reply(format!("expire: unknown status {other}"))),
        }
    }
}
