//! Policy hot reload: on SIGHUP and when the file changes. A bad file keeps the last good
//! policy; why is logged, and a metric counts reloads by result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use shared::Policy;
use tokio::sync::mpsc;

use crate::App;
use crate::metric;
use crate::runtime::Runtime;

/// Quiet time after a file event before reloading: editors write files in several steps.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);
/// Pending file events kept; more are dropped (one pending reload is enough).
const RELOAD_EVENTS_MAX: usize = 16;

/// Starts watching `path` (through its directory, so editors that replace the file are
/// seen) and SIGHUP.
pub fn spawn(app: Arc<App>, path: PathBuf) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<()>(RELOAD_EVENTS_MAX);
    let file_name = path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name() == file_name.as_deref());
        if ours && !event.kind.is_access() {
            // notify calls back on its own thread: hand over without blocking it.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch the policy file: {e}"))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;

    tokio::spawn(async move {
        let _watcher = watcher; // lives as long as the task
        loop {
            let trigger = tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(RELOAD_DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    "file_change"
                }
                Some(()) = hup.recv() => "sighup",
            };
            reload(&app, &path, trigger);
        }
    });
    Ok(())
}

fn reload(app: &App, path: &std::path::Path, trigger: &'static str) {
    let built = Policy::load(path)
        .map_err(|e| e.to_string())
        .and_then(Runtime::build);
    match built {
        Ok(runtime) => {
            app.runtime.store(Arc::new(runtime));
            metrics::counter!(metric::POLICY_RELOADS, "result" => "ok").increment(1);
            tracing::info!(trigger, path = %path.display(), "policy reloaded");
        }
        Err(problems) => {
            metrics::counter!(metric::POLICY_RELOADS, "result" => "error").increment(1);
            for problem in problems.lines() {
                tracing::error!(
                    trigger,
                    problem,
                    "policy reload refused; keeping the last good policy"
                );
            }
        }
    }
}
