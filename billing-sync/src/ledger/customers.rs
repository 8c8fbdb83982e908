//! Customers as the ledger keeps them: creation on the default plan with its allowance,
//! the row lock every change of a customer's buckets takes first, and the allowance period.

use chrono::{DateTime, Months, Utc};
use shared::{CustomerId, Millicredits, Policy};
use sqlx::{Executor, FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::buckets;

/// Locks the rows of `ids` that exist, in id order (so transactions touching several
/// customers cannot deadlock); returns those ids.
pub async fn lock_customers(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A customer as stored.
#[derive(Clone, Debug, FromRow)]
pub struct Customer {
    /// `cus_…`, the id used everywhere.
    pub id: String,
    /// The operator's id for them.
    pub external_id: String,
    /// Contact.
    pub email: String,
    /// Plan name.
    pub plan: String,
    /// active, past_due, canceled.
    pub status: String,
    /// Stripe subscription, if any.
    pub stripe_subscription_id: Option<String>,
    /// monthly or yearly.
    pub subscription_interval: Option<String>,
    /// Stripe's status of the subscription.
    pub subscription_status: Option<String>,
    /// Whether the subscription ends with the period.
    pub cancel_at_period_end: bool,
    /// none, exempt, reverse.
    pub tax_exempt: String,
    /// Start of the current allowance period.
    pub period_start: DateTime<Utc>,
    /// End of the current allowance period.
    pub period_end: DateTime<Utc>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// The subscription's billing period as Stripe last said it: start.
    pub subscription_period_start: Option<DateTime<Utc>>,
    /// … and end.
    pub subscription_period_end: Option<DateTime<Utc>>,
}

impl Customer {
    /// The id, typed.
    pub fn customer_id(&self) -> Result<CustomerId, sqlx::Error> {
        stored_customer_id(&self.id)
    }
}

/// A customer id read from Postgres, typed; one that does not parse is a decoding error.
pub fn stored_customer_id(id: &str) -> Result<CustomerId, sqlx::Error> {
    CustomerId::parse(id).map_err(|e| sqlx::Error::Decode(e.into()))
}

/// The columns [`Customer`] reads, for every `SELECT` of whole customers (a literal, so
/// queries stay static text: `concat!("SELECT ", customer_columns!(), " FROM …")`).
#[macro_export]
macro_rules! customer_columns {
    () => {
        "id, external_id, email, plan, status, stripe_subscription_id, subscription_interval, \
         subscription_status, cancel_at_period_end, tax_exempt, period_start, period_end, \
         created_at, subscription_period_start, subscription_period_end"
    };
}

/// A customer by id.
pub async fn customer<'e, E: Executor<'e, Database = Postgres>>(
    exec: E,
    id: &str,
) -> Result<Option<Customer>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        customer_columns!(),
        " FROM customers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(exec)
    .await
}

/// The end of a monthly allowance period that starts at `start` (free plans, and the months
/// inside a yearly plan's paid year; a paid monthly period is Stripe's, never computed).
pub fn period_end_after(start: DateTime<Utc>) -> DateTime<Utc> {
    start
        .checked_add_months(Months::new(1))
        .unwrap_or(start + chrono::Duration::days(31))
}

/// Creates a customer on the policy's default plan with its whole allowance, or finds the
/// one with this `external_id`. Returns it, whether it was created, and the balances
/// granted (`nt`, `tr`) to add to Redis.
pub async fn create_customer(
    tx: &mut Transaction<'_, Postgres>,
    policy: &Policy,
    external_id: &str,
    email: &str,
    now: DateTime<Utc>,
) -> Result<(Customer, bool, (Millicredits, Millicredits)), sqlx::Error> {
    let id = format!("cus_{}", Uuid::now_v7().simple());
    let period_end = period_end_after(now);
    let inserted: Option<(String,)> = sqlx::query_as(
        "INSERT INTO customers (id, external_id, email, plan, period_start, period_end, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $5)
         ON CONFLICT (external_id) DO NOTHING RETURNING id",
    )
    .bind(&id)
    .bind(external_id)
    .bind(email)
    .bind(&policy.default_plan)
    .bind(now)
    .bind(period_end)
    .fetch_optional(&mut **tx)
    .await?;
    let (id, created) = match inserted {
        Some((id,)) => (id, true),
        None => {
            let (id,): (String,) =
                sqlx::query_as("SELECT id FROM customers WHERE external_id = $1")
                    .bind(external_id)
                    .fetch_one(&mut **tx)
                    .await?;
            (id, false)
        }
    };
    let mut granted = (Millicredits::ZERO, Millicredits::ZERO);
    if created && let Some(plan) = policy.plans.get(&policy.default_plan) {
        let typed = stored_customer_id(&id)?;
        granted = buckets::allocate_allowance(tx, &typed, plan, now, period_end, None).await?;
    }
    let customer = customer(&mut **tx, &id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok((customer, created, granted))
}
