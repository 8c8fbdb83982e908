//! The environment: endpoints and secrets, never from the YAML and never logged.

use std::time::Duration;

/// Postgres pool size: the APIs plus the worker's one connection.
pub const DB_CONNECTIONS_MAX: u32 = 16;
/// How long a request waits for a pooled connection before failing with 503.
pub const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Request bodies above this are refused with 413.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Time in-flight requests get after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What billing-sync reads from its environment.
#[derive(Clone)]
pub struct Env {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `CREDITGATE_ADMIN_TOKEN`; without it the admin API refuses everything.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("database_url", &"<redacted>")
            .field("redis_url", &self.redis_url)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Env {
    /// Reads the environment; `Err` names the missing variable.
    pub fn from_env(need_redis: bool) -> Result<Env, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let database_url = var("DATABASE_URL").ok_or("DATABASE_URL is not set")?;
        let redis_url = match var("REDIS_URL") {
            Some(url) => url,
            None if need_redis => return Err("REDIS_URL is not set".into()),
            None => String::new(),
        };
        Ok(Env {
            database_url,
            redis_url,
            admin_token: var("CREDITGATE_ADMIN_TOKEN"),
        })
    }
}
