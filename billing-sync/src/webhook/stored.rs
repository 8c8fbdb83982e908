//! Stored Stripe events as operators see them (`GET /admin/v1/stripe/events`, and the
//! answer of a manual retry): one row per event, newest first.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A stored event's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    /// Stored, not tried yet (or its first attempt is under way).
    Pending,
    /// Applied, once.
    Processed,
    /// Its last attempt failed; see `next_attempt_at` (none: given up).
    Failed,
}

impl EventStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Processed => "processed",
            EventStatus::Failed => "failed",
        }
    }
}

impl FromStr for EventStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(EventStatus::Pending),
            "processed" => Ok(EventStatus::Processed),
            "failed" => Ok(EventStatus::Failed),
            _ => Err("status must be pending, processed or failed".to_owned()),
        }
    }
}

/// One stored event, as the admin API shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct StoredEvent {
    /// `evt_…`.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `pending`, `processed` or `failed`.
    pub status: String,
    /// Attempts made so far (the successful one included).
    pub attempts: i32,
    /// When billing-sync stored it.
    pub received_at: DateTime<Utc>,
    /// Why the last attempt failed (none once processed).
    pub last_error: Option<String>,
    /// When it is tried next; none once processed or given up.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was applied.
    pub processed_at: Option<DateTime<Utc>>,
}

/// Up to `limit` stored events, newest first, of one status or all.
pub async fn list(
    db: &PgPool,
    status: Option<EventStatus>,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id AS id, type AS type_, status, attempts, received_at, last_error,
                next_attempt_at, processed_at
         FROM stripe_events WHERE ($1::text IS NULL OR status = $1)
         ORDER BY received_at DESC, event_id DESC LIMIT $2",
    )
    .bind(status.map(EventStatus::as_str))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The stored event `event_id`, if there is one.
pub async fn find(db: &PgPool, event_id: &str) -> Result<Option<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id AS id, type AS type_, status, attempts, received_at, last_error,
                next_attempt_at, processed_at
         FROM stripe_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(db)
    .await
}
