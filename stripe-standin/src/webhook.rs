//! Events and their delivery: Stripe's `event` shape, the `Stripe-Signature` header, and one
//! worker that posts events to the webhook URL in the order they were made.
//!
//! Delivery is one attempt per event (with [`DELIVERY_TIMEOUT`]); a failed delivery is kept on
//! the event and can be repeated with `POST /__standin/events/<id>/resend`, which is also how
//! tests deliver the same event twice.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Uri, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use crate::api::NewEvent;
use crate::fixtures;
use crate::ids::new_id;
use crate::state::{Delivery, SentEvent, State};

/// The Stripe API version async-stripe 1.0.0-rc.10 is generated for
/// (`stripe_shared::version::VERSION`). Its webhook parser only logs a warning on a
/// mismatch, but events carry it so billing-sync sees what real Stripe would send to an
/// endpoint pinned to that version.
pub const API_VERSION: &str = "2026-09-30.endive";

/// How long one delivery may take before it counts as failed.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivery jobs waiting for the worker; senders wait when it is full.
pub const DELIVERY_QUEUE_LEN_MAX: usize = 1024;

/// Where and how events are signed and sent; changeable while running.
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    /// `http://…` endpoint (billing-sync's `/webhooks/stripe`); `None` keeps events unsent.
    pub url: Option<String>,
    /// `whsec_…` signing secret; `None` sends events unsigned.
    pub secret: Option<String>,
}

/// The `Stripe-Signature` header for `payload` signed at unix time `t`:
/// `t=<t>,v1=<hex HMAC-SHA256 of "t.payload">`.
pub fn signature_header(payload: &str, secret: &str, t: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Builds the event JSON for `new` and keeps it in `state` (undelivered yet).
pub(crate) fn create_event(
    state: &mut State,
    now: i64,
    request_id: Option<&str>,
    idempotency_key: Option<&str>,
    new: NewEvent,
) -> String {
    let id = new_id("evt");
    let mut object = new.object;
    if object["object"] == json!("subscription") {
        state.refresh_prices(&mut object);
    }
    let mut data = json!({ "object": object });
    if let Some(previous) = new.previous_attributes {
        data["previous_attributes"] = previous;
    }
    let event = fixtures::build(
        "event",
        json!({
            "id": id,
            "api_version": API_VERSION,
            "created": now,
            "data": data,
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": request_id, "idempotency_key": idempotency_key},
            "type": new.type_,
        }),
    );
    state.keep_event(SentEvent {
        id: id.clone(),
        type_: new.type_,
        event,
        deliveries: Vec::new(),
    });
    id
}

/// A batch of events to deliver in order; `done` gets them back with their deliveries.
pub(crate) struct Job {
    pub event_ids: Vec<String>,
    pub done: Option<oneshot::Sender<Vec<SentEvent>>>,
}

/// Starts the delivery worker; it ends when every sender is dropped.
pub(crate) fn spawn_worker(
    state: Arc<Mutex<State>>,
    config: Arc<Mutex<WebhookConfig>>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(DELIVERY_QUEUE_LEN_MAX);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let mut sent = Vec::with_capacity(job.event_ids.len());
            for id in &job.event_ids {
                let event = lock(&state).events.iter().find(|e| &e.id == id).cloned();
                let Some(mut event) = event else { continue };
                let settings = lock(&config).clone();
                if let Some(url) = settings.url {
                    let delivery =
                        deliver(&client, &url, settings.secret.as_deref(), &event.event).await;
                    if delivery.succeeded() {
                        tracing::info!(event_id = %event.id, event_type = %event.type_, "event delivered");
                    } else {
                        tracing::warn!(
                            event_id = %event.id,
                            event_type = %event.type_,
                            status = ?delivery.status,
                            error = delivery.error.as_deref().unwrap_or(""),
                            "event delivery failed; resend with POST /__standin/events/<id>/resend"
                        );
                    }
                    let mut st = lock(&state);
                    if let Some(stored) = st.event_mut(id) {
                        stored.deliveries.push(delivery);
                        event = stored.clone();
                    }
                }
                sent.push(event);
            }
            if let Some(done) = job.done {
                let _ = done.send(sent);
            }
        }
    });
    tx
}

/// Posts one event, signed with `secret`, and reports how it went.
async fn deliver(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    secret: Option<&str>,
    event: &Value,
) -> Delivery {
    let now = crate::now();
    let failed = |error: String| Delivery {
        at: now,
        url: url.to_owned(),
        status: None,
        error: Some(error),
    };
    let uri: Uri = match url.parse() {
        Ok(uri) => uri,
        Err(e) => return failed(format!("invalid webhook url: {e}")),
    };
    if uri.scheme_str() != Some("http") {
        return failed("the stand-in delivers to http:// URLs only".into());
    }
    let payload = event.to_string();
    let mut request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(
            header::USER_AGENT,
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        );
    if let Some(secret) = secret {
        request = request.header("Stripe-Signature", signature_header(&payload, secret, now));
    }
    let request = match request.body(Full::new(Bytes::from(payload))) {
        Ok(r) => r,
        Err(e) => return failed(format!("could not build the request: {e}")),
    };
    match tokio::time::timeout(DELIVERY_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) => Delivery {
            at: now,
            url: url.to_owned(),
            status: Some(response.status().as_u16()),
            error: None,
        },
        Ok(Err(e)) => failed(format!("delivery failed: {e}")),
        Err(_) => failed(format!("no answer within {}s", DELIVERY_TIMEOUT.as_secs())),
    }
}

/// Locks a mutex, carrying on after a panic elsewhere (the state stays usable for tests).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_payload() {
        // Reference: `echo -n '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test`.
        let header = signature_header("{}", "whsec_test", 1_700_000_000);
        assert_eq!(
            header,
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }
}
