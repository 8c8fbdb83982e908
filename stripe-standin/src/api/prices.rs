//! `/v1/prices`: create, retrieve, update (`lookup_key` with `transfer_lookup_key`, `active`),
//! list (`lookup_keys[]`, `active`, `product`, `type`, `currency`).
//!
//! Like Stripe, a lookup key names at most one price: taking a key another price holds needs
//! `transfer_lookup_key=true`, otherwise the request is refused.

use serde_json::{Value, json};

use super::{Call, Reply, currency, expanded};
use crate::error::ApiError;
use crate::fixtures;
use crate::ids::new_id;
use crate::params::Params;
use crate::state::{State, str_field};

/// Stripe's values for `recurring[interval]`.
const INTERVALS: [&str; 4] = ["day", "week", "month", "year"];

/// Stripe's values for `tax_behavior`.
const TAX_BEHAVIORS: [&str; 3] = ["exclusive", "inclusive", "unspecified"];

/// Most lookup keys one list request may name, as in Stripe.
const LOOKUP_KEYS_MAX: usize = 10;

/// `POST /v1/prices`
pub fn create(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let currency = currency(p, "currency")?.ok_or_else(|| ApiError::missing_param("currency"))?;
    let product = match (p.str("product")?, p.has("product_data")) {
        (Some(product), _) => state.fetch("product", product, "product")?,
        (None, true) => {
            let data = p.sub("product_data");
            let product = fixtures::build(
                "product",
                json!({
                    "id": new_id("prod"),
                    "created": call.ctx.now,
                    "updated": call.ctx.now,
                    "name": data.req_str("name").map_err(|_| ApiError::missing_param("product_data[name]"))?,
                    "default_price": null,
                    "description": null,
                    "package_dimensions": null,
                    "type": "service",
                    "tax_code": data.str("tax_code")?,
                    "metadata": data.metadata()?,
                }),
            );
            state.insert(product)?
        }
        (None, false) => return Err(ApiError::missing_param("product")),
    };
    let (unit_amount, unit_amount_decimal) =
        match (p.int("unit_amount")?, p.str("unit_amount_decimal")?) {
            (Some(amount), _) if amount >= 0 => (json!(amount), json!(amount.to_string())),
            (Some(_), _) => {
                return Err(ApiError::bad_param(
                    "unit_amount",
                    "This value must be greater than or equal to 0.",
                ));
            }
            (None, Some(decimal)) => {
                let whole = decimal.parse::<i64>().ok();
                (json!(whole), json!(decimal))
            }
            (None, None) => return Err(ApiError::missing_param("unit_amount")),
        };
    let recurring = if p.has("recurring") {
        let r = p.sub("recurring");
        let interval = r
            .one_of("interval", &INTERVALS)?
            .ok_or_else(|| ApiError::missing_param("recurring[interval]"))?;
        json!({
            "interval": interval,
            "interval_count": r.int("interval_count")?.unwrap_or(1),
            "meter": null,
            "usage_type": r.one_of("usage_type", &["licensed", "metered"])?.unwrap_or("licensed"),
            "trial_period_days": r.int("trial_period_days")?,
        })
    } else {
        Value::Null
    };
    let mut price = fixtures::build(
        "price",
        json!({
            "id": new_id("price"),
            "created": call.ctx.now,
            "currency": currency,
            "custom_unit_amount": null,
            "lookup_key": null,
            "metadata": p.metadata()?,
            "nickname": p.str("nickname")?,
            "product": str_field(&product, "id"),
            "type": if recurring.is_null() { "one_time" } else { "recurring" },
            "recurring": recurring,
            "tax_behavior": p.one_of("tax_behavior", &TAX_BEHAVIORS)?.unwrap_or("unspecified"),
            "transform_quantity": null,
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }),
    );
    if let Some(active) = p.bool("active")? {
        price["active"] = json!(active);
    }
    set_lookup_key(state, &mut price, p)?;
    let price = state.insert(price)?;
    Ok(Reply::body(expanded(state, call, price)?))
}

/// `GET /v1/prices/{id}`
pub fn retrieve(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let price = state.fetch("price", id, "id")?;
    Ok(Reply::body(expanded(state, call, price)?))
}

/// `POST /v1/prices/{id}`: only what Stripe lets change (prices are otherwise immutable).
pub fn update(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let p = call.params;
    let mut price = state.fetch("price", id, "id")?;
    for immutable in ["unit_amount", "currency", "recurring", "product"] {
        if p.has(immutable) {
            return Err(ApiError::bad_param(
                immutable,
                format!("Received unknown parameter: {immutable}"),
            ));
        }
    }
    if let Some(active) = p.bool("active")? {
        price["active"] = json!(active);
    }
    if let Some(nickname) = p.nullable_str("nickname")? {
        price["nickname"] = json!(nickname);
    }
    if let Some(tax_behavior) = p.one_of("tax_behavior", &TAX_BEHAVIORS)? {
        let current = str_field(&price, "tax_behavior");
        if current != "unspecified" && current != tax_behavior {
            return Err(ApiError::bad_param(
                "tax_behavior",
                "You cannot change `tax_behavior` once it has been set to `inclusive` or `exclusive`.",
            ));
        }
        price["tax_behavior"] = json!(tax_behavior);
    }
    if let Some(Value::Object(current)) = price.get_mut("metadata") {
        p.merge_metadata(current)?;
    }
    set_lookup_key(state, &mut price, p)?;
    let price = state.replace(price);
    Ok(Reply::body(expanded(state, call, price)?))
}

/// `GET /v1/prices`
pub fn list(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let lookup_keys: Vec<String> = p
        .str_list("lookup_keys")?
        .into_iter()
        .map(str::to_owned)
        .collect();
    if lookup_keys.len() > LOOKUP_KEYS_MAX {
        return Err(ApiError::bad_param(
            "lookup_keys",
            format!("You may pass at most {LOOKUP_KEYS_MAX} lookup keys."),
        ));
    }
    let active = p.bool("active")?;
    let product = p.str("product")?.map(str::to_owned);
    let type_ = p
        .one_of("type", &["one_time", "recurring"])?
        .map(str::to_owned);
    let currency = currency(p, "currency")?;
    let interval = p.sub("recurring").str("interval")?.map(str::to_owned);
    let list = state.list("price", "/v1/prices", p, |price| {
        (lookup_keys.is_empty()
            || lookup_keys
                .iter()
                .any(|k| str_field(price, "lookup_key") == k))
            && active.is_none_or(|a| price.get("active") == Some(&json!(a)))
            && product
                .as_deref()
                .is_none_or(|pr| str_field(price, "product") == pr)
            && type_
                .as_deref()
                .is_none_or(|t| str_field(price, "type") == t)
            && currency
                .as_deref()
                .is_none_or(|c| str_field(price, "currency") == c)
            && interval
                .as_deref()
                .is_none_or(|i| price.get("recurring").map(|r| str_field(r, "interval")) == Some(i))
    })?;
    Ok(Reply::body(list))
}

/// Applies `lookup_key` (`""` clears it) and `transfer_lookup_key`.
fn set_lookup_key(state: &mut State, price: &mut Value, p: Params<'_>) -> Result<(), ApiError> {
    let Some(lookup_key) = p.nullable_str("lookup_key")? else {
        return Ok(());
    };
    let transfer = p.bool("transfer_lookup_key")?.unwrap_or(false);
    if let Some(key) = lookup_key {
        if key.len() > 200 {
            return Err(ApiError::bad_param(
                "lookup_key",
                "lookup_key must be at most 200 characters",
            ));
        }
        let own_id = str_field(price, "id").to_owned();
        let holders: Vec<Value> = state
            .all("price", |other| {
                str_field(other, "lookup_key") == key && str_field(other, "id") != own_id
            })
            .cloned()
            .collect();
        for mut holder in holders {
            if !transfer {
                return Err(ApiError::bad_param(
                    "lookup_key",
                    format!(
                        "A price (`{}`) already uses that lookup key. Set `transfer_lookup_key` to move it to this price.",
                        str_field(&holder, "id")
                    ),
                ));
            }
            holder["lookup_key"] = Value::Null;
            state.replace(holder);
        }
    }
    price["lookup_key"] = json!(lookup_key);
    Ok(())
}
