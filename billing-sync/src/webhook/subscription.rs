//! `customer.subscription.created|updated|deleted`: the subscription is read again from
//! Stripe and its current state applied, so an older event never overwrites newer state.

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::policy::Interval;
use sqlx::{Postgres, Transaction};
use stripe_billing::subscription::RetrieveSubscription;

use super::plan::{self, Effects};
use super::{Event, ProcessError, begin, finish};
use crate::State;
use crate::ledger::Customer;
use crate::stripe::{Key, checkout};

/// A subscription as Stripe says it is now.
#[derive(Clone, Debug)]
pub struct SubState {
    /// `sub_…`.
    pub id: String,
    /// Stripe's status (`active`, `past_due`, `canceled`, …).
    pub status: String,
    /// The Stripe Customer.
    pub stripe_customer: String,
    /// Our customer id from the metadata.
    pub our_customer: Option<String>,
    /// Our plan, from the price's lookup key (or the metadata).
    pub plan: Option<String>,
    /// Billing interval.
    pub interval: Option<Interval>,
    /// Start of the billing period (the item's `current_period_start`).
    pub period_start: Option<DateTime<Utc>>,
    /// End of the billing period (the item's `current_period_end`).
    pub period_end: Option<DateTime<Utc>>,
    /// Cancels at the period's end.
    pub cancel_at_period_end: bool,
}

impl SubState {
    /// Paid up: the plan applies.
    pub fn is_active(&self) -> bool {
        matches!(self.status.as_str(), "active" | "trialing")
    }
    /// A payment failed: the plan applies until the grace period ends.
    pub fn is_past_due(&self) -> bool {
        matches!(self.status.as_str(), "past_due" | "unpaid")
    }
    /// Over: back to the default plan.
    pub fn has_ended(&self) -> bool {
        matches!(self.status.as_str(), "canceled" | "incomplete_expired")
    }
}

/// Splits `creditgate_plan_<plan>_<interval>`.
pub fn plan_from_lookup_key(key: &str) -> Option<(String, Interval)> {
    let rest = key.strip_prefix("creditgate_plan_")?;
    let (plan, interval) = rest.rsplit_once('_')?;
    let interval = match interval {
        "monthly" => Interval::Monthly,
        "yearly" => Interval::Yearly,
        _ => return None,
    };
    Some((plan.to_owned(), interval))
}

/// Reads the subscription from Stripe.
pub async fn fetch(state: &State, id: &str) -> Result<SubState, ProcessError> {
    let stripe = state.stripe.as_ref().ok_or(ProcessError::NotConfigured)?;
    let sub = stripe
        .call(&RetrieveSubscription::new(id), Key::Read)
        .await?;
    let item = sub.items.data.first();
    // The price's own metadata names its plan for good; its lookup key moves to a newer Price
    // when the catalog changes, and the subscription's metadata is stale after a portal switch.
    let from_price_metadata = item.and_then(|i| {
        let plan = i.price.metadata.get(checkout::METADATA_PLAN)?;
        let interval = match i
            .price
            .metadata
            .get(checkout::METADATA_INTERVAL)
            .map(String::as_str)
        {
            Some("yearly") => Interval::Yearly,
            _ => Interval::Monthly,
        };
        Some((plan.clone(), interval))
    });
    let from_price = item
        .and_then(|i| i.price.lookup_key.as_deref())
        .and_then(plan_from_lookup_key);
    let from_metadata = sub.metadata.get(checkout::METADATA_PLAN).map(|p| {
        let interval = sub
            .metadata
            .get(checkout::METADATA_INTERVAL)
            .map(String::as_str);
        (
            p.clone(),
            if interval == Some("yearly") {
                Interval::Yearly
            } else {
                Interval::Monthly
            },
        )
    });
    let (plan, interval) = match from_price_metadata.or(from_price).or(from_metadata) {
        Some((p, i)) => (Some(p), Some(i)),
        None => (None, None),
    };
    Ok(SubState {
        id: sub.id.to_string(),
        status: sub.status.as_str().to_owned(),
        stripe_customer: sub.customer.id().to_string(),
        our_customer: sub.metadata.get(checkout::METADATA_CUSTOMER).cloned(),
        plan,
        interval,
        period_start: item.and_then(|i| DateTime::from_timestamp(i.current_period_start, 0)),
        period_end: item.and_then(|i| DateTime::from_timestamp(i.current_period_end, 0)),
        cancel_at_period_end: sub.cancel_at_period_end,
    })
}

/// The subscription id an object names (`id` of a subscription, `subscription` of an
/// invoice or session, or an invoice's `parent.subscription_details.subscription`).
pub fn subscription_id(object: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    if object["object"] == "subscription" {
        return text(&object["id"]);
    }
    text(&object["subscription"])
        .or_else(|| text(&object["parent"]["subscription_details"]["subscription"]))
}

/// Handles the three subscription events alike.
pub async fn handle(state: &State, event: &Event) -> Result<Option<Effects>, ProcessError> {
    let Some(id) = subscription_id(&event.object) else {
        let Some(tx) = begin(state, &event.id).await? else {
            return Ok(None);
        };
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    let sub = fetch(state, &id).await?;
    let Some(mut tx) = begin(state, &event.id).await? else {
        return Ok(None);
    };
    let Some(customer) = plan::find_customer(
        &mut tx,
        Some(&sub.stripe_customer),
        sub.our_customer.as_deref(),
    )
    .await?
    else {
        tracing::warn!(subscription = %sub.id, "subscription of an unknown customer; recorded only");
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    let mut effects = Effects::on(&customer.id);
    apply(&mut tx, state, &customer, &sub, state.now(), &mut effects).await?;
    effects.projection = Some(finish(tx, &event.id).await?);
    Ok(Some(effects))
}

/// Writes the subscription's state to the customer and changes plan where it must:
/// a new subscription ends the free allowance (the invoice grants the paid one), an ended
/// one returns the customer to the default plan with its allowance.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    customer: &Customer,
    sub: &SubState,
    now: DateTime<Utc>,
    effects: &mut Effects,
) -> Result<(), sqlx::Error> {
    // A late event of an older subscription must not touch the current one.
    if let Some(current) = &customer.stripe_subscription_id
        && *current != sub.id
        && !sub.is_active()
        && !sub.is_past_due()
    {
        return Ok(());
    }
    let status = if sub.is_active() {
        "active"
    } else if sub.is_past_due() {
        "past_due"
    } else if sub.has_ended() {
        "canceled"
    } else {
        // incomplete, paused: wait for payment; nothing changes yet.
        customer.status.as_str()
    };
    sqlx::query(
        "UPDATE customers SET stripe_customer_id = COALESCE(stripe_customer_id, $2), stripe_subscription_id = $3,
             subscription_interval = $4, subscription_status = $5, cancel_at_period_end = $6,
             subscription_period_end = $7, status = $8,
             past_due_since = CASE WHEN $8 = 'past_due' THEN COALESCE(past_due_since, $9) ELSE NULL END,
             subscription_period_start = $10
         WHERE id = $1",
    )
    .bind(&customer.id)
    .bind(&sub.stripe_customer)
    .bind(&sub.id)
    .bind(sub.interval.map(Interval::as_str))
    .bind(&sub.status)
    .bind(sub.cancel_at_period_end)
    .bind(sub.period_end)
    .bind(status)
    .bind(now)
    .bind(sub.period_start)
    .execute(&mut **tx)
    .await?;

    let policy = state.policy();
    let target = if sub.has_ended() {
        Some(policy.default_plan.clone())
    } else if sub.is_active() || sub.is_past_due() {
        sub.plan
            .clone()
            .filter(|p| policy.plans.get(p).is_some_and(|plan| plan.is_paid()))
    } else {
        None
    };
    let Some(target) = target else { return Ok(()) };
    if target == customer.plan {
        return Ok(());
    }
    let was_paid = policy
        .plans
        .get(&customer.plan)
        .is_some_and(|p| p.is_paid());
    let to_paid = policy.plans.get(&target).is_some_and(|p| p.is_paid());
    if was_paid && to_paid {
        // An upgrade or downgrade between paid plans keeps this period's allowance; the
        // proration invoice (upgrade) or the next renewal (downgrade) grants the difference.
        sqlx::query("UPDATE customers SET plan = $2 WHERE id = $1")
            .bind(&customer.id)
            .bind(&target)
            .execute(&mut **tx)
            .await?;
        effects.plan = Some(target.clone());
        return crate::ledger::audit(
            tx,
            "stripe",
            "plan.changed",
            Some(&customer.id),
            Some(serde_json::json!({"plan": customer.plan})),
            Some(serde_json::json!({"plan": target})),
        )
        .await;
    }
    plan::switch(tx, state, customer, &target, !to_paid, now, effects).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_keys_name_plan_and_interval() {
        assert_eq!(
            plan_from_lookup_key("creditgate_plan_mid_monthly"),
            Some(("mid".into(), Interval::Monthly))
        );
        assert_eq!(
            plan_from_lookup_key("creditgate_plan_pro_max_yearly"),
            Some(("pro_max".into(), Interval::Yearly))
        );
        assert_eq!(plan_from_lookup_key("creditgate_pack_small"), None);
    }
}
