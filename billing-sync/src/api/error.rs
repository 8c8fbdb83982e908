//! Every API failure becomes `{"error":{"code","message"}}` here, and only here: the admin
//! and customer APIs and the Stripe webhook alike.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API failure with a stable `code`. Caller errors are not logged; internal ones are
/// logged once and hidden from the caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: bad input, with what was wrong.
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What was wrong.
        message: String,
    },
    /// 401: no credentials, or wrong ones.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// 403: known caller, not allowed.
    #[error("{message}")]
    Forbidden {
        /// Stable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: conflicts with an earlier request.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// 413.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 422: well formed, but the ledger says no.
    #[error("{message}")]
    Unprocessable {
        /// Stable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// 501: part of the contract served by a later release.
    #[error("{0} is not available in this release")]
    NotImplemented(&'static str),
    /// 503: Redis or Postgres unreachable, or the projection is being rebuilt.
    #[error("billing is temporarily unavailable")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; the detail is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// 400 with a code.
    pub fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// 422 with a code.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::TooLarge(_) => "body_too_large",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Unavailable(_) => "billing_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code(), "message": self.to_string()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            ApiError::Unavailable(detail) => tracing::warn!(error = %detail, "unavailable"),
            _ => {}
        }
        (self.status(), axum::Json(self.body())).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(format!("postgres: {e}"))
            }
            other => ApiError::Internal(format!("postgres: {other}")),
        }
    }
}

impl From<crate::stripe::signature::Rejection> for ApiError {
    /// A refused webhook: 400 with the rejection's own code (`invalid_signature`,
    /// `stale_signature`, `malformed_event`).
    fn from(rejection: crate::stripe::signature::Rejection) -> Self {
        ApiError::bad(rejection.code(), rejection.to_string())
    }
}

impl From<shared::redis::StoreError> for ApiError {
    fn from(e: shared::redis::StoreError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
