//! `/v1/subscriptions`: retrieve, list by customer, update, cancel; and the subscription life
//! events the control endpoints drive (start from Checkout, renew, failed payment, cancel).
//!
//! Since Stripe API 2025-03-31 the billing period lives on the subscription *items*
//! (`items.data[].current_period_start/end`), not on the subscription; the stand-in follows
//! the API version async-stripe rc.10 speaks.

use chrono::{DateTime, Months, Utc};
use serde_json::{Map, Value, json};

use http::Method;

use super::{Call, Ctx, NewEvent, Reply, expanded, invoices};
use crate::error::ApiError;
use crate::fixtures;
use crate::ids::new_id;
use crate::params::Params;
use crate::state::{State, str_field};

/// Stripe's subscription statuses; `status=all` lists them all (default: all but canceled).
const STATUSES: [&str; 9] = [
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "trialing",
    "paused",
    "all",
];

/// Items one subscription may have (Stripe's limit).
const ITEMS_MAX: usize = 20;

/// A renewal's result: the subscription, its new invoice, the events to send.
pub type Renewal = (Value, Value, Vec<NewEvent>);

/// `GET /v1/subscriptions/{id}`
pub fn retrieve(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let sub = state.fetch("subscription", id, "id")?;
    Ok(Reply::body(expanded(state, call, sub)?))
}

/// `GET /v1/subscriptions` (filters `customer`, `price`, `status`).
pub fn list(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let customer = p.str("customer")?.map(str::to_owned);
    let price = p.str("price")?.map(str::to_owned);
    let status = p.one_of("status", &STATUSES)?.map(str::to_owned);
    let list = state.list("subscription", "/v1/subscriptions", p, |sub| {
        customer
            .as_deref()
            .is_none_or(|c| str_field(sub, "customer") == c)
            && price
                .as_deref()
                .is_none_or(|pr| item_price_ids(sub).iter().any(|id| id == pr))
            && match status.as_deref() {
                None => str_field(sub, "status") != "canceled",
                Some("all") => true,
                Some(s) => str_field(sub, "status") == s,
            }
    })?;
    Ok(Reply::body(list))
}

/// `POST /v1/subscriptions/{id}`: `metadata`, `cancel_at_period_end`, `items[i][id|price]`
/// (switching plans), `proration_behavior`. Emits `customer.subscription.updated`; an upgrade
/// with `proration_behavior=always_invoice` also makes a paid proration invoice
/// (`billing_reason: subscription_update`) and emits `invoice.paid` after it.
pub fn update(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let p = call.params;
    let before = state.fetch("subscription", id, "id")?;
    if str_field(&before, "status") == "canceled" {
        return Err(ApiError::invalid(format!(
            "A canceled subscription can only update its cancellation_details and metadata. ({id})"
        )));
    }
    let mut sub = before.clone();
    let mut previous = Map::new();
    if let Some(cancel) = p.bool("cancel_at_period_end")? {
        if before["cancel_at_period_end"] != json!(cancel) {
            previous.insert(
                "cancel_at_period_end".into(),
                before["cancel_at_period_end"].clone(),
            );
            previous.insert("cancel_at".into(), before["cancel_at"].clone());
            previous.insert("canceled_at".into(), before["canceled_at"].clone());
        }
        sub["cancel_at_period_end"] = json!(cancel);
        sub["cancel_at"] = if cancel {
            period_end(&sub)
        } else {
            Value::Null
        };
        sub["canceled_at"] = if cancel {
            json!(call.ctx.now)
        } else {
            Value::Null
        };
    }
    let proration = p
        .one_of(
            "proration_behavior",
            &["always_invoice", "create_prorations", "none"],
        )?
        .unwrap_or("create_prorations");
    let items = p.obj_list("items")?;
    if !items.is_empty() {
        if items.len() > ITEMS_MAX {
            return Err(ApiError::bad_param("items", "too many items"));
        }
        let mut data = sub["items"]["data"].as_array().cloned().unwrap_or_default();
        for (i, item) in items.iter().enumerate() {
            let price = match item.str("price")? {
                Some(pid) => Some(state.fetch("price", pid, &format!("items[{i}][price]"))?),
                None => None,
            };
            let quantity = item.int("quantity")?;
            match item.str("id")? {
                Some(item_id) => {
                    let Some(existing) = data.iter_mut().find(|d| str_field(d, "id") == item_id)
                    else {
                        return Err(ApiError::no_such(
                            "subscription_item",
                            item_id,
                            &format!("items[{i}][id]"),
                        ));
                    };
                    if item.bool("deleted")? == Some(true) {
                        existing["deleted"] = json!(true);
                        continue;
                    }
                    if let Some(price) = price {
                        existing["plan"] = plan_from_price(&price);
                        existing["price"] = price;
                    }
                    if let Some(q) = quantity {
                        existing["quantity"] = json!(q);
                    }
                }
                None => {
                    let price = price
                        .ok_or_else(|| ApiError::missing_param(&format!("items[{i}][price]")))?;
                    let (start, end) = current_period(&sub);
                    data.push(item_json(
                        id,
                        &price,
                        quantity.unwrap_or(1),
                        call.ctx.now,
                        start,
                        end,
                    ));
                }
            }
        }
        data.retain(|d| d.get("deleted") != Some(&json!(true)));
        previous.insert("items".into(), before["items"].clone());
        sub["items"]["data"] = Value::Array(data);
    }
    if let Some(Value::Object(current)) = sub.get_mut("metadata") {
        p.merge_metadata(current)?;
    }
    if sub["metadata"] != before["metadata"] {
        previous.insert("metadata".into(), before["metadata"].clone());
    }
    // An upgrade with `always_invoice` is charged at once: the difference for the time left.
    let (old_amount, new_amount) = (recurring_amount(&before), recurring_amount(&sub));
    let mut proration_invoice = None;
    if proration == "always_invoice" && new_amount > old_amount {
        let (start, end) = current_period(&sub);
        let left = (end - call.ctx.now).clamp(0, (end - start).max(1));
        let amount = (new_amount - old_amount).saturating_mul(left) / (end - start).max(1);
        let customer_id = str_field(&sub, "customer").to_owned();
        let customer = state.fetch("customer", &customer_id, "customer")?;
        let automatic_tax = sub["automatic_tax"]["enabled"] == json!(true);
        let inv = invoices::create_for_proration(
            state,
            call.ctx,
            &sub,
            &customer,
            amount,
            automatic_tax,
        )?;
        previous.insert("latest_invoice".into(), before["latest_invoice"].clone());
        sub["latest_invoice"] = json!(str_field(&inv, "id"));
        proration_invoice = Some(inv);
    }
    let sub = state.replace(sub);
    let mut events = Vec::new();
    if !previous.is_empty() {
        events.push(NewEvent {
            type_: "customer.subscription.updated".into(),
            object: sub.clone(),
            previous_attributes: Some(Value::Object(previous)),
        });
    }
    if let Some(inv) = proration_invoice {
        events.push(NewEvent {
            type_: "invoice.paid".into(),
            object: inv,
            previous_attributes: None,
        });
    }
    Ok(Reply {
        body: expanded(state, call, sub)?,
        events,
    })
}

/// `DELETE /v1/subscriptions/{id}`: cancels now; emits `customer.subscription.deleted`.
pub fn cancel_via_api(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let (sub, events) = cancel(state, call.ctx, id, "cancellation_requested")?;
    Ok(Reply {
        body: expanded(state, call, sub)?,
        events,
    })
}

/// Cancels a subscription immediately (`customer.subscription.deleted`).
pub fn cancel(
    state: &mut State,
    ctx: &Ctx,
    id: &str,
    reason: &str,
) -> Result<(Value, Vec<NewEvent>), ApiError> {
    let mut sub = state.fetch("subscription", id, "id")?;
    if str_field(&sub, "status") == "canceled" {
        return Err(ApiError::invalid(format!(
            "No such subscription: '{id}' is already canceled"
        )));
    }
    sub["status"] = json!("canceled");
    sub["canceled_at"] = json!(ctx.now);
    sub["ended_at"] = json!(ctx.now);
    sub["cancellation_details"] = json!({"comment": null, "feedback": null, "reason": reason});
    let sub = state.replace(sub);
    let events = vec![NewEvent {
        type_: "customer.subscription.deleted".into(),
        object: sub.clone(),
        previous_attributes: None,
    }];
    Ok((sub, events))
}

/// A renewal whose payment fails: the period moves on, its invoice stays open after one
/// attempt, the subscription turns `past_due`. Events: `invoice.payment_failed`, then
/// `customer.subscription.updated`.
pub fn fail_payment(state: &mut State, ctx: &Ctx, id: &str) -> Result<Renewal, ApiError> {
    renew_inner(state, ctx, id, false)
}

/// A renewal whose payment succeeds: the period moves on and a paid invoice is made. Events:
/// `customer.subscription.updated`, then `invoice.paid`.
pub fn renew(state: &mut State, ctx: &Ctx, id: &str) -> Result<Renewal, ApiError> {
    renew_inner(state, ctx, id, true)
}

/// A retry of the latest open invoice succeeds (Stripe's dunning, or the customer paying
/// late): the invoice turns `paid`, the subscription `active` again, the period unchanged.
/// Events: `invoice.paid`, then `customer.subscription.updated`.
pub fn pay_open_invoice(state: &mut State, ctx: &Ctx, id: &str) -> Result<Renewal, ApiError> {
    let before = state.fetch("subscription", id, "id")?;
    let invoice_id = str_field(&before, "latest_invoice").to_owned();
    let mut inv = state.fetch("invoice", &invoice_id, "invoice")?;
    if str_field(&inv, "status") != "open" {
        return Err(ApiError::invalid(format!(
            "invoice {invoice_id} is {}, not open",
            str_field(&inv, "status")
        )));
    }
    let total = inv["total"].clone();
    inv["status"] = json!("paid");
    inv["amount_paid"] = total;
    inv["amount_remaining"] = json!(0);
    inv["attempt_count"] = json!(inv["attempt_count"].as_i64().unwrap_or(1) + 1);
    inv["next_payment_attempt"] = Value::Null;
    inv["auto_advance"] = json!(false);
    inv["status_transitions"]["paid_at"] = json!(ctx.now);
    let inv = state.replace(inv);
    let mut sub = before.clone();
    sub["status"] = json!("active");
    let sub = state.replace(sub);
    let events = vec![
        NewEvent {
            type_: "invoice.paid".into(),
            object: inv.clone(),
            previous_attributes: Some(json!({"status": "open"})),
        },
        NewEvent {
            type_: "customer.subscription.updated".into(),
            object: sub.clone(),
            previous_attributes: Some(json!({"status": before["status"].clone()})),
        },
    ];
    Ok((sub, inv, events))
}

fn renew_inner(state: &mut State, ctx: &Ctx, id: &str, paid: bool) -> Result<Renewal, ApiError> {
    let before = state.fetch("subscription", id, "id")?;
    if str_field(&before, "status") == "canceled" {
        return Err(ApiError::invalid(format!("subscription {id} is canceled")));
    }
    // A subscription set to cancel at period end ends instead of renewing.
    if before["cancel_at_period_end"] == json!(true) {
        let (sub, events) = cancel(state, ctx, id, "cancellation_requested")?;
        return Ok((sub, Value::Null, events));
    }
    let customer_id = str_field(&before, "customer").to_owned();
    let customer = state.fetch("customer", &customer_id, "customer")?;
    let mut sub = before.clone();
    // A downgrade scheduled in the portal takes effect with the new period.
    if let Some(price_id) = state.pending_prices.remove(id) {
        let price = state.fetch("price", &price_id, "price")?;
        if let Some(item) = sub["items"]["data"].get_mut(0) {
            item["plan"] = plan_from_price(&price);
            item["price"] = price;
        }
        sub["schedule"] = Value::Null;
    }
    if let Some(items) = sub["items"]["data"].as_array_mut() {
        for item in items {
            let start = item["current_period_end"].as_i64().unwrap_or(ctx.now);
            let (interval, count) = interval_of(&item["price"]);
            item["current_period_start"] = json!(start);
            item["current_period_end"] = json!(add_interval(start, &interval, count));
        }
    }
    let automatic_tax = sub["automatic_tax"]["enabled"] == json!(true);
    sub["status"] = json!(if paid { "active" } else { "past_due" });
    let inv = invoices::create_for_subscription(
        state,
        ctx,
        &sub,
        &customer,
        "subscription_cycle",
        paid,
        automatic_tax,
    )?;
    sub["latest_invoice"] = json!(str_field(&inv, "id"));
    let sub = state.replace(sub);
    let mut previous = json!({"items": before["items"].clone(), "latest_invoice": before["latest_invoice"].clone()});
    if before["schedule"] != sub["schedule"] {
        previous["schedule"] = before["schedule"].clone();
    }
    if before["status"] != sub["status"] {
        previous["status"] = before["status"].clone();
    }
    let updated = NewEvent {
        type_: "customer.subscription.updated".into(),
        object: sub.clone(),
        previous_attributes: Some(previous),
    };
    let invoice_event = NewEvent {
        type_: if paid {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        }
        .into(),
        object: inv.clone(),
        previous_attributes: None,
    };
    let events = if paid {
        vec![updated, invoice_event]
    } else {
        vec![invoice_event, updated]
    };
    Ok((sub, inv, events))
}

/// What the portal's cancel button does with `mode: at_period_end`: sets (or, with
/// `cancel = false`, clears) `cancel_at_period_end`; `customer.subscription.updated`.
pub fn portal_cancel_at_period_end(
    state: &mut State,
    ctx: &Ctx,
    id: &str,
    cancel: bool,
) -> Result<Renewal, ApiError> {
    let params = json!({"cancel_at_period_end": cancel.to_string()});
    let call = Call {
        method: &Method::POST,
        segments: Vec::new(),
        params: Params(&params),
        ctx,
    };
    let reply = update(state, &call, id)?;
    Ok((reply.body, Value::Null, reply.events))
}

/// What the portal's plan switch does, following the newest active portal configuration:
/// a change its `schedule_at_period_end` conditions name (a smaller amount, a shorter
/// interval) waits for the next renewal (`schedule` is set meanwhile); any other change is
/// made now with its `proration_behavior` (an upgrade with `always_invoice` is invoiced at
/// once). Events as for an API update.
pub fn portal_switch(
    state: &mut State,
    ctx: &Ctx,
    id: &str,
    price_id: &str,
) -> Result<Renewal, ApiError> {
    let mut sub = state.fetch("subscription", id, "id")?;
    let price = state.fetch("price", price_id, "price")?;
    if str_field(&price, "type") != "recurring" || price["active"] != json!(true) {
        return Err(ApiError::bad_param(
            "price",
            "the portal switches only to active recurring prices",
        ));
    }
    let item = sub["items"]["data"][0].clone();
    let item_id = str_field(&item, "id").to_owned();
    let config = state
        .all("billing_portal.configuration", |c| {
            c["active"] == json!(true)
        })
        .next()
        .cloned()
        .unwrap_or(Value::Null);
    let update_feature = &config["features"]["subscription_update"];
    let proration = update_feature["proration_behavior"]
        .as_str()
        .unwrap_or("create_prorations")
        .to_owned();
    let conditions: Vec<String> = update_feature["schedule_at_period_end"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(str::to_owned))
        .collect();
    let quantity = item["quantity"].as_i64().unwrap_or(1);
    let old_amount = recurring_amount(&sub);
    let new_amount = price["unit_amount"]
        .as_i64()
        .unwrap_or(0)
        .saturating_mul(quantity);
    let decreasing = new_amount < old_amount;
    let shortening = interval_days(&price) < interval_days(&item["price"]);
    let scheduled = (decreasing && conditions.iter().any(|c| c == "decreasing_item_amount"))
        || (shortening && conditions.iter().any(|c| c == "shortening_interval"));
    if scheduled {
        let previous = json!({"schedule": sub["schedule"].clone()});
        state
            .pending_prices
            .insert(id.to_owned(), price_id.to_owned());
        sub["schedule"] = json!(new_id("sub_sched"));
        let sub = state.replace(sub);
        let events = vec![NewEvent {
            type_: "customer.subscription.updated".into(),
            object: sub.clone(),
            previous_attributes: Some(previous),
        }];
        return Ok((sub, Value::Null, events));
    }
    state.pending_prices.remove(id);
    let params = json!({
        "items": [{"id": item_id, "price": price_id}],
        "proration_behavior": proration,
    });
    let call = Call {
        method: &Method::POST,
        segments: Vec::new(),
        params: Params(&params),
        ctx,
    };
    let reply = update(state, &call, id)?;
    let invoice = reply
        .events
        .iter()
        .find(|e| e.type_ == "invoice.paid")
        .map_or(Value::Null, |e| e.object.clone());
    Ok((reply.body, invoice, reply.events))
}

/// A price's billing interval in days (months as 30, years as 365), to compare lengths.
fn interval_days(price: &Value) -> i64 {
    let (interval, count) = interval_of(price);
    let days = match interval.as_str() {
        "day" => 1,
        "week" => 7,
        "year" => 365,
        _ => 30,
    };
    days * count
}

/// A renewal notice: `invoice.upcoming` with the next period's draft invoice (not stored;
/// the subscription does not change).
pub fn upcoming(state: &mut State, ctx: &Ctx, id: &str) -> Result<Renewal, ApiError> {
    let sub = state.fetch("subscription", id, "id")?;
    if str_field(&sub, "status") == "canceled" {
        return Err(ApiError::invalid(format!("subscription {id} is canceled")));
    }
    let customer_id = str_field(&sub, "customer").to_owned();
    let customer = state.fetch("customer", &customer_id, "customer")?;
    let mut next = sub.clone();
    if let Some(items) = next["items"]["data"].as_array_mut() {
        for item in items {
            let start = item["current_period_end"].as_i64().unwrap_or(ctx.now);
            let (interval, count) = interval_of(&item["price"]);
            item["current_period_start"] = json!(start);
            item["current_period_end"] = json!(add_interval(start, &interval, count));
        }
    }
    let automatic_tax = sub["automatic_tax"]["enabled"] == json!(true);
    let invoice = invoices::upcoming_for_subscription(state, ctx, &next, &customer, automatic_tax);
    let events = vec![NewEvent {
        type_: "invoice.upcoming".into(),
        object: invoice.clone(),
        previous_attributes: None,
    }];
    Ok((sub, invoice, events))
}

/// Creates the subscription a completed `subscription`-mode Checkout Session starts: status
/// `active`, one period of each price's interval from now, `subscription_data[metadata]`.
pub fn start(
    state: &mut State,
    ctx: &Ctx,
    customer: &Value,
    line_items: &[(String, u64)],
    metadata: &Value,
    automatic_tax: bool,
) -> Result<Value, ApiError> {
    let id = new_id("sub");
    let mut items = Vec::with_capacity(line_items.len());
    let mut currency = Value::Null;
    for (price_id, quantity) in line_items {
        let price = state.fetch("price", price_id, "price")?;
        let (interval, count) = interval_of(&price);
        currency = price["currency"].clone();
        let end = add_interval(ctx.now, &interval, count);
        items.push(item_json(
            &id,
            &price,
            i64::try_from(*quantity).unwrap_or(1),
            ctx.now,
            ctx.now,
            end,
        ));
    }
    let sub = fixtures::build(
        "subscription",
        json!({
            "id": id,
            "automatic_tax": {"enabled": automatic_tax,
                              "liability": if automatic_tax { json!({"type": "self"}) } else { Value::Null },
                              "disabled_reason": null},
            "billing_cycle_anchor": ctx.now,
            "billing_cycle_anchor_config": null,
            "billing_mode": {"type": "classic", "flexible": null},
            "billing_schedules": [],
            "billing_thresholds": null,
            "cancel_at": null,
            "cancel_at_period_end": false,
            "canceled_at": null,
            "cancellation_details": {"comment": null, "feedback": null, "reason": null},
            "created": ctx.now,
            "currency": currency,
            "customer": str_field(customer, "id"),
            "default_payment_method": new_id("pm"),
            "ended_at": null,
            "invoice_settings": {"account_tax_ids": null, "issuer": {"type": "self"}},
            "items": {"object": "list", "data": items, "has_more": false,
                      "url": format!("/v1/subscription_items?subscription={id}")},
            "latest_invoice": null,
            "managed_payments": null,
            "metadata": if metadata.is_object() { metadata.clone() } else { json!({}) },
            "next_pending_invoice_item_invoice": null,
            "pause_collection": null,
            "payment_settings": {"payment_method_options": null, "payment_method_types": null,
                                 "save_default_payment_method": "off"},
            "pending_invoice_item_interval": null,
            "pending_update": null,
            "start_date": ctx.now,
            "status": "active",
            "transfer_data": null,
            "trial_end": null,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": null,
        }),
    );
    state.insert(sub)
}

/// A subscription item for `price`, in the shape of the `subscription_item` fixture.
fn item_json(
    subscription: &str,
    price: &Value,
    quantity: i64,
    now: i64,
    start: i64,
    end: i64,
) -> Value {
    fixtures::build(
        "subscription_item",
        json!({
            "id": new_id("si"),
            "billing_thresholds": null,
            "created": now,
            "current_period_start": start,
            "current_period_end": end,
            "discounts": [],
            "metadata": {},
            "plan": plan_from_price(price),
            "price": price,
            "quantity": quantity,
            "subscription": subscription,
            "tax_rates": [],
        }),
    )
}

/// The legacy `plan` object Stripe still shows beside a recurring price.
fn plan_from_price(price: &Value) -> Value {
    let (interval, count) = interval_of(price);
    json!({
        "active": price["active"].clone(),
        "amount": price["unit_amount"].clone(),
        "amount_decimal": price["unit_amount_decimal"].clone(),
        "billing_scheme": "per_unit",
        "created": price["created"].clone(),
        "currency": price["currency"].clone(),
        "id": price["id"].clone(),
        "interval": interval,
        "interval_count": count,
        "livemode": false,
        "metadata": price["metadata"].clone(),
        "meter": null,
        "nickname": price["nickname"].clone(),
        "object": "plan",
        "product": price["product"].clone(),
        "tiers_mode": null,
        "transform_usage": null,
        "trial_period_days": null,
        "usage_type": "licensed",
    })
}

/// `(interval, interval_count)` of a recurring price (`("month", 1)` when absent).
fn interval_of(price: &Value) -> (String, i64) {
    let recurring = &price["recurring"];
    (
        recurring["interval"].as_str().unwrap_or("month").to_owned(),
        recurring["interval_count"].as_i64().unwrap_or(1).max(1),
    )
}

/// `start` plus `count` intervals, calendar-aware for months and years.
pub fn add_interval(start: i64, interval: &str, count: i64) -> i64 {
    let days = |n: i64| start.saturating_add(n.saturating_mul(86_400));
    let months = |n: i64| {
        DateTime::<Utc>::from_timestamp(start, 0)
            .and_then(|t| t.checked_add_months(Months::new(u32::try_from(n).unwrap_or(1))))
            .map_or_else(|| days(30 * n), |t| t.timestamp())
    };
    match interval {
        "day" => days(count),
        "week" => days(7 * count),
        "year" => months(12 * count),
        _ => months(count),
    }
}

/// `(start, end)` of the subscription's current period (from its first item).
pub fn current_period(sub: &Value) -> (i64, i64) {
    let item = &sub["items"]["data"][0];
    (
        item["current_period_start"].as_i64().unwrap_or(0),
        item["current_period_end"].as_i64().unwrap_or(0),
    )
}

fn period_end(sub: &Value) -> Value {
    json!(current_period(sub).1)
}

/// What one period of the subscription costs before tax, in minor units.
fn recurring_amount(sub: &Value) -> i64 {
    sub["items"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            item["price"]["unit_amount"]
                .as_i64()
                .unwrap_or(0)
                .saturating_mul(item["quantity"].as_i64().unwrap_or(1))
        })
        .fold(0, i64::saturating_add)
}

fn item_price_ids(sub: &Value) -> Vec<String> {
    sub["items"]["data"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| str_field(&i["price"], "id").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_the_calendar() {
        // 2026-01-31T00:00:00Z + 1 month = 2026-02-28 (clamped), + 1 year = 2027-01-31.
        let jan31 = 1_769_817_600;
        assert_eq!(add_interval(jan31, "month", 1), 1_772_236_800);
        assert_eq!(add_interval(jan31, "year", 1), 1_801_353_600);
        assert_eq!(add_interval(jan31, "week", 2), jan31 + 14 * 86_400);
    }
}
