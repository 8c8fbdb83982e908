//! `creditgate-proxy`: the metering gateway in front of a product's API.
//!
//! Layout, in the order a request meets it:
//! - [`stack`]: listeners, the hyper server (HTTP/1.1 and HTTP/2, header limits and
//!   timeouts) and the tower layers around the handler; graceful shutdown.
//! - [`handler`]: one function that runs the phases in order, as a task of its own so a
//!   request is settled even when its client has gone.
//! - [`phase`]: identify → price → admit → forward → settle, one file each.
//! - [`path`]: the normal form of a request path, the one routes are matched on and the
//!   upstream receives.
//! - [`ctx`]: the per-request state the phases share.
//! - [`refusal`]: every refusal (400, 401, 402, 429, 503, 502, 504) and its JSON or HTML
//!   body.
//! - [`refunds`]: refunds Redis did not take at once, retried from a bounded queue.
//! - [`runtime`]: the live policy and what is derived from it (rate limiters, the 402
//!   offer), swapped whole on reload; [`reload`] watches the file and SIGHUP.
//! - [`key_cache`]: API-key lookups, cached at most a second.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.

mod admin;
mod ctx;
mod handler;
mod headers;
mod key_cache;
mod metric;
mod path;
mod phase;
mod refunds;
mod refusal;
mod reload;
mod runtime;
mod stack;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::Parser;
use shared::Policy;
use shared::redis::{Store, StoreOptions};

/// The metering reverse proxy.
#[derive(Parser)]
#[command(name = "creditgate-proxy", version)]
struct Args {
    /// The policy file.
    #[arg(long, env = "CREDITGATE_CONFIG")]
    config: PathBuf,
    /// Redis: `redis://host:port` or a comma-separated list of cluster nodes.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis_url: String,
}

/// What every request handler shares. Cheap to clone through its `Arc`.
pub struct App {
    /// The live policy and what is derived from it; replaced whole on reload.
    pub runtime: ArcSwap<runtime::Runtime>,
    /// Redis.
    pub store: Store,
    /// API key → identity, for at most a second.
    pub keys: key_cache::KeyCache,
    /// The pooled keep-alive client to the upstream.
    pub client: stack::UpstreamClient,
    /// Refunds to retry until Redis takes them.
    pub refunds: refunds::Refunds,
    /// Requests being handled, also those whose client has gone.
    pub in_flight: handler::InFlight,
}

/// How long queued refunds still get at exit (after in-flight requests), with Redis up
/// about a thousand refunds a millisecond; what is left then is logged as lost.
const REFUNDS_AT_EXIT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let policy = match Policy::load(&args.config) {
        Ok(p) => p,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime::Runtime::build(policy) {
        Ok(r) => r,
        Err(problem) => {
            eprintln!("{}:1:1: {problem}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("creditgate-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match tokio.block_on(run(args, runtime)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("creditgate-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, runtime: runtime::Runtime) -> Result<(), String> {
    let metrics = metric::install()?;
    let store = Store::connect(&args.redis_url, StoreOptions::default())
        .map_err(|e| format!("REDIS_URL: {e}"))?;
    let proxy_config = runtime.policy.proxy.clone();
    let app = Arc::new(App {
        runtime: ArcSwap::from_pointee(runtime),
        refunds: refunds::Refunds::start(store.clone()),
        store,
        keys: key_cache::KeyCache::new(),
        client: stack::upstream_client(),
        in_flight: handler::InFlight::default(),
    });
    reload::spawn(app.clone(), args.config.clone())?;
    runtime::spawn_limiter_cleanup(app.clone());
    let shutdown = stack::shutdown_signal();
    let admin = admin::serve(
        app.clone(),
        metrics,
        proxy_config.admin_listen,
        shutdown.clone(),
    )
    .await?;
    stack::serve(app.clone(), &proxy_config, shutdown).await?;
    // Connections are drained; requests whose client left before the answer are not.
    let grace = Duration::from_millis(app.runtime.load().policy.proxy.shutdown_grace_ms);
    if !app.in_flight.wait_idle(grace).await {
        tracing::warn!("requests still being settled at exit");
    }
    app.refunds.finish(REFUNDS_AT_EXIT).await;
    admin.abort();
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CREDITGATE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
