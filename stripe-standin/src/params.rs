//! Typed reads of a parsed form (`serde_json::Value` of strings), with Stripe's errors.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Largest `metadata` a request may set, as Stripe allows: 50 keys.
pub const METADATA_KEYS_MAX: usize = 50;

/// A view of a request's parameters (the parsed form body, or the query for GET).
#[derive(Clone, Copy)]
pub struct Params<'a>(pub &'a Value);

impl<'a> Params<'a> {
    /// The raw value at `key`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key)
    }

    /// Whether `key` was sent at all.
    pub fn has(&self, key: &str) -> bool {
        self.0.get(key).is_some()
    }

    /// A nested view (`customer_update`, `automatic_tax`…); empty when absent.
    pub fn sub(&self, key: &str) -> Params<'a> {
        static EMPTY: Value = Value::Null;
        Params(self.0.get(key).unwrap_or(&EMPTY))
    }

    /// A string parameter; an object or array in its place is a 400.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::bad_param(
                key,
                format!("Invalid string: {key} must be a string"),
            )),
        }
    }

    /// A string parameter where the empty string means "unset" (Stripe's `lookup_key=`).
    pub fn nullable_str(&self, key: &str) -> Result<Option<Option<&'a str>>, ApiError> {
        Ok(self.str(key)?.map(|s| (!s.is_empty()).then_some(s)))
    }

    /// A required string parameter.
    pub fn req_str(&self, key: &str) -> Result<&'a str, ApiError> {
        match self.str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::missing_param(key)),
        }
    }

    /// An integer parameter.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => s
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::bad_param(key, format!("Invalid integer: {s}"))),
        }
    }

    /// A boolean parameter (`true`/`false`).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.str(key)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(s) => Err(ApiError::bad_param(key, format!("Invalid boolean: {s}"))),
        }
    }

    /// One of `allowed`, or a 400 naming them.
    pub fn one_of(&self, key: &str, allowed: &[&str]) -> Result<Option<&'a str>, ApiError> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) if allowed.contains(&s) => Ok(Some(s)),
            Some(s) => Err(ApiError::bad_param(
                key,
                format!(
                    "Invalid {key}: must be one of {}; got '{s}'",
                    allowed.join(", ")
                ),
            )),
        }
    }

    /// A list of strings (`expand[]`, `lookup_keys[]`); a single string counts as one.
    pub fn str_list(&self, key: &str) -> Result<Vec<&'a str>, ApiError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| ApiError::bad_param(key, format!("Invalid array: {key}")))
                })
                .collect(),
            Some(_) => Err(ApiError::bad_param(key, format!("Invalid array: {key}"))),
        }
    }

    /// A list of objects (`line_items[0][price]…`).
    pub fn obj_list(&self, key: &str) -> Result<Vec<Params<'a>>, ApiError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if items.iter().all(Value::is_object) => {
                Ok(items.iter().map(Params).collect())
            }
            Some(_) => Err(ApiError::bad_param(key, format!("Invalid array: {key}"))),
        }
    }

    /// `metadata` merged into `current` as Stripe does: an empty value (or `metadata=`)
    /// removes keys.
    pub fn merge_metadata(&self, current: &mut Map<String, Value>) -> Result<(), ApiError> {
        match self.0.get("metadata") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => current.clear(),
            Some(Value::Object(fields)) => {
                for (k, v) in fields {
                    match v {
                        Value::String(s) if s.is_empty() => {
                            current.remove(k);
                        }
                        Value::String(s) => {
                            current.insert(k.clone(), Value::String(s.clone()));
                        }
                        _ => {
                            return Err(ApiError::bad_param(
                                "metadata",
                                format!("Invalid metadata value for key {k}"),
                            ));
                        }
                    }
                }
            }
            Some(_) => return Err(ApiError::bad_param("metadata", "Invalid metadata")),
        }
        if current.len() > METADATA_KEYS_MAX {
            return Err(ApiError::bad_param(
                "metadata",
                format!("metadata has more than {METADATA_KEYS_MAX} keys"),
            ));
        }
        Ok(())
    }

    /// A fresh `metadata` object from the request.
    pub fn metadata(&self) -> Result<Value, ApiError> {
        let mut map = Map::new();
        self.merge_metadata(&mut map)?;
        Ok(Value::Object(map))
    }
}

/// Form strings `"true"`/`"false"` and integers turned into JSON booleans and numbers, for
/// structures echoed back nearly as sent (portal `features`).
pub fn coerce_scalars(value: &Value) -> Value {
    match value {
        Value::String(s) if s == "true" => Value::Bool(true),
        Value::String(s) if s == "false" => Value::Bool(false),
        Value::String(s) => match s.parse::<i64>() {
            Ok(n) if !s.starts_with('0') || s == "0" => Value::from(n),
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(coerce_scalars).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), coerce_scalars(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
