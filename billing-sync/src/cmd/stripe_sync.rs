//! `billing-sync stripe-sync`: pushes the policy's catalog to Stripe (a Product per paid
//! plan and per pack, a Price per plan × interval and per pack, found again by lookup key)
//! and makes the Customer Portal configuration. A second run with the same policy creates
//! nothing.

use std::path::Path;
use std::process::ExitCode;

use billing_sync::stripe::{self, Stripe};
use shared::Policy;

/// Runs the sync; prints what it created.
pub fn run(path: &Path) -> ExitCode {
    let policy = match Policy::load(path) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let stripe = match Stripe::from_env() {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("stripe-sync: STRIPE_SECRET_KEY is not set");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("stripe-sync: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stripe-sync: {e}");
            return ExitCode::FAILURE;
        }
    };
    let synced = runtime.block_on(async {
        let report = stripe::catalog::sync(&stripe, &policy).await?;
        let portal = stripe::portal::ensure_configuration(&stripe, &policy, &report.prices).await?;
        Ok::<_, ::stripe::StripeError>((report, portal))
    });
    match synced {
        Ok((report, portal)) => {
            println!(
                "stripe-sync: {} prices in the catalog; created {} products, {} prices; portal configuration {portal}",
                report.prices.len(),
                report.products_created.len(),
                report.prices_created.len()
            );
            for key in &report.prices_created {
                println!("  created price {key}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stripe-sync: {}", stripe::short(&e));
            ExitCode::FAILURE
        }
    }
}
