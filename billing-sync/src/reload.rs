//! Policy reload for billing-sync, as the proxy does it: on SIGHUP and when the file
//! changes (checked each second, so within 2 s). A bad file keeps the last good policy;
//! each problem is logged and `creditgate_policy_reloads_total{result="error"}` counted.
//! Listen addresses are read at start only. Price changes reach Stripe with
//! `billing-sync stripe-sync` (or the next start).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shared::Policy;
use tokio::sync::watch;

use crate::State;

/// How often the file's modification time is checked.
const RELOAD_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Metric: reloads by result (`ok`, `error`), the proxy's name for it.
pub const METRIC_RELOADS: &str = "creditgate_policy_reloads_total";

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Watches `path` and SIGHUP until `stop`.
pub async fn run(state: State, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
            None
        }
    };
    let mut seen = modified(&path);
    let mut tick = tokio::time::interval(RELOAD_POLL_INTERVAL);
    loop {
        let trigger = tokio::select! {
            _ = stop.changed() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "sighup",
            _ = tick.tick() => {
                let now = modified(&path);
                if now == seen { continue; }
                seen = now;
                "file_change"
            }
        };
        reload(&state, &path, trigger);
    }
}

fn reload(state: &State, path: &Path, trigger: &'static str) {
    match Policy::load(path) {
        Ok(policy) => {
            state.replace_policy(policy);
            metrics::counter!(METRIC_RELOADS, "result" => "ok").increment(1);
            tracing::info!(trigger, path = %path.display(), "policy reloaded");
        }
        Err(problems) => {
            metrics::counter!(METRIC_RELOADS, "result" => "error").increment(1);
            for problem in problems.to_string().lines() {
                tracing::error!(
                    trigger,
                    problem,
                    "policy reload refused; keeping the last good policy"
                );
            }
        }
    }
}
