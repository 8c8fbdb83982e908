//! Extractors that turn bad input into [`ApiError`]s: the JSON body (kept raw for
//! idempotency hashing), the admin bearer, the customer's API key, the idempotency key.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use shared::{ApiKey, CustomerId};

use super::error::ApiError;
use crate::State;
use crate::config::REQUEST_BODY_BYTES_MAX;

/// A JSON body: malformed input is a 400 `invalid_body` in the API's shape, never axum's
/// plain text. Keeps the raw bytes for idempotency.
pub struct ApiJson<T> {
    /// The parsed value.
    pub value: T,
    /// The body as sent.
    pub raw: Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let raw = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge(REQUEST_BODY_BYTES_MAX))?;
        let value = serde_json::from_slice(&raw).map_err(|e| {
            // serde's message says which field and why; no input is echoed beyond it.
            ApiError::bad("invalid_body", format!("invalid JSON body: {e}"))
        })?;
        Ok(ApiJson { value, raw })
    }
}

/// The credentials of `Authorization: Bearer <token>`. The scheme is matched without regard
/// to case (`bearer`, `BEARER`), as HTTP says and as the proxy does.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    bearer_token(value)
}

/// `<token>` from `Bearer <token>` in any case, spaces around it trimmed; `None` for another
/// scheme or an empty token.
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Equal in constant time for equal lengths (both sides are hashed first, so lengths match).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// An admin request: its bearer matched `CREDITGATE_ADMIN_TOKEN`.
pub struct Admin;

impl FromRequestParts<State> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, ApiError> {
        let Some(expected) = state.admin_token.as_deref() else {
            return Err(ApiError::Unauthorized);
        };
        match bearer(&parts.headers) {
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(Admin),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// A customer identified by their own live API key (checked in Postgres on every request,
/// so a revoked key is refused at once).
pub struct Caller {
    /// Who.
    pub customer: CustomerId,
    /// Their plan.
    pub plan: String,
}

impl FromRequestParts<State> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, ApiError> {
        let given = bearer(&parts.headers).or_else(|| {
            parts
                .headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        });
        let key = given
            .and_then(ApiKey::parse)
            .ok_or(ApiError::Unauthorized)?;
        let hash = key.hash();
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT c.id, c.plan FROM api_keys k JOIN customers c ON c.id = k.customer_id
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash.as_str())
        .fetch_optional(&state.db)
        .await?;
        let (id, plan) = row.ok_or(ApiError::Unauthorized)?;
        let customer = CustomerId::parse(&id).map_err(ApiError::Internal)?;
        Ok(Caller { customer, plan })
    }
}

/// Longest accepted `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// The `Idempotency-Key` header, required on every endpoint that moves credits.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        match value {
            None => Err(ApiError::bad(
                "idempotency_key_required",
                "this endpoint requires an Idempotency-Key header",
            )),
            Some(v) if v.len() > IDEMPOTENCY_KEY_BYTES_MAX => Err(ApiError::bad(
                "invalid_idempotency_key",
                format!("Idempotency-Key is longer than {IDEMPOTENCY_KEY_BYTES_MAX} bytes"),
            )),
            Some(v) => Ok(IdempotencyKey(v.to_owned())),
        }
    }
}

/// One path parameter as text: a malformed one (bad percent-encoding) is a 404 in the
/// API's shape, never axum's plain text.
pub struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|_| ApiError::NotFound("resource"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for header in [
            "Bearer cg_abc",
            "bearer cg_abc",
            "BEARER cg_abc",
            "bEaReR   cg_abc ",
        ] {
            assert_eq!(bearer_token(header), Some("cg_abc"), "{header:?}");
        }
        for header in ["Basic cg_abc", "Bearer", "Bearer   ", "Bearercg_abc", ""] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }
}
