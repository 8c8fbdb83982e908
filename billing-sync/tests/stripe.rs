//! The Stripe integration against the project's Stripe stand-in (real HTTP, signed
//! webhooks), real Postgres and a private Redis: checkout to plan, packs credited once,
//! webhook refusals, secret rotation, order-independence, failed payments and grace.

mod common;

use axum::http::{Method, StatusCode};
use chrono::Utc;
use common::ADMIN;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};
use shared::CustomerId;
use sqlx::PgPool;
use stripe_webhook::Webhook;

use common::world::{OLD_SECRET, SECRET, World, wait_for};

#[sqlx::test]
async fn checkout_for_mid_monthly_moves_the_customer_to_mid_in_postgres_and_redis(db: PgPool) {
    let w = World::start(db, true).await;
    let (c, key) = w.customer_with_key("acme").await;
    assert_eq!(w.h.redis_balances(&c).await, (1_000_000, 0));

    let session = w
        .checkout(&key, json!({"plan": "mid", "interval": "monthly"}))
        .await;
    let checkout = w
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/checkout/sessions")
        .expect("session created");
    assert_eq!(checkout.form["mode"], "subscription");
    assert_eq!(checkout.form["automatic_tax"]["enabled"], "true");
    assert_eq!(checkout.form["customer_update"]["address"], "auto");
    assert_eq!(checkout.form["metadata"]["creditgate_customer"], c.as_str());

    let outcome = w
        .standin
        .complete_checkout(&session)
        .await
        .expect("checkout completes");
    assert_eq!(outcome.events.len(), 3);
    wait_for("plan mid", || async { w.customer_row(&c).await.0 == "mid" }).await;
    let (plan, status, sub) = w.customer_row(&c).await;
    assert_eq!((plan.as_str(), status.as_str()), ("mid", "active"));
    assert!(sub.is_some_and(|s| s.starts_with("sub_")));
    // The free allowance ended; mid's 50 000 transferable credits arrived, once.
    wait_for("allowance", || async {
        w.h.redis_balances(&c).await == (0, 50_000_000)
    })
    .await;
    // The free allowance's expiry is posted where its hold falls in the usage stream.
    w.h.drain().await;
    assert_eq!(w.h.ledger_balances(&c).await, (0, 50_000_000));
    let account =
        w.h.state
            .store
            .account(&c)
            .await
            .expect("redis")
            .expect("account");
    assert_eq!(account.plan, "mid");

    // A second subscription is refused; switching goes through the portal.
    let auth = format!("Bearer {key}");
    let (status, body) =
        w.h.call(
            Method::POST,
            "/v1/checkout",
            &[("authorization", &auth)],
            Some(&json!({"plan": "high", "interval": "monthly"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("subscription_exists"))
    );
    let (status, portal) =
        w.h.call(
            Method::POST,
            "/v1/portal",
            &[("authorization", &auth)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{portal}");
    assert!(
        portal["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http"))
    );
    let (status, invoices) =
        w.h.call(
            Method::GET,
            "/v1/invoices",
            &[("authorization", &auth)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{invoices}");
    let invoice = &invoices["data"][0];
    assert_eq!(invoice["status"], "paid");
    assert_eq!(
        invoice["subtotal"],
        json!({"amount": "20.00", "currency": "usd"})
    );
    assert_eq!(invoice["tax"]["amount"], "2.00");
    assert_eq!(invoice["total"]["amount"], "22.00");

    // Every event is stored and processed; replays change nothing.
    for event in w.standin.events() {
        w.standin.resend_event(&event.id).await.expect("resend");
    }
    assert_eq!(w.h.redis_balances(&c).await, (0, 50_000_000));
    assert_eq!(w.h.ledger_balances(&c).await, (0, 50_000_000));
}

#[sqlx::test]
async fn a_pack_purchase_is_credited_once_under_duplicate_delivery(db: PgPool) {
    let w = World::start(db, true).await;
    let (c, key) = w.customer_with_key("packer").await;
    let session = w.checkout(&key, json!({"credit_pack": "small"})).await;
    let outcome = w
        .standin
        .complete_checkout(&session)
        .await
        .expect("checkout completes");
    let event = &outcome.events[0];
    assert_eq!(event.type_, "checkout.session.completed");
    wait_for("pack credited", || async {
        w.h.redis_balances(&c).await.1 == 10_000_000
    })
    .await;
    for _ in 0..3 {
        w.standin.resend_event(&event.id).await.expect("resend");
    }
    // The same event signed and posted concurrently, too.
    let payload = event.event.to_string();
    let posts = (0..4).map(|_| {
        let sig = Webhook::generate_test_header(&payload, SECRET, None);
        w.post_webhook(&payload, Some(sig))
    });
    for (status, _) in futures_join_all(posts).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(w.h.redis_balances(&c).await, (1_000_000, 10_000_000));
    assert_eq!(w.h.ledger_balances(&c).await, (1_000_000, 10_000_000));
    let (plan, _, _) = w.customer_row(&c).await;
    assert_eq!(plan, "free", "a pack does not change the plan");
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

#[sqlx::test]
async fn bad_signatures_stale_timestamps_and_malformed_bodies_are_refused_and_change_nothing(
    db: PgPool,
) {
    let w = World::start(db, false).await;
    let payload = json!({"id": "evt_bad_1", "object": "event", "type": "invoice.paid", "created": Utc::now().timestamp(),
                         "data": {"object": {"id": "in_1", "object": "invoice"}}})
    .to_string();
    let cases = [
        ("missing", None, "invalid_signature"),
        (
            "wrong secret",
            Some(Webhook::generate_test_header(
                &payload,
                "whsec_someone_else",
                None,
            )),
            "invalid_signature",
        ),
        (
            "garbage",
            Some("t=abc,v1=zz".to_owned()),
            "invalid_signature",
        ),
        (
            "stale",
            Some(Webhook::generate_test_header(
                &payload,
                SECRET,
                Some(Utc::now().timestamp() - 600),
            )),
            "stale_signature",
        ),
    ];
    for (what, sig, code) in cases {
        let (status, body) = w.post_webhook(&payload, sig).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}");
    }
    let malformed = "{\"id\": \"evt_x\", not json";
    let (status, body) = w
        .post_webhook(
            malformed,
            Some(Webhook::generate_test_header(malformed, SECRET, None)),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_event"))
    );
    assert_eq!(
        w.stored_events().await,
        0,
        "nothing is stored for a refused webhook"
    );

    // Both secrets verify during rotation; an unknown type is acknowledged and recorded.
    for secret in [OLD_SECRET, SECRET] {
        let id = format!("evt_rotation_{}", &secret[5..12]);
        let event = json!({"id": id, "object": "event", "type": "customer.created", "created": Utc::now().timestamp(),
                           "data": {"object": {"id": "cus_x", "object": "customer"}}})
        .to_string();
        let (status, body) = w
            .post_webhook(
                &event,
                Some(Webhook::generate_test_header(&event, secret, None)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(w.stored_events().await, 2);
}

#[sqlx::test]
async fn a_failed_payment_makes_the_customer_past_due_then_free_after_the_grace_period(db: PgPool) {
    let w = World::start(db, true).await;
    let (c, key) = w.customer_with_key("late-payer").await;
    w.pay(&key, json!({"plan": "mid", "interval": "yearly"}))
        .await;
    wait_for("plan mid", || async { w.customer_row(&c).await.0 == "mid" }).await;
    let sub = w.customer_row(&c).await.2.expect("subscription");

    w.standin.fail_payment(&sub).await.expect("payment fails");
    wait_for("past due", || async {
        w.customer_row(&c).await.1 == "past_due"
    })
    .await;
    assert_eq!(
        w.customer_row(&c).await.0,
        "mid",
        "the plan holds during the grace period"
    );
    assert_eq!(
        billing_sync::webhook::grace::drop_overdue(&w.h.state, Utc::now())
            .await
            .expect("grace pass"),
        0
    );

    let later = Utc::now()
        + chrono::Duration::days(i64::from(w.h.state.policy().stripe.past_due_grace_days) + 1);
    assert_eq!(
        billing_sync::webhook::grace::drop_overdue(&w.h.state, later)
            .await
            .expect("grace pass"),
        1
    );
    let (plan, status, _) = w.customer_row(&c).await;
    assert_eq!((plan.as_str(), status.as_str()), ("free", "canceled"));
    // Mid's allowance expired; a fresh free allowance started.
    w.h.drain().await;
    assert_eq!(w.h.redis_balances(&c).await, (1_000_000, 0));
    assert_eq!(w.h.ledger_balances(&c).await, (1_000_000, 0));
    let (_, audit) =
        w.h.call(
            Method::GET,
            &format!("/admin/v1/audit?customer={c}"),
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"payment.failed") && actions.contains(&"grace.expired"),
        "{actions:?}"
    );
}

/// One subscription's life, run in the stand-in with webhooks held back: its events.
async fn subscription_events(
    w: &World,
    external_id: &str,
    cancel: bool,
) -> (CustomerId, Vec<String>) {
    let (c, key) = w.customer_with_key(external_id).await;
    let session = w
        .checkout(&key, json!({"plan": "mid", "interval": "monthly"}))
        .await;
    let before = w.standin.events().len();
    let outcome = w
        .standin
        .complete_checkout(&session)
        .await
        .expect("checkout completes");
    let sub = outcome
        .subscription
        .as_ref()
        .and_then(|s| s["id"].as_str())
        .expect("subscription")
        .to_owned();
    w.standin.cancel_at_period_end(&sub).await.expect("update");
    if cancel {
        w.standin.cancel_subscription(&sub).await.expect("cancel");
    }
    let events = w.standin.events()[before..]
        .iter()
        .map(|e| e.event.to_string())
        .collect();
    (c, events)
}

#[sqlx::test]
async fn every_order_and_duplication_of_a_subscriptions_events_ends_in_the_same_state(db: PgPool) {
    let w = World::start(db, false).await;
    // proptest draws the orders (shuffled, with duplicates); the cases run one after another
    // on this test's runtime.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (any::<bool>(), proptest::collection::vec(0usize..64, 4..9));
    for case in 0..12 {
        let (cancel, order) = strategy.new_tree(&mut runner).expect("a case").current();
        let (c, events) = subscription_events(&w, &format!("perm-{case}"), cancel).await;
        // Every event at least once, after the drawn deliveries.
        let mut deliveries: Vec<usize> = order.iter().map(|i| i % events.len()).collect();
        deliveries.extend(0..events.len());
        for i in deliveries {
            let sig = Webhook::generate_test_header(&events[i], SECRET, None);
            let (status, body) = w.post_webhook(&events[i], Some(sig)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        w.h.drain().await;
        let row = w.customer_row(&c).await;
        let outcome = (
            row.0,
            row.1,
            w.h.redis_balances(&c).await,
            w.h.ledger_balances(&c).await,
        );
        let expected = if cancel {
            (
                "free".to_owned(),
                "canceled".to_owned(),
                (1_000_000, 0),
                (1_000_000, 0),
            )
        } else {
            (
                "mid".to_owned(),
                "active".to_owned(),
                (0, 50_000_000),
                (0, 50_000_000),
            )
        };
        assert_eq!(
            outcome, expected,
            "case {case}: cancel={cancel}, order={order:?}"
        );
    }
}

#[sqlx::test]
async fn tax_exemption_is_audited_and_passed_to_stripe(db: PgPool) {
    let w = World::start(db, true).await;
    let (c, key) = w.customer_with_key("exempt-co").await;
    let admin = format!("Bearer {ADMIN}");
    let path = format!("/admin/v1/customers/{c}/tax-exempt");
    // Set before the Stripe Customer exists: it is created with the status.
    let (status, _) =
        w.h.call(
            Method::PUT,
            &path,
            &[("authorization", &admin)],
            Some(&json!({"tax_exempt": "exempt"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    w.checkout(&key, json!({"credit_pack": "small"})).await;
    let (stripe_id,): (String,) =
        sqlx::query_as("SELECT stripe_customer_id FROM customers WHERE id = $1")
            .bind(c.as_str())
            .fetch_one(&w.h.state.db)
            .await
            .expect("linked");
    assert_eq!(
        w.standin.object(&stripe_id).expect("in stripe")["tax_exempt"],
        "exempt"
    );
    // Changed later: passed on.
    let (status, _) =
        w.h.call(
            Method::PUT,
            &path,
            &[("authorization", &admin)],
            Some(&json!({"tax_exempt": "reverse"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        w.standin.object(&stripe_id).expect("in stripe")["tax_exempt"],
        "reverse"
    );
    let (status, body) =
        w.h.call(
            Method::PUT,
            &path,
            &[("authorization", &admin)],
            Some(&json!({"tax_exempt": "maybe"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_tax_exempt"))
    );
    let (_, audit) =
        w.h.call(
            Method::GET,
            &format!("/admin/v1/audit?customer={c}"),
            &[("authorization", &admin)],
            None,
        )
        .await;
    let changes = audit["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|r| r["action"] == "customer.tax_exempt")
        .count();
    assert_eq!(changes, 2);
}

#[sqlx::test]
async fn a_mid_period_upgrade_grants_the_prorated_difference_once(db: PgPool) {
    let w = World::start(db, true).await;
    let (c, key) = w.customer_with_key("upgrader").await;
    w.pay(&key, json!({"plan": "mid", "interval": "monthly"}))
        .await;
    wait_for("mid allowance", || async {
        w.h.redis_balances(&c).await == (0, 50_000_000)
    })
    .await;
    let sub = w.customer_row(&c).await.2.expect("subscription");
    let stripe = w.h.state.stripe.clone().expect("configured");
    let high = billing_sync::stripe::catalog::find_price(&stripe, "creditgate_plan_high_monthly")
        .await
        .expect("stripe answers")
        .expect("high monthly price");
    let outcome = w
        .standin
        .switch_price(&sub, high.id.as_str())
        .await
        .expect("upgrade");
    for event in &outcome.events {
        w.standin
            .resend_event(&event.id)
            .await
            .expect("duplicate delivery");
    }
    wait_for("plan high", || async {
        w.customer_row(&c).await.0 == "high"
    })
    .await;
    // 450 000 more credits a month, prorated to the (almost whole) month left, granted once.
    let (nt, tr) = w.h.redis_balances(&c).await;
    assert_eq!(nt, 0);
    let extra = tr - 50_000_000;
    let events: Vec<(String, String, Option<String>, Value)> =
        sqlx::query_as("SELECT type, status, last_error, payload->'data'->'object' FROM stripe_events ORDER BY received_at")
            .fetch_all(&w.h.state.db)
            .await
            .expect("events");
    let events: Vec<String> = events
        .iter()
        .map(|(t, s, e, o)| {
            format!(
                "{t} {s} {e:?} reason={} lines={}",
                o["billing_reason"],
                o["lines"]["data"].as_array().map_or(0, Vec::len)
            )
        })
        .collect();
    assert!(
        (449_000_000..=450_000_000).contains(&extra),
        "prorated extra {extra}: {events:#?}"
    );
    w.h.drain().await;
    assert_eq!(w.h.ledger_balances(&c).await, (0, tr));
}

#[sqlx::test]
async fn the_catalog_sync_is_idempotent_and_a_changed_price_moves_the_lookup_key(db: PgPool) {
    let w = World::start(db, false).await;
    let stripe = w.h.state.stripe.clone().expect("configured");
    let again = billing_sync::stripe::catalog::sync(&stripe, &w.h.state.policy())
        .await
        .expect("sync");
    assert!(
        again.products_created.is_empty() && again.prices_created.is_empty(),
        "{again:?}"
    );
    assert_eq!(
        again.prices.len(),
        5,
        "mid and high × monthly and yearly, and the pack"
    );

    let text = include_str!("../../deploy/creditgate.example.yaml")
        .replace("monthly: \"20.00\"", "monthly: \"25.00\"");
    let changed = shared::Policy::parse(&text, "changed.yaml").expect("valid");
    let report = billing_sync::stripe::catalog::sync(&stripe, &changed)
        .await
        .expect("sync");
    assert_eq!(
        report.prices_created,
        vec!["creditgate_plan_mid_monthly".to_owned()]
    );
    let price = billing_sync::stripe::catalog::find_price(&stripe, "creditgate_plan_mid_monthly")
        .await
        .expect("stripe answers")
        .expect("the lookup key moved to the new price");
    assert_eq!(price.unit_amount, Some(2500));
    assert_ne!(
        price.id.as_str(),
        again.prices["creditgate_plan_mid_monthly"]
    );
    let creates = w
        .standin
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/prices")
        .count();
    assert_eq!(creates, 6, "five at start, one for the changed price");
}
