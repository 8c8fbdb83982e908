//! A Stripe stand-in for creditgate's tests and offline demo.
//!
//! No machine here reaches Stripe, so billing-sync's async-stripe client is pointed (through
//! `STRIPE_API_BASE`) at this in-memory server. It answers the API paths billing-sync uses
//! with bodies built from Stripe's own example objects, records every request for
//! assertions, and sends correctly signed webhook events when a test (or a browser) "pays".
//!
//! Layout:
//! - `server`: accept loop, body limit, API key check, idempotency, recording.
//! - `api/`: one file per Stripe resource (customers, products, prices, checkout, portal,
//!   subscriptions, invoices, events); `api/mod.rs` only routes.
//! - `control`: the `/__standin/…` test endpoints and the hosted-page stand-ins.
//! - [`webhook`]: event shape, `Stripe-Signature`, the in-order delivery worker.
//! - [`form`]: Stripe's bracket form encoding into nested JSON.
//! - `state`, `fixtures`, `params`, `ids`: the in-memory account and its helpers.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use stripe_standin::{StandinConfig, StripeStandin};
//! let standin = StripeStandin::start(StandinConfig::default()).await?;
//! let client = format!("point async-stripe at {}", standin.url()); // "http://127.0.0.1:PORT/"
//! # let _ = client; Ok(()) }
//! ```

#![recursion_limit = "256"]
#![warn(missing_docs)]

mod api;
mod control;
pub mod error;
mod fixtures;
pub mod form;
mod ids;
mod params;
mod server;
mod state;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use control::{CheckoutOutcome, SubscriptionOutcome};
pub use error::ApiError;
pub use state::{Delivery, RecordedRequest, SentEvent};
pub use webhook::{API_VERSION, WebhookConfig, signature_header};

use server::Inner;
use webhook::lock;

/// Recorded requests kept by default; the oldest are dropped first.
pub const DEFAULT_REQUESTS_MAX: usize = 10_000;

/// Largest request body accepted by default (1 MiB); larger ones get a 413.
pub const DEFAULT_REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Automatic tax charged by default: 10 % of the subtotal, exclusive.
pub const DEFAULT_TAX_RATE_BPS: i64 = 1_000;

/// How a stand-in starts.
#[derive(Debug, Clone)]
pub struct StandinConfig {
    /// Where events are posted (billing-sync's `/webhooks/stripe`); `None` keeps them unsent
    /// until [`StandinHandle::set_webhook_url`].
    pub webhook_url: Option<String>,
    /// `whsec_…` secret events are signed with; the first one when comma-separated.
    pub webhook_secret: Option<String>,
    /// Base URL put in Checkout/portal/invoice `url`s; defaults to `http://<bound address>/`.
    pub public_url: Option<String>,
    /// Automatic tax rate in basis points of the subtotal.
    pub tax_rate_bps: i64,
    /// Recorded requests kept.
    pub requests_max: usize,
    /// Largest request body accepted, in bytes.
    pub request_body_bytes_max: usize,
}

impl Default for StandinConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: None,
            public_url: None,
            tax_rate_bps: DEFAULT_TAX_RATE_BPS,
            requests_max: DEFAULT_REQUESTS_MAX,
            request_body_bytes_max: DEFAULT_REQUEST_BODY_BYTES_MAX,
        }
    }
}

/// Starts stand-ins.
pub struct StripeStandin;

impl StripeStandin {
    /// Starts a stand-in on `127.0.0.1:0` (a free port).
    pub async fn start(config: StandinConfig) -> std::io::Result<StandinHandle> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a stand-in on `addr`.
    pub async fn start_on(
        addr: SocketAddr,
        config: StandinConfig,
    ) -> std::io::Result<StandinHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut base_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}/"));
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        let state = Arc::new(Mutex::new(state::State::default()));
        let webhook = Arc::new(Mutex::new(WebhookConfig {
            url: config.webhook_url.clone(),
            secret: config.webhook_secret.as_deref().map(first_secret),
        }));
        let deliveries = webhook::spawn_worker(state.clone(), webhook.clone());
        let inner = Arc::new(Inner {
            state,
            webhook,
            deliveries,
            base_url,
            requests_max: config.requests_max.max(1),
            request_body_bytes_max: config.request_body_bytes_max,
            tax_rate_bps: config.tax_rate_bps,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, inner.clone(), shutdown_rx));
        Ok(StandinHandle {
            inner,
            addr,
            shutdown,
            task: Some(task),
        })
    }
}

/// A running stand-in; dropping it stops accepting connections.
pub struct StandinHandle {
    inner: Arc<Inner>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl StandinHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base for async-stripe's `ClientBuilder::url`, with the trailing `/` it needs:
    /// `http://127.0.0.1:PORT/` (the public URL when one was configured).
    pub fn url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// Every `/v1/…` request so far (bounded by `requests_max`), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.state).requests.iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.inner.state).requests.clear();
    }

    /// Every event made so far, with its deliveries, oldest first.
    pub fn events(&self) -> Vec<SentEvent> {
        lock(&self.inner.state).events.iter().cloned().collect()
    }

    /// Any stored object by id (`cus_…`, `sub_…`, `in_…`), as the API would show it.
    pub fn object(&self, id: &str) -> Option<Value> {
        lock(&self.inner.state).get(id).cloned()
    }

    /// Sets where events are posted from now on.
    pub fn set_webhook_url(&self, url: impl Into<String>) {
        lock(&self.inner.webhook).url = Some(url.into());
    }

    /// Sets the signing secret (the first of a comma-separated list).
    pub fn set_webhook_secret(&self, secret: &str) {
        lock(&self.inner.webhook).secret = Some(first_secret(secret));
    }

    /// Pays a Checkout Session as a customer would and sends, in order,
    /// `checkout.session.completed`, then for subscriptions `customer.subscription.created`
    /// and `invoice.paid`; returns after each delivery was tried.
    pub async fn complete_checkout(&self, session_id: &str) -> Result<CheckoutOutcome, ApiError> {
        control::complete_checkout(&self.inner, session_id).await
    }

    /// Sends an event of `type_` with `object` as `data.object`.
    pub async fn send_event(&self, type_: &str, object: Value) -> Result<SentEvent, ApiError> {
        control::send_event(&self.inner, type_, object, None).await
    }

    /// Sends an `*.updated` event with `previous_attributes`.
    pub async fn send_event_with_previous(
        &self,
        type_: &str,
        object: Value,
        previous_attributes: Value,
    ) -> Result<SentEvent, ApiError> {
        control::send_event(&self.inner, type_, object, Some(previous_attributes)).await
    }

    /// Delivers a stored event again (a duplicate delivery, as Stripe may make).
    pub async fn resend_event(&self, event_id: &str) -> Result<SentEvent, ApiError> {
        control::resend_event(&self.inner, event_id).await
    }

    /// A renewal whose payment fails: `invoice.payment_failed`, then
    /// `customer.subscription.updated` with status `past_due`.
    pub async fn fail_payment(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionOutcome, ApiError> {
        control::subscription_action(
            &self.inner,
            subscription_id,
            api::subscriptions::fail_payment,
        )
        .await
    }

    /// A successful renewal: `customer.subscription.updated`, then `invoice.paid`.
    pub async fn renew_subscription(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionOutcome, ApiError> {
        control::subscription_action(&self.inner, subscription_id, api::subscriptions::renew).await
    }

    /// The latest open invoice is paid after all (a late payment): `invoice.paid`, then
    /// `customer.subscription.updated` back to `active`.
    pub async fn pay_open_invoice(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionOutcome, ApiError> {
        control::subscription_action(
            &self.inner,
            subscription_id,
            api::subscriptions::pay_open_invoice,
        )
        .await
    }

    /// A renewal notice: `invoice.upcoming` with the next period's draft invoice.
    pub async fn upcoming_invoice(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionOutcome, ApiError> {
        control::subscription_action(&self.inner, subscription_id, api::subscriptions::upcoming)
            .await
    }

    /// The portal's "cancel at period end": `customer.subscription.updated`; the next
    /// [`renew_subscription`](Self::renew_subscription) then ends it
    /// (`customer.subscription.deleted`).
    pub async fn cancel_at_period_end(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionOutcome, ApiError> {
        control::subscription_action(&self.inner, subscription_id, |state, ctx, id| {
            api::subscriptions::portal_cancel_at_period_end(state, ctx, id, true)
        })
        .await
    }

    /// The portal's plan switch to `price_id`, following the newest active portal
    /// configuration: upgrades now (invoiced at once with `always_invoice`), changes its
    /// `schedule_at_period_end` conditions name at the next renewal.
    pub async fn switch_price(
        &self,
        subscription_id: &str,
        price_id: &str,
    ) -> Result<SubscriptionOutcome, ApiError> {
        control::subscription_action(&self.inner, subscription_id, |state, ctx, id| {
            api::subscriptions::portal_switch(state, ctx, id, price_id)
        })
        .await
    }

    /// Cancels a subscription now: `customer.subscription.deleted`.
    pub async fn cancel_subscription(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionOutcome, ApiError> {
        control::cancel_subscription(&self.inner, subscription_id).await
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for StandinHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The secret to sign with: the first of a comma-separated list (`STRIPE_WEBHOOK_SECRET`
/// lists several during rotation), trimmed.
pub fn first_secret(secrets: &str) -> String {
    secrets.split(',').next().unwrap_or("").trim().to_owned()
}

/// Unix time now, in seconds.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
