//! `billing-sync serve`: migrations, then the worker (usage consumer and reconciler), the
//! APIs on `sync.listen` and the ops endpoints on `sync.admin_listen`, until SIGTERM.

use std::path::Path;
use std::process::ExitCode;

use billing_sync::config::{Env, SHUTDOWN_GRACE};
use billing_sync::worker::{self, WorkerOptions};
use billing_sync::{State, api, db, ops};
use shared::Policy;
use shared::redis::{Store, StoreOptions};
use tokio::sync::watch;

/// Runs the daemon; returns when it has shut down.
pub async fn run(path: &Path) -> ExitCode {
    let policy = match Policy::load(path) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let env = match Env::from_env(true) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("billing-sync: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = refuse_live_key_outside_production() {
        eprintln!("billing-sync: {e}");
        return ExitCode::FAILURE;
    }
    let metrics = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            None
        }
    };
    let pool = match db::connect(&env.database_url).await {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("billing-sync: postgres: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = db::migrate(&pool).await {
        eprintln!("billing-sync: migrations: {e}");
        return ExitCode::FAILURE;
    }
    // Two Redis handles: the APIs' and the consumer's, so stream reads never queue behind
    // (or ahead of) request-path commands on one multiplexed connection.
    let (store, stream_store) = match (
        Store::connect(&env.redis_url, StoreOptions::default()),
        Store::connect(&env.redis_url, StoreOptions::default()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("billing-sync: redis: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = policy.sync.listen;
    let admin_listen = policy.sync.admin_listen;
    let stripe = match billing_sync::stripe::Stripe::from_env() {
        Ok(stripe) => stripe,
        Err(e) => {
            eprintln!("billing-sync: {e}");
            return ExitCode::FAILURE;
        }
    };
    if stripe.is_none() {
        tracing::warn!("STRIPE_SECRET_KEY is not set: checkout, portal and invoices answer 503");
    }
    let webhook_secrets = std::env::var("STRIPE_WEBHOOK_SECRET").unwrap_or_default();
    if webhook_secrets.trim().is_empty() {
        tracing::warn!("STRIPE_WEBHOOK_SECRET is not set: every webhook is refused");
    }
    let state = State::new(pool, store, policy, env.admin_token.clone())
        .with_stripe(stripe, &webhook_secrets);
    if state.admin_token.is_none() {
        tracing::warn!("CREDITGATE_ADMIN_TOKEN is not set: the admin API refuses every request");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(worker::run(
        state.clone(),
        stream_store,
        WorkerOptions::default(),
        stop_rx.clone(),
    ));
    let reloads = tokio::spawn(billing_sync::reload::run(
        state.clone(),
        path.to_path_buf(),
        stop_rx.clone(),
    ));
    let stripe_tasks = tokio::spawn(billing_sync::webhook::run_background(
        state.clone(),
        stop_rx.clone(),
    ));
    let api_listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("billing-sync: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ops_listener = match tokio::net::TcpListener::bind(admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("billing-sync: cannot listen on {admin_listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%listen, %admin_listen, "billing-sync serving");
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api = axum::serve(api_listener, api::app(state.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let ops = axum::serve(ops_listener, ops::router(state, metrics))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let servers = tokio::spawn(async move {
        let (a, o) = tokio::join!(api.into_future(), ops.into_future());
        a.and(o)
    });

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, servers).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error"),
        Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("in-flight requests cut after the grace period"),
    }
    // The worker finishes the batch in hand (commit, then ack) before it returns.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, worker).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, stripe_tasks).await;
    reloads.abort();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn refuse_live_key_outside_production() -> Result<(), String> {
    let live = std::env::var("STRIPE_SECRET_KEY").is_ok_and(|k| k.starts_with("sk_live_"));
    let production = std::env::var("CREDITGATE_ENV").is_ok_and(|e| e == "production");
    if live && !production {
        return Err("refusing an sk_live_ key unless CREDITGATE_ENV=production".into());
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
