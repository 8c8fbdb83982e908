//! Every Redis key name creditgate uses.
//!
//! Cluster-ready layout: a customer's account and the usage stream its debits append to
//! share a hash tag, `{cg-sN}`, where `N` is one of [`SHARDS`] fixed shards chosen by a
//! stable hash of the customer id. So the admission script touches keys of one slot only
//! and runs unchanged on Redis Cluster. API-key records live outside the shards (one read,
//! then cached by the proxy).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `cg:apikey:<sha256 hex>` | string | the customer id the key belongs to |
//! | `cg:{cg-sN}:acct:<customer>` | hash | `plan`, `nt` (non-transferable millicredits, spent first), `tr` (transferable millicredits) |
//! | `cg:{cg-sN}:usage` | stream | usage events (debits and refunds) of the shard's customers |
//! | `cg:{cg-sN}:refund:<request id>` | string | marks a refund done, so a retried refund applies once |
//! | `cg:{cg-sN}:admit:<request id>` | string | what the admission took (`<nt>:<tr>`), so a retried admission debits once and a refund by request id knows the split; `void` once the proxy gave the request up, so a late admission refuses |
//! | `cg:{cg-sN}:expiring:<bucket>` | string | an expiry hold of the bucket is in the stream, not yet settled by the consumer |
//! | `cg:ready` | string | set by billing-sync once the projection is complete; absent after Redis lost its data |

use crate::ids::{ApiKeyHash, CustomerId};

/// Number of stream shards. Fixed: changing it moves customers between streams.
pub const SHARDS: u16 = 16;

/// The shard a customer belongs to: FNV-1a of the id (stable across processes and builds).
pub fn shard_of(customer: &CustomerId) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in customer.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(SHARDS)) as u16
}

/// The key that maps an API key's hash to its customer.
pub fn api_key(hash: &ApiKeyHash) -> String {
    format!("cg:apikey:{}", hash.as_str())
}

/// A customer's account hash (plan and balances).
pub fn account(customer: &CustomerId) -> String {
    format!(
        "cg:{{cg-s{}}}:acct:{}",
        shard_of(customer),
        customer.as_str()
    )
}

/// The usage stream of shard `shard`.
pub fn usage_stream(shard: u16) -> String {
    format!("cg:{{cg-s{shard}}}:usage")
}

/// The usage stream a customer's events go to.
pub fn usage_stream_of(customer: &CustomerId) -> String {
    usage_stream(shard_of(customer))
}

/// The marker of a request's admission: the split it debited, or `void` once the proxy
/// gave the request up (see [`ADMISSION_MARKER_TTL_S`]).
pub fn admission_marker(customer: &CustomerId, request_id: &str) -> String {
    format!("cg:{{cg-s{}}}:admit:{request_id}", shard_of(customer))
}

/// How long an admission marker is kept (seconds): the window in which a retried
/// admission returns the first outcome and a refund by request id still finds what was
/// taken. Every admitted request holds one marker this long (about 100 bytes), so this
/// bounds their memory: 1 000 requests/s keep about 600 000 markers.
pub const ADMISSION_MARKER_TTL_S: u64 = 600;

/// The marker that a request's refund was applied.
pub fn refund_marker(customer: &CustomerId, request_id: &str) -> String {
    format!("cg:{{cg-s{}}}:refund:{request_id}", shard_of(customer))
}

/// Marks an expiry hold of `bucket` in flight (the stream holds its marker, the consumer
/// has not settled it yet), so a second sweep does not take the same credits twice.
pub fn expiry_hold(customer: &CustomerId, bucket: &str) -> String {
    format!("cg:{{cg-s{}}}:expiring:{bucket}", shard_of(customer))
}

/// Set once billing-sync has written the whole projection.
pub const READY: &str = "cg:ready";

/// Field names of the account hash.
pub mod field {
    /// The customer's plan name.
    pub const PLAN: &str = "plan";
    /// Non-transferable millicredits (free allowance, non-transferable grants): spent first.
    pub const NON_TRANSFERABLE: &str = "nt";
    /// Transferable millicredits (plan allowance, purchased, received, transferable grants).
    pub const TRANSFERABLE: &str = "tr";
}

/// The consumer group billing-sync reads every usage stream with.
pub const USAGE_CONSUMER_GROUP: &str = "billing-sync";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customers_account_and_stream_share_a_hash_tag() {
        let c = CustomerId::parse("cus_42").expect("valid id");
        let tag =
            |k: &str| k[k.find('{').expect("tagged")..=k.find('}').expect("tagged")].to_owned();
        assert_eq!(tag(&account(&c)), tag(&usage_stream_of(&c)));
        assert_eq!(tag(&account(&c)), tag(&refund_marker(&c, "r1")));
        assert_eq!(tag(&account(&c)), tag(&admission_marker(&c, "r1")));
        assert!(shard_of(&c) < SHARDS);
    }
}
