//! Money over time, with the clock moved instead of waited for: allowances per period
//! (free by the calendar, paid by the invoice), expiries exactly what the ledger says is
//! left, refunds back to the buckets they came from, packs taken back after a refund.

mod common;

use axum::http::{Method, StatusCode};
use billing_sync::clock::Clock;
use billing_sync::reconcile;
use chrono::{DateTime, Duration, Utc};
use common::world::{World, wait_for};
use common::{ADMIN, Harness, bearer, mc};
use serde_json::{Value, json};
use shared::CustomerId;
use shared::redis::{Admission, Debit};
use sqlx::PgPool;

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn admin() -> (&'static str, String) {
    ("authorization", format!("Bearer {ADMIN}"))
}

/// (kind, amount, remaining, expires_at) of every bucket of `c`, oldest first.
async fn buckets(h: &Harness, c: &CustomerId) -> Vec<(String, i64, i64, Option<DateTime<Utc>>)> {
    sqlx::query_as(
        "SELECT kind, amount, remaining, expires_at FROM buckets WHERE customer_id = $1
         ORDER BY created_at, id",
    )
    .bind(c.as_str())
    .fetch_all(&h.state.db)
    .await
    .expect("buckets")
}

async fn count(h: &Harness, sql: &'static str, c: &CustomerId) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .bind(c.as_str())
        .fetch_one(&h.state.db)
        .await
        .expect("count");
    n
}

async fn debit(h: &Harness, c: &CustomerId, credits: &str, request: &str) -> Debit {
    match h
        .state
        .store
        .admit(c, mc(credits), "api", request, now_ms())
        .await
    {
        Ok(Admission::Admitted(d)) => d,
        other => panic!("admitted: {other:?}"),
    }
}

async fn refund(h: &Harness, c: &CustomerId, d: &Debit, request: &str) {
    h.state
        .store
        .refund(c, d, "api", request, now_ms(), "upstream_5xx")
        .await
        .expect("refund")
        .expect("first refund");
}

/// Millicredits expired from `c`'s buckets in all.
async fn expired(h: &Harness, c: &CustomerId) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(-SUM(amount), 0)::int8 FROM ledger_entries
         WHERE customer_id = $1 AND kind = 'expiry'",
    )
    .bind(c.as_str())
    .fetch_one(&h.state.db)
    .await
    .expect("sum");
    n
}

/// The whole ledger is balanced and every customer's buckets match Redis.
async fn assert_conserved(h: &Harness, c: &CustomerId) {
    let (sum,): (i64,) =
        sqlx::query_as("SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries")
            .fetch_one(&h.state.db)
            .await
            .expect("sum");
    assert_eq!(sum, 0, "the ledger's entries sum to zero");
    assert_eq!(h.ledger_balances(c).await, h.redis_balances(c).await);
}

#[sqlx::test]
async fn a_refund_in_the_same_batch_as_its_debit_restores_the_original_bucket(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("same-batch").await;
    let d = debit(&h, &c, "5", "r1").await;
    refund(&h, &c, &d, "r1").await;
    // Debit and refund are read in one batch.
    assert_eq!(h.drain().await, 2);
    let b = buckets(&h, &c).await;
    assert_eq!(b.len(), 1, "no new bucket is minted: {b:?}");
    assert_eq!((b[0].0.as_str(), b[0].2), ("free_allowance", 1_000_000));
    assert!(b[0].3.is_some(), "the allowance still expires");
    assert_conserved(&h, &c).await;
}

#[sqlx::test]
async fn a_refund_in_a_later_batch_restores_the_original_bucket(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("later-batch").await;
    let d = debit(&h, &c, "5", "r1").await;
    assert_eq!(h.drain().await, 1);
    refund(&h, &c, &d, "r1").await;
    assert_eq!(h.drain().await, 1);
    let b = buckets(&h, &c).await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].2, 1_000_000);
    assert_conserved(&h, &c).await;
}

#[sqlx::test]
async fn a_free_customers_allowance_renews_once_per_period_and_the_old_one_expires(db: PgPool) {
    let clock = Clock::manual(Utc::now());
    let h = Harness::with_clock(db, clock.clone()).await;
    let c = h.customer("free-months").await;
    debit(&h, &c, "300", "m1").await;
    h.settle().await;
    assert_eq!(h.ledger_balances(&c).await, (700_000, 0));

    clock.advance(Duration::days(32));
    h.settle().await;
    h.settle().await;
    let b = buckets(&h, &c).await;
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0].2, 0, "the old allowance is gone");
    assert_eq!(b[1].2, 1_000_000, "the new one is whole");
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM ledger_entries WHERE customer_id = $1 AND kind = 'expiry'",
            &c
        )
        .await,
        1
    );
    let expired = expired(&h, &c).await;
    assert_eq!(expired, 700_000, "exactly what was left expires");
    assert_eq!(h.redis_balances(&c).await, (1_000_000, 0));

    clock.advance(Duration::days(31));
    h.settle().await;
    h.settle().await;
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM ledger_txns t JOIN ledger_entries e ON e.txn_id = t.id
                   WHERE e.customer_id = $1 AND t.kind = 'allocation'",
            &c
        )
        .await,
        3,
        "one allowance per period"
    );
    assert_eq!(h.redis_balances(&c).await, (1_000_000, 0));
    assert_conserved(&h, &c).await;
}

#[sqlx::test]
async fn an_expiry_with_unread_debits_takes_nothing_from_other_buckets(db: PgPool) {
    let clock = Clock::manual(Utc::now());
    let h = Harness::with_clock(db, clock.clone()).await;
    let c = h.customer("unread").await;
    h.grant(&c, "100", false).await; // non-expiring, non-transferable: spent after the allowance
    // Debits the consumer has not read when the allowance expires.
    for i in 0..10 {
        debit(&h, &c, "10", &format!("u{i}")).await;
    }
    clock.advance(Duration::days(32));
    assert_eq!(
        reconcile::expire_due(&h.state, clock.now())
            .await
            .expect("sweep"),
        1
    );
    // A second sweep before the consumer caught up holds nothing twice.
    assert_eq!(
        reconcile::expire_due(&h.state, clock.now())
            .await
            .expect("sweep"),
        0
    );
    h.drain().await;
    let b = buckets(&h, &c).await;
    let granted = b.iter().find(|b| b.0 == "granted").expect("grant");
    assert_eq!(granted.2, 100_000, "the grant paid nothing for the expiry");
    let allowance = b
        .iter()
        .find(|b| b.0 == "free_allowance")
        .expect("allowance");
    assert_eq!(allowance.2, 0);
    assert_eq!(h.ledger_balances(&c).await, (100_000, 0));
    assert_eq!(h.redis_balances(&c).await, (100_000, 0));
    assert_conserved(&h, &c).await;
}

#[sqlx::test]
async fn an_admin_grant_with_expires_at_expires_exactly_its_unspent_part(db: PgPool) {
    let clock = Clock::manual(Utc::now());
    let h = Harness::with_clock(db, clock.clone()).await;
    let c = h.customer("granted").await;
    let expires = (clock.now() + Duration::days(3)).to_rfc3339();
    let (status, body) = h
        .call(
            Method::POST,
            &format!("/admin/v1/customers/{c}/grants"),
            &[admin_ref(&admin()), ("idempotency-key", "g-1")],
            Some(&json!({"credits": "50", "reason": "trial", "expires_at": expires, "transferable": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Spend the whole free allowance and 20 of the grant (transferable credits are spent
    // after non-transferable ones).
    debit(&h, &c, "1020", "big").await;
    clock.advance(Duration::days(4));
    h.settle().await;
    h.settle().await;
    let granted = buckets(&h, &c)
        .await
        .into_iter()
        .find(|b| b.0 == "granted")
        .expect("grant");
    assert_eq!((granted.1, granted.2), (50_000, 0));
    let (expired,): (i64,) = sqlx::query_as(
        "SELECT -SUM(e.amount)::int8 FROM ledger_entries e JOIN buckets b ON b.id = e.bucket_id
         WHERE b.customer_id = $1 AND b.kind = 'granted' AND e.kind = 'expiry'",
    )
    .bind(c.as_str())
    .fetch_one(&h.state.db)
    .await
    .expect("sum");
    assert_eq!(expired, 30_000, "the unspent 30 expire, not more");
    assert_conserved(&h, &c).await;
}

fn admin_ref<'a>(pair: &'a (&'static str, String)) -> (&'static str, &'a str) {
    (pair.0, pair.1.as_str())
}

/// Starts a world on a manual clock with a customer on mid, monthly, paid by Checkout.
async fn paid_mid_customer(
    db: PgPool,
    interval: &str,
) -> (World, Clock, CustomerId, String, String) {
    let clock = Clock::manual(Utc::now());
    let w = World::start_with_clock(db, true, clock.clone()).await;
    let (c, key) = w.customer_with_key("payer").await;
    w.pay(&key, json!({"plan": "mid", "interval": interval}))
        .await;
    wait_for("plan mid", || async { w.customer_row(&c).await.0 == "mid" }).await;
    wait_for("the allowance", || async {
        w.h.ledger_balances(&c).await.1 >= 50_000_000
    })
    .await;
    let sub = w.customer_row(&c).await.2.expect("subscription");
    (w, clock, c, key, sub)
}

async fn customer_view(w: &World, c: &CustomerId) -> Value {
    let (status, body) =
        w.h.call(
            Method::GET,
            &format!("/admin/v1/customers/{c}"),
            &[admin_ref(&admin())],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn period_end(view: &Value) -> DateTime<Utc> {
    view["subscription"]["current_period_end"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("a period end: {view}"))
}

async fn allowances(h: &Harness, c: &CustomerId) -> i64 {
    count(
        h,
        "SELECT count(*) FROM buckets WHERE customer_id = $1 AND kind = 'plan_allowance'",
        c,
    )
    .await
}

#[sqlx::test]
async fn a_paid_monthly_allowance_is_granted_only_when_its_invoice_is_paid(db: PgPool) {
    let (w, clock, c, key, sub) = paid_mid_customer(db, "monthly").await;
    let view = customer_view(&w, &c).await;
    let end = period_end(&view);
    assert!(
        view["subscription"]["current_period_start"].is_string(),
        "{view}"
    );
    assert_eq!(allowances(&w.h, &c).await, 1);

    // The period ends; Stripe has not charged the renewal yet: the allowance expires and
    // no new one comes from the calendar.
    clock.set(end + Duration::seconds(1));
    w.h.settle().await;
    w.h.settle().await;
    assert_eq!(
        allowances(&w.h, &c).await,
        1,
        "nothing granted before payment"
    );
    assert_eq!(w.h.ledger_balances(&c).await, (0, 0));

    // The renewal fails: still nothing, and nothing to transfer away.
    w.standin.fail_payment(&sub).await.expect("payment fails");
    wait_for("past due", || async {
        w.customer_row(&c).await.1 == "past_due"
    })
    .await;
    w.h.settle().await;
    assert_eq!(allowances(&w.h, &c).await, 1);
    let other = w.h.customer("friend").await;
    let (status, body) =
        w.h.call(
            Method::POST,
            "/v1/transfers",
            &[admin_ref(&bearer(&key)), ("idempotency-key", "t-1")],
            Some(&json!({"to": other.as_str(), "credits": "10"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Paid late: exactly one allowance for that period, expiring at Stripe's period end.
    w.standin.pay_open_invoice(&sub).await.expect("paid late");
    wait_for("the renewal's allowance", || async {
        allowances(&w.h, &c).await == 2
    })
    .await;
    let view = customer_view(&w, &c).await;
    let new_end = period_end(&view);
    assert!(new_end > end);
    w.standin
        .resend_event(
            &w.standin
                .events()
                .iter()
                .rev()
                .find(|e| e.type_ == "invoice.paid")
                .expect("an invoice.paid")
                .id
                .clone(),
        )
        .await
        .expect("redelivered");
    w.h.settle().await;
    assert_eq!(allowances(&w.h, &c).await, 2, "a redelivery grants nothing");
    assert_eq!(w.h.ledger_balances(&c).await, (0, 50_000_000));
    assert_eq!(w.h.redis_balances(&c).await, (0, 50_000_000));
    let b = buckets(&w.h, &c).await;
    let latest = b
        .iter()
        .rev()
        .find(|b| b.0 == "plan_allowance")
        .expect("allowance");
    assert_eq!(
        latest.3,
        Some(new_end),
        "it expires when Stripe's period ends"
    );
}

#[sqlx::test]
async fn a_renewal_paid_after_the_grace_drop_grants_that_periods_allowance_once(db: PgPool) {
    let (w, clock, c, _key, sub) = paid_mid_customer(db, "monthly").await;
    let end = period_end(&customer_view(&w, &c).await);
    clock.set(end + Duration::seconds(1));
    w.standin.fail_payment(&sub).await.expect("payment fails");
    wait_for("past due", || async {
        w.customer_row(&c).await.1 == "past_due"
    })
    .await;
    clock.advance(Duration::days(
        i64::from(w.h.state.policy().stripe.past_due_grace_days) + 1,
    ));
    billing_sync::webhook::grace::drop_overdue(&w.h.state, clock.now())
        .await
        .expect("grace pass");
    assert_eq!(w.customer_row(&c).await.0, "free");
    let view = customer_view(&w, &c).await;
    assert!(view["subscription"].is_null(), "back on free: {view}");
    w.h.settle().await;

    // The customer pays after all; Stripe's period is still running.
    clock.set(end + Duration::days(1));
    w.standin.pay_open_invoice(&sub).await.expect("paid late");
    wait_for("mid again", || async {
        w.customer_row(&c).await.0 == "mid"
    })
    .await;
    wait_for("the allowance", || async {
        allowances(&w.h, &c).await == 2
    })
    .await;
    w.h.settle().await;
    assert_eq!(w.h.ledger_balances(&c).await.1, 50_000_000);
    assert_eq!(w.h.redis_balances(&c).await.1, 50_000_000);
}

#[sqlx::test]
async fn a_yearly_plan_grants_its_monthly_allowance_each_month_without_an_invoice(db: PgPool) {
    let (w, clock, c, _key, _sub) = paid_mid_customer(db, "yearly").await;
    let start = clock.now();
    for month in 1..=3 {
        clock.set(start + Duration::days(31 * month + 1));
        w.h.settle().await;
        w.h.settle().await;
        assert_eq!(allowances(&w.h, &c).await, 1 + month);
        assert_eq!(w.h.ledger_balances(&c).await.1, 50_000_000, "month {month}");
    }
    let invoices = w
        .standin
        .events()
        .iter()
        .filter(|e| e.type_ == "invoice.paid")
        .count();
    assert_eq!(invoices, 1, "one invoice for the year");
}

#[sqlx::test]
async fn a_plan_switch_with_unread_debits_in_the_stream_takes_nothing_from_other_buckets(
    db: PgPool,
) {
    let clock = Clock::manual(Utc::now());
    let w = World::start_with_clock(db, true, clock).await;
    let (c, key) = w.customer_with_key("switcher").await;
    w.h.grant(&c, "100", false).await;
    for i in 0..7 {
        debit(&w.h, &c, "100", &format!("s{i}")).await;
    }
    // Unread: 700 of the free allowance's 1000 are spent in Redis only.
    w.pay(&key, json!({"plan": "mid", "interval": "monthly"}))
        .await;
    wait_for("plan mid", || async { w.customer_row(&c).await.0 == "mid" }).await;
    w.h.drain().await;
    w.h.settle().await;
    let b = buckets(&w.h, &c).await;
    let granted = b.iter().find(|b| b.0 == "granted").expect("grant");
    assert_eq!(granted.2, 100_000, "{b:?}");
    let expired = expired(&w.h, &c).await;
    assert_eq!(expired, 300_000, "exactly the free allowance's unspent 300");
    assert_eq!(w.h.ledger_balances(&c).await, (100_000, 50_000_000));
    assert_eq!(w.h.redis_balances(&c).await, (100_000, 50_000_000));
}

#[sqlx::test]
async fn a_refunded_pack_takes_back_what_is_left_of_its_credits(db: PgPool) {
    let w = World::start(db, true).await;
    let (c, key) = w.customer_with_key("refunded").await;
    let outcome = w.pay(&key, json!({"credit_pack": "small"})).await;
    wait_for("pack credited", || async {
        w.h.ledger_balances(&c).await.1 == 10_000_000
    })
    .await;
    // Spend the free allowance and 4000 of the pack.
    debit(&w.h, &c, "5000", "spend").await;
    let payment_intent = outcome.session["payment_intent"]
        .as_str()
        .expect("a payment intent")
        .to_owned();
    let charge = json!({
        "id": "ch_test_refunded", "object": "charge", "amount": 1000, "amount_refunded": 1000,
        "currency": "usd", "refunded": true, "payment_intent": payment_intent,
    });
    w.standin
        .send_event("charge.refunded", charge.clone())
        .await
        .expect("sent");
    wait_for("processed", || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM stripe_events WHERE type = 'charge.refunded' AND status = 'processed'",
        )
        .fetch_one(&w.h.state.db)
        .await
        .expect("count");
        n == 1
    })
    .await;
    w.h.settle().await;
    assert_eq!(
        w.h.ledger_balances(&c).await,
        (0, 0),
        "the 6000 left are taken back"
    );
    assert_eq!(w.h.redis_balances(&c).await, (0, 0));
    // A dispute of the same charge finds nothing more to take; never below zero.
    w.standin
        .send_event(
            "charge.dispute.created",
            json!({"id": "dp_test", "object": "dispute", "charge": "ch_test_refunded",
                   "payment_intent": payment_intent, "amount": 1000, "currency": "usd"}),
        )
        .await
        .expect("sent");
    w.h.settle().await;
    assert_eq!(w.h.ledger_balances(&c).await, (0, 0));
    let (status, audit) =
        w.h.call(
            Method::GET,
            &format!("/admin/v1/audit?customer={c}"),
            &[admin_ref(&admin())],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        audit["data"]
            .as_array()
            .expect("list")
            .iter()
            .any(|r| r["action"] == "credits.take_back"),
        "{audit}"
    );
}

#[sqlx::test]
async fn an_expiry_replayed_after_a_crash_is_posted_once(db: PgPool) {
    let clock = Clock::manual(Utc::now());
    let h = Harness::with_clock(db, clock.clone()).await;
    let c = h.customer("replayed").await;
    debit(&h, &c, "100", "x1").await;
    clock.advance(Duration::days(32));
    reconcile::expire_due(&h.state, clock.now())
        .await
        .expect("sweep");
    // Crash after the commit, before the acknowledgement: the batch is posted, its entries
    // stay pending.
    let batches = h
        .stream_store
        .read_usage(0..shared::redis::keys::SHARDS, "billing-sync", false, 1000)
        .await
        .expect("read");
    let entries: Vec<_> = batches
        .iter()
        .flat_map(|b| b.entries.iter().filter_map(|(_, e)| e.clone().ok()))
        .collect();
    assert_eq!(entries.len(), 2, "the debit and the hold");
    billing_sync::ledger::usage::post_batch(&h.state.db, &entries, &[])
        .await
        .expect("posted");
    // Restart: the pending entries are replayed; nothing is posted twice and the hold is
    // settled from what the first posting recorded.
    billing_sync::worker::start(
        &h.state,
        &h.stream_store,
        &billing_sync::worker::WorkerOptions::default(),
    )
    .await
    .expect("restart");
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM ledger_entries WHERE customer_id = $1 AND kind = 'expiry'",
            &c
        )
        .await,
        1
    );
    assert_eq!(h.ledger_balances(&c).await, (0, 0));
    assert_eq!(h.redis_balances(&c).await, (0, 0));
    assert_conserved(&h, &c).await;
}

#[sqlx::test]
async fn the_reconciler_leaves_an_account_alone_while_its_backlog_is_long(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("backlog").await;
    let n = shared::redis::RECONCILE_UNREAD_LEN_MAX + 1;
    for i in 0..n {
        debit(&h, &c, "0.001", &format!("b{i}")).await;
    }
    // More unread entries than one script may read: nothing is compared or written.
    let drift = reconcile::sync_accounts(&h.state, false)
        .await
        .expect("reconcile");
    assert_eq!((drift.lagging, drift.repaired), (1, 0));
    let before = h.redis_balances(&c).await;
    assert_eq!(before.0, 1_000_000 - n as i64);
    // Caught up: compared again, and nothing drifted.
    h.drain().await;
    let drift = reconcile::sync_accounts(&h.state, false)
        .await
        .expect("reconcile");
    assert_eq!((drift.lagging, drift.drift_millicredits), (0, 0));
    assert_eq!(h.redis_balances(&c).await, before);
    assert_conserved(&h, &c).await;
}

#[sqlx::test]
async fn an_expiry_hold_behind_an_unread_refund_leaves_redis_right(db: PgPool) {
    let clock = Clock::manual(Utc::now());
    let h = Harness::with_clock(db, clock.clone()).await;
    let c = h.customer("refund-then-expire").await;
    let d = debit(&h, &c, "220.874", "p1").await;
    h.drain().await;
    refund(&h, &c, &d, "p1").await;
    clock.advance(Duration::hours(888));
    reconcile::expire_due(&h.state, clock.now())
        .await
        .expect("sweep");
    // The refund restores the allowance before the mark, so all of it expires: nothing of
    // it may stay spendable meanwhile.
    assert_eq!(h.redis_balances(&c).await, (0, 0));
    let late = h
        .state
        .store
        .admit(&c, mc("150.763"), "api", "p2", now_ms())
        .await;
    assert!(
        matches!(late, Ok(Admission::Insufficient { .. })),
        "{late:?}"
    );
    h.drain().await;
    assert_eq!(h.redis_balances(&c).await, (0, 0));
    assert_eq!(expired(&h, &c).await, 1_000_000);
    assert_conserved(&h, &c).await;
}
