//! Stored events that failed are retried with exponential backoff for at least three days
//! (the contract's promise: Stripe already has its 200, so the stored copy is all there is),
//! then left `failed` for an operator, who can retry any event by hand
//! (`POST /admin/v1/stripe/events/{id}/retry`).
//!
//! The schedule is [`next_attempt_at`], a pure function of when the event was received,
//! when it failed and how many attempts it has had. Every time comes from
//! [`State::now`], passed into SQL as a parameter, so tests move the clock across days.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use crate::State;

/// The delay after an event's first failed attempt; each further failure doubles it.
pub const EVENT_RETRY_DELAY_MIN: Duration = Duration::seconds(5);
/// The longest delay between two attempts (reached after the 10th failure).
pub const EVENT_RETRY_DELAY_MAX: Duration = Duration::hours(1);
/// How long after it was received an event is retried automatically. The first failure at
/// or after the end of this window gives the event up: it stays `failed` with no next
/// attempt (the metric counts it as `gave_up`) until an operator retries it.
///
/// With the delays above the attempts come 5 s, 10 s, 20 s, … 2560 s apart (the first 11
/// attempts span 5115 s, about 85 min), then hourly: the 82nd attempt, about 3 days and
/// 25 min after the event arrived, is the last.
pub const EVENT_RETRY_WINDOW: Duration = Duration::days(3);
/// Due events applied per pass of [`retry_due`] (oldest due first; the rest wait for the
/// next pass, 5 s later).
pub const RETRY_BATCH_LEN_MAX: i64 = 50;

/// Metric: stored events not yet applied, by `status`: `pending` (not tried yet), `failed`
/// (waiting for its next attempt), `gave_up` (out of automatic attempts).
pub const METRIC_UNFINISHED: &str = "creditgate_stripe_events_unfinished";

/// The delay after the `attempts`-th failed attempt (1 for the first):
/// `min(EVENT_RETRY_DELAY_MIN · 2^(attempts − 1), EVENT_RETRY_DELAY_MAX)`.
pub fn retry_delay(attempts: i32) -> Duration {
    // 2^10 · 5 s already passes the hour; a larger shift would only overflow.
    let doublings = attempts.saturating_sub(1).clamp(0, 10);
    (EVENT_RETRY_DELAY_MIN * (1 << doublings)).min(EVENT_RETRY_DELAY_MAX)
}

/// When an event received at `received_at`, whose `attempts`-th attempt failed at
/// `failed_at`, is tried next; `None` once the failure falls at or after the end of
/// [`EVENT_RETRY_WINDOW`] (given up: no further automatic attempt).
pub fn next_attempt_at(
    received_at: DateTime<Utc>,
    failed_at: DateTime<Utc>,
    attempts: i32,
) -> Option<DateTime<Utc>> {
    if failed_at >= received_at + EVENT_RETRY_WINDOW {
        return None;
    }
    Some(failed_at + retry_delay(attempts))
}

/// Counts a failed attempt at `event_id` (at `now`) with its reason and schedules the next
/// one; returns that time (`None`: given up). Nothing changes if the event was processed
/// meanwhile.
pub async fn record_failure(
    db: &PgPool,
    event_id: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let row: Option<(i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT attempts, received_at FROM stripe_events
         WHERE event_id = $1 AND status <> 'processed' FOR UPDATE",
    )
    .bind(event_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts, received_at)) = row else {
        return Ok(None);
    };
    let attempts = attempts.saturating_add(1);
    let next = next_attempt_at(received_at, now, attempts);
    sqlx::query(
        "UPDATE stripe_events SET status = 'failed', attempts = $2, last_error = $3, next_attempt_at = $4
         WHERE event_id = $1",
    )
    .bind(event_id)
    .bind(attempts)
    .bind(reason)
    .bind(next)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(next)
}

/// Applies the stored events whose next attempt is due as of [`State::now`] (at most
/// [`RETRY_BATCH_LEN_MAX`], longest due first); a failure is recorded and rescheduled by
/// [`super::process`]. Updates [`METRIC_UNFINISHED`]. Returns how many were applied.
pub async fn retry_due(state: &State) -> Result<usize, sqlx::Error> {
    let due: Vec<(String,)> = sqlx::query_as(
        "SELECT event_id FROM stripe_events
         WHERE status <> 'processed' AND next_attempt_at <= $1
         ORDER BY next_attempt_at LIMIT $2",
    )
    .bind(state.now())
    .bind(RETRY_BATCH_LEN_MAX)
    .fetch_all(&state.db)
    .await?;
    let mut applied = 0;
    for (id,) in due {
        match super::process(state, &id).await {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(event_id = %id, error = %e, "stripe event retry failed"),
        }
    }
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE WHEN next_attempt_at IS NULL THEN 'gave_up' ELSE status END, count(*)
         FROM stripe_events WHERE status <> 'processed' GROUP BY 1",
    )
    .fetch_all(&state.db)
    .await?;
    for status in ["pending", "failed", "gave_up"] {
        let n = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(METRIC_UNFINISHED, "status" => status).set(n as f64);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_five_seconds_to_an_hour() {
        let delays: Vec<i64> = (1..=13).map(|n| retry_delay(n).num_seconds()).collect();
        assert_eq!(
            delays,
            [
                5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600
            ]
        );
        assert_eq!(retry_delay(0), EVENT_RETRY_DELAY_MIN);
        assert_eq!(retry_delay(i32::MAX), EVENT_RETRY_DELAY_MAX);
    }

    #[test]
    fn an_event_that_always_fails_is_retried_for_at_least_three_days_then_given_up() {
        let received = DateTime::from_timestamp(1_800_000_000, 0).expect("valid time");
        // The first attempt is made on receipt; each failure schedules the next.
        let mut attempts_at = vec![received];
        for attempts in 1.. {
            assert!(attempts < 1000, "the schedule ends");
            let failed_at = *attempts_at.last().expect("one");
            match next_attempt_at(received, failed_at, attempts) {
                Some(next) => attempts_at.push(next),
                None => break,
            }
        }
        let last = *attempts_at.last().expect("one");
        assert!(last - received >= EVENT_RETRY_WINDOW, "retried for 3 days");
        assert!(last - received < EVENT_RETRY_WINDOW + EVENT_RETRY_DELAY_MAX);
        assert_eq!(
            attempts_at.len(),
            82,
            "as the doc on EVENT_RETRY_WINDOW says"
        );
        let gaps: Vec<Duration> = attempts_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "gaps never shrink");
        assert_eq!(gaps.first(), Some(&EVENT_RETRY_DELAY_MIN));
        assert!(gaps.iter().all(|g| *g <= EVENT_RETRY_DELAY_MAX));
        // The old schedule gave up after 20 attempts 5 s apart (about 100 s).
        assert!(attempts_at[20] - received > Duration::hours(2));
    }
}
