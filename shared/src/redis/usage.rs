//! Entries of the usage streams: usage events as the proxy writes them, and the expiry
//! markers billing-sync writes (a bucket's remainder taken out of Redis at that point of
//! the stream), as billing-sync reads them back.

use std::collections::HashMap;

use redis::Value;

use crate::credits::Millicredits;
use crate::ids::CustomerId;

/// Whether an event takes credits or gives them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsageKind {
    /// A request was admitted and its cost debited.
    Debit,
    /// A debited request's upstream failed and its cost was returned.
    Refund,
}

impl UsageKind {
    /// The name in the stream's `kind` field (and in Postgres).
    pub fn as_str(self) -> &'static str {
        match self {
            UsageKind::Debit => "debit",
            UsageKind::Refund => "refund",
        }
    }

    /// Reads a stored name.
    pub fn parse(name: &str) -> Option<UsageKind> {
        match name {
            "debit" => Some(UsageKind::Debit),
            "refund" => Some(UsageKind::Refund),
            _ => None,
        }
    }
}

/// One entry of a usage stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEvent {
    /// The stream entry id (`<ms>-<seq>`).
    pub stream_id: String,
    /// Debit or refund.
    pub kind: UsageKind,
    /// Whose credits.
    pub customer: CustomerId,
    /// The route label (name or pattern).
    pub route: String,
    /// The proxy's request id; a debit and its refund share it.
    pub request_id: String,
    /// Total moved.
    pub cost: Millicredits,
    /// Of which non-transferable.
    pub from_non_transferable: Millicredits,
    /// Of which transferable.
    pub from_transferable: Millicredits,
    /// When, in Unix milliseconds.
    pub ts_ms: i64,
}

/// An expiry marker: at this point of the stream, billing-sync took `taken` from one balance
/// field of the account as a hold for a bucket's remainder. The consumer expires what the
/// ledger says is left in the bucket *here*, after every earlier debit and refund, and gives
/// the rest of the hold back (or takes the difference), so unread debits never make other
/// buckets pay for an expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryMarker {
    /// The stream entry id.
    pub stream_id: String,
    /// Whose bucket.
    pub customer: CustomerId,
    /// The bucket (a UUID, as text).
    pub bucket: String,
    /// Whether the bucket's credits are in `tr` (else `nt`).
    pub transferable: bool,
    /// Held in Redis when the marker was written.
    pub taken: Millicredits,
    /// At most this much expires (a partial take-back, such as a refunded pack); `None`:
    /// everything left.
    pub limit: Option<Millicredits>,
    /// The ledger transaction's idempotency key for a take-back; empty for a plain expiry
    /// (the consumer keys it by the bucket and this entry's id).
    pub key: String,
    /// When, in Unix milliseconds.
    pub ts_ms: i64,
}

/// One entry of a usage stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEntry {
    /// A debit or refund by the proxy.
    Usage(UsageEvent),
    /// A hold for a bucket's expiry (or take-back) by billing-sync.
    Expiry(ExpiryMarker),
}

impl StreamEntry {
    /// Reads an entry's fields; `Err` names what is missing or malformed (such an entry is
    /// set aside by the consumer, never guessed at).
    pub fn from_fields(stream_id: &str, fields: &HashMap<String, Value>) -> Result<Self, String> {
        let f = Fields(fields);
        if f.text("kind")? == "expire" {
            let limit = f.text("limit")?;
            return Ok(StreamEntry::Expiry(ExpiryMarker {
                stream_id: stream_id.to_owned(),
                customer: CustomerId::parse(&f.text("customer")?)?,
                bucket: f.text("bucket")?,
                transferable: match f.text("field")?.as_str() {
                    "tr" => true,
                    "nt" => false,
                    other => return Err(format!("unknown field {other:?}")),
                },
                taken: f.milli("taken")?,
                limit: if limit.is_empty() {
                    None
                } else {
                    Some(f.milli("limit")?)
                },
                key: f.text("key")?,
                ts_ms: f.time_ms("ts_ms")?,
            }));
        }
        UsageEvent::from_fields(stream_id, fields).map(StreamEntry::Usage)
    }
}

/// 9999-12-31T23:59:59.999Z in Unix milliseconds.
const TIME_MS_MAX: i64 = 253_402_300_799_999;

/// Typed reads of an entry's fields.
struct Fields<'a>(&'a HashMap<String, Value>);

impl Fields<'_> {
    fn text(&self, name: &str) -> Result<String, String> {
        match self.0.get(name) {
            Some(Value::BulkString(b)) => {
                String::from_utf8(b.clone()).map_err(|_| format!("field {name} is not UTF-8"))
            }
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            Some(Value::Int(i)) => Ok(i.to_string()),
            _ => Err(format!("field {name} is missing")),
        }
    }

    /// A time in Unix milliseconds between 1970 and 9999 (a time outside is no time).
    fn time_ms(&self, name: &str) -> Result<i64, String> {
        let ms = self.int(name)?;
        if !(0..=TIME_MS_MAX).contains(&ms) {
            return Err(format!("field {name} is not a time"));
        }
        Ok(ms)
    }

    fn int(&self, name: &str) -> Result<i64, String> {
        self.text(name)?
            .parse::<i64>()
            .map_err(|_| format!("field {name} is not an integer"))
    }

    fn milli(&self, name: &str) -> Result<Millicredits, String> {
        let n = self.int(name)?;
        if n < 0 {
            return Err(format!("field {name} is negative"));
        }
        Ok(Millicredits::new(n))
    }
}

impl UsageEvent {
    /// Reads a debit's or refund's fields; `Err` names what is missing or malformed.
    pub fn from_fields(stream_id: &str, fields: &HashMap<String, Value>) -> Result<Self, String> {
        let f = Fields(fields);
        let text = |name: &str| f.text(name);
        let milli = |name: &str| f.milli(name);
        let kind = text("kind")?;
        let kind = UsageKind::parse(&kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
        Ok(UsageEvent {
            stream_id: stream_id.to_owned(),
            kind,
            customer: CustomerId::parse(&text("customer")?)?,
            route: text("route")?,
            request_id: text("request_id")?,
            cost: milli("cost")?,
            from_non_transferable: milli("nt")?,
            from_transferable: milli("tr")?,
            ts_ms: f.time_ms("ts_ms")?,
        })
    }
}
