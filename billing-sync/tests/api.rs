//! The admin and customer APIs against real Postgres and Redis: shapes, idempotency,
//! authorization, revocation, errors.

mod common;

use axum::http::{Method, StatusCode};
use common::{ADMIN, Harness, bearer};
use serde_json::json;
use shared::ApiKey;
use sqlx::PgPool;

fn admin() -> (&'static str, String) {
    ("authorization", format!("Bearer {ADMIN}"))
}

#[sqlx::test]
async fn creating_a_customer_is_idempotent_on_external_id(db: PgPool) {
    let h = Harness::start(db).await;
    let (a, k) = admin();
    let body = json!({"external_id": "acme-42", "email": "a@example.com"});
    let (s1, first) = h
        .call(Method::POST, "/admin/v1/customers", &[(a, &k)], Some(&body))
        .await;
    let (s2, again) = h
        .call(Method::POST, "/admin/v1/customers", &[(a, &k)], Some(&body))
        .await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["plan"], "free");
    for field in ["id", "external_id", "email", "plan", "created_at"] {
        assert!(first.get(field).is_some(), "{field} missing in {first}");
    }
    // The whole default allowance, non-transferable, in Postgres and in Redis.
    let id = shared::CustomerId::parse(first["id"].as_str().unwrap_or_default()).expect("id");
    assert_eq!(h.redis_balances(&id).await, (1_000_000, 0));
    assert_eq!(h.ledger_balances(&id).await, (1_000_000, 0));
    let (_, view) = h
        .call(
            Method::GET,
            &format!("/admin/v1/customers/{id}"),
            &[(a, &k)],
            None,
        )
        .await;
    assert_eq!(
        view["balance"],
        json!({"spendable": "1000", "transferable": "0"})
    );
    assert_eq!(view["buckets"][0]["kind"], "free_allowance");
    assert_eq!(view["subscription"], serde_json::Value::Null);
}

#[sqlx::test]
async fn customers_are_listed_by_id_a_page_at_a_time(db: PgPool) {
    let h = Harness::start(db).await;
    let (a, k) = admin();
    let mut ids = [
        h.customer("one").await,
        h.customer("two").await,
        h.customer("three").await,
    ];
    ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let (status, first) = h
        .call(Method::GET, "/admin/v1/customers?limit=2", &[(a, &k)], None)
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["data"][0]["id"], ids[0].as_str());
    assert_eq!(first["data"][1]["id"], ids[1].as_str());
    let next = first["next"].as_str().expect("a cursor");
    let (status, rest) = h
        .call(
            Method::GET,
            &format!("/admin/v1/customers?limit=2&after={next}"),
            &[(a, &k)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(rest["data"][0]["id"], ids[2].as_str());
    assert_eq!(rest["data"].as_array().map(Vec::len), Some(1));
}

#[sqlx::test]
async fn a_grant_replays_with_the_same_key_and_conflicts_with_another_body(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    let (a, k) = admin();
    let path = format!("/admin/v1/customers/{c}/grants");
    let body = json!({"credits": "100", "reason": "promo", "transferable": true});
    let headers = [(a, k.as_str()), ("idempotency-key", "grant-1")];
    let (s1, first) = h.call(Method::POST, &path, &headers, Some(&body)).await;
    let (s2, replay) = h.call(Method::POST, &path, &headers, Some(&body)).await;
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    assert_eq!((s2, &replay), (StatusCode::CREATED, &first));
    assert_eq!(
        h.redis_balances(&c).await,
        (1_000_000, 100_000),
        "credited once"
    );
    let other = json!({"credits": "101", "reason": "promo", "transferable": true});
    let (s3, conflict) = h.call(Method::POST, &path, &headers, Some(&other)).await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    let (s4, missing) = h.call(Method::POST, &path, &[(a, &k)], Some(&body)).await;
    assert_eq!(s4, StatusCode::BAD_REQUEST);
    assert_eq!(missing["error"]["code"], "idempotency_key_required");
    assert_eq!(h.ledger_balances(&c).await, (1_000_000, 100_000));
    let (_, audit) = h
        .call(
            Method::GET,
            &format!("/admin/v1/audit?customer={c}&limit=10"),
            &[(a, &k)],
            None,
        )
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|r| r["action"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        actions,
        vec!["grant.create", "customer.create"],
        "newest first, once"
    );
    let record = &audit["data"][0];
    for field in ["at", "actor", "action", "customer", "before", "after"] {
        assert!(record.get(field).is_some(), "{field} missing in {record}");
    }
}

#[sqlx::test]
async fn bad_credits_are_refused_with_400_and_change_nothing(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    let (a, k) = admin();
    let path = format!("/admin/v1/customers/{c}/grants");
    for (i, bad) in [
        r#"{"credits": 5}"#,
        r#"{"credits": "-1"}"#,
        r#"{"credits": "1.0001"}"#,
        r#"{"credits": "1,5"}"#,
        r#"{"credits": "NaN"}"#,
        r#"{"credits": "99999999999999999999"}"#,
        r#"{"credits": "0"}"#,
        r#"{"credits": "1", "expires_at": "2001-01-01T00:00:00Z"}"#,
        r#"{"credits": "1", "surprise": true}"#,
        r#"not json"#,
        r#""#,
    ]
    .iter()
    .enumerate()
    {
        let key = format!("bad-{i}");
        let (status, body) = h
            .call_raw(
                Method::POST,
                &path,
                &[(a, &k), ("idempotency-key", &key)],
                Some((*bad).to_owned()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{body}"
        );
    }
    assert_eq!(h.ledger_balances(&c).await, (1_000_000, 0));
    assert_eq!(h.redis_balances(&c).await, (1_000_000, 0));
    let big = format!(r#"{{"credits": "1", "reason": "{}"}}"#, "x".repeat(100_000));
    let (status, body) = h
        .call_raw(
            Method::POST,
            &path,
            &[(a, &k), ("idempotency-key", "big")],
            Some(big),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large");
}

#[sqlx::test]
async fn a_revoked_key_is_refused_by_billing_sync_and_gone_from_redis(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    let (key_id, key) = h.api_key(&c).await;
    let parsed = ApiKey::parse(&key).expect("valid key");
    assert!(matches!(
        h.state.store.lookup(&parsed.hash()).await,
        Ok(shared::redis::Lookup::Found(_))
    ));
    let (b, v) = bearer(&key);
    let (status, balance) = h.call(Method::GET, "/v1/balance", &[(b, &v)], None).await;
    assert_eq!(status, StatusCode::OK, "{balance}");
    assert_eq!(balance["spendable"], "1000");
    assert_eq!(
        balance["allowance"],
        json!({"total": "1000", "used": "0", "left": "1000"})
    );
    let (a, k) = admin();
    let (status, _) = h
        .call(
            Method::DELETE,
            &format!("/admin/v1/api-keys/{key_id}"),
            &[(a, &k)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.state.store.lookup(&parsed.hash()).await.ok(),
        Some(shared::redis::Lookup::Unknown),
        "the proxy's lookup finds nothing"
    );
    let (status, body) = h.call(Method::GET, "/v1/balance", &[(b, &v)], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = h
        .call(
            Method::DELETE,
            "/admin/v1/api-keys/not-a-uuid",
            &[(a, &k)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn customer_a_cannot_reach_customer_b_through_any_endpoint(db: PgPool) {
    let h = Harness::start(db).await;
    let a_id = h.customer("a").await;
    let b_id = h.customer("b").await;
    h.grant(&b_id, "50", true).await;
    let (_, a_key) = h.api_key(&a_id).await;
    let (b_key_id, _) = h.api_key(&b_id).await;
    let (hb, hv) = bearer(&a_key);
    let auth = [(hb, hv.as_str())];
    // A's key on the admin API, with B's ids: refused, nothing leaked.
    let admin_calls = [
        (Method::GET, format!("/admin/v1/customers/{b_id}"), None),
        (Method::GET, "/admin/v1/customers".to_owned(), None),
        (
            Method::POST,
            format!("/admin/v1/customers/{b_id}/api-keys"),
            None,
        ),
        (
            Method::DELETE,
            format!("/admin/v1/api-keys/{b_key_id}"),
            None,
        ),
        (
            Method::POST,
            format!("/admin/v1/customers/{b_id}/grants"),
            Some(json!({"credits": "1"})),
        ),
        (
            Method::PUT,
            format!("/admin/v1/customers/{b_id}/tax-exempt"),
            Some(json!({"tax_exempt": "exempt"})),
        ),
        (
            Method::GET,
            format!("/admin/v1/audit?customer={b_id}"),
            None,
        ),
        (
            Method::POST,
            "/admin/v1/customers".to_owned(),
            Some(json!({"external_id": "x", "email": "x@example.com"})),
        ),
    ];
    for (method, path, body) in admin_calls {
        let headers = [(hb, hv.as_str()), ("idempotency-key", "k")];
        let (status, reply) = h.call(method.clone(), &path, &headers, body.as_ref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {reply}");
        assert_eq!(reply["error"]["code"], "unauthorized");
        assert!(
            !reply.to_string().contains(b_id.as_str()),
            "{path} leaked B's id"
        );
    }
    // Customer endpoints only ever show A's own data, whatever B-shaped input is sent.
    for path in [
        "/v1/balance".to_owned(),
        format!("/v1/balance?customer={b_id}"),
        format!("/v1/usage?customer={b_id}"),
        format!("/v1/transfers?customer={b_id}"),
    ] {
        let (status, reply) = h.call(Method::GET, &path, &auth, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {reply}");
        assert!(
            !reply.to_string().contains(b_id.as_str()),
            "{path} leaked B: {reply}"
        );
    }
    let (_, balance) = h.call(Method::GET, "/v1/balance", &auth, None).await;
    assert_eq!(balance["transferable"], "0", "B's grant is not A's");
    // A cannot move B's credits: a transfer always comes from the caller.
    let (status, reply) = h
        .call(
            Method::POST,
            "/v1/transfers",
            &[(hb, hv.as_str()), ("idempotency-key", "t")],
            Some(&json!({"to": a_id.as_str(), "credits": "5"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(h.redis_balances(&b_id).await, (1_000_000, 50_000));
    // The admin token is not a customer key, and no key at all is refused.
    for headers in [vec![("authorization", format!("Bearer {ADMIN}"))], vec![]] {
        let h2: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _) = h.call(Method::GET, "/v1/balance", &h2, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[sqlx::test]
async fn a_transfer_moves_transferable_credits_once_and_both_sides_see_it(db: PgPool) {
    let h = Harness::start(db).await;
    let a = h.customer("a").await;
    let b = h.customer("b").await;
    h.grant(&a, "20", true).await;
    let (_, a_key) = h.api_key(&a).await;
    let (_, b_key) = h.api_key(&b).await;
    let (ab, av) = bearer(&a_key);
    let body = json!({"to": b.as_str(), "credits": "5", "note": "thanks!"});
    let headers = [(ab, av.as_str()), ("idempotency-key", "t-1")];
    let (s1, first) = h
        .call(Method::POST, "/v1/transfers", &headers, Some(&body))
        .await;
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    assert_eq!(first["direction"], "sent");
    assert_eq!(first["credits"], "5");
    assert_eq!(first["note"], "thanks!");
    let (s2, replay) = h
        .call(Method::POST, "/v1/transfers", &headers, Some(&body))
        .await;
    assert_eq!((s2, &replay), (StatusCode::CREATED, &first));
    let other = json!({"to": b.as_str(), "credits": "6"});
    let (s3, conflict) = h
        .call(Method::POST, "/v1/transfers", &headers, Some(&other))
        .await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    assert_eq!(h.redis_balances(&a).await, (1_000_000, 15_000));
    assert_eq!(h.redis_balances(&b).await, (1_000_000, 5_000));
    assert_eq!(h.ledger_balances(&a).await, (1_000_000, 15_000));
    assert_eq!(h.ledger_balances(&b).await, (1_000_000, 5_000));
    let (bb, bv) = bearer(&b_key);
    let (_, list) = h
        .call(Method::GET, "/v1/transfers", &[(bb, bv.as_str())], None)
        .await;
    assert_eq!(list["data"][0]["direction"], "received");
    assert_eq!(list["data"][0]["id"], first["id"]);
    // Free credits never move: B holds 1000 free and 5 received.
    let (bb, bv) = bearer(&b_key);
    let (status, refused) = h
        .call(
            Method::POST,
            "/v1/transfers",
            &[(bb, bv.as_str()), ("idempotency-key", "t-2")],
            Some(&json!({"to": a.as_str(), "credits": "6"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "insufficient_credits");
    // The refusal is the first answer: replayed as is even once B could pay.
    h.grant(&b, "10", true).await;
    let (status, replayed) = h
        .call(
            Method::POST,
            "/v1/transfers",
            &[(bb, bv.as_str()), ("idempotency-key", "t-2")],
            Some(&json!({"to": a.as_str(), "credits": "6"})),
        )
        .await;
    assert_eq!(
        (status, &replayed),
        (StatusCode::UNPROCESSABLE_ENTITY, &refused)
    );
    assert_eq!(
        h.redis_balances(&b).await,
        (1_000_000, 15_000),
        "the replay moved nothing"
    );
    let (status, small) = h
        .call(
            Method::POST,
            "/v1/transfers",
            &[(bb, bv.as_str()), ("idempotency-key", "t-3")],
            Some(&json!({"to": a.as_str(), "credits": "0.5"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{small}");
    assert_eq!(small["error"]["code"], "transfer_below_minimum");
    let (status, missing) = h
        .call(
            Method::POST,
            "/v1/transfers",
            &[(bb, bv.as_str()), ("idempotency-key", "t-4")],
            Some(&json!({"to": "cus_nobody", "credits": "1"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert_eq!(
        h.redis_balances(&b).await,
        (1_000_000, 15_000),
        "refusals changed nothing"
    );
}

#[sqlx::test]
async fn the_daily_transfer_limit_counts_per_sender(db: PgPool) {
    let text = include_str!("../../deploy/creditgate.example.yaml")
        .replace(r#"max_per_day: "10000""#, r#"max_per_day: "10""#);
    let policy = shared::Policy::parse(&text, "p.yaml").expect("valid");
    let h = Harness::with_policy(db, policy).await;
    let a = h.customer("a").await;
    let b = h.customer("b").await;
    h.grant(&a, "100", true).await;
    let (_, key) = h.api_key(&a).await;
    let (hb, hv) = bearer(&key);
    let send = |n: &'static str, k: &'static str| {
        let body = json!({"to": b.as_str(), "credits": n});
        let hv = hv.clone();
        let h = &h;
        async move {
            h.call(
                Method::POST,
                "/v1/transfers",
                &[(hb, hv.as_str()), ("idempotency-key", k)],
                Some(&body),
            )
            .await
        }
    };
    assert_eq!(send("6", "d1").await.0, StatusCode::CREATED);
    let (status, over) = send("5", "d2").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(over["error"]["code"], "transfer_limit_exceeded");
    assert_eq!(send("4", "d3").await.0, StatusCode::CREATED);
}

#[sqlx::test]
async fn usage_is_reported_per_day_and_per_route_with_its_cost(db: PgPool) {
    let h = Harness::start(db).await;
    let c = h.customer("acme").await;
    let (_, key) = h.api_key(&c).await;
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..3 {
        let route = if i == 0 { "generate" } else { "api" };
        let cost = if i == 0 { "10" } else { "1" };
        h.state
            .store
            .admit(&c, common::mc(cost), route, &format!("r{i}"), now)
            .await
            .expect("admitted");
    }
    h.drain().await;
    let (hb, hv) = bearer(&key);
    let (status, by_route) = h
        .call(
            Method::GET,
            "/v1/usage?group_by=route",
            &[(hb, hv.as_str())],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{by_route}");
    assert_eq!(by_route["total"]["credits"], "12");
    assert_eq!(by_route["total"]["requests"], 3);
    assert_eq!(by_route["groups"][0]["key"], "api");
    assert_eq!(by_route["groups"][0]["credits"], "2");
    assert_eq!(by_route["total"]["cost"]["currency"], "usd");
    let (status, by_day) = h
        .call(
            Method::GET,
            "/v1/usage?group_by=day",
            &[(hb, hv.as_str())],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_day["groups"].as_array().map(Vec::len), Some(1));
    let (status, bad) = h
        .call(
            Method::GET,
            "/v1/usage?group_by=week",
            &[(hb, hv.as_str())],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"]["code"], "invalid_query");
    let (status, _) = h
        .call(
            Method::GET,
            "/v1/usage?from=yesterday",
            &[(hb, hv.as_str())],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, balance) = h
        .call(Method::GET, "/v1/balance", &[(hb, hv.as_str())], None)
        .await;
    assert_eq!(balance["spendable"], "988");
    assert_eq!(balance["allowance"]["used"], "12");
}

#[test]
fn the_mid_plan_rate_prices_thirty_credits_at_twelve_tenths_of_a_cent() {
    let policy = common::policy();
    let money = billing_sync::api::customer::cost_of(&policy, "mid", common::mc("30"));
    assert_eq!(
        serde_json::to_value(&money).ok(),
        Some(json!({"amount": "0.012", "currency": "usd"}))
    );
}
