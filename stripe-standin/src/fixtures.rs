//! Stripe's official example objects, the base of every response body.
//!
//! `fixtures/resources.json` is the subset of `stripe/openapi`'s `fixtures3.json` that the
//! stand-in answers with (MIT, see `fixtures/LICENSE-stripe-openapi`). Each response starts as
//! a copy of its resource's fixture; handlers then overwrite what the request set and reset
//! the example-only values (discounts, shipping, fake ids) that a fresh object would not have.

use std::sync::OnceLock;

use serde_json::{Map, Value};

const RESOURCES_JSON: &str = include_str!("../fixtures/resources.json");

fn resources() -> &'static Map<String, Value> {
    static RESOURCES: OnceLock<Map<String, Value>> = OnceLock::new();
    RESOURCES.get_or_init(|| {
        let root: Value =
            serde_json::from_str(RESOURCES_JSON).expect("fixtures/resources.json is valid JSON");
        match root.get("resources") {
            Some(Value::Object(map)) => map.clone(),
            _ => panic!("fixtures/resources.json has an object under `resources`"),
        }
    })
}

/// A copy of the fixture for `resource` (e.g. `"checkout.session"`), as an object.
///
/// The resource names are fixed in this crate and checked by a unit test, so a missing one is
/// a programming error.
pub fn fixture(resource: &str) -> Map<String, Value> {
    match resources().get(resource) {
        Some(Value::Object(map)) => map.clone(),
        _ => panic!("no fixture for {resource}"),
    }
}

/// The fixture for `resource` with `overlay`'s top-level keys written over it.
pub fn build(resource: &str, overlay: Value) -> Value {
    let mut object = fixture(resource);
    if let Value::Object(fields) = overlay {
        for (key, value) in fields {
            object.insert(key, value);
        }
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_the_standin_answers_with_has_a_fixture() {
        for name in [
            "customer",
            "product",
            "price",
            "checkout.session",
            "billing_portal.configuration",
            "billing_portal.session",
            "subscription",
            "subscription_item",
            "invoice",
            "item",
            "line_item",
            "event",
        ] {
            assert_eq!(
                fixture(name).get("object").and_then(Value::as_str),
                Some(name),
                "{name}"
            );
        }
    }
}
