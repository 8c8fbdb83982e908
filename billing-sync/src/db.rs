//! The Postgres pool and the migrations compiled into the binary.

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::config::{DB_ACQUIRE_TIMEOUT, DB_CONNECTIONS_MAX};

/// `billing-sync/migrations/`, embedded: the binary runs from any directory.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Opens the pool with explicit limits.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(DB_CONNECTIONS_MAX)
        .acquire_timeout(DB_ACQUIRE_TIMEOUT)
        .connect(url)
        .await
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
