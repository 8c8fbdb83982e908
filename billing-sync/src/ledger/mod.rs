//! The ledger: the one owner of buckets, postings and their idempotency keys.
//!
//! Every movement of credits is a ledger transaction: a set of entries that sums to zero,
//! applied at most once per [`TxnKey`]. Customer-side entries name the bucket they change;
//! the other side is a `system:*` account (issuance, usage, expiry). So for every customer,
//! the sum of their entries equals the sum of their buckets' `remaining`.
//!
//! Functions take `&mut Transaction`; the caller begins and commits, so an effect, its
//! idempotency record and its audit record land together or not at all. A caller that
//! changes a customer's buckets first locks the customer rows with [`lock_customers`].
//!
//! - [`txn`]: transactions, entries, [`TxnKey`] (every key format).
//! - [`buckets`]: bucket kinds, the spending order, allowances, grants, expiry postings.
//! - [`usage`]: a batch of usage-stream entries (debits, refunds, expiry holds) posted.
//! - [`transfer`]: transfers between customers.
//! - [`customers`]: customers, their lock, the allowance period.
//! - [`audit`]: the audit log.

pub mod audit;
pub mod buckets;
pub mod customers;
pub mod transfer;
pub mod txn;
pub mod usage;

pub use audit::audit;
pub use buckets::{
    Bucket, BucketKind, Grant, allocate_allowance, balances, bucket, credit, ledger_balance,
    live_buckets, sort_spending_order, take_in_order, update_remaining,
};
pub use customers::{
    Customer, create_customer, customer, lock_customers, period_end_after, stored_customer_id,
};
pub use transfer::{record_transfer, sent_since};
pub use txn::{Entry, SYSTEM_EXPIRY, SYSTEM_ISSUANCE, SYSTEM_USAGE, Txn, TxnKey};
