//! `/v1/invoices`: retrieve and list (by `customer`, `subscription`, `status`), and the
//! invoices subscriptions produce, with Stripe Tax's shape (`total_taxes`, line `taxes`).
//!
//! Tax is a flat rate of the subtotal (`tax_rate_bps`, exclusive) when automatic tax is on; a
//! customer with `tax_exempt=exempt` pays none (`customer_exempt`), `reverse` pays none
//! (`reverse_charge`), as Stripe Tax reports them.

use serde_json::{Value, json};

use super::{Call, Ctx, Reply, expanded, subscriptions};
use crate::error::ApiError;
use crate::fixtures;
use crate::ids::new_id;
use crate::state::{State, str_field};

/// Tax on an amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tax {
    /// Minor units (cents).
    pub amount: i64,
    /// Stripe's `taxability_reason`.
    pub reason: &'static str,
}

/// The tax on `subtotal` for `customer`, rounded half up to the minor unit.
pub fn tax_for(customer: Option<&Value>, subtotal: i64, automatic_tax: bool, rate_bps: i64) -> Tax {
    if !automatic_tax {
        return Tax {
            amount: 0,
            reason: "not_collecting",
        };
    }
    match customer.map(|c| str_field(c, "tax_exempt")) {
        Some("exempt") => Tax {
            amount: 0,
            reason: "customer_exempt",
        },
        Some("reverse") => Tax {
            amount: 0,
            reason: "reverse_charge",
        },
        _ => Tax {
            amount: subtotal.saturating_mul(rate_bps).saturating_add(5_000) / 10_000,
            reason: "standard_rated",
        },
    }
}

/// `GET /v1/invoices/{id}`
pub fn retrieve(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let invoice = state.fetch("invoice", id, "invoice")?;
    Ok(Reply::body(expanded(state, call, invoice)?))
}

/// `GET /v1/invoices` (filters `customer`, `subscription`, `status`).
pub fn list(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let customer = p.str("customer")?.map(str::to_owned);
    let subscription = p.str("subscription")?.map(str::to_owned);
    let status = p
        .one_of(
            "status",
            &["draft", "open", "paid", "uncollectible", "void"],
        )?
        .map(str::to_owned);
    let list = state.list("invoice", "/v1/invoices", p, |inv| {
        customer
            .as_deref()
            .is_none_or(|c| str_field(inv, "customer") == c)
            && subscription
                .as_deref()
                .is_none_or(|s| str_field(inv, "subscription") == s)
            && status
                .as_deref()
                .is_none_or(|s| str_field(inv, "status") == s)
    })?;
    Ok(Reply::body(list))
}

/// Creates the invoice for the subscription's current period: paid (`invoice.paid`) or open
/// after one failed attempt (`invoice.payment_failed`).
pub fn create_for_subscription(
    state: &mut State,
    ctx: &Ctx,
    sub: &Value,
    customer: &Value,
    billing_reason: &str,
    paid: bool,
    automatic_tax: bool,
) -> Result<Value, ApiError> {
    let sub_id = str_field(sub, "id").to_owned();
    let (period_start, period_end) = subscriptions::current_period(sub);
    let lines = sub["items"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| Line {
            price: item["price"].clone(),
            amount: None,
            quantity: item["quantity"].as_i64().unwrap_or(1),
            period: (period_start, period_end),
            parent: json!({
                "type": "subscription_item_details",
                "invoice_item_details": null,
                "subscription_item_details": {
                    "invoice_item": null,
                    "proration": false,
                    "proration_details": {"credited_items": null},
                    "subscription": sub_id,
                    "subscription_item": str_field(item, "id"),
                },
            }),
            metadata: sub["metadata"].clone(),
            subscription: Some(sub_id.clone()),
        })
        .collect();
    let invoice_period = if billing_reason == "subscription_create" {
        (ctx.now, ctx.now)
    } else {
        (period_start, period_start)
    };
    create(
        state,
        ctx,
        Draft {
            customer,
            currency: sub["currency"].clone(),
            lines,
            billing_reason,
            paid,
            automatic_tax,
            period: invoice_period,
            parent: json!({
                "type": "subscription_details",
                "quote_details": null,
                "subscription_details": {"metadata": sub["metadata"].clone(), "subscription": sub_id},
            }),
            subscription: Some(sub_id.clone()),
            metadata: json!({}),
        },
    )
}

/// The invoice Stripe previews before a renewal (`invoice.upcoming`): the next period's
/// amounts, `status: draft` and no `id` (upcoming invoices have none), not stored.
pub fn upcoming_for_subscription(
    state: &mut State,
    ctx: &Ctx,
    next_period_sub: &Value,
    customer: &Value,
    automatic_tax: bool,
) -> Value {
    let sub_id = str_field(next_period_sub, "id").to_owned();
    let (start, end) = subscriptions::current_period(next_period_sub);
    let lines = next_period_sub["items"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| Line {
            price: item["price"].clone(),
            amount: None,
            quantity: item["quantity"].as_i64().unwrap_or(1),
            period: (start, end),
            parent: json!({
                "type": "subscription_item_details",
                "invoice_item_details": null,
                "subscription_item_details": {
                    "invoice_item": null,
                    "proration": false,
                    "proration_details": {"credited_items": null},
                    "subscription": sub_id,
                    "subscription_item": str_field(item, "id"),
                },
            }),
            metadata: next_period_sub["metadata"].clone(),
            subscription: Some(sub_id.clone()),
        })
        .collect();
    let mut invoice = build(
        state,
        ctx,
        Draft {
            customer,
            currency: next_period_sub["currency"].clone(),
            lines,
            billing_reason: "upcoming",
            paid: false,
            automatic_tax,
            period: (start, start),
            parent: json!({
                "type": "subscription_details",
                "quote_details": null,
                "subscription_details": {"metadata": next_period_sub["metadata"].clone(), "subscription": sub_id},
            }),
            subscription: Some(sub_id.clone()),
            metadata: json!({}),
        },
    );
    for (key, value) in [
        ("id", Value::Null),
        ("status", json!("draft")),
        ("attempted", json!(false)),
        ("attempt_count", json!(0)),
        ("hosted_invoice_url", Value::Null),
        ("invoice_pdf", Value::Null),
        ("number", Value::Null),
        ("next_payment_attempt", json!(start)),
        ("created", json!(start)),
        ("effective_at", Value::Null),
        ("webhooks_delivered_at", Value::Null),
    ] {
        invoice[key] = value;
    }
    invoice["status_transitions"]["finalized_at"] = Value::Null;
    if let Some(lines) = invoice["lines"]["data"].as_array_mut() {
        for line in lines {
            line["invoice"] = Value::Null;
        }
    }
    invoice
}

/// Creates the paid invoice for an upgrade made with `proration_behavior=always_invoice`:
/// one proration line of `amount` for the rest of the current period.
pub fn create_for_proration(
    state: &mut State,
    ctx: &Ctx,
    sub: &Value,
    customer: &Value,
    amount: i64,
    automatic_tax: bool,
) -> Result<Value, ApiError> {
    let sub_id = str_field(sub, "id").to_owned();
    let (_, period_end) = subscriptions::current_period(sub);
    let item = &sub["items"]["data"][0];
    let line = Line {
        price: item["price"].clone(),
        amount: Some(amount),
        quantity: 1,
        period: (ctx.now, period_end),
        parent: json!({
            "type": "subscription_item_details",
            "invoice_item_details": null,
            "subscription_item_details": {
                "invoice_item": new_id("ii"),
                "proration": true,
                "proration_details": {"credited_items": null},
                "subscription": sub_id,
                "subscription_item": str_field(item, "id"),
            },
        }),
        metadata: sub["metadata"].clone(),
        subscription: Some(sub_id.clone()),
    };
    create(
        state,
        ctx,
        Draft {
            customer,
            currency: sub["currency"].clone(),
            lines: vec![line],
            billing_reason: "subscription_update",
            paid: true,
            automatic_tax,
            period: (ctx.now, ctx.now),
            parent: json!({
                "type": "subscription_details",
                "quote_details": null,
                "subscription_details": {"metadata": sub["metadata"].clone(), "subscription": sub_id},
            }),
            subscription: Some(sub_id.clone()),
            metadata: json!({}),
        },
    )
}

/// Creates the paid receipt a `payment`-mode Checkout Session with `invoice_creation` makes.
pub fn create_for_payment(
    state: &mut State,
    ctx: &Ctx,
    customer: &Value,
    line_items: &[(String, u64)],
    automatic_tax: bool,
    metadata: Value,
) -> Result<Value, ApiError> {
    let mut lines = Vec::with_capacity(line_items.len());
    let mut currency = Value::Null;
    for (price_id, quantity) in line_items {
        let price = state.fetch("price", price_id, "price")?;
        currency = price["currency"].clone();
        lines.push(Line {
            price,
            amount: None,
            quantity: i64::try_from(*quantity).unwrap_or(1),
            period: (ctx.now, ctx.now),
            parent: json!({
                "type": "invoice_item_details",
                "invoice_item_details": {
                    "invoice_item": new_id("ii"),
                    "proration": false,
                    "proration_details": {"credited_items": null},
                    "subscription": null,
                },
                "subscription_item_details": null,
            }),
            metadata: json!({}),
            subscription: None,
        });
    }
    create(
        state,
        ctx,
        Draft {
            customer,
            currency,
            lines,
            billing_reason: "manual",
            paid: true,
            automatic_tax,
            period: (ctx.now, ctx.now),
            parent: Value::Null,
            subscription: None,
            metadata,
        },
    )
}

/// One invoice line before amounts and tax.
struct Line {
    price: Value,
    /// The line's amount when it is not `unit_amount × quantity` (prorations).
    amount: Option<i64>,
    quantity: i64,
    period: (i64, i64),
    parent: Value,
    metadata: Value,
    subscription: Option<String>,
}

/// An invoice before amounts and tax.
struct Draft<'a> {
    customer: &'a Value,
    currency: Value,
    lines: Vec<Line>,
    billing_reason: &'a str,
    paid: bool,
    automatic_tax: bool,
    period: (i64, i64),
    parent: Value,
    subscription: Option<String>,
    metadata: Value,
}

fn create(state: &mut State, ctx: &Ctx, draft: Draft<'_>) -> Result<Value, ApiError> {
    let invoice = build(state, ctx, draft);
    state.insert(invoice)
}

/// The invoice JSON for a draft, numbered but not stored.
fn build(state: &mut State, ctx: &Ctx, draft: Draft<'_>) -> Value {
    let id = new_id("in");
    let customer = draft.customer;
    let mut lines = Vec::with_capacity(draft.lines.len());
    let mut subtotal: i64 = 0;
    let mut tax_total: i64 = 0;
    let mut reason = "not_collecting";
    for line in draft.lines {
        let price = &line.price;
        let amount = line.amount.unwrap_or_else(|| {
            price["unit_amount"]
                .as_i64()
                .unwrap_or(0)
                .saturating_mul(line.quantity)
        });
        let tax = tax_for(
            Some(customer),
            amount,
            draft.automatic_tax,
            ctx.tax_rate_bps,
        );
        reason = tax.reason;
        subtotal = subtotal.saturating_add(amount);
        tax_total = tax_total.saturating_add(tax.amount);
        let product_name = state
            .get(str_field(price, "product"))
            .map(|p| str_field(p, "name").to_owned())
            .unwrap_or_default();
        lines.push(fixtures::build(
            "line_item",
            json!({
                "id": new_id("il"),
                "amount": amount,
                "currency": draft.currency.clone(),
                "description": format!("{} × {product_name}", line.quantity),
                "discount_amounts": [],
                "discounts": [],
                "invoice": id,
                "metadata": line.metadata,
                "parent": line.parent,
                "period": {"start": line.period.0, "end": line.period.1},
                "pretax_credit_amounts": [],
                "pricing": {
                    "type": "price_details",
                    "price_details": {"price": str_field(price, "id"), "product": str_field(price, "product")},
                    "unit_amount_decimal": price["unit_amount_decimal"].clone(),
                },
                "quantity": line.quantity,
                "quantity_decimal": line.quantity.to_string(),
                "subscription": line.subscription,
                "subtotal": amount,
                "taxes": taxes_json(draft.automatic_tax, tax.amount, amount, tax.reason),
            }),
        ));
    }
    let total = subtotal.saturating_add(tax_total);
    let paid = draft.paid;
    let automatic_tax = draft.automatic_tax;
    state.invoice_number += 1;
    let number = format!(
        "{}-{:04}",
        str_field(customer, "invoice_prefix"),
        state.invoice_number
    );
    let base = &ctx.base_url;
    fixtures::build(
        "invoice",
        json!({
            "id": id,
            "account_name": "creditgate (Stripe stand-in)",
            "amount_due": total,
            "amount_overpaid": 0,
            "amount_paid": if paid { total } else { 0 },
            "amount_remaining": if paid { 0 } else { total },
            "attempt_count": 1,
            "attempted": true,
            "auto_advance": !paid,
            "automatic_tax": {
                "enabled": automatic_tax,
                "liability": if automatic_tax { json!({"type": "self"}) } else { Value::Null },
                "status": if automatic_tax { json!("complete") } else { Value::Null },
                "disabled_reason": null,
                "provider": if automatic_tax { json!("stripe") } else { Value::Null },
            },
            "billing_reason": draft.billing_reason,
            "created": ctx.now,
            "currency": draft.currency,
            "customer": str_field(customer, "id"),
            "customer_address": customer["address"].clone(),
            "customer_email": customer["email"].clone(),
            "customer_name": customer["name"].clone(),
            "customer_shipping": null,
            "customer_tax_exempt": customer["tax_exempt"].clone(),
            "due_date": null,
            "effective_at": ctx.now,
            "from_invoice": null,
            "hosted_invoice_url": format!("{base}invoices/{id}"),
            "invoice_pdf": format!("{base}invoices/{id}/pdf"),
            "last_finalization_error": null,
            "lines": {"object": "list", "data": lines, "has_more": false, "url": format!("/v1/invoices/{id}/lines")},
            "metadata": draft.metadata,
            "next_payment_attempt": if paid { Value::Null } else { json!(ctx.now + 3 * 86_400) },
            "number": number,
            "parent": draft.parent,
            "payment_settings": {"default_mandate": null, "payment_method_options": null, "payment_method_types": null},
            "period_start": draft.period.0,
            "period_end": draft.period.1,
            "rendering": null,
            "shipping_cost": null,
            "shipping_details": null,
            "status": if paid { "paid" } else { "open" },
            "status_transitions": {
                "finalized_at": ctx.now,
                "marked_uncollectible_at": null,
                "paid_at": if paid { json!(ctx.now) } else { Value::Null },
                "voided_at": null,
            },
            "subscription": draft.subscription,
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "total": total,
            "total_discount_amounts": [],
            "total_excluding_tax": subtotal,
            "total_pretax_credit_amounts": [],
            "total_taxes": taxes_json(automatic_tax, tax_total, subtotal, reason),
            "webhooks_delivered_at": ctx.now,
        }),
    )
}

/// Stripe Tax's `taxes` array: one entry when tax is on, none otherwise.
fn taxes_json(automatic_tax: bool, amount: i64, taxable: i64, reason: &str) -> Value {
    if !automatic_tax {
        return json!([]);
    }
    json!([{
        "amount": amount,
        "tax_behavior": "exclusive",
        "tax_rate_details": null,
        "taxability_reason": reason,
        "taxable_amount": if amount == 0 { 0 } else { taxable },
        "type": "tax_rate_details",
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tax_rounds_half_up_and_respects_exemptions() {
        let normal = json!({"tax_exempt": "none"});
        assert_eq!(tax_for(Some(&normal), 2000, true, 1000).amount, 200);
        assert_eq!(tax_for(Some(&normal), 5, true, 1000).amount, 1); // 0.5 → 1
        assert_eq!(tax_for(Some(&normal), 2000, false, 1000).amount, 0);
        let exempt = json!({"tax_exempt": "exempt"});
        assert_eq!(
            tax_for(Some(&exempt), 2000, true, 1000),
            Tax {
                amount: 0,
                reason: "customer_exempt"
            }
        );
        let reverse = json!({"tax_exempt": "reverse"});
        assert_eq!(
            tax_for(Some(&reverse), 2000, true, 1000).reason,
            "reverse_charge"
        );
    }
}
