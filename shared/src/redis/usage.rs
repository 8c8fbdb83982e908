//! Usage events as the proxy writes them to the stream and billing-sync reads them.

use std::collections::HashMap;

use redis::Value;

use crate::credits::Millicredits;
use crate::ids::CustomerId;

/// Whether an event takes credits or gives them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageKind {
    /// A request was admitted and its cost debited.
    Debit,
    /// A debited request's upstream failed and its cost was returned.
    Refund,
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

impl UsageEvent {
    /// Reads an entry's fields; `Err` names what is missing or malformed (such an entry is
    /// set aside by the consumer, never guessed at).
    pub fn from_fields(stream_id: &str, fields: &HashMap<String, Value>) -> Result<Self, String> {
        let text = |name: &str| -> Result<String, String> {
            match fields.get(name) {
                Some(Value::BulkString(b)) => {
                    String::from_utf8(b.clone()).map_err(|_| format!("field {name} is not UTF-8"))
                }
                Some(Value::SimpleString(s)) => Ok(s.clone()),
                Some(Value::Int(i)) => Ok(i.to_string()),
                _ => Err(format!("field {name} is missing")),
            }
        };
        let milli = |name: &str| -> Result<Millicredits, String> {
            text(name)?
                .parse::<i64>()
                .map(Millicredits::new)
                .map_err(|_| format!("field {name} is not an integer"))
        };
        let kind = match text("kind")?.as_str() {
            "debit" => UsageKind::Debit,
            "refund" => UsageKind::Refund,
            other => return Err(format!("unknown kind {other:?}")),
        };
        Ok(UsageEvent {
            stream_id: stream_id.to_owned(),
            kind,
            customer: CustomerId::parse(&text("customer")?)?,
            route: text("route")?,
            request_id: text("request_id")?,
            cost: milli("cost")?,
            from_non_transferable: milli("nt")?,
            from_transferable: milli("tr")?,
            ts_ms: text("ts_ms")?
                .parse()
                .map_err(|_| "field ts_ms is not an integer".to_owned())?,
        })
    }
}
