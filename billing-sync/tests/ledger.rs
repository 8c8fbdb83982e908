//! The ledger against real Postgres and Redis: exactly-once usage, rebuild after Redis
//! loses its data, drift repair, expiries and rollovers, concurrent transfers and debits.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use billing_sync::{consumer, reconcile, worker};
use common::{Harness, bearer, mc};
use redis::Value;
use serde_json::json;
use shared::redis::keys::{self, USAGE_CONSUMER_GROUP};
use shared::redis::{Admission, Lookup, UsageEvent};
use shared::{ApiKey, CustomerId};
use sqlx::PgPool;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn count(db: &PgPool, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db).await.expect("query");
    n
}

#[sqlx::test]
async fn a_usage_event_replayed_after_a_crash_is_counted_once(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    for i in 0..40 {
        let admitted = h
            .state
            .store
            .admit(&c, mc("1"), "api", &format!("req-{i}"), now_ms())
            .await;
        assert!(matches!(admitted, Ok(Admission::Admitted(_))));
    }
    // Crash after reading, before committing: the entries stay pending for this consumer.
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(USAGE_CONSUMER_GROUP)
        .arg("billing-sync")
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(keys::usage_stream_of(&c))
        .arg(">");
    let _: Value = h.redis.query(&read).await;
    assert_eq!(h.drain().await, 0, "new-entry reads skip the pending ones");
    // Restart: pending entries are replayed.
    worker::start(&h.state, &h.stream_store, &worker::WorkerOptions::default())
        .await
        .expect("start");
    assert_eq!(
        count(&h.state.db, "SELECT count(*) FROM usage_events").await,
        40
    );
    // Crash after committing, before acknowledging: the same entries applied again change nothing.
    let entries: Vec<(String, HashMap<String, Value>)> = h
        .redis
        .query(
            redis::cmd("XRANGE")
                .arg(keys::usage_stream_of(&c))
                .arg("-")
                .arg("+"),
        )
        .await;
    let events: Vec<UsageEvent> = (0..40)
        .map(|i| UsageEvent {
            stream_id: format!("1-{i}"),
            kind: shared::redis::UsageKind::Debit,
            customer: c.clone(),
            route: "api".into(),
            request_id: format!("req-{i}"),
            cost: mc("1"),
            from_non_transferable: mc("1"),
            from_transferable: mc("0"),
            ts_ms: now_ms(),
        })
        .collect();
    assert!(entries.len() <= 1, "acknowledged entries are trimmed");
    let (applied, duplicates) = consumer::apply_batch(&h.state.db, &events, &[])
        .await
        .expect("apply");
    assert_eq!((applied, duplicates), (0, 40));
    assert_eq!(
        count(&h.state.db, "SELECT count(*) FROM usage_events").await,
        40
    );
    assert_eq!(
        count(
            &h.state.db,
            "SELECT count(*) FROM ledger_txns WHERE kind = 'usage'"
        )
        .await,
        40
    );
    assert_eq!(h.ledger_balances(&c).await, (960_000, 0));
    assert_eq!(h.redis_balances(&c).await, (960_000, 0));
}

#[sqlx::test]
async fn a_refund_returns_credits_to_the_buckets_the_debit_took_them_from(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    h.grant(&c, "10", true).await;
    let Ok(Admission::Admitted(debit)) = h
        .state
        .store
        .admit(&c, mc("1005"), "generate", "r1", now_ms())
        .await
    else {
        panic!("admitted");
    };
    assert_eq!(
        (
            debit.from_non_transferable.get(),
            debit.from_transferable.get()
        ),
        (1_000_000, 5_000)
    );
    h.drain().await;
    assert_eq!(h.ledger_balances(&c).await, (0, 5_000));
    h.state
        .store
        .refund(&c, &debit, "generate", "r1", now_ms(), "upstream_error")
        .await
        .expect("refund");
    h.drain().await;
    assert_eq!(h.ledger_balances(&c).await, (1_000_000, 10_000));
    assert_eq!(h.redis_balances(&c).await, (1_000_000, 10_000));
}

#[sqlx::test]
async fn after_redis_loses_everything_the_rebuild_restores_balances_keys_and_plans(db: PgPool) {
    let h = Harness::start(db).await;
    let a = h.customer("a").await;
    let b = h.customer("b").await;
    h.grant(&a, "30", true).await;
    let (_, a_key) = h.api_key(&a).await;
    for i in 0..25 {
        h.state
            .store
            .admit(&a, mc("3"), "api", &format!("a{i}"), now_ms())
            .await
            .expect("admit");
        h.state
            .store
            .admit(&b, mc("2"), "api", &format!("b{i}"), now_ms())
            .await
            .expect("admit");
    }
    h.drain().await;
    let (ab, av) = bearer(&a_key);
    let (status, _) = h
        .call(
            Method::POST,
            "/v1/transfers",
            &[(ab, av.as_str()), ("idempotency-key", "x")],
            Some(&json!({"to": b.as_str(), "credits": "7"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let expected: Vec<(CustomerId, (i64, i64))> = vec![
        (a.clone(), h.ledger_balances(&a).await),
        (b.clone(), h.ledger_balances(&b).await),
    ];
    for (c, balances) in &expected {
        assert_eq!(
            h.redis_balances(c).await,
            *balances,
            "in sync before the loss"
        );
    }

    let _: () = h.redis.query(&redis::cmd("FLUSHALL")).await;
    let hash = ApiKey::parse(&a_key).expect("key").hash();
    assert_eq!(
        h.state.store.lookup(&hash).await.ok(),
        Some(Lookup::NotReady),
        "the proxy fails closed"
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker::run(
        h.state.clone(),
        h.stream_store.clone(),
        worker::WorkerOptions::default(),
        stopped,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.state.store.is_ready().await.unwrap_or(false) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rebuilt within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (c, balances) in &expected {
        assert_eq!(
            h.redis_balances(c).await,
            *balances,
            "{c} rebuilt from the ledger"
        );
        let account = h
            .state
            .store
            .account(c)
            .await
            .expect("redis")
            .expect("account");
        assert_eq!(account.plan, "free");
    }
    assert!(
        matches!(h.state.store.lookup(&hash).await, Ok(Lookup::Found(ref id)) if id.customer == a)
    );
    // Usage keeps flowing into the rebuilt streams.
    h.state
        .store
        .admit(&a, mc("1"), "api", "after", now_ms())
        .await
        .expect("admit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(
        &h.state.db,
        "SELECT count(*) FROM usage_events WHERE request_id = 'after'",
    )
    .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let _ = task.await;
    assert_eq!(h.redis_balances(&a).await, h.ledger_balances(&a).await);
}

#[sqlx::test]
async fn drift_in_redis_is_repaired_to_the_ledger_counting_unread_events(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    // Unread usage: Redis is already lower than the ledger by design, not drift.
    for i in 0..5 {
        h.state
            .store
            .admit(&c, mc("2"), "api", &format!("r{i}"), now_ms())
            .await
            .expect("admit");
    }
    let drift = reconcile::sync_accounts(&h.state, false)
        .await
        .expect("reconcile");
    assert_eq!(drift.drift_millicredits, 0);
    // Real drift: someone wrote to Redis behind the ledger's back.
    let _: i64 = h
        .redis
        .query(
            redis::cmd("HINCRBY")
                .arg(keys::account(&c))
                .arg("tr")
                .arg(7_000),
        )
        .await;
    let drift = reconcile::sync_accounts(&h.state, false)
        .await
        .expect("reconcile");
    assert_eq!(drift.drift_millicredits, 7_000);
    assert_eq!(drift.repaired, 1);
    h.drain().await;
    assert_eq!(h.redis_balances(&c).await, h.ledger_balances(&c).await);
    assert_eq!(h.redis_balances(&c).await, (990_000, 0));
}

#[sqlx::test]
async fn expiries_and_period_rollovers_are_ledger_entries(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    let in_a_day = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let (status, _) = h
        .call(
            Method::POST,
            &format!("/admin/v1/customers/{c}/grants"),
            &[
                ("authorization", &format!("Bearer {}", common::ADMIN)),
                ("idempotency-key", "g"),
            ],
            Some(&json!({"credits": "50", "expires_at": in_a_day, "transferable": false})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    h.state
        .store
        .admit(&c, mc("100"), "api", "r1", now_ms())
        .await
        .expect("admit");
    // Unread usage while the grant expires: the expiry takes only what Redis holds.
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    reconcile::expire_due(&h.state, later)
        .await
        .expect("expire");
    h.drain().await;
    reconcile::expire_due(&h.state, later)
        .await
        .expect("expire the rest");
    assert_eq!(h.ledger_balances(&c).await, (900_000, 0));
    assert_eq!(h.redis_balances(&c).await, (900_000, 0));
    // A month on: the old allowance expires, the new one is granted once.
    let next_month = chrono::Utc::now() + chrono::Duration::days(32);
    assert_eq!(
        reconcile::roll_over_periods(&h.state, next_month)
            .await
            .expect("rollover"),
        1
    );
    assert_eq!(
        reconcile::roll_over_periods(&h.state, next_month)
            .await
            .expect("rollover"),
        0
    );
    reconcile::expire_due(&h.state, next_month)
        .await
        .expect("expire");
    // The expiry is posted where its hold falls in the usage stream.
    h.drain().await;
    assert_eq!(h.ledger_balances(&c).await, (1_000_000, 0));
    assert_eq!(h.redis_balances(&c).await, (1_000_000, 0));
    assert_eq!(
        count(
            &h.state.db,
            "SELECT count(*) FROM ledger_txns WHERE kind = 'expiry'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &h.state.db,
            "SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries"
        )
        .await,
        0
    );
}

#[sqlx::test]
async fn concurrent_transfers_and_debits_never_overspend(db: PgPool) {
    let h = std::sync::Arc::new(Harness::start(db).await);
    let a = h.customer("a").await;
    let b = h.customer("b").await;
    h.grant(&a, "100", true).await;
    let (_, a_key) = h.api_key(&a).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (h, a, b, key) = (h.clone(), a.clone(), b.clone(), a_key.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let (hb, hv) = bearer(&key);
                let (status, body) = h
                    .call(
                        Method::POST,
                        "/v1/transfers",
                        &[(hb, hv.as_str()), ("idempotency-key", &format!("t{i}"))],
                        Some(&json!({"to": b.as_str(), "credits": "9"})),
                    )
                    .await;
                assert!(
                    status == StatusCode::CREATED
                        || body["error"]["code"] == "insufficient_credits",
                    "{status} {body}"
                );
                i64::from(status == StatusCode::CREATED) * 9_000
            } else {
                match h
                    .state
                    .store
                    .admit(&a, mc("60"), "generate", &format!("d{i}"), now_ms())
                    .await
                {
                    Ok(Admission::Admitted(_)) => 60_000,
                    _ => 0,
                }
            }
        }));
    }
    let mut moved = 0;
    for t in tasks {
        moved += t.await.expect("task");
    }
    h.drain().await;
    let (nt, tr) = h.redis_balances(&a).await;
    assert!(nt >= 0 && tr >= 0, "never below zero: {nt} {tr}");
    assert_eq!(
        nt + tr + moved,
        1_100_000,
        "what left is what was admitted or sent"
    );
    assert_eq!((nt, tr), h.ledger_balances(&a).await);
    assert_eq!(h.redis_balances(&b).await, h.ledger_balances(&b).await);
    let (_, b_tr) = h.redis_balances(&b).await;
    let (sent,): (i64,) = sqlx::query_as("SELECT COALESCE(SUM(amount), 0)::int8 FROM transfers")
        .fetch_one(&h.state.db)
        .await
        .expect("query");
    assert_eq!(b_tr, sent, "B received exactly what A sent");
    assert!(sent <= 100_000, "only transferable credits moved");
}

#[sqlx::test]
async fn a_failed_batch_is_replayed_without_a_restart_and_never_counted_as_drift(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = worker::WorkerOptions {
        reconcile_interval: Duration::from_millis(100),
        ..worker::WorkerOptions::default()
    };
    let task = tokio::spawn(worker::run(
        h.state.clone(),
        h.stream_store.clone(),
        options,
        stopped,
    ));
    // Postgres refuses the batch (the table is away), while the reconciler keeps its pace.
    sqlx::query("ALTER TABLE usage_events RENAME TO usage_events_away")
        .execute(&h.state.db)
        .await
        .expect("rename");
    for i in 0..10 {
        h.state
            .store
            .admit(&c, mc("3"), "api", &format!("r{i}"), now_ms())
            .await
            .expect("admit");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        h.redis_balances(&c).await,
        (970_000, 0),
        "no drift repair on unapplied debits"
    );
    sqlx::query("ALTER TABLE usage_events_away RENAME TO usage_events")
        .execute(&h.state.db)
        .await
        .expect("rename back");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&h.state.db, "SELECT count(*) FROM usage_events").await < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed batch was not replayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(true);
    let _ = task.await;
    assert_eq!(h.ledger_balances(&c).await, (970_000, 0));
    assert_eq!(h.redis_balances(&c).await, (970_000, 0));
}
