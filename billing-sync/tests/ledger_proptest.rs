//! The ledger as a state machine: random sequences of grants, usage (debits through the
//! proxy's own admission script), refunds (in the debit's batch or a later one), transfers,
//! consumer runs, a clock that moves, expiries and period rollovers, against real Postgres
//! and Redis. After every step, conservation holds.
//!
//! Runs in its own database (created from `DATABASE_URL`, dropped at the end), so the
//! proptest runner can drive a multi-thread runtime.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{Method, StatusCode};
use billing_sync::clock::Clock;
use billing_sync::reconcile;
use common::{ADMIN, Harness, bearer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use redis::Value;
use serde_json::json;
use shared::redis::keys::{self, USAGE_CONSUMER_GROUP};
use shared::redis::{Admission, Debit};
use shared::{CustomerId, Millicredits};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Customers per case.
const CUSTOMERS: usize = 3;
/// Cases run (each a fresh set of customers).
const CASES: u32 = 256;
/// Longest operation sequence (about 50 steps a case on average: ≥ 10 000 steps in all).
const STEPS_MAX: usize = 100;

#[derive(Clone, Debug)]
enum Op {
    Grant {
        who: usize,
        millis: i64,
        transferable: bool,
        expiring: bool,
    },
    Debit {
        who: usize,
        millis: i64,
    },
    Refund {
        nth: usize,
    },
    Transfer {
        from: usize,
        to: usize,
        millis: i64,
    },
    Consume,
    Expire,
    Rollover,
    /// The clock moves on.
    Advance {
        hours: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..CUSTOMERS;
    prop_oneof![
        2 => (who.clone(), 1i64..200_000, any::<bool>(), any::<bool>())
            .prop_map(|(who, millis, transferable, expiring)| Op::Grant { who, millis, transferable, expiring }),
        3 => (who.clone(), 0i64..400_000).prop_map(|(who, millis)| Op::Debit { who, millis }),
        1 => any::<usize>().prop_map(|nth| Op::Refund { nth }),
        2 => (who.clone(), who, 1i64..80).prop_map(|(from, to, credits)| Op::Transfer { from, to, millis: credits * 1000 }),
        2 => Just(Op::Consume),
        1 => Just(Op::Expire),
        1 => Just(Op::Rollover),
        1 => (1i64..24 * 40).prop_map(|hours| Op::Advance { hours }),
    ]
}

struct Case {
    customers: Vec<CustomerId>,
    keys: Vec<String>,
    /// Spendable credits each customer should have, before expiries.
    model: HashMap<CustomerId, i64>,
    debits: Vec<(CustomerId, String, Debit, bool)>,
    /// The last ledger entry before the case began: the whole-ledger checks read only the
    /// case's own entries, so each step's cost does not grow with the cases before it.
    first_entry: i64,
}

async fn sum(db: &PgPool, sql: &'static str, customer: Option<&str>) -> i64 {
    let q = sqlx::query_as::<_, (i64,)>(sql);
    let q = match customer {
        Some(c) => q.bind(c.to_owned()),
        None => q,
    };
    q.fetch_one(db).await.map(|r| r.0).unwrap_or(i64::MIN)
}

/// `sql` over the entries after `first` (bound as `$1`).
async fn sum_since(db: &PgPool, sql: &'static str, first: i64) -> i64 {
    let q = sqlx::query_as::<_, (i64,)>(sql).bind(first);
    q.fetch_one(db).await.map(|r| r.0).unwrap_or(i64::MIN)
}

/// Usage and expiry holds the consumer group has not read yet: (nt, tr) to add to the
/// ledger's balances, and of that what the holds took.
async fn unread(h: &Harness, c: &CustomerId) -> (i64, i64, i64) {
    let stream = keys::usage_stream_of(c);
    let groups: Vec<HashMap<String, Value>> = h
        .redis
        .query(redis::cmd("XINFO").arg("GROUPS").arg(&stream))
        .await;
    let last = groups
        .iter()
        .find(|g| matches!(g.get("name"), Some(Value::BulkString(b)) if b == USAGE_CONSUMER_GROUP.as_bytes()))
        .and_then(|g| match g.get("last-delivered-id") {
            Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .unwrap_or_else(|| "0-0".into());
    let entries: Vec<(String, HashMap<String, String>)> = h
        .redis
        .query(
            redis::cmd("XRANGE")
                .arg(&stream)
                .arg(format!("({last}"))
                .arg("+"),
        )
        .await;
    let (mut nt, mut tr, mut held) = (0, 0, 0);
    for (_, f) in entries {
        if f.get("customer").map(String::as_str) != Some(c.as_str()) {
            continue;
        }
        if f.get("kind").map(String::as_str) == Some("expire") {
            let taken = f
                .get("taken")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            held += taken;
            if f.get("field").map(String::as_str) == Some("tr") {
                tr -= taken;
            } else {
                nt -= taken;
            }
            continue;
        }
        let sign = if f.get("kind").map(String::as_str) == Some("debit") {
            -1
        } else {
            1
        };
        let n = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        nt += sign * n("nt");
        tr += sign * n("tr");
    }
    (nt, tr, held)
}

async fn check(h: &Harness, case: &Case) -> Result<(), TestCaseError> {
    let db = &h.state.db;
    let first = case.first_entry;
    prop_assert_eq!(
        sum_since(
            db,
            "SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries WHERE id > $1",
            first
        )
        .await,
        0,
        "double entry: everything sums to zero"
    );
    prop_assert_eq!(
        sum_since(db, "SELECT count(*) FROM (SELECT txn_id FROM ledger_entries WHERE id > $1 GROUP BY txn_id HAVING SUM(amount) <> 0) t", first).await,
        0,
        "every transaction is balanced"
    );
    prop_assert_eq!(
        sum_since(db, "SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries WHERE id > $1 AND kind IN ('transfer_out', 'transfer_in')", first).await,
        0,
        "transfers sum to zero"
    );
    prop_assert_eq!(
        sum_since(
            db,
            "SELECT count(*) FROM ledger_entries e JOIN buckets b ON b.id = e.bucket_id
                 WHERE e.id > $1 AND e.kind = 'transfer_out' AND NOT b.transferable",
            first
        )
        .await,
        0,
        "free credits never left their customer"
    );
    for c in &case.customers {
        let (nt, tr) = billing_sync::ledger::balances(db, c.as_str())
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let entries = sum(
            db,
            "SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries WHERE customer_id = $1",
            Some(c.as_str()),
        )
        .await;
        prop_assert_eq!(
            nt + tr,
            entries,
            "{}: balance = sum of its ledger entries",
            c
        );
        prop_assert!(nt >= 0 && tr >= 0, "{}: no bucket below zero", c);
        let account = h.state.store.account(c).await.ok().flatten();
        let (rnt, rtr) = account
            .map(|a| (a.non_transferable.get(), a.transferable.get()))
            .unwrap_or((-1, -1));
        prop_assert!(
            rnt >= 0 && rtr >= 0,
            "{}: Redis never below zero ({}, {})",
            c,
            rnt,
            rtr
        );
        let (unt, utr, held) = unread(h, c).await;
        prop_assert_eq!(
            (rnt, rtr),
            (nt + unt, tr + utr),
            "{}: Redis = ledger + unread usage",
            c
        );
        let expired = sum(db, "SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries WHERE customer_id = $1 AND kind = 'expiry'", Some(c.as_str())).await;
        let allocated = sum(db, "SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries WHERE customer_id = $1 AND kind = 'allocation'", Some(c.as_str())).await;
        let model = case.model.get(c).copied().unwrap_or(0);
        prop_assert_eq!(
            rnt + rtr,
            model + expired + allocated - held,
            "{}: what the operations imply",
            c
        );
    }
    Ok(())
}

/// Takes a finished case's customers out of the calendar: the clock only moves forward and
/// the sweeps are global, so without this every later rollover and expiry sweep would also
/// work through all earlier cases' customers, and each case would cost more than the last.
async fn retire(h: &Harness, case: &Case) {
    let ids: Vec<&str> = case.customers.iter().map(CustomerId::as_str).collect();
    sqlx::query("UPDATE customers SET period_end = '9999-01-01T00:00:00Z' WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&h.state.db)
        .await
        .expect("retire customers");
    sqlx::query("UPDATE buckets SET expires_at = NULL WHERE customer_id = ANY($1)")
        .bind(&ids)
        .execute(&h.state.db)
        .await
        .expect("retire buckets");
}

async fn step(h: &Harness, clock: &Clock, case: &mut Case, op: &Op) -> Result<(), TestCaseError> {
    let now = clock.now();
    match *op {
        Op::Grant {
            who,
            millis,
            transferable,
            expiring,
        } => {
            let c = &case.customers[who];
            let mut body =
                json!({"credits": Millicredits::new(millis), "transferable": transferable});
            if expiring {
                body["expires_at"] = json!((now + chrono::Duration::days(1)).to_rfc3339());
            }
            let (status, reply) = h
                .call(
                    Method::POST,
                    &format!("/admin/v1/customers/{c}/grants"),
                    &[
                        ("authorization", &format!("Bearer {ADMIN}")),
                        ("idempotency-key", &uuid::Uuid::now_v7().to_string()),
                    ],
                    Some(&body),
                )
                .await;
            prop_assert_eq!(status, StatusCode::CREATED, "{}", reply);
            *case.model.entry(c.clone()).or_default() += millis;
        }
        Op::Debit { who, millis } => {
            let c = case.customers[who].clone();
            let rid = uuid::Uuid::now_v7().to_string();
            if let Ok(Admission::Admitted(d)) = h
                .state
                .store
                .admit(
                    &c,
                    Millicredits::new(millis),
                    "api",
                    &rid,
                    now.timestamp_millis(),
                )
                .await
            {
                *case.model.entry(c.clone()).or_default() -= millis;
                case.debits.push((c, rid, d, false));
            }
        }
        Op::Refund { nth } => {
            if !case.debits.is_empty() {
                let i = nth % case.debits.len();
                let (c, rid, d, done) = case.debits[i].clone();
                let r = h
                    .state
                    .store
                    .refund(
                        &c,
                        &d,
                        "api",
                        &rid,
                        now.timestamp_millis(),
                        "upstream_error",
                    )
                    .await;
                if !done && matches!(r, Ok(Some(_))) {
                    *case.model.entry(c).or_default() +=
                        d.from_non_transferable.get() + d.from_transferable.get();
                    case.debits[i].3 = true;
                }
            }
        }
        Op::Transfer { from, to, millis } => {
            let (a, b) = (case.customers[from].clone(), case.customers[to].clone());
            let (hb, hv) = bearer(&case.keys[from]);
            let (status, reply) = h
                .call(
                    Method::POST,
                    "/v1/transfers",
                    &[
                        (hb, hv.as_str()),
                        ("idempotency-key", &uuid::Uuid::now_v7().to_string()),
                    ],
                    Some(&json!({"to": b.as_str(), "credits": Millicredits::new(millis)})),
                )
                .await;
            match status {
                StatusCode::CREATED => {
                    *case.model.entry(a).or_default() -= millis;
                    *case.model.entry(b).or_default() += millis;
                }
                StatusCode::BAD_REQUEST => prop_assert_eq!(from, to, "{}", reply),
                StatusCode::UNPROCESSABLE_ENTITY => prop_assert!(
                    reply["error"]["code"] == "insufficient_credits"
                        || reply["error"]["code"] == "transfer_limit_exceeded",
                    "{}",
                    reply
                ),
                other => prop_assert!(false, "transfer answered {}: {}", other, reply),
            }
        }
        Op::Consume => {
            h.drain().await;
        }
        Op::Expire => {
            reconcile::expire_due(&h.state, now)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Op::Rollover => {
            reconcile::roll_over_periods(&h.state, now)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            reconcile::expire_due(&h.state, now)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Op::Advance { hours } => clock.advance(chrono::Duration::hours(hours)),
    }
    Ok(())
}

#[test]
fn the_ledger_conserves_credits_after_every_step_of_random_sequences() {
    let base =
        std::env::var("DATABASE_URL").expect("DATABASE_URL is set (scripts/test exports it)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let name = format!("cg_ledger_prop_{}", std::process::id());
    let clock = Clock::manual(chrono::Utc::now());
    let (admin_pool, h) = runtime.block_on(async {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&base)
            .await
            .expect("postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&admin)
        .await
        .expect("drop");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create");
        let url = match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => panic!("DATABASE_URL has a database path"),
        };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .expect("test database");
        billing_sync::db::migrate(&pool).await.expect("migrations");
        (admin, Harness::with_clock(pool, clock.clone()).await)
    });
    let steps = AtomicUsize::new(0);
    let cases = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..STEPS_MAX), |ops| {
        let n = cases.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(async {
            let mut case = Case {
                customers: vec![],
                keys: vec![],
                model: HashMap::new(),
                debits: vec![],
                first_entry: sum(
                    &h.state.db,
                    "SELECT COALESCE(MAX(id), 0)::int8 FROM ledger_entries",
                    None,
                )
                .await,
            };
            for i in 0..CUSTOMERS {
                let c = h.customer(&format!("prop-{n}-{i}")).await;
                let (_, key) = h.api_key(&c).await;
                case.customers.push(c);
                case.keys.push(key);
            }
            let outcome = async {
                check(&h, &case).await?;
                for op in &ops {
                    step(&h, &clock, &mut case, op).await?;
                    steps.fetch_add(1, Ordering::Relaxed);
                    check(&h, &case).await?;
                }
                h.drain().await;
                check(&h, &case).await?;
                // Whatever is due expires, and the ledger still balances afterwards.
                reconcile::expire_due(&h.state, clock.now())
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                h.drain().await;
                check(&h, &case).await
            }
            .await;
            retire(&h, &case).await;
            outcome
        })
    });
    println!(
        "ledger state machine: {} cases run ({} configured), {} steps, conservation checked after each",
        cases.load(Ordering::Relaxed),
        CASES,
        steps.load(Ordering::Relaxed)
    );
    runtime.block_on(async {
        h.state.db.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&admin_pool)
        .await;
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
