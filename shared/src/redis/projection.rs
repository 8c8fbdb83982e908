//! What billing-sync needs beyond [`Store`]'s request path: taking credits atomically with
//! the proxy's debits (transfers, expiries) and reconciling an account against the ledger.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::keys;
use super::store::{Store, StoreError};
use crate::credits::Millicredits;
use crate::ids::CustomerId;

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("take.lua")));
static RECONCILE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("unread.lua"),
        include_str!("reconcile.lua")
    ))
});

/// One of the two balance fields of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceField {
    /// `nt`: non-transferable, spent first.
    NonTransferable,
    /// `tr`: transferable.
    Transferable,
}

impl BalanceField {
    fn name(self) -> &'static str {
        match self {
            BalanceField::NonTransferable => keys::field::NON_TRANSFERABLE,
            BalanceField::Transferable => keys::field::TRANSFERABLE,
        }
    }
}

/// How much [`Store::take`] may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeMode {
    /// The whole amount or nothing; the field never goes below zero (transfers).
    All,
    /// As much as the field holds, up to the amount (expiries).
    UpTo,
}

/// The outcome of [`Store::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// This much was taken.
    Taken(Millicredits),
    /// [`TakeMode::All`] only: the field holds less than asked; nothing changed.
    Insufficient(Millicredits),
    /// Redis has no such account (lost its data); nothing changed.
    NoAccount,
}

/// Unread stream entries [`Store::reconcile_account`] reads at most for one account; with
/// more unread the consumer is behind and the account is left alone until it catches up.
pub const RECONCILE_UNREAD_LEN_MAX: usize = 1000;

/// The outcome of [`Store::reconcile_account`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconcile {
    /// Compared (and written where it had to be).
    Done(Reconciled),
    /// More than [`RECONCILE_UNREAD_LEN_MAX`] entries of the account's stream are unread:
    /// nothing was compared or changed.
    Lagging,
}

/// What [`Store::reconcile_account`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconciled {
    /// Whether the account existed before.
    pub existed: bool,
    /// Balances found: (non-transferable, transferable).
    pub found: (Millicredits, Millicredits),
    /// Balances the ledger implies after the unread stream events.
    pub expected: (Millicredits, Millicredits),
    /// Whether the account was written.
    pub written: bool,
}

/// Element `i` of a script's reply as an integer (Redis may send it as text).
pub(super) fn int_at(reply: &[Value], i: usize, what: &str) -> Result<i64, StoreError> {
    match reply.get(i) {
        Some(Value::Int(n)) => Ok(*n),
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Reply(format!("{what}: element {i} is not an integer"))),
        other => Err(StoreError::Reply(format!(
            "{what}: element {i} is {other:?}"
        ))),
    }
}

impl Store {
    /// Takes `amount` from one balance field of `customer`'s account, atomically with
    /// concurrent admissions (the definitive check of a transfer).
    pub async fn take(
        &self,
        customer: &CustomerId,
        field: BalanceField,
        amount: Millicredits,
        mode: TakeMode,
    ) -> Result<Taken, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Vec<Value> = TAKE
            .key(keys::account(customer))
            .arg(field.name())
            .arg(amount.get())
            .arg(match mode {
                TakeMode::All => "all",
                TakeMode::UpTo => "upto",
            })
            .invoke_async(&mut conn)
            .await?;
        match int_at(&reply, 0, "take")? {
            1 => Ok(Taken::Taken(Millicredits::new(int_at(&reply, 1, "take")?))),
            0 => Ok(Taken::Insufficient(Millicredits::new(int_at(
                &reply, 1, "take",
            )?))),
            -1 => Ok(Taken::NoAccount),
            other => Err(StoreError::Reply(format!("take: unknown status {other}"))),
        }
    }

    /// Compares `customer`'s account with the ledger's balances (`nt`, `tr`), counting the
    /// usage events `group` has not read yet, and writes the expected balances when they
    /// drifted (or always, with `set`: the rebuild after data loss). Bounded: see
    /// [`Reconcile::Lagging`].
    pub async fn reconcile_account(
        &self,
        customer: &CustomerId,
        group: &str,
        plan: &str,
        ledger: (Millicredits, Millicredits),
        set: bool,
    ) -> Result<Reconcile, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Vec<Value> = RECONCILE
            .key(keys::account(customer))
            .key(keys::usage_stream_of(customer))
            .arg(group)
            .arg(customer.as_str())
            .arg(plan)
            .arg(ledger.0.get())
            .arg(ledger.1.get())
            .arg(if set { "set" } else { "repair" })
            .arg(RECONCILE_UNREAD_LEN_MAX)
            .invoke_async(&mut conn)
            .await?;
        let n = |i| int_at(&reply, i, "reconcile");
        if n(0)? == -2 {
            return Ok(Reconcile::Lagging);
        }
        Ok(Reconcile::Done(Reconciled {
            existed: n(0)? == 1,
            found: (Millicredits::new(n(1)?), Millicredits::new(n(2)?)),
            expected: (Millicredits::new(n(3)?), Millicredits::new(n(4)?)),
            written: n(5)? == 1,
        }))
    }
}

impl Store {
    /// Runs a pipeline in one round trip (the consumer's reads, acknowledgements and trims).
    pub(super) async fn query_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        Ok(pipe.query_async(&mut conn).await?)
    }
}
