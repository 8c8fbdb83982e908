//! `/v1/billing_portal/configurations` (create, update, retrieve, list) and
//! `/v1/billing_portal/sessions` (create); a session's `url` is the stand-in's `/portal/<id>`.

use serde_json::{Value, json};

use super::{Call, Reply, expanded};
use crate::error::ApiError;
use crate::fixtures;
use crate::ids::new_id;
use crate::params::{Params, coerce_scalars};
use crate::state::{State, str_field};

/// `POST /v1/billing_portal/configurations`
pub fn create_configuration(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    if !p.has("features") {
        return Err(ApiError::missing_param("features"));
    }
    let mut config = default_configuration(call.ctx.now, false);
    config["metadata"] = p.metadata()?;
    apply(state, &mut config, p, call.ctx.now)?;
    let config = state.insert(config)?;
    Ok(Reply::body(expanded(state, call, config)?))
}

/// `POST /v1/billing_portal/configurations/{id}`
pub fn update_configuration(
    state: &mut State,
    call: &Call<'_>,
    id: &str,
) -> Result<Reply, ApiError> {
    let mut config = state.fetch("billing_portal.configuration", id, "configuration")?;
    if let Some(active) = call.params.bool("active")? {
        config["active"] = json!(active);
    }
    if !config["metadata"].is_object() {
        config["metadata"] = json!({});
    }
    if let Some(Value::Object(current)) = config.get_mut("metadata") {
        call.params.merge_metadata(current)?;
    }
    apply(state, &mut config, call.params, call.ctx.now)?;
    let config = state.replace(config);
    Ok(Reply::body(expanded(state, call, config)?))
}

/// `GET /v1/billing_portal/configurations/{id}`
pub fn retrieve_configuration(
    state: &mut State,
    call: &Call<'_>,
    id: &str,
) -> Result<Reply, ApiError> {
    let config = state.fetch("billing_portal.configuration", id, "configuration")?;
    Ok(Reply::body(expanded(state, call, config)?))
}

/// `GET /v1/billing_portal/configurations` (filters `active`, `is_default`).
pub fn list_configurations(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let active = call.params.bool("active")?;
    let is_default = call.params.bool("is_default")?;
    let list = state.list(
        "billing_portal.configuration",
        "/v1/billing_portal/configurations",
        call.params,
        |c| {
            active.is_none_or(|a| c["active"] == json!(a))
                && is_default.is_none_or(|d| c["is_default"] == json!(d))
        },
    )?;
    Ok(Reply::body(list))
}

/// `POST /v1/billing_portal/sessions`
pub fn create_session(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let p = call.params;
    let customer_id = p.req_str("customer")?;
    state.fetch("customer", customer_id, "customer")?;
    let configuration = match p.str("configuration")? {
        Some(id) => {
            let config = state.fetch("billing_portal.configuration", id, "configuration")?;
            if config["active"] != json!(true) {
                return Err(ApiError::bad_param(
                    "configuration",
                    "The configuration is inactive.",
                ));
            }
            id.to_owned()
        }
        None => default_configuration_id(state, call.ctx.now)?,
    };
    let config = state.fetch(
        "billing_portal.configuration",
        &configuration,
        "configuration",
    )?;
    let return_url = match p.str("return_url")? {
        Some(url) => json!(url),
        None if !config["default_return_url"].is_null() => config["default_return_url"].clone(),
        None => return Err(ApiError::missing_param("return_url")),
    };
    let id = new_id("bps");
    let session = fixtures::build(
        "billing_portal.session",
        json!({
            "id": id,
            "configuration": configuration,
            "created": call.ctx.now,
            "customer": customer_id,
            "flow": null,
            "livemode": false,
            "locale": p.str("locale")?,
            "on_behalf_of": null,
            "return_url": return_url,
            "url": format!("{}portal/{id}", call.ctx.base_url),
        }),
    );
    let session = state.insert(session)?;
    Ok(Reply::body(expanded(state, call, session)?))
}

/// The account's default configuration, made on first use (Stripe's dashboard default).
fn default_configuration_id(state: &mut State, now: i64) -> Result<String, ApiError> {
    if let Some(id) = &state.default_portal_configuration {
        return Ok(id.clone());
    }
    let config = state.insert(default_configuration(now, true))?;
    let id = str_field(&config, "id").to_owned();
    state.default_portal_configuration = Some(id.clone());
    Ok(id)
}

/// A configuration with every feature off, as Stripe starts one.
fn default_configuration(now: i64, is_default: bool) -> Value {
    fixtures::build(
        "billing_portal.configuration",
        json!({
            "id": new_id("bpc"),
            "active": true,
            "business_profile": {"headline": null, "privacy_policy_url": null, "terms_of_service_url": null},
            "created": now,
            "updated": now,
            "default_return_url": null,
            "features": {
                "customer_update": {"allowed_updates": [], "enabled": false},
                "invoice_history": {"enabled": false},
                "payment_method_update": {"enabled": false, "payment_method_configuration": null},
                "subscription_cancel": {
                    "cancellation_reason": {"enabled": false, "options": []},
                    "enabled": false,
                    "mode": "at_period_end",
                    "proration_behavior": "none",
                },
                "subscription_update": {
                    "default_allowed_updates": [],
                    "enabled": false,
                    "products": [],
                    "proration_behavior": "none",
                    "schedule_at_period_end": {"conditions": []},
                    "trial_update_behavior": "end_trial",
                    "billing_cycle_anchor": null,
                },
            },
            "is_default": is_default,
            "livemode": false,
            "login_page": {"enabled": false, "url": null},
            "metadata": {},
            "name": null,
        }),
    )
}

/// Writes `features`, `business_profile`, `default_return_url`, `name` over a configuration.
fn apply(state: &State, config: &mut Value, p: Params<'_>, now: i64) -> Result<(), ApiError> {
    if let Some(features) = p.get("features") {
        let features = coerce_scalars(features);
        merge(&mut config["features"], &features);
        // Stripe shows each product's `adjustable_quantity` even when not sent.
        if let Some(products) = config["features"]["subscription_update"]["products"].as_array_mut()
        {
            for product in products {
                let product_id = str_field(product, "product").to_owned();
                state.fetch(
                    "product",
                    &product_id,
                    "features[subscription_update][products][][product]",
                )?;
                if let Some(prices) = product["prices"].as_array() {
                    for price in prices {
                        let price_id = price.as_str().unwrap_or("");
                        state.fetch(
                            "price",
                            price_id,
                            "features[subscription_update][products][][prices]",
                        )?;
                    }
                }
                let adjustable = product
                    .get("adjustable_quantity")
                    .cloned()
                    .unwrap_or_else(|| json!({"enabled": false}));
                product["adjustable_quantity"] = json!({
                    "enabled": adjustable["enabled"].as_bool().unwrap_or(false),
                    "maximum": adjustable.get("maximum").cloned().unwrap_or(Value::Null),
                    "minimum": adjustable.get("minimum").cloned().unwrap_or(json!(1)),
                });
            }
        }
    }
    if let Some(profile) = p.get("business_profile") {
        merge(&mut config["business_profile"], profile);
    }
    if let Some(url) = p.nullable_str("default_return_url")? {
        config["default_return_url"] = json!(url);
    }
    if let Some(name) = p.nullable_str("name")? {
        config["name"] = json!(name);
    }
    config["updated"] = json!(now);
    Ok(())
}

/// Deep merge: objects merge key by key, anything else replaces (arrays included, as
/// Stripe replaces a list parameter wholesale). An empty string clears to `null`.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        let v = match v {
                            Value::String(s) if s.is_empty() => Value::Null,
                            other => other.clone(),
                        };
                        t.insert(k.clone(), v);
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
