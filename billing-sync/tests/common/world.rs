//! A harness with a Stripe stand-in whose signed webhooks reach the app over HTTP, as
//! Stripe's would.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use billing_sync::clock::Clock;
use billing_sync::stripe::Stripe;
use serde_json::Value;
use shared::CustomerId;
use sqlx::PgPool;
use stripe_standin::{CheckoutOutcome, StandinConfig, StandinHandle, StripeStandin};

use super::Harness;

pub const SECRET: &str = "whsec_test_current_secret_for_tests";
pub const OLD_SECRET: &str = "whsec_test_previous_secret_for_tests";

/// The harness plus a stand-in whose webhooks reach the app over HTTP.
pub struct World {
    /// The app, its state and its Redis.
    pub h: Harness,
    /// The Stripe stand-in.
    pub standin: StandinHandle,
}

impl World {
    pub async fn start(db: PgPool, deliver: bool) -> World {
        Self::start_with_clock(db, deliver, Clock::system()).await
    }

    /// Same, with billing-sync reading the time from `clock`.
    pub async fn start_with_clock(db: PgPool, deliver: bool, clock: Clock) -> World {
        let mut h = Harness::start(db).await;
        h.state = h.state.clone().with_clock(clock);
        let standin = StripeStandin::start(StandinConfig {
            webhook_secret: Some(SECRET.to_owned()),
            ..StandinConfig::default()
        })
        .await
        .expect("stand-in starts");
        let stripe =
            Stripe::new("sk_test_standin_fake", Some(&standin.url()), false).expect("test key");
        h.state = h
            .state
            .clone()
            .with_stripe(Some(stripe), &format!("{OLD_SECRET},{SECRET}"));
        h.app = billing_sync::api::app(h.state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        let app = h.app.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        if deliver {
            standin.set_webhook_url(format!("http://{addr}/webhooks/stripe"));
        }
        let stripe = h.state.stripe.clone().expect("configured");
        // What `serve` does at start: the catalog, then the portal configuration.
        let report = billing_sync::stripe::catalog::sync(&stripe, &h.state.policy())
            .await
            .expect("catalog syncs");
        billing_sync::stripe::portal::ensure_configuration(
            &stripe,
            &h.state.policy(),
            &report.prices,
        )
        .await
        .expect("portal configuration");
        World { h, standin }
    }

    pub async fn customer_with_key(&self, external_id: &str) -> (CustomerId, String) {
        let c = self.h.customer(external_id).await;
        let (_, key) = self.h.api_key(&c).await;
        (c, key)
    }

    /// Starts a Checkout for `key` with `body` and pays it on the stand-in.
    pub async fn pay(&self, key: &str, body: Value) -> CheckoutOutcome {
        let session = self.checkout(key, body).await;
        self.standin
            .complete_checkout(&session)
            .await
            .expect("checkout completes")
    }

    /// Starts a Checkout and returns the session id.
    pub async fn checkout(&self, key: &str, body: Value) -> String {
        let auth = format!("Bearer {key}");
        let (status, reply) = self
            .h
            .call(
                Method::POST,
                "/v1/checkout",
                &[("authorization", &auth)],
                Some(&body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        let url = reply["url"].as_str().expect("url");
        url.trim_end_matches('/')
            .rsplit('/')
            .next()
            .expect("session id in the url")
            .to_owned()
    }

    pub async fn customer_row(&self, c: &CustomerId) -> (String, String, Option<String>) {
        sqlx::query_as("SELECT plan, status, stripe_subscription_id FROM customers WHERE id = $1")
            .bind(c.as_str())
            .fetch_one(&self.h.state.db)
            .await
            .expect("customer")
    }

    pub async fn post_webhook(
        &self,
        payload: &str,
        signature: Option<String>,
    ) -> (StatusCode, Value) {
        let mut headers = vec![];
        if let Some(sig) = &signature {
            headers.push(("stripe-signature", sig.as_str()));
        }
        self.h
            .call_raw(
                Method::POST,
                "/webhooks/stripe",
                &headers,
                Some(payload.to_owned()),
            )
            .await
    }

    pub async fn stored_events(&self) -> i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM stripe_events")
            .fetch_one(&self.h.state.db)
            .await
            .expect("count");
        n
    }
}

/// Waits up to 10 s for `check` to hold.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
