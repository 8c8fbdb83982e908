//! Helpers shared by billing-sync's integration tests: an in-process app on a
//! `#[sqlx::test]` database and a private Redis, and a small request helper.
//!
//! The tests need `DATABASE_URL` (a Postgres role that may create databases; scripts/test
//! exports `postgres://postgres@127.0.0.1:5432/postgres`) and `redis-server` on the PATH.

#![allow(dead_code)]

pub mod world;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use billing_sync::State;
use billing_sync::worker::{self, WorkerOptions};
use creditgate_e2e::redis_server::RedisServer;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shared::redis::Store;
use shared::{CustomerId, Millicredits, Policy};
use sqlx::PgPool;
use tower::ServiceExt;

/// The admin token the tests use.
pub const ADMIN: &str = "test-admin-token";

/// The example policy, with its ports left as they are (nothing listens in-process).
pub fn policy() -> Policy {
    let text = include_str!("../../../deploy/creditgate.example.yaml");
    Policy::parse(text, "creditgate.example.yaml").expect("the example policy is valid")
}

/// An app on `db` and a private Redis.
pub struct Harness {
    /// The state (handles on Postgres and Redis).
    pub state: State,
    /// The router.
    pub app: Router,
    /// The private Redis (killed on drop).
    pub redis: RedisServer,
    /// A second Redis handle, as the worker uses.
    pub stream_store: Store,
}

impl Harness {
    /// Starts Redis and brings the projection up (as `serve` does before its loop).
    pub async fn start(db: PgPool) -> Harness {
        Self::with_policy(db, policy()).await
    }

    /// Same, with billing-sync reading the time from `clock`.
    pub async fn with_clock(db: PgPool, clock: billing_sync::clock::Clock) -> Harness {
        Self::with_policy_and_clock(db, policy(), clock).await
    }

    /// Same, with another policy.
    pub async fn with_policy(db: PgPool, policy: Policy) -> Harness {
        Self::with_policy_and_clock(db, policy, billing_sync::clock::Clock::system()).await
    }

    /// Same, with another policy and clock.
    pub async fn with_policy_and_clock(
        db: PgPool,
        policy: Policy,
        clock: billing_sync::clock::Clock,
    ) -> Harness {
        let redis = RedisServer::start();
        let state = State::new(db, redis.store(), policy, Some(ADMIN.to_owned())).with_clock(clock);
        let stream_store = redis.store();
        worker::start(&state, &stream_store, &WorkerOptions::default())
            .await
            .expect("projection comes up");
        let app = billing_sync::api::app(state.clone());
        Harness {
            state,
            app,
            redis,
            stream_store,
        }
    }

    /// Sends a request to the app; returns the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        self.call_raw(method, path, headers, body.map(|b| b.to_string()))
            .await
    }

    /// Same, with a raw body.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .header("content-type", "application/json")
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("valid request");
        let resp = self
            .app
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("body reads")
            .to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{status}: body is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, json)
    }

    /// Creates a customer through the admin API; returns its id.
    pub async fn customer(&self, external_id: &str) -> CustomerId {
        let (status, body) = self
            .call(
                Method::POST,
                "/admin/v1/customers",
                &[("authorization", &format!("Bearer {ADMIN}"))],
                Some(&json!({"external_id": external_id, "email": format!("{external_id}@example.com")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        CustomerId::parse(body["id"].as_str().expect("id")).expect("valid id")
    }

    /// Issues an API key; returns (key id, key).
    pub async fn api_key(&self, customer: &CustomerId) -> (String, String) {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/admin/v1/customers/{customer}/api-keys"),
                &[("authorization", &format!("Bearer {ADMIN}"))],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["key_id"].as_str().expect("key_id").to_owned(),
            body["api_key"].as_str().expect("api_key").to_owned(),
        )
    }

    /// Grants credits through the admin API.
    pub async fn grant(&self, customer: &CustomerId, credits: &str, transferable: bool) {
        let key = uuid::Uuid::now_v7().to_string();
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/admin/v1/customers/{customer}/grants"),
                &[
                    ("authorization", &format!("Bearer {ADMIN}")),
                    ("idempotency-key", &key),
                ],
                Some(&json!({"credits": credits, "reason": "test", "transferable": transferable})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Applies every usage event in the streams to the ledger.
    pub async fn drain(&self) -> usize {
        let mut total = 0;
        loop {
            let done = billing_sync::consumer::poll(
                &self.stream_store,
                &self.state.db,
                "billing-sync",
                false,
            )
            .await
            .expect("poll works");
            if done.read == 0 {
                return total;
            }
            total += done.applied;
        }
    }

    /// What the worker does every pass, then every usage entry (and expiry hold) applied:
    /// the state a running billing-sync reaches at the clock's time.
    pub async fn settle(&self) {
        billing_sync::worker::reconcile_once(&self.state)
            .await
            .expect("reconcile pass");
        self.drain().await;
    }

    /// Redis balances (nt, tr).
    pub async fn redis_balances(&self, customer: &CustomerId) -> (i64, i64) {
        let a = self
            .state
            .store
            .account(customer)
            .await
            .expect("redis answers")
            .expect("account exists");
        (a.non_transferable.get(), a.transferable.get())
    }

    /// Ledger balances (nt, tr), checking the buckets equal the sum of entries.
    pub async fn ledger_balances(&self, customer: &CustomerId) -> (i64, i64) {
        let (nt, tr) = billing_sync::ledger::balances(&self.state.db, customer.as_str())
            .await
            .expect("query");
        let entries = billing_sync::ledger::ledger_balance(&self.state.db, customer.as_str())
            .await
            .expect("query");
        assert_eq!(
            nt + tr,
            entries,
            "buckets of {customer} differ from its ledger entries"
        );
        (nt, tr)
    }
}

/// Millicredits from a credits string.
pub fn mc(credits: &str) -> Millicredits {
    Millicredits::parse_amount(credits).expect("valid credits")
}

/// `Authorization: Bearer …` for a key.
pub fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

/// The URL of `db` (a `#[sqlx::test]` database) for a process started by the test: the
/// test's `DATABASE_URL` with the database name replaced.
pub fn database_url_of(db: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set");
    let name = db
        .connect_options()
        .get_database()
        .expect("a test database")
        .to_owned();
    match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{name}"),
        None => panic!("DATABASE_URL has a database path"),
    }
}
