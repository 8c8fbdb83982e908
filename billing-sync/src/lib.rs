//! billing-sync: the durable side of creditgate. Postgres holds the truth (the ledger);
//! Redis holds its projection (keys, plans, balances) that the proxy admits against.
//!
//! Layout:
//! - [`config`]: the environment (secrets, endpoints) next to the YAML policy.
//! - [`db`]: the Postgres pool and the migrations built into the binary.
//! - [`ledger`]: buckets, double-entry ledger transactions, spending order; functions take
//!   `&mut Transaction` and the caller commits.
//! - [`consumer`]: the exactly-once usage consumer (Redis stream → ledger).
//! - [`reconcile`]: projection rebuild after Redis data loss, drift repair, expiries and
//!   period rollovers.
//! - [`worker`]: the one background loop that runs the consumer and the reconciler in turn.
//! - [`api`]: the admin and customer HTTP APIs ([`api::app`]), errors in one place.
//! - [`stripe`]: every Stripe call (catalog, customers, checkout, portal, invoices) and
//!   webhook signatures.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz` on `sync.admin_listen`.

pub mod api;
pub mod config;
pub mod consumer;
pub mod db;
pub mod ledger;
pub mod ops;
pub mod reconcile;
pub mod stripe;
pub mod worker;

use std::sync::Arc;

use shared::Policy;
use shared::redis::Store;
use sqlx::PgPool;
use tokio::sync::RwLock;

/// Everything the APIs and the worker share. Cheap to clone (handles and `Arc`s).
#[derive(Clone)]
pub struct State {
    /// Postgres: the ledger.
    pub db: PgPool,
    /// Redis: the projection.
    pub store: Store,
    /// The operator's policy.
    pub policy: Arc<Policy>,
    /// The admin bearer token; `None` refuses every admin request.
    pub admin_token: Option<Arc<str>>,
    /// Writers of the projection take it shared; a rebuild takes it exclusive, so no
    /// increment lands between the rebuild's read of Postgres and its write to Redis.
    pub projection: Arc<RwLock<()>>,
}

impl State {
    /// A state from its parts.
    pub fn new(db: PgPool, store: Store, policy: Policy, admin_token: Option<String>) -> State {
        State {
            db,
            store,
            policy: Arc::new(policy),
            admin_token: admin_token.map(Arc::from),
            projection: Arc::new(RwLock::new(())),
        }
    }
}
