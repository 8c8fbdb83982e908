//! `billing-sync migrate`: applies the migrations built into the binary.

use std::path::Path;
use std::process::ExitCode;

use billing_sync::config::Env;
use billing_sync::db;
use shared::Policy;

/// Applies pending migrations to `DATABASE_URL`.
pub async fn run(path: &Path) -> ExitCode {
    if let Err(errors) = Policy::load(path) {
        eprintln!("{errors}");
        return ExitCode::FAILURE;
    }
    let env = match Env::from_env(false) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("billing-sync: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pool = match db::connect(&env.database_url).await {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("billing-sync: postgres: {e}");
            return ExitCode::FAILURE;
        }
    };
    match db::migrate(&pool).await {
        Ok(()) => {
            println!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("billing-sync: migrations: {e}");
            ExitCode::FAILURE
        }
    }
}
