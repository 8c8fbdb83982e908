//! `billing-sync`: the durable side of creditgate.
//!
//! Layout:
//! - the library (`billing_sync`): ledger, consumer, reconciler, APIs.
//! - [`cmd`]: one file per subcommand (`serve`, `migrate`, `check-config`, `stripe-sync`);
//!   `main` only parses arguments and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// The billing daemon: Postgres ledger, usage consumer, admin and customer APIs.
#[derive(Parser)]
#[command(name = "billing-sync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The policy file every subcommand reads.
#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The YAML policy file.
    #[arg(long = "config", env = "CREDITGATE_CONFIG")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon: migrations, projection, usage consumer, HTTP APIs.
    Serve(ConfigArg),
    /// Applies the database migrations built into the binary.
    Migrate(ConfigArg),
    /// Validates the policy file; prints every problem as `file:line:column: message`.
    CheckConfig(ConfigArg),
    /// Pushes the policy's catalog to Stripe.
    StripeSync(ConfigArg),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("the OS provides threads and timers for the runtime")
    };
    match cli.command {
        Command::CheckConfig(args) => cmd::check_config::run(&args.config),
        Command::Serve(args) => runtime().block_on(cmd::serve::run(&args.config)),
        Command::Migrate(args) => runtime().block_on(cmd::migrate::run(&args.config)),
        Command::StripeSync(args) => cmd::stripe_sync::run(&args.config),
    }
}
