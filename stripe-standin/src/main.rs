//! `stripe-standin`: the Stripe stand-in as a program, for the offline demo.
//!
//! ```text
//! stripe-standin --listen 127.0.0.1:12111 \
//!     --webhook-url http://127.0.0.1:8081/webhooks/stripe --webhook-secret whsec_…
//! ```
//! then run billing-sync with `STRIPE_API_BASE=http://127.0.0.1:12111/` and any
//! `STRIPE_SECRET_KEY=sk_test_…`.

use std::net::SocketAddr;

use clap::Parser;
use stripe_standin::{DEFAULT_TAX_RATE_BPS, StandinConfig, StripeStandin};
use tracing_subscriber::EnvFilter;

/// An in-memory Stripe API stand-in with signed webhooks.
#[derive(Debug, Parser)]
#[command(name = "stripe-standin", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "STANDIN_LISTEN", default_value = "127.0.0.1:12111")]
    listen: SocketAddr,
    /// Where to post webhook events (billing-sync's `/webhooks/stripe`).
    #[arg(long, env = "STANDIN_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Signing secret `whsec_…`; the first is used when several are comma-separated.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Base URL shown in Checkout/portal/invoice links (default: http://<listen>/).
    #[arg(long, env = "STANDIN_PUBLIC_URL")]
    public_url: Option<String>,
    /// Automatic tax rate in basis points of the subtotal (1000 = 10 %).
    #[arg(long, default_value_t = DEFAULT_TAX_RATE_BPS)]
    tax_rate_bps: i64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = StandinConfig {
        webhook_url: args.webhook_url,
        webhook_secret: args.webhook_secret,
        public_url: args.public_url,
        tax_rate_bps: args.tax_rate_bps,
        ..StandinConfig::default()
    };
    let has_secret = config.webhook_secret.is_some();
    let standin = StripeStandin::start_on(args.listen, config).await?;
    tracing::info!(
        url = %standin.url(),
        webhook_secret_configured = has_secret,
        "stripe-standin listening"
    );
    shutdown_signal().await;
    tracing::info!("stripe-standin stopping");
    standin.shutdown().await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
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
