//! Refunds Redis did not take on the request path, retried in the background from a
//! bounded queue until it does. Retrying is safe: the refund script gives back at most once
//! per request id (its refund marker), and a refund by request id reads what to give back
//! from the admission marker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::CustomerId;
use shared::redis::{Debit, Store, StoreError, keys};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metric;

/// Refunds waiting at most. When full, a new refund is lost: logged with its request id
/// and counted in `creditgate_proxy_refunds_lost_total{reason="queue_full"}`.
pub const REFUND_QUEUE_LEN_MAX: usize = 10_000;
/// Wait after a first failed attempt; doubled after each failure up to
/// [`REFUND_RETRY_DELAY_MAX`].
const REFUND_RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two attempts at one refund.
const REFUND_RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// How long a queued refund is retried; then it is lost (logged, counted). Shorter than an
/// admission marker lives, so a refund by request id never runs after the marker saying
/// what to give back has expired.
const REFUND_RETRY_WINDOW: Duration = Duration::from_secs(keys::ADMISSION_MARKER_TTL_S - 60);
const _: () = assert!(REFUND_RETRY_WINDOW.as_secs() < keys::ADMISSION_MARKER_TTL_S);

/// One refund to apply.
#[derive(Clone, Debug)]
pub struct RefundJob {
    /// Whose credits.
    pub customer: CustomerId,
    /// What the admission took; `None` when its answer never came: then whatever the
    /// admission marker says it took, if anything (and a late admission is refused).
    pub debit: Option<Debit>,
    /// The route label, for the refund event.
    pub route: String,
    /// The request's id.
    pub request_id: String,
    /// Why (`upstream_5xx`, `upstream_error`, `upstream_timeout`, `admission_failed`).
    pub reason: &'static str,
    /// When the request gave up on the credits (Unix ms), the refund event's time.
    pub ts_ms: i64,
}

struct Queued {
    job: RefundJob,
    queued_at: Instant,
}

/// The queue and its worker. Shared through `App`; [`Refunds::finish`] at shutdown.
pub struct Refunds {
    tx: mpsc::Sender<Queued>,
    /// Jobs queued or being retried, for the gauge.
    len: Arc<AtomicUsize>,
    /// Set at shutdown: the time by which the worker stops.
    stop: watch::Sender<Option<Instant>>,
    /// The worker, taken by `finish`. A std `Mutex`: held for a `take` only.
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Refunds {
    /// Starts the worker.
    pub fn start(store: Store) -> Refunds {
        let (tx, rx) = mpsc::channel(REFUND_QUEUE_LEN_MAX);
        let len = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = watch::channel(None);
        let worker = tokio::spawn(work(store, rx, len.clone(), stop_rx));
        Refunds {
            tx,
            len,
            stop,
            worker: Mutex::new(Some(worker)),
        }
    }

    /// Queues a refund for the worker; never waits. A full queue loses it (logged).
    pub fn enqueue(&self, job: RefundJob) {
        // Counted before sending, so the worker never counts below zero.
        let len = self.len.fetch_add(1, Ordering::SeqCst) + 1;
        let reason = job.reason;
        match self.tx.try_send(Queued {
            job,
            queued_at: Instant::now(),
        }) {
            Ok(()) => {
                metrics::counter!(metric::REFUNDS_QUEUED, "reason" => reason).increment(1);
                metrics::gauge!(metric::REFUND_QUEUE_LEN).set(len as f64);
            }
            Err(mpsc::error::TrySendError::Full(q)) => {
                self.len.fetch_sub(1, Ordering::SeqCst);
                lost(&q.job, "queue_full", None);
            }
            Err(mpsc::error::TrySendError::Closed(q)) => {
                self.len.fetch_sub(1, Ordering::SeqCst);
                lost(&q.job, "shutdown", None);
            }
        }
    }

    /// At shutdown: lets the worker apply what is queued for at most `within`, then logs
    /// what is left as lost.
    pub async fn finish(&self, within: Duration) {
        let _ = self.stop.send(Some(Instant::now() + within));
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(worker) = worker {
            // The worker watches the deadline itself; the margin covers one Redis call.
            let _ = tokio::time::timeout(within + Duration::from_secs(2), worker).await;
        }
    }
}

async fn work(
    store: Store,
    mut rx: mpsc::Receiver<Queued>,
    len: Arc<AtomicUsize>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    loop {
        let stopping = stop.borrow().is_some();
        let queued = if stopping {
            match rx.try_recv() {
                Ok(q) => q,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                q = rx.recv() => match q {
                    Some(q) => q,
                    None => return,
                },
                _ = stop.changed() => continue,
            }
        };
        let applied = apply_with_retries(&store, &queued, &stop).await;
        let left = len.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics::gauge!(metric::REFUND_QUEUE_LEN).set(left as f64);
        if !applied && (*stop.borrow()).is_some_and(|deadline| Instant::now() >= deadline) {
            rx.close();
            while let Ok(q) = rx.try_recv() {
                len.fetch_sub(1, Ordering::SeqCst);
                lost(&q.job, "shutdown", None);
            }
            return;
        }
    }
}

/// Tries until Redis takes the refund, the retry window is over, or shutdown's deadline
/// comes. Whether it was applied.
async fn apply_with_retries(
    store: &Store,
    queued: &Queued,
    stop: &watch::Receiver<Option<Instant>>,
) -> bool {
    let job = &queued.job;
    let mut delay = REFUND_RETRY_DELAY_MIN;
    loop {
        let error = match apply(store, job).await {
            Ok(()) => return true,
            Err(e) => e,
        };
        metrics::counter!(metric::REFUND_RETRIES).increment(1);
        if queued.queued_at.elapsed() >= REFUND_RETRY_WINDOW {
            lost(job, "retry_window", Some(&error));
            return false;
        }
        if (*stop.borrow()).is_some_and(|deadline| Instant::now() + delay >= deadline) {
            lost(job, "shutdown", Some(&error));
            return false;
        }
        tracing::warn!(
            request_id = %job.request_id,
            error = %error,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "queued refund failed; retrying"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(REFUND_RETRY_DELAY_MAX);
    }
}

async fn apply(store: &Store, job: &RefundJob) -> Result<(), StoreError> {
    let given_back = match &job.debit {
        Some(debit) => store
            .refund(
                &job.customer,
                debit,
                &job.route,
                &job.request_id,
                job.ts_ms,
                job.reason,
            )
            .await?
            .is_some(),
        None => {
            store
                .refund_if_admitted(
                    &job.customer,
                    &job.route,
                    &job.request_id,
                    job.ts_ms,
                    job.reason,
                )
                .await?
        }
    };
    if given_back {
        metrics::counter!(metric::REFUNDS, "reason" => job.reason).increment(1);
    }
    tracing::info!(
        request_id = %job.request_id,
        customer_id = job.customer.as_str(),
        reason = job.reason,
        given_back,
        "queued refund done"
    );
    Ok(())
}

/// A refund given up on: the debit stands (the reconciler's drift check surfaces it); the
/// request id lets an operator grant it back.
fn lost(job: &RefundJob, why: &'static str, error: Option<&StoreError>) {
    metrics::counter!(metric::REFUNDS_LOST, "reason" => why).increment(1);
    tracing::error!(
        request_id = %job.request_id,
        customer_id = job.customer.as_str(),
        reason = job.reason,
        why,
        error = error.map(|e| e.to_string()).unwrap_or_default(),
        known_debit = job.debit.is_some(),
        "refund lost"
    );
}
