//! Redis: the hot state the proxy admits requests against. This module is the only place
//! that knows key names ([`keys`]) and Lua scripts (`*.lua`, compiled in).
//!
//! Redis is a cache of Postgres: billing-sync writes keys, plans and balances here as a
//! projection of its ledger, and the proxy debits them and appends usage events to a
//! stream that billing-sync consumes into the ledger.

pub mod keys;
mod projection;
mod store;
mod stream;
mod usage;

pub use projection::{
    BalanceField, RECONCILE_UNREAD_LEN_MAX, Reconcile, Reconciled, TakeMode, Taken,
};
pub use store::{Account, Admission, Debit, Identity, Lookup, Store, StoreError, StoreOptions};
pub use stream::{Hold, HoldSettlement, Lag, StreamBatch};
pub use usage::{ExpiryMarker, StreamEntry, UsageEvent, UsageKind};
