//! billing-sync: the durable side of creditgate. Postgres holds the truth (the ledger);
//! Redis holds its projection (keys, plans, balances) that the proxy admits against.
//!
//! Layout:
//! - [`clock`]: the one time source (manual in tests).
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
//! - [`webhook`]: `POST /webhooks/stripe`: verify, store, apply once; one file per event
//!   family; the grace period after failed payments.
//! - [`reload`]: the policy, reloaded on SIGHUP and when its file changes.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz` on `sync.admin_listen`.

pub mod api;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod db;
pub mod ledger;
pub mod ops;
pub mod reconcile;
pub mod reload;
pub mod stripe;
pub mod webhook;
pub mod worker;

use std::sync::Arc;

use arc_swap::ArcSwap;

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
    /// The operator's policy, replaced whole on reload (SIGHUP or a change of the file); read
    /// it with [`State::policy`].
    policy: Arc<ArcSwap<Policy>>,
    /// The admin bearer token; `None` refuses every admin request.
    pub admin_token: Option<Arc<str>>,
    /// Writers of the projection take it shared; a rebuild takes it exclusive, so no
    /// increment lands between the rebuild's read of Postgres and its write to Redis.
    pub projection: Arc<RwLock<()>>,
    /// Stripe, when `STRIPE_SECRET_KEY` is set; Stripe features answer 503 without it.
    pub stripe: Option<stripe::Stripe>,
    /// `STRIPE_WEBHOOK_SECRET`, split on commas (several during rotation).
    pub webhook_secrets: Arc<[String]>,
    /// The Customer Portal configuration made from the policy at start.
    pub portal_configuration: Arc<std::sync::OnceLock<String>>,
    /// Where the time comes from: [`State::now`] is the only reading of it.
    pub clock: clock::Clock,
}

impl State {
    /// A state from its parts.
    pub fn new(db: PgPool, store: Store, policy: Policy, admin_token: Option<String>) -> State {
        State {
            db,
            store,
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            admin_token: admin_token.map(Arc::from),
            projection: Arc::new(RwLock::new(())),
            stripe: None,
            webhook_secrets: Arc::from(Vec::new()),
            portal_configuration: Arc::new(std::sync::OnceLock::new()),
            clock: clock::Clock::system(),
        }
    }

    /// Uses `clock` for the time (tests move a manual one).
    pub fn with_clock(mut self, clock: clock::Clock) -> State {
        self.clock = clock;
        self
    }

    /// The time now, from [`State::clock`].
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// The policy in force now (a snapshot: hold it for one request or one pass).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Puts a new, validated policy in force.
    pub fn replace_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Adds Stripe and the webhook secrets (comma-separated, as `STRIPE_WEBHOOK_SECRET`).
    pub fn with_stripe(mut self, stripe: Option<stripe::Stripe>, webhook_secrets: &str) -> State {
        self.stripe = stripe;
        let secrets: Vec<String> = webhook_secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        self.webhook_secrets = Arc::from(secrets);
        self
    }
}
