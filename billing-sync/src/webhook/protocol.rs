//! The protocol every event handler follows to apply a stored event exactly once:
//!
//! 1. [`load`] the stored event (`None` once it is processed);
//! 2. the handler reads what it needs from Stripe, outside any lock;
//! 3. [`begin`]: the projection lock (read), then the event's row locked; `None` if it was
//!    applied meanwhile (a concurrent duplicate delivery or retry);
//! 4. the handler writes its changes through the [`Applying`] transaction;
//! 5. [`finish`]: mark the event processed and commit, handing the projection lock back to
//!    the handler, which puts it in its [`Effects`];
//! 6. [`settle`]: the effects reach Redis while that lock is held, then expiries run.
//!
//! A handler only calls [`begin`] and [`finish`]; the dispatcher calls the rest.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::OwnedRwLockReadGuard;

use super::plan::Effects;
use crate::State;

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

/// The stored event `event_id`, unless it is unknown or already processed.
pub async fn load(db: &PgPool, event_id: &str) -> Result<Option<Event>, sqlx::Error> {
    let row: Option<(String, Option<i64>, Option<Value>, String)> = sqlx::query_as(
        "SELECT type, created, payload, status FROM stripe_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(db)
    .await?;
    let Some((type_, created, payload, status)) = row else {
        return Ok(None);
    };
    if status == "processed" {
        return Ok(None);
    }
    Ok(Some(Event {
        id: event_id.to_owned(),
        type_,
        created: created.unwrap_or(0),
        object: payload
            .map(|p| p["data"]["object"].clone())
            .unwrap_or(Value::Null),
    }))
}

/// The transaction applying one event, with the projection lock (read) taken before it
/// opened: held from before the commit until Redis has the effects, so a rebuild never
/// counts a change twice. Taken only after the handler's Stripe reads, so a slow Stripe
/// never holds a rebuild up. Derefs to the transaction.
pub struct Applying {
    /// The transaction the handler writes through; committed by [`finish`].
    tx: Transaction<'static, Postgres>,
    /// The projection lock, handed back by [`finish`].
    projection: OwnedRwLockReadGuard<()>,
    /// When the event was taken up ([`State::now`]): its `processed_at`.
    at: DateTime<Utc>,
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
        Some((s,)) if s != "processed" => Ok(Some(Applying {
            tx,
            projection,
            at: state.now(),
        })),
        _ => Ok(None),
    }
}

/// Marks `event_id` processed and commits everything the handler wrote with it; returns
/// the projection lock, to keep until the effects are in Redis.
pub async fn finish(
    applying: Applying,
    event_id: &str,
) -> Result<OwnedRwLockReadGuard<()>, sqlx::Error> {
    let Applying {
        mut tx,
        projection,
        at,
    } = applying;
    sqlx::query(
        "UPDATE stripe_events
         SET status = 'processed', processed_at = $2, attempts = attempts + 1, last_error = NULL,
             next_attempt_at = NULL
         WHERE event_id = $1",
    )
    .bind(event_id)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(projection)
}

/// Marks an event of a type with nothing to apply processed (its raw copy stays stored).
/// `None` if it was applied meanwhile.
pub async fn acknowledge(state: &State, event: &Event) -> Result<Option<Effects>, ProcessError> {
    let Some(applying) = begin(state, &event.id).await? else {
        return Ok(None);
    };
    finish(applying, &event.id).await?;
    Ok(Some(Effects::none()))
}

/// Puts a committed event's effects into Redis while the handler's projection lock is
/// held, releases the lock, then runs the expiry sweep (which takes the lock itself).
pub async fn settle(state: &State, mut effects: Effects) -> Result<(), ProcessError> {
    effects.write_projection(state).await?;
    drop(effects.projection.take());
    effects.expire(state).await?;
    Ok(())
}
