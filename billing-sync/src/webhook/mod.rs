//! Stripe webhooks: `POST /webhooks/stripe`. The signature is checked against every
//! configured secret (rotation) with a 5-minute tolerance; the raw event is stored by id
//! before any effect; then it is applied once, in one transaction that also marks it
//! processed. A duplicate delivery changes nothing. A failure leaves the stored event
//! `failed`, retried with backoff for at least three days ([`retry`]) and by hand. Effects
//! never depend on arrival order: handlers re-read the subscription from Stripe and apply
//! its current state.
//!
//! This module only verifies, records and dispatches; adding an event type is one arm in
//! [`dispatch`] and one file. Layout:
//! - [`protocol`]: how a handler applies an event once (`begin`, `finish`, `Applying`).
//! - [`retry`]: the backoff schedule and the pass that retries due events.
//! - [`stored`]: stored events as the admin API lists them.
//! - [`background`]: the loop running retries and grace periods.
//! - one file per event family: [`checkout_completed`], [`subscription`], [`invoice`],
//!   [`charge`]; [`plan`] (plan changes shared by them), [`grace`] (the grace period after a
//!   failed payment).

pub mod background;
pub mod charge;
pub mod checkout_completed;
pub mod grace;
pub mod invoice;
pub mod plan;
pub mod protocol;
pub mod retry;
pub mod stored;
pub mod subscription;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use crate::State;
use crate::api::error::ApiError;
use crate::stripe::signature::{self, VerifiedEvent};
use plan::Effects;

pub use background::run_background;
pub use protocol::{Applying, Event, ProcessError, begin, finish};

/// Largest webhook body accepted (Stripe's events are far smaller); a larger one is refused
/// with 413 before it is read further.
pub const WEBHOOK_BODY_BYTES_MAX: usize = 512 * 1024;

/// Metric: events by `type` and `outcome` (`processed`, `duplicate`, `failed`, `rejected`).
pub const METRIC_EVENTS: &str = "creditgate_stripe_events_total";

/// `POST /webhooks/stripe`: verify, record, process. A refusal is a 400 (or 413) and stores
/// nothing; an event that cannot be stored is a 503, so Stripe delivers it again; a stored
/// one is a 200 whether or not it could be applied yet (the retries are ours now).
pub async fn receive(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let event = verify(&state, &headers, body).inspect_err(|_| {
        metrics::counter!(METRIC_EVENTS, "type" => "unknown", "outcome" => "rejected").increment(1);
    })?;
    if let Err(e) = record(&state, &event).await {
        // Not stored: let Stripe deliver it again.
        tracing::error!(event_id = %event.id(), error = %e, "could not store a stripe event");
        return Err(ApiError::Unavailable(format!(
            "stripe event not stored: {e}"
        )));
    }
    let outcome = process(&state, event.id()).await;
    let result = match &outcome {
        Ok(true) => "processed",
        Ok(false) => "duplicate",
        Err(_) => "failed",
    };
    metrics::counter!(METRIC_EVENTS, "type" => event.type_().to_owned(), "outcome" => result)
        .increment(1);
    if let Err(e) = &outcome {
        tracing::warn!(event_id = %event.id(), event_type = %event.type_(), error = %e, "stripe event failed; stored for retry");
    }
    Ok((
        StatusCode::OK,
        axum::Json(json!({"received": true, "id": event.id(), "result": result})),
    )
        .into_response())
}

/// The body as a verified event, or the refusal. The signature's tolerance is checked
/// against the wall clock: it is Stripe's clock, not one a test moves.
fn verify(
    state: &State,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<VerifiedEvent, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(WEBHOOK_BODY_BYTES_MAX)
        } else {
            ApiError::bad("malformed_event", "the body could not be read")
        }
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad("malformed_event", "the body is not UTF-8"))?;
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    Ok(signature::verify(
        text,
        header,
        &state.webhook_secrets,
        Utc::now().timestamp(),
    )?)
}

/// Stores a verified event once (`pending`, first retry due after
/// [`retry::EVENT_RETRY_DELAY_MIN`] in case this process dies applying it); `false` if it
/// was stored before.
async fn record(state: &State, event: &VerifiedEvent) -> Result<bool, sqlx::Error> {
    // `verify` parsed the body, so this is never Null in practice.
    let payload: Value = serde_json::from_str(event.raw()).unwrap_or(Value::Null);
    let now = state.now();
    let inserted = sqlx::query(
        "INSERT INTO stripe_events
             (event_id, type, created, payload, status, processed_at, received_at, next_attempt_at)
         VALUES ($1, $2, $3, $4, 'pending', NULL, $5, $6) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.id())
    .bind(event.type_())
    .bind(event.created())
    .bind(payload)
    .bind(now)
    .bind(now + retry::EVENT_RETRY_DELAY_MIN)
    .execute(&state.db)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Applies a stored event unless it was applied before; `Ok(false)` for a duplicate (or an
/// unknown id). On failure the attempt is counted with its reason and the next one
/// scheduled ([`retry::record_failure`]).
pub async fn process(state: &State, event_id: &str) -> Result<bool, ProcessError> {
    let Some(event) = protocol::load(&state.db, event_id).await? else {
        return Ok(false);
    };
    match dispatch(state, &event).await {
        Ok(Some(effects)) => {
            protocol::settle(state, effects).await?;
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) => {
            retry::record_failure(&state.db, event_id, &e.to_string(), state.now()).await?;
            Err(e)
        }
    }
}

/// Only matches the type to its handler. `Ok(None)`: already applied by someone else.
async fn dispatch(state: &State, event: &Event) -> Result<Option<Effects>, ProcessError> {
    match event.type_.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            checkout_completed::handle(state, event).await
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => subscription::handle(state, event).await,
        "invoice.paid" => invoice::paid(state, event).await,
        "invoice.payment_failed" => invoice::payment_failed(state, event).await,
        "invoice.upcoming" => invoice::upcoming(state, event).await,
        "charge.refunded" | "charge.dispute.created" => charge::handle(state, event).await,
        // Recorded (the raw event is stored) and acknowledged; nothing to apply.
        _ => protocol::acknowledge(state, event).await,
    }
}
