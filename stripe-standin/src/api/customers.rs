//! `/v1/customers`: create, retrieve, update (`tax_exempt`, address, metadata), list.

use serde_json::{Map, Value, json};

use super::{Call, Reply, expanded};
use crate::error::ApiError;
use crate::fixtures;
use crate::ids::{new_id, random_alphanumeric};
use crate::params::Params;
use crate::state::{State, str_field};

/// Stripe's values for `tax_exempt`.
pub const TAX_EXEMPT_VALUES: [&str; 3] = ["none", "exempt", "reverse"];

const ADDRESS_FIELDS: [&str; 6] = ["city", "country", "line1", "line2", "postal_code", "state"];

/// `POST /v1/customers`
pub fn create(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let id = match p.str("id")? {
        Some(id) => id.to_owned(),
        None => new_id("cus"),
    };
    let mut customer = fixtures::build(
        "customer",
        json!({
            "id": id,
            "created": call.ctx.now,
            "address": null,
            "currency": null,
            "discount": null,
            "email": null,
            "name": null,
            "phone": null,
            "description": null,
            "shipping": null,
            "invoice_prefix": random_alphanumeric(8).to_ascii_uppercase(),
            "metadata": p.metadata()?,
            "tax_exempt": "none",
        }),
    );
    apply(&mut customer, p)?;
    let customer = state.insert(customer)?;
    Ok(Reply::body(expanded(state, call, customer)?))
}

/// `GET /v1/customers/{id}`
pub fn retrieve(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let customer = state.fetch("customer", id, "id")?;
    Ok(Reply::body(expanded(state, call, customer)?))
}

/// `POST /v1/customers/{id}`
pub fn update(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let mut customer = state.fetch("customer", id, "id")?;
    apply(&mut customer, call.params)?;
    let customer = state.replace(customer);
    Ok(Reply::body(expanded(state, call, customer)?))
}

/// `GET /v1/customers` (filter `email`).
pub fn list(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let email = call.params.str("email")?.map(str::to_owned);
    let list = state.list("customer", "/v1/customers", call.params, |c| {
        email.as_deref().is_none_or(|e| str_field(c, "email") == e)
    })?;
    Ok(Reply::body(list))
}

/// Writes the fields a create or update request may set.
fn apply(customer: &mut Value, p: Params<'_>) -> Result<(), ApiError> {
    for key in ["email", "name", "phone", "description"] {
        if let Some(value) = p.nullable_str(key)? {
            customer[key] = json!(value);
        }
    }
    if let Some(tax_exempt) = p.one_of("tax_exempt", &TAX_EXEMPT_VALUES)? {
        customer["tax_exempt"] = json!(tax_exempt);
    }
    if p.has("address") {
        customer["address"] = address(p.sub("address"), "address")?;
    }
    if let Some(locales) = p.get("preferred_locales") {
        customer["preferred_locales"] = match locales {
            Value::Array(_) => json!(p.str_list("preferred_locales")?),
            _ => json!([]),
        };
    }
    if let Some(Value::Object(current)) = customer.get_mut("metadata") {
        p.merge_metadata(current)?;
    }
    Ok(())
}

/// An address object from `address[line1]…` (`address=` clears it).
pub fn address(p: Params<'_>, param: &str) -> Result<Value, ApiError> {
    match p.0 {
        Value::String(s) if s.is_empty() => return Ok(Value::Null),
        Value::Object(_) => {}
        _ => return Err(ApiError::bad_param(param, "Invalid address")),
    }
    let mut address = Map::new();
    for key in ADDRESS_FIELDS {
        address.insert(key.to_owned(), json!(p.nullable_str(key)?.flatten()));
    }
    Ok(Value::Object(address))
}

/// The made-up address Checkout "collects" when a session is completed.
pub fn collected_address() -> Value {
    json!({
        "city": "San Francisco",
        "country": "US",
        "line1": "1 Stand-in Way",
        "line2": null,
        "postal_code": "94103",
        "state": "CA",
    })
}

/// Whether the customer has an address Stripe Tax can locate (a country at least).
pub fn has_tax_location(customer: &Value) -> bool {
    customer
        .get("address")
        .and_then(|a| a.get("country"))
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
}
