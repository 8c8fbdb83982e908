//! `/v1/products`: create, retrieve, update, list.

use serde_json::{Value, json};

use super::{Call, Reply, expanded};
use crate::error::ApiError;
use crate::fixtures;
use crate::ids::new_id;
use crate::params::Params;
use crate::state::State;

/// `POST /v1/products`
pub fn create(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let id = match p.str("id")? {
        Some(id) => id.to_owned(),
        None => new_id("prod"),
    };
    let mut product = fixtures::build(
        "product",
        json!({
            "id": id,
            "created": call.ctx.now,
            "updated": call.ctx.now,
            "name": p.req_str("name")?,
            "default_price": null,
            "description": null,
            "package_dimensions": null,
            "type": "service",
            "metadata": p.metadata()?,
        }),
    );
    apply(&mut product, p, call.ctx.now)?;
    let product = state.insert(product)?;
    Ok(Reply::body(expanded(state, call, product)?))
}

/// `GET /v1/products/{id}`
pub fn retrieve(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let product = state.fetch("product", id, "id")?;
    Ok(Reply::body(expanded(state, call, product)?))
}

/// `POST /v1/products/{id}`
pub fn update(state: &mut State, call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    let mut product = state.fetch("product", id, "id")?;
    if let Some(name) = call.params.str("name")? {
        if name.is_empty() {
            return Err(ApiError::bad_param("name", "You cannot unset `name`."));
        }
        product["name"] = json!(name);
    }
    if let Some(default_price) = call.params.nullable_str("default_price")? {
        if let Some(price) = default_price {
            state.fetch("price", price, "default_price")?;
        }
        product["default_price"] = json!(default_price);
    }
    apply(&mut product, call.params, call.ctx.now)?;
    let product = state.replace(product);
    Ok(Reply::body(expanded(state, call, product)?))
}

/// `GET /v1/products` (filters `active`, `ids[]`).
pub fn list(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let active = call.params.bool("active")?;
    let ids: Vec<String> = call
        .params
        .str_list("ids")?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let list = state.list("product", "/v1/products", call.params, |product| {
        active.is_none_or(|a| product.get("active") == Some(&json!(a)))
            && (ids.is_empty()
                || ids
                    .iter()
                    .any(|id| product.get("id").and_then(Value::as_str) == Some(id)))
    })?;
    Ok(Reply::body(list))
}

fn apply(product: &mut Value, p: Params<'_>, now: i64) -> Result<(), ApiError> {
    for key in [
        "description",
        "tax_code",
        "unit_label",
        "statement_descriptor",
        "url",
    ] {
        if let Some(value) = p.nullable_str(key)? {
            product[key] = json!(value);
        }
    }
    if let Some(active) = p.bool("active")? {
        product["active"] = json!(active);
    }
    if let Some(Value::Object(current)) = product.get_mut("metadata") {
        p.merge_metadata(current)?;
    }
    product["updated"] = json!(now);
    Ok(())
}
