//! [`Store`]: the typed handle on Redis both programs use.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::OnceCell;

use super::keys::{self, field};
use crate::credits::Millicredits;
use crate::ids::{ApiKeyHash, CustomerId};

/// How long a refund marker is kept (seconds); a refund retried after that is not expected.
const REFUND_MARKER_TTL_S: u64 = 86_400;

/// A failure to talk to Redis (unreachable, timed out, or a reply of the wrong shape).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer or refused the command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the layout does not allow.
    #[error("redis reply: {0}")]
    Reply(String),
}

/// Timeouts of the Redis connection. Set explicitly: the library defaults wait too long
/// for a request path.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Time to wait for a reply.
    pub response_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(1000),
        }
    }
}

/// Who a key belongs to, as the proxy needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The customer.
    pub customer: CustomerId,
    /// Their plan's name.
    pub plan: String,
}

/// The answer to an API-key lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The key is live.
    Found(Identity),
    /// No such key (never issued, or revoked).
    Unknown,
    /// Redis holds no projection yet (lost its data; billing-sync is rebuilding): no
    /// answer about the key can be trusted.
    NotReady,
}

/// A customer's balances in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Plan name.
    pub plan: String,
    /// Non-transferable millicredits.
    pub non_transferable: Millicredits,
    /// Transferable millicredits.
    pub transferable: Millicredits,
}

impl Account {
    /// Everything spendable.
    pub fn spendable(&self) -> Millicredits {
        Millicredits::new(self.non_transferable.get() + self.transferable.get())
    }
}

/// What the admission script took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debit {
    /// Balance left after the debit.
    pub remaining: Millicredits,
    /// Taken from non-transferable credits.
    pub from_non_transferable: Millicredits,
    /// Taken from transferable credits.
    pub from_transferable: Millicredits,
}

/// The outcome of the admission script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Debited and recorded.
    Admitted(Debit),
    /// The balance does not cover the cost; nothing changed.
    Insufficient {
        /// The balance.
        balance: Millicredits,
    },
    /// The key exists but the account does not (rebuild in progress); nothing changed.
    NoAccount,
    /// This request id was given up on earlier ([`Store::refund_if_admitted`] ran first);
    /// nothing changed.
    GivenUp,
}

/// A cheap-to-clone handle on Redis (single node or cluster). Scripts are loaded once and
/// reloaded on `NOSCRIPT` by `redis::Script`.
#[derive(Clone)]
pub struct Store {
    pub(super) conn: Arc<Connector>,
    admit: Arc<Script>,
    refund: Arc<Script>,
}

pub(super) enum Connector {
    Single(ConnectionManager),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conn: OnceCell<ClusterConnection>,
    },
}

/// One connection of either kind, so commands and scripts run the same on both.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Store {
    /// Prepares a connection to `url`: `redis://host:port[/db]` for one node, or a
    /// comma-separated list of node URLs for a cluster. Connects lazily and reconnects by
    /// itself, so a program can start while Redis is down.
    pub fn connect(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        if url.contains("rediss://") {
            // TLS through rustls needs a process-wide provider; ring is the one this project
            // builds with (never aws-lc). Installing twice is harmless: the first one stays.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let connector = if url.contains(',') {
            let nodes: Vec<&str> = url
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                .build()?;
            Connector::Cluster {
                client: Box::new(client),
                conn: OnceCell::new(),
            }
        } else {
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Connector::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        };
        Ok(Store {
            conn: Arc::new(connector),
            admit: Arc::new(Script::new(include_str!("admit.lua"))),
            refund: Arc::new(Script::new(include_str!("refund.lua"))),
        })
    }

    pub(super) async fn conn(&self) -> Result<Conn, StoreError> {
        match &*self.conn {
            Connector::Single(manager) => Ok(Conn::Single(manager.clone())),
            Connector::Cluster { client, conn } => {
                let conn = conn
                    .get_or_try_init(|| client.get_async_connection())
                    .await?;
                Ok(Conn::Cluster(conn.clone()))
            }
        }
    }

    /// Runs any command; private to `shared::redis`, so only this module knows Redis.
    pub(super) async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        Ok(cmd.query_async(&mut conn).await?)
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<()>(&redis::cmd("PING")).await
    }

    /// Finds who an API key belongs to: one pipelined read of the key and the ready flag,
    /// then the customer's plan.
    pub async fn lookup(&self, hash: &ApiKeyHash) -> Result<Lookup, StoreError> {
        let mut conn = self.conn().await?;
        let (customer, ready): (Option<String>, bool) = redis::pipe()
            .get(keys::api_key(hash))
            .exists(keys::READY)
            .query_async(&mut conn)
            .await?;
        let Some(customer) = customer else {
            return Ok(if ready {
                Lookup::Unknown
            } else {
                Lookup::NotReady
            });
        };
        let customer = CustomerId::parse(&customer).map_err(StoreError::Reply)?;
        let plan: Option<String> = redis::cmd("HGET")
            .arg(keys::account(&customer))
            .arg(field::PLAN)
            .query_async(&mut conn)
            .await?;
        Ok(match plan {
            Some(plan) => Lookup::Found(Identity { customer, plan }),
            None => Lookup::NotReady,
        })
    }

    /// The admission script: if the balance covers `cost`, debit it (non-transferable
    /// credits first) and append the usage event, atomically, in one round trip.
    ///
    /// Idempotent per `request_id` for [`keys::ADMISSION_MARKER_TTL_S`]: a retry after a
    /// lost answer returns the first admission (what it took, today's balance) and debits
    /// nothing twice; after [`Store::refund_if_admitted`] it answers [`Admission::GivenUp`].
    pub async fn admit(
        &self,
        customer: &CustomerId,
        cost: Millicredits,
        route: &str,
        request_id: &str,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Vec<Value> = self
            .admit
            .key(keys::account(customer))
            .key(keys::usage_stream_of(customer))
            .key(keys::admission_marker(customer, request_id))
            .arg(cost.get())
            .arg(customer.as_str())
            .arg(route)
            .arg(request_id)
            .arg(now_ms)
            .arg(keys::ADMISSION_MARKER_TTL_S)
            .invoke_async(&mut conn)
            .await?;
        let int = |i: usize| super::projection::int_at(&reply, i, "admit");
        match int(0)? {
            1 => Ok(Admission::Admitted(Debit {
                remaining: Millicredits::new(int(1)?),
                from_non_transferable: Millicredits::new(int(2)?),
                from_transferable: Millicredits::new(int(3)?),
            })),
            0 => Ok(Admission::Insufficient {
                balance: Millicredits::new(int(1)?),
            }),
            -1 => Ok(Admission::NoAccount),
            -2 => Ok(Admission::GivenUp),
            other => Err(StoreError::Reply(format!("admit: unknown status {other}"))),
        }
    }

    /// Gives back what `debit` took and records a refund event, once per request id.
    /// Returns the balance after, or `None` if the request was already refunded.
    pub async fn refund(
        &self,
        customer: &CustomerId,
        debit: &Debit,
        route: &str,
        request_id: &str,
        now_ms: i64,
        reason: &str,
    ) -> Result<Option<Millicredits>, StoreError> {
        let split = Some((debit.from_non_transferable, debit.from_transferable));
        self.run_refund(customer, split, route, request_id, now_ms, reason)
            .await
    }

    /// Refunds a request whose admission answer never arrived: if the admission marker
    /// says it debited, gives that back (once per request id, with a refund event); if not,
    /// marks the request given up, so an admission still in flight refuses
    /// ([`Admission::GivenUp`]) instead of debiting. Safe to retry. Returns whether credits
    /// were given back by this call.
    pub async fn refund_if_admitted(
        &self,
        customer: &CustomerId,
        route: &str,
        request_id: &str,
        now_ms: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let refunded = self
            .run_refund(customer, None, route, request_id, now_ms, reason)
            .await?;
        Ok(refunded.is_some())
    }

    /// The refund script with a known split, or `None` to read it from the admission
    /// marker. The balance after, or `None` when nothing was given back.
    async fn run_refund(
        &self,
        customer: &CustomerId,
        split: Option<(Millicredits, Millicredits)>,
        route: &str,
        request_id: &str,
        now_ms: i64,
        reason: &str,
    ) -> Result<Option<Millicredits>, StoreError> {
        let (from_nt, from_tr) = match split {
            Some((nt, tr)) => (nt.get().to_string(), tr.get().to_string()),
            None => (String::new(), String::new()),
        };
        let mut conn = self.conn().await?;
        let reply: Value = self
            .refund
            .key(keys::account(customer))
            .key(keys::usage_stream_of(customer))
            .key(keys::refund_marker(customer, request_id))
            .key(keys::admission_marker(customer, request_id))
            .arg(from_nt)
            .arg(from_tr)
            .arg(customer.as_str())
            .arg(route)
            .arg(request_id)
            .arg(now_ms)
            .arg(REFUND_MARKER_TTL_S)
            .arg(reason)
            .arg(keys::ADMISSION_MARKER_TTL_S)
            .invoke_async(&mut conn)
            .await?;
        match reply {
            // -1: refunded before; -2: never admitted (now marked given up).
            Value::Int(-1 | -2) => Ok(None),
            Value::BulkString(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(|n| Some(Millicredits::new(n)))
                .ok_or_else(|| StoreError::Reply("refund: balance is not an integer".into())),
            other => Err(StoreError::Reply(format!(
                "refund: unexpected reply {other:?}"
            ))),
        }
    }

    /// A customer's account, if Redis has it.
    pub async fn account(&self, customer: &CustomerId) -> Result<Option<Account>, StoreError> {
        let (plan, nt, tr): (Option<String>, Option<i64>, Option<i64>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(keys::account(customer))
                    .arg(field::PLAN)
                    .arg(field::NON_TRANSFERABLE)
                    .arg(field::TRANSFERABLE),
            )
            .await?;
        Ok(plan.map(|plan| Account {
            plan,
            non_transferable: Millicredits::new(nt.unwrap_or(0)),
            transferable: Millicredits::new(tr.unwrap_or(0)),
        }))
    }

    /// Writes a whole account (projection rebuild, seeding).
    pub async fn put_account(
        &self,
        customer: &CustomerId,
        account: &Account,
    ) -> Result<(), StoreError> {
        self.query::<()>(
            redis::cmd("HSET")
                .arg(keys::account(customer))
                .arg(field::PLAN)
                .arg(&account.plan)
                .arg(field::NON_TRANSFERABLE)
                .arg(account.non_transferable.get())
                .arg(field::TRANSFERABLE)
                .arg(account.transferable.get()),
        )
        .await
    }

    /// Sets a customer's plan, leaving balances alone.
    pub async fn set_plan(&self, customer: &CustomerId, plan: &str) -> Result<(), StoreError> {
        self.query::<()>(
            redis::cmd("HSET")
                .arg(keys::account(customer))
                .arg(field::PLAN)
                .arg(plan),
        )
        .await
    }

    /// Adds (or with negatives, removes) credits without reading first, so concurrent
    /// debits by the proxy are never overwritten.
    pub async fn add_credits(
        &self,
        customer: &CustomerId,
        non_transferable: Millicredits,
        transferable: Millicredits,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let account = keys::account(customer);
        redis::pipe()
            .atomic()
            .hincr(&account, field::NON_TRANSFERABLE, non_transferable.get())
            .hincr(&account, field::TRANSFERABLE, transferable.get())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Maps an API key hash to its customer.
    pub async fn put_api_key(
        &self,
        hash: &ApiKeyHash,
        customer: &CustomerId,
    ) -> Result<(), StoreError> {
        self.query::<()>(
            redis::cmd("SET")
                .arg(keys::api_key(hash))
                .arg(customer.as_str()),
        )
        .await
    }

    /// Forgets an API key (revocation).
    pub async fn delete_api_key(&self, hash: &ApiKeyHash) -> Result<(), StoreError> {
        self.query::<()>(redis::cmd("DEL").arg(keys::api_key(hash)))
            .await
    }

    /// Marks the projection complete: lookups of unknown keys may now answer `Unknown`.
    pub async fn mark_ready(&self) -> Result<(), StoreError> {
        self.query::<()>(redis::cmd("SET").arg(keys::READY).arg("1"))
            .await
    }

    /// Whether the projection is complete.
    pub async fn is_ready(&self) -> Result<bool, StoreError> {
        self.query(redis::cmd("EXISTS").arg(keys::READY)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tls_and_cluster_urls_are_accepted() {
        for url in [
            "rediss://127.0.0.1:6380",
            "redis://127.0.0.1:6379/2",
            "redis://a:7000,redis://b:7001",
        ] {
            assert!(
                Store::connect(url, StoreOptions::default()).is_ok(),
                "{url}"
            );
        }
        assert!(Store::connect("http://nope", StoreOptions::default()).is_err());
        assert!(
            rustls::crypto::CryptoProvider::get_default().is_some(),
            "a rediss:// url installs the TLS provider, or the first connection panics"
        );
    }
}
