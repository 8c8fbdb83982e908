//! Stored Stripe events that cannot be applied yet: retried with growing gaps for at least
//! three days as a manual clock moves, listed and retried by hand through the admin API,
//! applied once whatever is retried. Stripe "fails" by being unreachable: a state whose
//! `STRIPE_API_BASE` points at a closed port, so re-reading the subscription fails.

mod common;

use axum::http::{Method, StatusCode};
use billing_sync::State;
use billing_sync::clock::Clock;
use billing_sync::stripe::Stripe;
use billing_sync::webhook::retry::{self, EVENT_RETRY_WINDOW};
use billing_sync::webhook::stored::{self, StoredEvent};
use chrono::{Duration, SubsecRound, Utc};
use common::ADMIN;
use common::world::{OLD_SECRET, SECRET, World};
use serde_json::{Value, json};
use shared::CustomerId;
use sqlx::PgPool;
use stripe_webhook::Webhook;

/// `w`'s state with Stripe unreachable (a port nothing listens on): every re-read fails.
async fn with_stripe_down(w: &World) -> State {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closed = format!("http://{}/", listener.local_addr().expect("bound"));
    drop(listener);
    let stripe = Stripe::new("sk_test_standin_fake", Some(&closed), false).expect("test key");
    w.h.state
        .clone()
        .with_stripe(Some(stripe), &format!("{OLD_SECRET},{SECRET}"))
}

/// A customer who paid for mid monthly in the stand-in, its events held back: (customer,
/// the events by type).
async fn paid_mid_with_events_held(
    w: &World,
    external_id: &str,
) -> (CustomerId, Vec<(String, String)>) {
    let (c, key) = w.customer_with_key(external_id).await;
    let outcome = w
        .pay(&key, json!({"plan": "mid", "interval": "monthly"}))
        .await;
    let events = outcome
        .events
        .iter()
        .map(|e| (e.type_.clone(), e.event.to_string()))
        .collect();
    (c, events)
}

fn event_of<'a>(events: &'a [(String, String)], type_: &str) -> &'a str {
    events
        .iter()
        .find(|(t, _)| t == type_)
        .map(|(_, e)| e.as_str())
        .unwrap_or_else(|| panic!("no {type_} event in {events:?}"))
}

fn id_of(event: &str) -> String {
    let v: Value = serde_json::from_str(event).expect("an event");
    v["id"].as_str().expect("an id").to_owned()
}

/// Delivers `event` to `app`'s `/webhooks/stripe`, signed as Stripe signs it.
async fn deliver(w: &mut World, app: axum::Router, event: &str) -> (StatusCode, Value) {
    let own = std::mem::replace(&mut w.h.app, app);
    let sig = Webhook::generate_test_header(event, SECRET, None);
    let reply = w.post_webhook(event, Some(sig)).await;
    w.h.app = own;
    reply
}

async fn row(w: &World, id: &str) -> StoredEvent {
    stored::find(&w.h.state.db, id)
        .await
        .expect("query")
        .expect("stored")
}

/// `GET /admin/v1/stripe/events<query>` as the admin.
async fn list(w: &World, query: &str) -> (StatusCode, Value) {
    let auth = format!("Bearer {ADMIN}");
    let path = format!("/admin/v1/stripe/events{query}");
    w.h.call(Method::GET, &path, &[("authorization", &auth)], None)
        .await
}

/// `POST /admin/v1/stripe/events/{id}/retry` with `authorization` (none: no header).
async fn retry_by_hand(w: &World, id: &str, authorization: Option<&str>) -> (StatusCode, Value) {
    let path = format!("/admin/v1/stripe/events/{id}/retry");
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    w.h.call(Method::POST, &path, &headers, None).await
}

#[sqlx::test]
async fn a_failing_stripe_event_is_retried_with_growing_gaps_after_two_days_and_applied_once_stripe_answers(
    db: PgPool,
) {
    let clock = Clock::manual(Utc::now().trunc_subsecs(0));
    let mut w = World::start_with_clock(db, false, clock.clone()).await;
    let (c, events) = paid_mid_with_events_held(&w, "retried").await;
    let paid = event_of(&events, "invoice.paid").to_owned();
    let id = id_of(&paid);
    let down = with_stripe_down(&w).await;

    // Stripe gets its 200 although the event could not be applied: the retries are ours.
    let (status, body) = deliver(&mut w, billing_sync::api::app(down.clone()), &paid).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{body}"
    );
    let received_at = row(&w, &id).await.received_at;
    assert_eq!(
        received_at,
        clock.now(),
        "times come from the state's clock"
    );

    // Each failure doubles the gap to the next attempt; nothing is tried before it is due.
    for (attempts, gap_s) in [(1, 5), (2, 10), (3, 20), (4, 40)] {
        let r = row(&w, &id).await;
        assert_eq!((r.status.as_str(), r.attempts), ("failed", attempts));
        assert!(
            r.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("stripe")),
            "{r:?}"
        );
        let due = r.next_attempt_at.expect("scheduled");
        assert_eq!(due - clock.now(), Duration::seconds(gap_s));
        clock.set(due - Duration::milliseconds(1));
        assert_eq!(retry::retry_due(&down).await.expect("pass"), 0);
        assert_eq!(row(&w, &id).await.attempts, attempts, "not due yet");
        clock.set(due);
        assert_eq!(retry::retry_due(&down).await.expect("pass"), 0);
    }

    // Two days in (the old schedule gave up after about 100 s), it is still retried.
    clock.set(received_at + Duration::days(2));
    let before = row(&w, &id).await.attempts;
    assert_eq!(retry::retry_due(&down).await.expect("pass"), 0);
    let r = row(&w, &id).await;
    assert_eq!(r.attempts, before + 1, "retried after two days");
    let due = r.next_attempt_at.expect("still scheduled after two days");
    let (status, listed) = list(&w, "?status=failed").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert_eq!(listed["data"][0]["attempts"], before + 1);
    assert_eq!(w.customer_row(&c).await.0, "free", "nothing applied yet");

    // Stripe answers again: the next pass applies it, once.
    clock.set(due);
    assert_eq!(retry::retry_due(&w.h.state).await.expect("pass"), 1);
    let r = row(&w, &id).await;
    assert_eq!(
        (r.status.as_str(), r.last_error, r.next_attempt_at),
        ("processed", None, None)
    );
    assert_eq!(r.processed_at, Some(due));
    assert_eq!(w.customer_row(&c).await.0, "mid");
    // The consumer posts the free allowance's expiry where it falls in the usage stream.
    w.h.drain().await;
    let balances = (w.h.redis_balances(&c).await, w.h.ledger_balances(&c).await);
    assert_eq!(balances, ((0, 50_000_000), (0, 50_000_000)));

    // Duplicates change nothing: a redelivery, a later pass, a retry by hand.
    let own = w.h.app.clone();
    let (status, body) = deliver(&mut w, own, &paid).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    clock.advance(Duration::hours(2));
    assert_eq!(retry::retry_due(&w.h.state).await.expect("pass"), 0);
    let admin = format!("Bearer {ADMIN}");
    let (status, again) = retry_by_hand(&w, &id, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (again["status"].as_str(), again["attempts"].as_i64()),
        (Some("processed"), Some(i64::from(r.attempts)))
    );
    w.h.drain().await;
    assert_eq!(
        (w.h.redis_balances(&c).await, w.h.ledger_balances(&c).await),
        balances
    );
}

#[sqlx::test]
async fn an_event_failing_past_three_days_is_given_up_yet_a_retry_by_hand_applies_it_at_once(
    db: PgPool,
) {
    let clock = Clock::manual(Utc::now().trunc_subsecs(0));
    let mut w = World::start_with_clock(db, false, clock.clone()).await;
    let (c, events) = paid_mid_with_events_held(&w, "given-up").await;
    let paid = event_of(&events, "invoice.paid").to_owned();
    let id = id_of(&paid);
    let down = with_stripe_down(&w).await;
    deliver(&mut w, billing_sync::api::app(down.clone()), &paid).await;
    let received_at = row(&w, &id).await.received_at;

    // A failure at the end of the window is the last automatic attempt.
    clock.set(received_at + EVENT_RETRY_WINDOW);
    retry::retry_due(&down).await.expect("pass");
    let r = row(&w, &id).await;
    assert_eq!(
        (r.status.as_str(), r.attempts, r.next_attempt_at),
        ("failed", 2, None)
    );
    clock.advance(Duration::days(1));
    assert_eq!(retry::retry_due(&w.h.state).await.expect("pass"), 0);
    assert_eq!(
        row(&w, &id).await.attempts,
        2,
        "given up: no automatic attempt"
    );
    assert_eq!(w.customer_row(&c).await.0, "free");

    // By hand: refused without the admin token, 404 for an unknown id, else applied now.
    let admin = format!("Bearer {ADMIN}");
    let (status, body) = retry_by_hand(&w, &id, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (status, body) = retry_by_hand(&w, "evt_nope", Some(&admin)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // The scheme is case-insensitive for the admin token too.
    let (status, body) = retry_by_hand(&w, &id, Some(&format!("bearer {ADMIN}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            body["id"].as_str(),
            body["status"].as_str(),
            body["attempts"].as_i64()
        ),
        (Some(id.as_str()), Some("processed"), Some(3))
    );
    assert_eq!(body["last_error"], Value::Null);
    assert_eq!(w.customer_row(&c).await.0, "mid");
    // The consumer posts the free allowance's expiry where it falls in the usage stream.
    w.h.drain().await;
    let balances = (w.h.redis_balances(&c).await, w.h.ledger_balances(&c).await);
    assert_eq!(balances, ((0, 50_000_000), (0, 50_000_000)));
    let (status, again) = retry_by_hand(&w, &id, Some(&admin)).await;
    assert_eq!(
        (status, again),
        (StatusCode::OK, body),
        "an applied event changes nothing"
    );
    w.h.drain().await;
    assert_eq!(
        (w.h.redis_balances(&c).await, w.h.ledger_balances(&c).await),
        balances
    );
}

#[sqlx::test]
async fn stored_stripe_events_are_listed_newest_first_by_status_and_a_bad_status_is_a_400(
    db: PgPool,
) {
    let clock = Clock::manual(Utc::now().trunc_subsecs(0));
    let mut w = World::start_with_clock(db, false, clock.clone()).await;
    let (_, events) = paid_mid_with_events_held(&w, "listed").await;
    let down = with_stripe_down(&w).await;
    let created = event_of(&events, "customer.subscription.created").to_owned();
    deliver(&mut w, billing_sync::api::app(down), &created).await;
    // An event of a type with nothing to apply is processed without Stripe.
    let other = json!({"id": "evt_listed_other", "object": "event", "type": "customer.created",
                       "created": Utc::now().timestamp(), "data": {"object": {"id": "cus_x", "object": "customer"}}})
    .to_string();
    clock.advance(Duration::seconds(1));
    let own = w.h.app.clone();
    deliver(&mut w, own, &other).await;

    let (status, all) = list(&w, "").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let ids: Vec<&str> = all["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["evt_listed_other", id_of(&created).as_str()],
        "newest first, processed ones too"
    );
    let first = &all["data"][0];
    for field in [
        "id",
        "type",
        "status",
        "attempts",
        "received_at",
        "last_error",
    ] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
    assert_eq!(
        (first["type"].as_str(), first["status"].as_str()),
        (Some("customer.created"), Some("processed"))
    );
    for (query, expected) in [
        ("?status=processed", vec!["evt_listed_other".to_owned()]),
        ("?status=failed", vec![id_of(&created)]),
        ("?status=pending", vec![]),
        ("?limit=1", vec!["evt_listed_other".to_owned()]),
    ] {
        let (status, page) = list(&w, query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        let ids: Vec<String> = page["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids, expected, "{query}");
    }
    for query in ["?status=done", "?limit=0", "?limit=many"] {
        let (status, body) = list(&w, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["error"]["code"]
                .as_str()
                .is_some_and(|c| c.starts_with("invalid_")),
            "{query}: {body}"
        );
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
    let (status, body) =
        w.h.call(Method::GET, "/admin/v1/stripe/events", &[], None)
            .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
}

#[sqlx::test]
async fn every_webhook_refusal_has_the_api_error_shape(db: PgPool) {
    let w = World::start(db, false).await;
    let payload = json!({"id": "evt_shape", "object": "event", "type": "customer.created", "created": Utc::now().timestamp(),
                         "data": {"object": {"id": "cus_x", "object": "customer"}}})
    .to_string();
    let huge_header = format!("t={},{}", Utc::now().timestamp(), "v1=,".repeat(5000));
    let (status, body) = w.post_webhook(&payload, Some(huge_header)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_signature")),
        "{body}"
    );
    let too_big = "x".repeat(billing_sync::webhook::WEBHOOK_BODY_BYTES_MAX + 1);
    let sig = Webhook::generate_test_header(&too_big, SECRET, None);
    let (status, body) = w.post_webhook(&too_big, Some(sig)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
        "{body}"
    );
    assert_eq!(w.stored_events().await, 0);
}
