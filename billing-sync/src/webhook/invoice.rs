//! `invoice.paid` (the period's plan allowance, once per invoice; a mid-period upgrade's
//! prorated difference), `invoice.payment_failed` (past due, then the grace period), and
//! `invoice.upcoming` (a renewal notice).

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::Millicredits;
use shared::policy::Interval;
use uuid::Uuid;

use super::plan::{self, Effects};
use super::subscription::{self, SubState};
use super::{Event, ProcessError, begin, finish};
use crate::State;
use crate::ledger::{self, BucketKind, Grant, TxnKey};

/// The period an invoice pays for, as Stripe says it: its subscription line's period (the
/// latest, if several), else the subscription's current period.
fn paid_period(invoice: &Value, sub: &SubState) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let from_lines = invoice["lines"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["proration"] != true)
        .filter_map(|l| Some((l["period"]["end"].as_i64()?, l["period"]["start"].as_i64()?)))
        .filter(|(end, start)| end > start)
        .max()
        .and_then(|(end, start)| {
            Some((
                DateTime::from_timestamp(start, 0)?,
                DateTime::from_timestamp(end, 0)?,
            ))
        });
    from_lines.or(match (sub.period_start, sub.period_end) {
        (Some(start), Some(end)) if end > start => Some((start, end)),
        _ => None,
    })
}

async fn invoice_context(state: &State, event: &Event) -> Result<Option<SubState>, ProcessError> {
    match subscription::subscription_id(&event.object) {
        Some(id) => Ok(Some(subscription::fetch(state, &id).await?)),
        None => Ok(None),
    }
}

/// `invoice.paid`.
pub async fn paid(state: &State, event: &Event) -> Result<Option<Effects>, ProcessError> {
    let invoice = &event.object;
    let invoice_id = invoice["id"].as_str().unwrap_or_default().to_owned();
    // A pack's receipt invoice has no subscription: the session already credited it.
    let sub = invoice_context(state, event).await?;
    let Some(mut tx) = begin(state, &event.id).await? else {
        return Ok(None);
    };
    let Some(sub) = sub else {
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    let Some(customer) = plan::find_customer(
        &mut tx,
        Some(&sub.stripe_customer),
        sub.our_customer.as_deref(),
    )
    .await?
    else {
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    let now = state.now();
    let mut effects = Effects::on(&customer.id);
    subscription::apply(&mut tx, state, &customer, &sub, now, &mut effects).await?;
    let Some(plan_name) = sub.plan.clone().filter(|_| sub.is_active()) else {
        // Paid, but the subscription is over (or unknown to the policy): nothing to grant.
        effects.projection = Some(finish(tx, &event.id).await?);
        return Ok(Some(effects));
    };
    let Some(customer) = ledger::customer(&mut **tx, &customer.id).await? else {
        effects.projection = Some(finish(tx, &event.id).await?);
        return Ok(Some(effects));
    };
    let allowance_plan: Option<(Option<String>,)> =
        sqlx::query_as("SELECT allowance_plan FROM customers WHERE id = $1")
            .bind(&customer.id)
            .fetch_optional(&mut **tx)
            .await?;
    let allowance_plan = allowance_plan.and_then(|(p,)| p);
    let policy = state.policy();
    let held = allowance_plan.as_deref().and_then(|p| policy.plans.get(p));
    let held_is_paid = held.is_some_and(|p| p.is_paid());
    let typed = customer.customer_id()?;

    if invoice["billing_reason"] == "subscription_update"
        && held_is_paid
        && allowance_plan.as_deref() != Some(&plan_name)
    {
        // Mid-period upgrade: the difference, prorated to the time left in the period.
        if let (Some(old), Some(new)) = (held, policy.plans.get(&plan_name)) {
            let diff = new.credits_per_month.get() - old.credits_per_month.get();
            let total = (customer.period_end - customer.period_start)
                .num_seconds()
                .max(1);
            let left = (customer.period_end - now).num_seconds().clamp(0, total);
            // Rounded down to the millicredit: never more than the time left pays for.
            let prorated =
                i64::try_from(i128::from(diff) * i128::from(left) / i128::from(total)).unwrap_or(0);
            if prorated > 0 {
                let grant = Grant {
                    bucket: Uuid::now_v7(),
                    kind: BucketKind::Granted,
                    amount: Millicredits::new(prorated),
                    transferable: true,
                    expires_at: Some(customer.period_end),
                    reason: format!("upgrade {} → {} ({invoice_id})", old.name, new.name),
                    paid_by: None,
                };
                let key = TxnKey::upgrade(&typed, &invoice_id);
                if ledger::credit(&mut tx, &typed, &grant, key, now)
                    .await?
                    .is_some()
                {
                    effects.tr += prorated;
                }
            }
        }
        sqlx::query("UPDATE customers SET allowance_plan = $2 WHERE id = $1")
            .bind(&customer.id)
            .bind(&plan_name)
            .execute(&mut **tx)
            .await?;
    } else if let Some((start, end)) = paid_period(invoice, &sub).filter(|_| !invoice_id.is_empty())
    {
        // The period this invoice paid for starts now (never before payment): its allowance,
        // once per invoice. A yearly invoice grants the year's first month; the reconciler
        // grants the others. A period already over when paid grants nothing.
        let end = if sub.interval == Some(Interval::Yearly) {
            ledger::period_end_after(start).min(end)
        } else {
            end
        };
        if end > now {
            let key = TxnKey::allocation_by_invoice(&typed, &invoice_id);
            plan::start_period(
                &mut tx,
                state,
                &customer.id,
                &plan_name,
                start,
                end,
                Some(key),
                &mut effects,
            )
            .await?;
        } else {
            tracing::info!(customer_id = %customer.id, invoice = %invoice_id, "invoice paid after its period ended; no allowance");
        }
    } else {
        tracing::error!(customer_id = %customer.id, invoice = %invoice_id, "paid invoice names no period; no allowance granted");
    }
    ledger::audit(
        &mut tx,
        "stripe",
        "invoice.paid",
        Some(&customer.id),
        None,
        Some(serde_json::json!({"invoice": invoice_id, "plan": plan_name, "billing_reason": invoice["billing_reason"]})),
    )
    .await?;
    effects.projection = Some(finish(tx, &event.id).await?);
    Ok(Some(effects))
}

/// `invoice.payment_failed`: the subscription's state (past due) is applied; the customer
/// keeps the plan until `stripe.past_due_grace_days` pass without payment.
pub async fn payment_failed(state: &State, event: &Event) -> Result<Option<Effects>, ProcessError> {
    let sub = invoice_context(state, event).await?;
    let Some(mut tx) = begin(state, &event.id).await? else {
        return Ok(None);
    };
    let stripe_customer = event.object["customer"].as_str().map(str::to_owned);
    let customer = match &sub {
        Some(sub) => {
            plan::find_customer(
                &mut tx,
                Some(&sub.stripe_customer),
                sub.our_customer.as_deref(),
            )
            .await?
        }
        None => plan::find_customer(&mut tx, stripe_customer.as_deref(), None).await?,
    };
    let Some(customer) = customer else {
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    let now = state.now();
    let mut effects = Effects::on(&customer.id);
    if let Some(sub) = &sub {
        subscription::apply(&mut tx, state, &customer, sub, now, &mut effects).await?;
    }
    // Whatever Stripe's status says, a failed payment opens the grace period.
    sqlx::query(
        "UPDATE customers SET status = 'past_due', past_due_since = COALESCE(past_due_since, $2) WHERE id = $1 AND plan <> $3",
    )
    .bind(&customer.id)
    .bind(now)
    .bind(&state.policy().default_plan)
    .execute(&mut **tx)
    .await?;
    ledger::audit(
        &mut tx,
        "stripe",
        "payment.failed",
        Some(&customer.id),
        None,
        Some(serde_json::json!({"invoice": event.object["id"], "grace_days": state.policy().stripe.past_due_grace_days})),
    )
    .await?;
    // The notice to the customer (the notifications issue sends it); logged for now.
    tracing::warn!(customer_id = %customer.id, invoice = %event.object["id"], "payment failed; customer is past due");
    effects.projection = Some(finish(tx, &event.id).await?);
    Ok(Some(effects))
}

/// `invoice.upcoming`: a renewal notice, recorded in the audit log.
pub async fn upcoming(state: &State, event: &Event) -> Result<Option<Effects>, ProcessError> {
    let Some(mut tx) = begin(state, &event.id).await? else {
        return Ok(None);
    };
    let stripe_customer = event.object["customer"].as_str().map(str::to_owned);
    if let Some(customer) = plan::find_customer(&mut tx, stripe_customer.as_deref(), None).await? {
        ledger::audit(
            &mut tx,
            "stripe",
            "invoice.upcoming",
            Some(&customer.id),
            None,
            Some(serde_json::json!({"amount_due": event.object["amount_due"], "currency": event.object["currency"],
                                    "next_payment_attempt": event.object["next_payment_attempt"]})),
        )
        .await?;
        tracing::info!(customer_id = %customer.id, "renewal notice");
    }
    finish(tx, &event.id).await?;
    Ok(Some(Effects::none()))
}
