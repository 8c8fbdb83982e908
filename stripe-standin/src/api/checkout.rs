//! `/v1/checkout/sessions`: create (`subscription` and `payment` modes), retrieve, list, and
//! completing a session the way a paying customer would ([`complete`]).
//!
//! Creation checks what Stripe checks for billing-sync's use: recurring prices only in
//! `subscription` mode and one-off prices only in `payment` mode, `customer_update` only with
//! a `customer`, automatic tax for an existing customer only with a known address or
//! `customer_update[address]=auto`, and tax ID collection for an existing customer only with
//! `customer_update[name]=auto`.

use serde_json::{Value, json};

use super::{Call, Ctx, NewEvent, Reply, currency, customers, expanded, invoices, subscriptions};
use crate::error::ApiError;
use crate::fixtures;
use crate::ids::new_id;
use crate::state::{SessionExtra, State, str_field};

/// Seconds a new session stays open, as Stripe's default (24 hours).
const SESSION_TTL_S: i64 = 24 * 60 * 60;

/// Most line items one session may have (Stripe's limit in `payment` mode).
const LINE_ITEMS_MAX: usize = 100;

/// `POST /v1/checkout/sessions`
pub fn create(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let mode = p
        .one_of("mode", &["payment", "subscription", "setup"])?
        .ok_or_else(|| ApiError::missing_param("mode"))?;
    if mode == "setup" {
        return Err(ApiError::bad_param(
            "mode",
            "the stand-in does not answer `setup` mode",
        ));
    }
    let customer = match p.str("customer")? {
        Some(id) => Some(state.fetch("customer", id, "customer")?),
        None => None,
    };
    let customer_email = p.str("customer_email")?;
    if customer.is_some() && customer_email.is_some() {
        return Err(ApiError::invalid(
            "You may only specify one of these parameters: customer, customer_email.",
        ));
    }
    let update = p.sub("customer_update");
    if p.has("customer_update") && customer.is_none() {
        return Err(ApiError::bad_param(
            "customer_update",
            "`customer_update` can only be used with `customer`.",
        ));
    }
    let update_values = ["auto", "never"];
    let update_address = update.one_of("address", &update_values)? == Some("auto");
    let update_name = update.one_of("name", &update_values)? == Some("auto");
    let update_shipping = update.one_of("shipping", &update_values)? == Some("auto");

    let automatic_tax = p.sub("automatic_tax").bool("enabled")?.unwrap_or(false);
    if automatic_tax
        && let Some(customer) = &customer
        && !customers::has_tax_location(customer)
        && !update_address
        && !update_shipping
    {
        return Err(ApiError::bad_param(
            "automatic_tax[enabled]",
            "Automatic tax calculation in Checkout requires a valid address on the Customer. Add \
             a valid address to the Customer or set either `customer_update[address]` to 'auto' \
             or `customer_update[shipping]` to 'auto' to save the address entered in Checkout \
             to the Customer.",
        ));
    }
    let tax_id_collection = p.sub("tax_id_collection").bool("enabled")?.unwrap_or(false);
    if tax_id_collection && customer.is_some() && !update_name {
        return Err(ApiError::bad_param(
            "tax_id_collection[enabled]",
            "Tax ID collection requires updating business name on the customer. To enable tax \
             ID collection for an existing customer, please set `customer_update[name]` to \
             `auto`.",
        ));
    }
    let billing_address_collection =
        p.one_of("billing_address_collection", &["auto", "required"])?;
    for (param, allowed_mode) in [
        ("subscription_data", "subscription"),
        ("payment_intent_data", "payment"),
        ("invoice_creation", "payment"),
        ("customer_creation", "payment"),
    ] {
        if p.has(param) && mode != allowed_mode {
            return Err(ApiError::bad_param(
                param,
                format!("`{param}` can only be used in `{allowed_mode}` mode."),
            ));
        }
    }

    let items = p.obj_list("line_items")?;
    if items.is_empty() {
        return Err(ApiError::missing_param("line_items"));
    }
    if items.len() > LINE_ITEMS_MAX {
        return Err(ApiError::bad_param("line_items", "too many line items"));
    }
    let mut line_items = Vec::with_capacity(items.len());
    let mut session_currency: Option<String> = None;
    let mut amount_subtotal: i64 = 0;
    for (i, item) in items.iter().enumerate() {
        if item.has("price_data") {
            return Err(ApiError::bad_param(
                &format!("line_items[{i}][price_data]"),
                "the stand-in answers only `line_items[][price]`; create the Price first",
            ));
        }
        let param = format!("line_items[{i}][price]");
        let price_id = item
            .str("price")?
            .ok_or_else(|| ApiError::missing_param(&param))?;
        let price = state.fetch("price", price_id, &param)?;
        if price.get("active") != Some(&json!(true)) {
            return Err(ApiError::bad_param(
                &param,
                "The price specified is inactive. This field only accepts active prices.",
            ));
        }
        let recurring = str_field(&price, "type") == "recurring";
        if mode == "subscription" && !recurring {
            return Err(ApiError::bad_param(
                &param,
                "You specified `subscription` mode but passed a one-time price. Pass a recurring \
                 price, or use `payment` mode.",
            ));
        }
        if mode == "payment" && recurring {
            return Err(ApiError::bad_param(
                &param,
                "You specified `payment` mode but passed a recurring price. Either switch to \
                 `subscription` mode or use only one-time prices.",
            ));
        }
        // Stripe wants a quantity for every licensed (not metered) price.
        let metered = price["recurring"]["usage_type"] == json!("metered");
        let quantity = match item.int("quantity")? {
            Some(q) => q,
            None if metered => 1,
            None => {
                return Err(ApiError::missing_param(&format!(
                    "line_items[{i}][quantity]"
                )));
            }
        };
        let quantity = u64::try_from(quantity)
            .ok()
            .filter(|q| *q >= 1)
            .ok_or_else(|| {
                ApiError::bad_param(&format!("line_items[{i}][quantity]"), "Invalid quantity")
            })?;
        let price_currency = str_field(&price, "currency").to_owned();
        match &session_currency {
            Some(c) if *c != price_currency => {
                return Err(ApiError::bad_param(
                    &param,
                    "All prices must use the same currency.",
                ));
            }
            _ => session_currency = Some(price_currency),
        }
        let unit = price
            .get("unit_amount")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let line = i64::try_from(quantity)
            .ok()
            .and_then(|q| unit.checked_mul(q))
            .ok_or_else(|| ApiError::bad_param(&param, "amount too large"))?;
        amount_subtotal = amount_subtotal
            .checked_add(line)
            .ok_or_else(|| ApiError::bad_param(&param, "amount too large"))?;
        line_items.push((price_id.to_owned(), quantity));
    }
    if let Some(c) = currency(p, "currency")?
        && session_currency.as_deref() != Some(c.as_str())
    {
        return Err(ApiError::bad_param(
            "currency",
            "currency does not match the prices",
        ));
    }

    let id = new_id("cs_test");
    // `allowed_payment_method_types` filters Stripe's dynamic payment methods;
    // `payment_method_types` is the older fixed list. Either is echoed back.
    let allowed_payment_method_types = p.str_list("allowed_payment_method_types")?;
    let mut payment_method_types = p.str_list("payment_method_types")?;
    if payment_method_types.is_empty() {
        payment_method_types = allowed_payment_method_types.clone();
    }
    let pmc = if p.str_list("payment_method_types")?.is_empty() {
        json!({"id": new_id("pmc"), "parent": null})
    } else {
        Value::Null
    };
    let payment_method_types = if payment_method_types.is_empty() {
        vec!["card"]
    } else {
        payment_method_types
    };
    let session = fixtures::build(
        "checkout.session",
        json!({
            "id": id,
            "object": "checkout.session",
            "created": call.ctx.now,
            "expires_at": call.ctx.now + SESSION_TTL_S,
            "after_expiration": null,
            "adaptive_pricing": null,
            "allow_promotion_codes": p.bool("allow_promotion_codes")?,
            "allowed_payment_method_types": if allowed_payment_method_types.is_empty() {
                Value::Null
            } else {
                json!(allowed_payment_method_types)
            },
            "amount_subtotal": amount_subtotal,
            "amount_total": amount_subtotal,
            "automatic_tax": {
                "enabled": automatic_tax,
                "liability": if automatic_tax { json!({"type": "self"}) } else { Value::Null },
                "status": if automatic_tax { json!("requires_location_inputs") } else { Value::Null },
                "provider": if automatic_tax { json!("stripe") } else { Value::Null },
            },
            "billing_address_collection": billing_address_collection,
            "cancel_url": p.str("cancel_url")?,
            "client_reference_id": p.str("client_reference_id")?,
            "collected_information": null,
            "consent": null,
            "consent_collection": null,
            "currency": session_currency,
            "currency_conversion": null,
            "custom_text": {"after_submit": null, "shipping_address": null, "submit": null,
                            "terms_of_service_acceptance": null},
            "customer": customer.as_ref().map(|c| str_field(c, "id")),
            "customer_creation": if customer.is_none() && mode == "payment" {
                json!(p.one_of("customer_creation", &["always", "if_required"])?.unwrap_or("if_required"))
            } else if customer.is_none() { json!("always") } else { Value::Null },
            "customer_details": customer.as_ref().map(|c| json!({
                "address": c.get("address").cloned().unwrap_or(Value::Null),
                "email": c.get("email").cloned().unwrap_or(Value::Null),
                "name": c.get("name").cloned().unwrap_or(Value::Null),
                "phone": null,
                "tax_exempt": str_field(c, "tax_exempt"),
                "tax_ids": [],
                "business_name": null,
                "individual_name": null,
            })),
            "customer_email": customer_email,
            "invoice": null,
            "invoice_creation": if mode == "payment" {
                json!({"enabled": p.sub("invoice_creation").bool("enabled")?.unwrap_or(false),
                       "invoice_data": {"account_tax_ids": null, "custom_fields": null, "description": null,
                                        "footer": null, "issuer": null, "metadata": {}, "rendering_options": null}})
            } else { Value::Null },
            "locale": p.str("locale")?,
            "metadata": p.metadata()?,
            "mode": mode,
            "payment_intent": null,
            "payment_method_collection": if mode == "subscription" { json!("always") } else { Value::Null },
            "payment_method_configuration_details": pmc,
            "payment_method_options": {},
            "payment_method_types": payment_method_types,
            "payment_status": "unpaid",
            "permissions": null,
            "saved_payment_method_options": null,
            "shipping_address_collection": null,
            "shipping_cost": null,
            "shipping_options": [],
            "status": "open",
            "subscription": null,
            "success_url": p.str("success_url")?,
            "tax_id_collection": {"enabled": tax_id_collection, "required": "never"},
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": format!("{}checkout/{id}", call.ctx.base_url),
            "wallet_options": null,
            "managed_payments": null,
        }),
    );
    let extra = SessionExtra {
        line_item_ids: line_items.iter().map(|_| new_id("li")).collect(),
        line_items,
        subscription_metadata: p.sub("subscription_data").metadata()?,
        update_address,
        update_name,
    };
    let session = state.insert(session)?;
    state.sessions.insert(id, extra);
    Ok(Reply::body(expanded(state, call, session)?))
}

/// `GET /v1/checkout/sessions/{id}` (`expand[]=line_items` adds the items).
pub fn retrieve(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let mut session = state.fetch("checkout.session", id, "session")?;
    if call.params.str_list("expand")?.contains(&"line_items") {
        session["line_items"] = line_items(state, &session, call.ctx.tax_rate_bps);
    }
    Ok(Reply::body(expanded(state, call, session)?))
}

/// `GET /v1/checkout/sessions/{id}/line_items`
pub fn list_line_items(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let session = state.fetch("checkout.session", id, "session")?;
    Ok(Reply::body(line_items(
        state,
        &session,
        call.ctx.tax_rate_bps,
    )))
}

/// The session's items as Stripe lists them (`object: "item"`), tax included once paid.
fn line_items(state: &State, session: &Value, tax_rate_bps: i64) -> Value {
    let id = str_field(session, "id");
    let extra = state.sessions.get(id).cloned().unwrap_or_default();
    let paid = str_field(session, "status") == "complete";
    let automatic_tax = session["automatic_tax"]["enabled"] == json!(true);
    let customer = session
        .get("customer")
        .and_then(Value::as_str)
        .and_then(|c| state.get(c));
    let data: Vec<Value> = extra
        .line_items
        .iter()
        .zip(&extra.line_item_ids)
        .filter_map(|((price_id, quantity), item_id)| {
            let price = state.get(price_id)?.clone();
            let product = state.get(str_field(&price, "product"));
            let quantity = i64::try_from(*quantity).unwrap_or(1);
            let subtotal = price["unit_amount"]
                .as_i64()
                .unwrap_or(0)
                .saturating_mul(quantity);
            let tax = if paid {
                invoices::tax_for(customer, subtotal, automatic_tax, tax_rate_bps).amount
            } else {
                0
            };
            Some(fixtures::build(
                "item",
                json!({
                    "id": item_id,
                    "adjustable_quantity": null,
                    "amount_discount": 0,
                    "amount_subtotal": subtotal,
                    "amount_tax": tax,
                    "amount_total": subtotal + tax,
                    "currency": price["currency"].clone(),
                    "description": product.map(|p| str_field(p, "name")),
                    "metadata": {},
                    "price": price,
                    "quantity": quantity,
                }),
            ))
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "has_more": false,
        "url": format!("/v1/checkout/sessions/{id}/line_items"),
    })
}

/// `GET /v1/checkout/sessions` (filters `customer`, `subscription`, `status`).
pub fn list(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let customer = p.str("customer")?.map(str::to_owned);
    let subscription = p.str("subscription")?.map(str::to_owned);
    let status = p.str("status")?.map(str::to_owned);
    let list = state.list("checkout.session", "/v1/checkout/sessions", p, |s| {
        customer
            .as_deref()
            .is_none_or(|c| str_field(s, "customer") == c)
            && subscription
                .as_deref()
                .is_none_or(|c| str_field(s, "subscription") == c)
            && status
                .as_deref()
                .is_none_or(|c| str_field(s, "status") == c)
    })?;
    Ok(Reply::body(list))
}

/// What completing a session produced.
pub struct Completion {
    /// The session, now `complete` and `paid`.
    pub session: Value,
    /// The subscription started (`subscription` mode).
    pub subscription: Option<Value>,
    /// The first invoice (`subscription` mode) or the receipt (`invoice_creation`).
    pub invoice: Option<Value>,
    /// Events to send, in order.
    pub events: Vec<NewEvent>,
}

/// Completes an open session as a paying customer would: the customer (created when the
/// session had none) gets the address Checkout collected, a `subscription` session starts its
/// subscription and a paid first invoice, a `payment` session is paid. Events, in order:
/// `checkout.session.completed`, then for subscriptions `customer.subscription.created` and
/// `invoice.paid`.
pub fn complete(state: &mut State, ctx: &Ctx, id: &str) -> Result<Completion, ApiError> {
    let mut session = state.fetch("checkout.session", id, "session")?;
    if str_field(&session, "status") != "open" {
        return Err(ApiError::invalid(format!(
            "Checkout Session {id} is {}, not open",
            str_field(&session, "status")
        )));
    }
    let extra = state.sessions.get(id).cloned().unwrap_or_default();
    let mode = str_field(&session, "mode").to_owned();
    let automatic_tax = session["automatic_tax"]["enabled"] == json!(true);

    // The customer: the session's own, or one Checkout creates.
    let existing = session
        .get("customer")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let needs_customer =
        mode == "subscription" || str_field(&session, "customer_creation") == "always";
    let mut customer = match existing {
        Some(cid) => Some(state.fetch("customer", &cid, "customer")?),
        None if needs_customer => {
            let email = session
                .get("customer_email")
                .and_then(Value::as_str)
                .unwrap_or("standin-customer@example.com")
                .to_owned();
            let created = fixtures::build(
                "customer",
                json!({
                    "id": new_id("cus"), "created": ctx.now, "address": customers::collected_address(),
                    "currency": null, "discount": null, "email": email, "name": "Stand-in Customer",
                    "phone": null, "description": null, "shipping": null, "metadata": {},
                    "invoice_prefix": "STANDIN", "tax_exempt": "none",
                }),
            );
            Some(state.insert(created)?)
        }
        None => None,
    };
    if let Some(c) = customer.as_mut() {
        let mut changed = false;
        if extra.update_address || !customers::has_tax_location(c) {
            c["address"] = customers::collected_address();
            changed = true;
        }
        if extra.update_name && c.get("name").is_none_or(Value::is_null) {
            c["name"] = json!("Stand-in Customer");
            changed = true;
        }
        if c.get("currency").is_none_or(Value::is_null) {
            c["currency"] = session["currency"].clone();
            changed = true;
        }
        if changed {
            *c = state.replace(c.clone());
        }
    }

    let subtotal = session["amount_subtotal"].as_i64().unwrap_or(0);
    let tax = invoices::tax_for(customer.as_ref(), subtotal, automatic_tax, ctx.tax_rate_bps);
    session["status"] = json!("complete");
    session["payment_status"] = json!("paid");
    session["amount_total"] = json!(subtotal + tax.amount);
    session["total_details"]["amount_tax"] = json!(tax.amount);
    if automatic_tax {
        session["automatic_tax"]["status"] = json!("complete");
    }
    if let Some(c) = &customer {
        session["customer"] = json!(str_field(c, "id"));
        session["customer_details"] = json!({
            "address": c["address"].clone(),
            "email": c["email"].clone(),
            "name": c["name"].clone(),
            "phone": null,
            "tax_exempt": str_field(c, "tax_exempt"),
            "tax_ids": [],
            "business_name": null,
            "individual_name": null,
        });
    }

    let mut events = Vec::new();
    let mut subscription = None;
    let mut invoice = None;
    if mode == "subscription" {
        let Some(c) = &customer else {
            return Err(ApiError::invalid("subscription mode needs a customer"));
        };
        let sub = subscriptions::start(
            state,
            ctx,
            c,
            &extra.line_items,
            &extra.subscription_metadata,
            automatic_tax,
        )?;
        let inv = invoices::create_for_subscription(
            state,
            ctx,
            &sub,
            c,
            "subscription_create",
            true,
            automatic_tax,
        )?;
        let mut sub_with_invoice = sub.clone();
        sub_with_invoice["latest_invoice"] = json!(str_field(&inv, "id"));
        let sub = state.replace(sub_with_invoice);
        session["subscription"] = json!(str_field(&sub, "id"));
        session["invoice"] = json!(str_field(&inv, "id"));
        subscription = Some(sub);
        invoice = Some(inv);
    } else {
        session["payment_intent"] = json!(new_id("pi"));
        let invoice_creation = session["invoice_creation"]["enabled"] == json!(true);
        if invoice_creation && let Some(c) = &customer {
            let inv = invoices::create_for_payment(
                state,
                ctx,
                c,
                &extra.line_items,
                automatic_tax,
                session["metadata"].clone(),
            )?;
            session["invoice"] = json!(str_field(&inv, "id"));
            invoice = Some(inv);
        }
    }
    let session = state.replace(session);
    events.push(NewEvent {
        type_: "checkout.session.completed".into(),
        object: session.clone(),
        previous_attributes: None,
    });
    if let Some(sub) = &subscription {
        events.push(NewEvent {
            type_: "customer.subscription.created".into(),
            object: sub.clone(),
            previous_attributes: None,
        });
    }
    // A pack's receipt is listed but, as agreed for the stand-in, sends no `invoice.paid`:
    // only subscription invoices drive plan state.
    if let Some(inv) = invoice.as_ref().filter(|_| mode == "subscription") {
        events.push(NewEvent {
            type_: "invoice.paid".into(),
            object: inv.clone(),
            previous_attributes: None,
        });
    }
    Ok(Completion {
        session,
        subscription,
        invoice,
        events,
    })
}
