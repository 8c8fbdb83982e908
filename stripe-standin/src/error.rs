//! Stripe-shaped errors: `{"error":{"type":…,"message":…,"code":…,"param":…}}`.
//!
//! Every refusal of the API and of the control endpoints is built here, so async-stripe sees
//! the same `stripe_shared::Error` shape it gets from Stripe (and the `Stripe-Should-Retry:
//! false` header that stops its retry strategies on a caller's mistake).

use http::StatusCode;
use serde_json::{Value, json};

/// An API refusal, answered as Stripe's error JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// Stripe's `error.type` (`invalid_request_error`, `idempotency_error`, `api_error`).
    pub kind: &'static str,
    /// Human-readable `error.message`.
    pub message: String,
    /// Stripe's `error.code`, when Stripe gives one.
    pub code: Option<&'static str>,
    /// The parameter at fault, when there is one.
    pub param: Option<String>,
}

impl ApiError {
    /// A 400 `invalid_request_error` without a code.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            code: None,
            param: None,
        }
    }

    /// A 400 for a bad value of `param`.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            code: Some("parameter_invalid"),
            param: Some(param.to_owned()),
            ..Self::invalid(message)
        }
    }

    /// A 400 for a required parameter that was not sent.
    pub fn missing_param(param: &str) -> Self {
        Self {
            code: Some("parameter_missing"),
            param: Some(param.to_owned()),
            ..Self::invalid(format!("Missing required param: {param}."))
        }
    }

    /// A 404 `resource_missing` for an id that does not exist (`No such customer: 'cus_1'`).
    pub fn no_such(resource: &str, id: &str, param: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: Some("resource_missing"),
            param: Some(param.to_owned()),
            ..Self::invalid(format!("No such {resource}: '{id}'"))
        }
    }

    /// A 404 for a path (or method on a path) the stand-in does not answer.
    pub fn unknown_path(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            ..Self::invalid(format!(
                "Unrecognized request URL ({method}: {path}). The Stripe stand-in answers only \
                 the paths listed in its README."
            ))
        }
    }

    /// A 401 for a missing or unusable API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            ..Self::invalid(message)
        }
    }

    /// Stripe's 400 `idempotency_error`: the key was first used with other parameters.
    pub fn idempotency_mismatch(key: &str) -> Self {
        Self {
            kind: "idempotency_error",
            ..Self::invalid(format!(
                "Keys for idempotent requests can only be used with the same parameters they \
                 were first used with. Try using a key other than '{key}' if you meant to \
                 execute a different request."
            ))
        }
    }

    /// A 413 for a body above the stand-in's limit.
    pub fn body_too_large(bytes_max: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..Self::invalid(format!("request body exceeds {bytes_max} bytes"))
        }
    }

    /// The error as Stripe's JSON body.
    pub fn to_json(&self) -> Value {
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(code) = self.code {
            error["code"] = json!(code);
        }
        if let Some(param) = &self.param {
            error["param"] = json!(param);
        }
        json!({ "error": error })
    }
}

impl From<crate::form::FormError> for ApiError {
    fn from(err: crate::form::FormError) -> Self {
        Self::invalid(err.to_string())
    }
}
