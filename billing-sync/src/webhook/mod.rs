//! Stripe webhooks: `POST /webhooks/stripe`. The signature is checked against every
//! configured secret (rotation) with a 5-minute tolerance; the raw event is stored by id
//! before any effect; then it is applied once, in one transaction that also marks it
//! processed. A duplicate delivery changes nothing. A failure leaves the stored event
//! `failed`; [`retry_unfinished`] applies it later. Effects never depend on arrival order:
//! handlers re-read the subscription from Stripe and apply its current state.
//!
//! One file per event family; this module only verifies, stores and dispatches.

pub mod checkout_completed;
pub mod grace;
pub mod invoice;
pub mod plan;
pub mod subscription;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};
use tokio::sync::OwnedRwLockReadGuard;

use crate::State;
use crate::stripe::signature::{self, VerifiedEvent};
use plan::Effects;

/// Largest webhook body accepted (Stripe's events are far smaller).
pub const WEBHOOK_BODY_BYTES_MAX: usize = 512 * 1024;
/// Attempts at applying a stored event before it is left `failed` for an operator.
pub const EVENT_ATTEMPTS_MAX: i32 = 20;
/// Unfinished events retried per pass of [`retry_unfinished`].
const RETRY_BATCH_LEN_MAX: i64 = 50;

/// Metric: events by type and result (`processed`, `duplicate`, `failed`, `rejected`).
pub const METRIC_EVENTS: &str = "creditgate_stripe_events_total";
/// Metric: stored events not yet applied, by status (`pending`, `failed`).
pub const METRIC_UNFINISHED: &str = "creditgate_stripe_events_unfinished";

/// A stored event as the handlers read it.
#[derive(Clone, Debug)]
pub struct Event {
    /// `evt_…`.
    pub id: String,
    /// Its type.
    pub type_: String,
    /// Stripe's creation time (Unix seconds).
    pub created: i64,
    /// `data.object`.
    pub object: Value,
}

/// Why an event could not be applied now (it stays stored and is retried).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Postgres.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Stripe (re-reading an object).
    #[error("stripe: {0}")]
    Stripe(String),
    /// Redis (projection).
    #[error("redis: {0}")]
    Store(#[from] shared::redis::StoreError),
    /// Stripe is not configured on this instance.
    #[error("stripe is not configured (STRIPE_SECRET_KEY)")]
    NotConfigured,
}

impl From<::stripe::StripeError> for ProcessError {
    fn from(e: ::stripe::StripeError) -> Self {
        ProcessError::Stripe(crate::stripe::short(&e))
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `POST /webhooks/stripe`.
pub async fn receive(AxState(state): AxState<State>, headers: HeaderMap, body: Bytes) -> Response {
    let reject = |code: &str, message: String| {
        metrics::counter!(METRIC_EVENTS, "type" => "unknown", "result" => "rejected").increment(1);
        reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": code, "message": message}}),
        )
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return reject("malformed_event", "the body is not UTF-8".into());
    };
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let event =
        match signature::verify(text, header, &state.webhook_secrets, Utc::now().timestamp()) {
            Ok(event) => event,
            Err(rejection) => return reject(rejection.code(), rejection.to_string()),
        };
    match record(&state, &event).await {
        Ok(_) => {}
        Err(e) => {
            // Not stored: let Stripe deliver it again.
            tracing::error!(event_id = %event.id, error = %e, "could not store a stripe event");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": {"code": "unavailable", "message": "the event could not be stored; it will be retried"}}),
            );
        }
    }
    let outcome = process(&state, &event.id).await;
    let result = match &outcome {
        Ok(true) => "processed",
        Ok(false) => "duplicate",
        Err(_) => "failed",
    };
    metrics::counter!(METRIC_EVENTS, "type" => event.type_.clone(), "result" => result)
        .increment(1);
    if let Err(e) = &outcome {
        tracing::warn!(event_id = %event.id, event_type = %event.type_, error = %e, "stripe event failed; stored for retry");
    }
    reply(
        StatusCode::OK,
        json!({"received": true, "id": event.id, "result": result}),
    )
}

/// Stores a verified event once (`pending`); `false` if it was stored before.
async fn record(state: &State, event: &VerifiedEvent) -> Result<bool, sqlx::Error> {
    let payload: Value = serde_json::from_str(&event.raw).unwrap_or(Value::Null);
    let inserted = sqlx::query(
        "INSERT INTO stripe_events (event_id, type, created, payload, status, processed_at)
         VALUES ($1, $2, $3, $4, 'pending', NULL) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.type_)
    .bind(event.created)
    .bind(payload)
    .execute(&state.db)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Applies a stored event unless it was applied before; `Ok(false)` for a duplicate.
/// On failure the event is marked `failed` with the reason and its attempt counted.
pub async fn process(state: &State, event_id: &str) -> Result<bool, ProcessError> {
    let row: Option<(String, Option<i64>, Option<Value>, String)> = sqlx::query_as(
        "SELECT type, created, payload, status FROM stripe_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(&state.db)
    .await?;
    let Some((type_, created, payload, status)) = row else {
        return Ok(false);
    };
    if status == "processed" {
        return Ok(false);
    }
    let event = Event {
        id: event_id.to_owned(),
        type_,
        created: created.unwrap_or(0),
        object: payload
            .map(|p| p["data"]["object"].clone())
            .unwrap_or(Value::Null),
    };
    let applied = dispatch(state, &event).await;
    match applied {
        Ok(Some(mut effects)) => {
            // The handler's projection lock is held until Redis has the effects, then
            // released before the expiry sweep, which takes it itself.
            effects.write_projection(state).await?;
            drop(effects.projection.take());
            effects.expire(state).await?;
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) => {
            sqlx::query(
                "UPDATE stripe_events SET status = 'failed', attempts = attempts + 1, last_error = $2
                 WHERE event_id = $1 AND status <> 'processed'",
            )
            .bind(event_id)
            .bind(e.to_string())
            .execute(&state.db)
            .await?;
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
        // Recorded (the raw event is stored) and acknowledged; nothing to apply.
        _ => {
            let Some(tx) = begin(state, &event.id).await? else {
                return Ok(None);
            };
            finish(tx, &event.id).await?;
            Ok(Some(Effects::none()))
        }
    }
}

/// The transaction applying one event, with the projection lock (read) taken before it
/// opened: held from before the commit until Redis has the effects, so a rebuild never
/// counts a change twice. Taken only after the handler's Stripe reads, so a slow Stripe
/// never holds a rebuild up. Derefs to the transaction.
pub struct Applying {
    tx: Transaction<'static, Postgres>,
    projection: OwnedRwLockReadGuard<()>,
}

impl std::ops::Deref for Applying {
    type Target = Transaction<'static, Postgres>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for Applying {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// Opens the transaction that applies `event_id`, holding its row; `None` if it was
/// applied meanwhile (a concurrent duplicate delivery).
pub async fn begin(state: &State, event_id: &str) -> Result<Option<Applying>, sqlx::Error> {
    let projection = state.projection.clone().read_owned().await;
    let mut tx = state.db.begin().await?;
    let status: Option<(String,)> =
        sqlx::query_as("SELECT status FROM stripe_events WHERE event_id = $1 FOR UPDATE")
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await?;
    match status {
        Some((s,)) if s != "processed" => Ok(Some(Applying { tx, projection })),
        _ => Ok(None),
    }
}

/// Marks `event_id` processed and commits everything the handler wrote with it; returns
/// the projection lock, to keep until the effects are in Redis.
pub async fn finish(
    applying: Applying,
    event_id: &str,
) -> Result<OwnedRwLockReadGuard<()>, sqlx::Error> {
    let Applying { mut tx, projection } = applying;
    sqlx::query(
        "UPDATE stripe_events SET status = 'processed', processed_at = now(), attempts = attempts + 1, last_error = NULL
         WHERE event_id = $1",
    )
    .bind(event_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(projection)
}

/// Applies stored events that are not processed yet (oldest first), skipping ones that
/// failed [`EVENT_ATTEMPTS_MAX`] times; updates the unfinished-events metric.
pub async fn retry_unfinished(state: &State) -> Result<usize, sqlx::Error> {
    let due: Vec<(String,)> = sqlx::query_as(
        "SELECT event_id FROM stripe_events
         WHERE status <> 'processed' AND attempts < $1 AND received_at < now() - interval '2 seconds'
         ORDER BY created NULLS FIRST LIMIT $2",
    )
    .bind(EVENT_ATTEMPTS_MAX)
    .bind(RETRY_BATCH_LEN_MAX)
    .fetch_all(&state.db)
    .await?;
    let mut applied = 0;
    for (id,) in due {
        match process(state, &id).await {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(event_id = %id, error = %e, "stripe event retry failed"),
        }
    }
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM stripe_events WHERE status <> 'processed' GROUP BY status",
    )
    .fetch_all(&state.db)
    .await?;
    for status in ["pending", "failed"] {
        let n = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(METRIC_UNFINISHED, "status" => status).set(n as f64);
    }
    Ok(applied)
}

/// How often stored events are retried and grace periods checked.
const BACKGROUND_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The Stripe side's background work until `stop`: at start, the catalog sync and the
/// portal configuration (retried until Stripe answers); then, every few seconds, stored
/// events not yet applied and customers whose grace period is over.
pub async fn run_background(state: State, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut catalog_synced = state.stripe.is_none();
    let mut tick = tokio::time::interval(BACKGROUND_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !catalog_synced && let Some(stripe) = &state.stripe {
            match crate::stripe::catalog::sync(stripe, &state.policy()).await {
                Ok(report) => {
                    match crate::stripe::portal::ensure_configuration(
                        stripe,
                        &state.policy(),
                        &report.prices,
                    )
                    .await
                    {
                        Ok(id) => {
                            let _ = state.portal_configuration.set(id);
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::stripe::short(&e), "portal configuration not made")
                        }
                    }
                    tracing::info!(
                        prices = report.prices.len(),
                        created = report.prices_created.len(),
                        "stripe catalog in sync"
                    );
                    catalog_synced = true;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::stripe::short(&e), "stripe catalog sync failed; retrying")
                }
            }
        }
        if let Err(e) = retry_unfinished(&state).await {
            tracing::warn!(error = %e, "stripe event retry pass failed");
        }
        if let Err(e) = grace::drop_overdue(&state, Utc::now()).await {
            tracing::warn!(error = %e, "grace period pass failed");
        }
    }
}

/// A stored event not yet applied: id, type, created, status, attempts, last error, received.
type UnfinishedRow = (
    String,
    String,
    Option<i64>,
    String,
    i32,
    Option<String>,
    chrono::DateTime<Utc>,
);

/// `GET /admin/v1/stripe/events?status=failed|pending`: stored events not yet applied.
pub async fn list_unfinished(state: &State, status: Option<&str>) -> Result<Value, sqlx::Error> {
    let rows: Vec<UnfinishedRow> = sqlx::query_as(
        "SELECT event_id, type, created, status, attempts, last_error, received_at FROM stripe_events
         WHERE status <> 'processed' AND ($1::text IS NULL OR status = $1)
         ORDER BY received_at DESC LIMIT 100",
    )
    .bind(status)
    .fetch_all(&state.db)
    .await?;
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(id, type_, created, status, attempts, last_error, received_at)| {
            json!({"id": id, "type": type_, "created": created, "status": status, "attempts": attempts,
                   "last_error": last_error, "received_at": received_at})
        })
        .collect();
    Ok(json!({ "data": data }))
}
