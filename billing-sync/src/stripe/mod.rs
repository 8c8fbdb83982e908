//! Stripe: every call goes through [`Stripe`] (async-stripe 1.0, rustls), with retries and
//! idempotency keys. Layout:
//! - [`catalog`]: the policy's plans and packs as Products and Prices, found by `lookup_key`.
//! - [`customers`]: lazy creation of a customer's Stripe Customer; tax exemption.
//! - [`checkout`]: Checkout Sessions for subscriptions and credit packs.
//! - [`portal`]: the Customer Portal configuration and sessions.
//! - [`invoices`]: a customer's invoices, with tax.
//! - [`signature`]: webhook signature checks; the only maker of [`signature::VerifiedEvent`].

pub mod catalog;
pub mod checkout;
pub mod customers;
pub mod invoices;
pub mod portal;
pub mod signature;

use std::time::Duration;

use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};

/// Attempts per Stripe call (the first and the retries), all with one idempotency key.
const STRIPE_ATTEMPTS_MAX: u32 = 4;
/// First retry delay; doubled each time.
const STRIPE_RETRY_DELAY_MIN: Duration = Duration::from_millis(200);
/// Time one Stripe call may take.
const STRIPE_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why Stripe could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum StripeConfigError {
    /// A live key outside production.
    #[error("STRIPE_SECRET_KEY is a live key (sk_live_…); set CREDITGATE_ENV=production to use it")]
    LiveKeyOutsideProduction,
    /// Not a Stripe secret key.
    #[error("STRIPE_SECRET_KEY must start with sk_test_, sk_live_ or rk_")]
    MalformedKey,
    /// The client could not be built.
    #[error("stripe client: {0}")]
    Client(String),
}

/// The Stripe handle: cheap to clone (the client shares its connections).
#[derive(Clone)]
pub struct Stripe {
    client: Client,
}

/// How a call is made idempotent.
pub enum Key<'a> {
    /// A read: no key.
    Read,
    /// A write with a key derived from what it does (`cg-customer-<id>`), so a retry from
    /// anywhere, even after a crash, has the same effect once.
    Stable(&'a str),
    /// A write whose retries share one fresh random key.
    Fresh,
}

impl Stripe {
    /// Builds the client from `STRIPE_SECRET_KEY` and, for the stand-in, `STRIPE_API_BASE`.
    /// A live key is refused unless `production` (`CREDITGATE_ENV=production`).
    pub fn new(
        secret_key: &str,
        api_base: Option<&str>,
        production: bool,
    ) -> Result<Stripe, StripeConfigError> {
        if secret_key.starts_with("sk_live_") || secret_key.starts_with("rk_live_") {
            if !production {
                return Err(StripeConfigError::LiveKeyOutsideProduction);
            }
        } else if !(secret_key.starts_with("sk_test_") || secret_key.starts_with("rk_test_")) {
            return Err(StripeConfigError::MalformedKey);
        }
        let mut builder = ClientBuilder::new(secret_key);
        if let Some(base) = api_base.filter(|b| !b.is_empty()) {
            // async-stripe joins paths onto the base: it must end with '/'.
            let base = if base.ends_with('/') {
                base.to_owned()
            } else {
                format!("{base}/")
            };
            builder = builder.url(base);
        }
        let client = builder
            .build()
            .map_err(|e| StripeConfigError::Client(e.to_string()))?;
        Ok(Stripe { client })
    }

    /// From the environment: `STRIPE_SECRET_KEY` (none: `Ok(None)`, Stripe features answer
    /// 503 `stripe_not_configured`), `STRIPE_API_BASE`, `CREDITGATE_ENV`.
    pub fn from_env() -> Result<Option<Stripe>, StripeConfigError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let Some(key) = var("STRIPE_SECRET_KEY") else {
            return Ok(None);
        };
        let production = var("CREDITGATE_ENV").is_some_and(|e| e == "production");
        Stripe::new(key.trim(), var("STRIPE_API_BASE").as_deref(), production).map(Some)
    }

    /// Sends `request`, retrying transport failures, 409 (a concurrent request with the same
    /// key), 429 and 5xx with exponential backoff, every attempt with the same key.
    pub async fn call<R>(&self, request: &R, key: Key<'_>) -> Result<R::Output, StripeError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let fresh = uuid::Uuid::new_v4().to_string();
        let key = match key {
            Key::Read => None,
            Key::Stable(k) => Some(k.to_owned()),
            Key::Fresh => Some(fresh),
        };
        let mut delay = STRIPE_RETRY_DELAY_MIN;
        let mut attempt = 1;
        loop {
            let strategy = match &key {
                Some(k) => RequestStrategy::Idempotent(
                    IdempotencyKey::new(k)
                        .map_err(|e| StripeError::ConfigError(format!("idempotency key: {e}")))?,
                ),
                None => RequestStrategy::Once,
            };
            let sent = request
                .customize()
                .request_strategy(strategy)
                .timeout(STRIPE_CALL_TIMEOUT)
                .send(&self.client)
                .await;
            match sent {
                Err(e) if attempt < STRIPE_ATTEMPTS_MAX && retryable(&e) => {
                    tracing::warn!(attempt, error = %short(&e), "stripe call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

fn retryable(e: &StripeError) -> bool {
    match e {
        StripeError::ClientError(_) | StripeError::Timeout => true,
        StripeError::Stripe(_, status) => *status == 409 || *status == 429 || *status >= 500,
        StripeError::JSONDeserialize(_) | StripeError::ConfigError(_) => false,
    }
}

/// A one-line description of a Stripe error for logs and API errors (Stripe's own message,
/// never the request or the key).
pub fn short(e: &StripeError) -> String {
    match e {
        StripeError::Stripe(errors, status) => {
            format!(
                "stripe answered {status}: {}",
                errors.message.as_deref().unwrap_or("no message")
            )
        }
        other => other.to_string(),
    }
}

/// Hex SHA-256 of `text`, for idempotency keys and fingerprints derived from longer input
/// (Stripe caps keys at 255 characters).
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Whether Stripe answered 404 (no such object).
pub fn is_not_found(e: &StripeError) -> bool {
    matches!(e, StripeError::Stripe(_, 404))
}
