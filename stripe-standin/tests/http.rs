//! The stand-in's HTTP edge seen without async-stripe: keys, Stripe-shaped errors,
//! idempotency headers, limits, recording, and the browser pages.

mod common;

use base64::Engine as _;
use common::{FAKE_KEY, auth, raw, standin};
use stripe_standin::{StandinConfig, StripeStandin};

#[tokio::test]
async fn requests_without_a_test_key_get_stripes_401() {
    let standin = standin().await;
    let (status, _, body) = raw(
        &standin,
        "POST",
        "/v1/customers",
        &[],
        "email=a%40example.com",
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let live = format!("Bearer sk_live_{}", "x".repeat(8));
    let (status, _, body) = raw(
        &standin,
        "GET",
        "/v1/customers",
        &[("authorization", live.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        !body.to_string().contains("sk_live_xxxx"),
        "keys are never echoed"
    );
    // Basic auth with the key as user name, as curl -u sk_test_…: sends it.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{FAKE_KEY}:"))
    );
    let (status, _, _) = raw(
        &standin,
        "GET",
        "/v1/customers",
        &[("authorization", basic.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        standin.requests().len(),
        3,
        "refused requests are recorded too"
    );
}

#[tokio::test]
async fn unknown_paths_and_ids_answer_stripe_shaped_404s() {
    let standin = standin().await;
    let (k, v) = auth();
    let (status, _, body) = raw(&standin, "GET", "/v1/charges", &[(k, v.as_str())], "").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/v1/charges"))
    );
    let (status, _, body) = raw(
        &standin,
        "GET",
        "/v1/customers/cus_missing",
        &[(k, v.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["message"], "No such customer: 'cus_missing'");
    let (status, _, body) = raw(&standin, "GET", "/nothing/here", &[], "").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_and_refuse_other_bodies() {
    let standin = standin().await;
    let (k, v) = auth();
    let headers = [
        (k, v.as_str()),
        ("idempotency-key", "key-1"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let (status, _, first) = raw(
        &standin,
        "POST",
        "/v1/customers",
        &headers,
        "email=a%40example.com&metadata[x]=1",
    )
    .await;
    assert_eq!(status, 200);
    let (status, h, again) = raw(
        &standin,
        "POST",
        "/v1/customers",
        &headers,
        "email=a%40example.com&metadata[x]=1",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again, first);
    assert_eq!(
        h.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let (status, h, other) = raw(
        &standin,
        "POST",
        "/v1/customers",
        &headers,
        "email=b%40example.com",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(other["error"]["type"], "idempotency_error");
    assert_eq!(
        h.get("stripe-should-retry").map(|v| v.as_bytes()),
        Some(&b"false"[..])
    );
    let (_, _, list) = raw(&standin, "GET", "/v1/customers", &[(k, v.as_str())], "").await;
    assert_eq!(
        list["data"].as_array().map(Vec::len),
        Some(1),
        "one customer, not two"
    );
}

#[tokio::test]
async fn recorded_requests_are_readable_over_http_and_bounded() {
    let standin = StripeStandin::start(StandinConfig {
        requests_max: 3,
        ..StandinConfig::default()
    })
    .await
    .expect("starts");
    let (k, v) = auth();
    for i in 0..5 {
        let body = format!("name=p{i}&metadata[n]={i}");
        raw(
            &standin,
            "POST",
            "/v1/products",
            &[(k, v.as_str()), ("idempotency-key", &format!("k{i}"))],
            &body,
        )
        .await;
    }
    let recorded = standin.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].form["name"], "p2");
    let (status, _, body) = raw(&standin, "GET", "/__standin/requests", &[], "").await;
    assert_eq!(status, 200);
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    assert_eq!(data[2]["method"], "POST");
    assert_eq!(data[2]["path"], "/v1/products");
    assert_eq!(data[2]["form"]["metadata"]["n"], "4");
    assert_eq!(data[2]["idempotency_key"], "k4");
    assert!(
        !body.to_string().contains(FAKE_KEY),
        "the API key is not recorded"
    );
    let (_, _, filtered) = raw(&standin, "GET", "/__standin/requests?method=GET", &[], "").await;
    assert_eq!(filtered["data"].as_array().map(Vec::len), Some(0));
    let (_, _, filtered) = raw(
        &standin,
        "GET",
        "/__standin/requests?path=/v1/products",
        &[],
        "",
    )
    .await;
    assert_eq!(filtered["data"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn oversized_bodies_and_malformed_forms_are_refused() {
    let standin = StripeStandin::start(StandinConfig {
        request_body_bytes_max: 64,
        ..StandinConfig::default()
    })
    .await
    .expect("starts");
    let (k, v) = auth();
    let (status, _, body) = raw(
        &standin,
        "POST",
        "/v1/customers",
        &[(k, v.as_str())],
        &"a".repeat(100),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, _, body) = raw(
        &standin,
        "POST",
        "/v1/customers",
        &[(k, v.as_str())],
        "metadata[x=1",
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("metadata[x"))
    );
}

#[tokio::test]
async fn the_checkout_page_pays_from_a_browser_and_redirects_to_success_url() {
    let standin = standin().await;
    let (k, v) = auth();
    let a = [(k, v.as_str())];
    let (_, _, price) = raw(
        &standin,
        "POST",
        "/v1/prices",
        &a,
        "currency=usd&unit_amount=1000&product_data[name]=Pack",
    )
    .await;
    let price = price["id"].as_str().expect("price id").to_owned();
    let body = format!(
        "mode=payment&line_items[0][price]={price}&line_items[0][quantity]=2&customer_creation=always\
         &success_url=http%3A%2F%2F127.0.0.1%3A1%2Fok%3Fs%3D%7BCHECKOUT_SESSION_ID%7D"
    );
    let (status, _, session) = raw(&standin, "POST", "/v1/checkout/sessions", &a, &body).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["amount_total"], 2000);
    let id = session["id"].as_str().expect("id").to_owned();
    let url = session["url"].as_str().expect("url");
    let path = url
        .strip_prefix(&standin.url())
        .expect("the stand-in's own page");
    let (status, _, page) = raw(&standin, "GET", path, &[], "").await;
    assert_eq!(status, 200);
    let page = page.as_str().expect("html");
    assert!(page.contains("Pay 20.00 USD"), "{page}");
    assert!(page.contains(&format!("/__standin/checkout/{id}/complete")));

    let (status, headers, _) = raw(
        &standin,
        "POST",
        &format!("/__standin/checkout/{id}/complete"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "pay=1",
    )
    .await;
    assert_eq!(status, 303);
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("location");
    assert_eq!(location, format!("http://127.0.0.1:1/ok?s={id}"));
    let (_, _, paid) = raw(
        &standin,
        "GET",
        &format!("/v1/checkout/sessions/{id}"),
        &a,
        "",
    )
    .await;
    assert_eq!(paid["payment_status"], "paid");
    assert!(
        paid["customer"]
            .as_str()
            .is_some_and(|c| c.starts_with("cus_")),
        "customer_creation=always"
    );
}

#[tokio::test]
async fn checkout_refuses_what_stripe_refuses() {
    let standin = standin().await;
    let (k, v) = auth();
    let a = [(k, v.as_str())];
    let (_, _, price) = raw(
        &standin,
        "POST",
        "/v1/prices",
        &a,
        "currency=usd&unit_amount=1000&product_data[name]=Pack",
    )
    .await;
    let price = price["id"].as_str().expect("price id").to_owned();
    let (_, _, customer) = raw(
        &standin,
        "POST",
        "/v1/customers",
        &a,
        "email=a%40example.com",
    )
    .await;
    let customer = customer["id"].as_str().expect("customer id").to_owned();
    let cases = [
        (
            format!("mode=payment&line_items[0][price]={price}"),
            "line_items[0][quantity]",
        ),
        (
            format!(
                "mode=payment&line_items[0][price]={price}&line_items[0][quantity]=1&subscription_data[metadata][a]=b"
            ),
            "subscription_data",
        ),
        (
            format!(
                "mode=payment&line_items[0][price]={price}&line_items[0][quantity]=1&customer_update[address]=auto"
            ),
            "customer_update",
        ),
        (
            format!(
                "mode=payment&customer={customer}&line_items[0][price]={price}&line_items[0][quantity]=1&tax_id_collection[enabled]=true&customer_update[address]=auto"
            ),
            "tax_id_collection[enabled]",
        ),
        (
            format!("mode=subscription&line_items[0][price]={price}&line_items[0][quantity]=1"),
            "line_items[0][price]",
        ),
        ("mode=payment".to_owned(), "line_items"),
        (
            format!("line_items[0][price]={price}&line_items[0][quantity]=1"),
            "mode",
        ),
    ];
    for (body, param) in cases {
        let (status, _, answer) = raw(&standin, "POST", "/v1/checkout/sessions", &a, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}: {answer}");
    }
}
