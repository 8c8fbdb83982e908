//! The background loop: the usage consumer, and between its batches the reconciler
//! (readiness check and rebuild, drift repair, expiries, rollovers). One task, so a batch
//! is never half applied while the reconciler compares Redis with the ledger.

use std::time::{Duration, Instant};

use shared::redis::Store;
use tokio::sync::watch;

use crate::State;
use crate::{consumer, reconcile};

/// Pause after an empty poll.
pub const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Pause after a failure before trying again.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// How often the ready flag and the lag are checked.
pub const READY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often every account is reconciled and periods roll over (expiries are held every
/// [`READY_CHECK_INTERVAL`]).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// Unread usage entries above which drift repair is skipped: an account cannot be judged
/// while the consumer is behind, and scanning a long backlog would only slow it down.
pub const RECONCILE_LAG_EVENTS_MAX: u64 = 10_000;

/// The worker's settings.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// This consumer's name in the group.
    pub consumer: String,
    /// How often the full reconcile runs.
    pub reconcile_interval: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            consumer: "billing-sync".to_owned(),
            reconcile_interval: RECONCILE_INTERVAL,
        }
    }
}

/// Brings the projection up (rebuild or repair) and replays pending usage: what `serve`
/// does before its loop, and what tests call directly.
pub async fn start(
    state: &State,
    stream_store: &Store,
    options: &WorkerOptions,
) -> Result<(), String> {
    consumer::ensure_groups(&state.store)
        .await
        .map_err(|e| e.to_string())?;
    consumer::claim_pending(stream_store, &options.consumer)
        .await
        .map_err(|e| e.to_string())?;
    // Replay what an earlier run read but did not acknowledge.
    loop {
        let done = consumer::poll(stream_store, &state.db, &options.consumer, true)
            .await
            .map_err(|e| e.to_string())?;
        if done.read == 0 {
            break;
        }
    }
    if state.store.is_ready().await.map_err(|e| e.to_string())? {
        reconcile::sync_accounts(state, false)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        reconcile::rebuild(state).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One pass of the periodic reconcile work: rollovers, expiry holds, and drift repair
/// unless the consumer is more than [`RECONCILE_LAG_EVENTS_MAX`] entries behind.
pub async fn reconcile_once(state: &State) -> Result<(), String> {
    let now = state.now();
    reconcile::roll_over_periods(state, now)
        .await
        .map_err(|e| e.to_string())?;
    reconcile::expire_due(state, now)
        .await
        .map_err(|e| e.to_string())?;
    let (lag, _) = consumer::lag(&state.store, now.timestamp_millis())
        .await
        .map_err(|e| e.to_string())?;
    if lag > RECONCILE_LAG_EVENTS_MAX {
        tracing::warn!(
            lag_events = lag,
            "consumer is behind; drift repair skipped this pass"
        );
    } else {
        reconcile::sync_accounts(state, false)
            .await
            .map_err(|e| e.to_string())?;
    }
    reconcile::forget_old_idempotency_records(state)
        .await
        .map_err(|e| e.to_string())?;
    reconcile::ledger_mismatches(state)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs until `shutdown` turns true; the batch in hand is committed and acknowledged
/// first.
pub async fn run(
    state: State,
    stream_store: Store,
    options: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut started = false;
    let mut last_ready_check = Instant::now();
    let mut last_reconcile = Instant::now();
    let mut replay = false;
    while !*shutdown.borrow() {
        if !started {
            match start(&state, &stream_store, &options).await {
                Ok(()) => started = true,
                Err(e) => {
                    tracing::error!(error = %e, "worker start failed; retrying");
                    pause(&mut shutdown, ERROR_BACKOFF).await;
                    continue;
                }
            }
        }
        // After a failed batch its entries sit in this consumer's pending list: read that
        // list again (id 0) until it is empty before new entries, and hold the reconciler
        // off meanwhile (it would count delivered-but-unapplied debits as drift).
        let idle = match consumer::poll(&stream_store, &state.db, &options.consumer, replay).await {
            Ok(done) => {
                if replay && done.read == 0 {
                    replay = false;
                    false
                } else {
                    done.read == 0
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "usage batch failed; replaying it");
                replay = true;
                // The group may have vanished with Redis's data: check readiness now.
                last_ready_check = Instant::now()
                    .checked_sub(READY_CHECK_INTERVAL)
                    .unwrap_or_else(Instant::now);
                pause(&mut shutdown, ERROR_BACKOFF).await;
                false
            }
        };
        if last_ready_check.elapsed() >= READY_CHECK_INTERVAL {
            last_ready_check = Instant::now();
            match state.store.is_ready().await {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(e) = reconcile::rebuild(&state).await {
                        tracing::error!(error = %e, "rebuild failed; retrying");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "redis unreachable"),
            }
            if let Ok((entries, age_s)) =
                consumer::lag(&stream_store, state.now().timestamp_millis()).await
            {
                metrics::gauge!("billing_usage_lag_events").set(entries as f64);
                metrics::gauge!("billing_usage_lag_seconds").set(age_s as f64);
            }
            // Expiry holds every second, so a bucket expires close to its time.
            if !replay && let Err(e) = reconcile::expire_due(&state, state.now()).await {
                tracing::warn!(error = %e, "expiry sweep failed");
            }
        }
        if !replay && last_reconcile.elapsed() >= options.reconcile_interval {
            last_reconcile = Instant::now();
            if let Err(e) = reconcile_once(&state).await {
                tracing::error!(error = %e, "reconcile failed");
            }
        }
        if idle {
            pause(&mut shutdown, IDLE_POLL_INTERVAL).await;
        }
    }
    tracing::info!("worker stopped");
}

async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}
