//! Idempotency records: the first answer to a request with an `Idempotency-Key`, replayed
//! for the same key and body, refused (409) for the same key and another body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};

use super::error::{ApiError, ApiResult};

/// A stable hash of what makes a request the same request.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// The stored answer for `(scope, key)`: `Ok(Some)` to replay, `Err(409)` when the key was
/// used with another request, `Ok(None)` when new.
pub async fn lookup(
    db: &PgPool,
    scope: &str,
    key: &str,
    hash: &str,
) -> ApiResult<Option<Response>> {
    let row: Option<(String, i32, serde_json::Value)> = sqlx::query_as(
        "SELECT request_hash, status, body FROM idempotency_records WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(db)
    .await?;
    match row {
        None => Ok(None),
        Some((stored, status, body)) if stored == hash => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            Ok(Some((status, axum::Json(body)).into_response()))
        }
        Some(_) => Err(ApiError::Conflict {
            code: "idempotency_conflict",
            message: "this Idempotency-Key was used with a different request".into(),
        }),
    }
}

/// Stores the answer in the effect's transaction; `false` when a concurrent request with
/// the same key stored first (the caller rolls back and replays that one).
pub async fn save(
    tx: &mut Transaction<'_, Postgres>,
    scope: &str,
    key: &str,
    hash: &str,
    status: StatusCode,
    body: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO idempotency_records (scope, key, request_hash, status, body)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(i32::from(status.as_u16()))
    .bind(body)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Keeps a refusal for replay: a 4xx answer (other than a conflict over the key itself) is
/// the first answer too, so a retry with the same key and body gets it again rather than a
/// different outcome later. Server-side failures (5xx) are not kept: those are retried.
pub async fn remember_refusal(
    db: &PgPool,
    scope: &str,
    key: &str,
    hash: &str,
    result: ApiResult<Response>,
) -> ApiResult<Response> {
    let Err(refusal) = result else {
        return result;
    };
    if !refusal.status().is_client_error() || refusal.code() == "idempotency_conflict" {
        return Err(refusal);
    }
    let stored = sqlx::query(
        "INSERT INTO idempotency_records (scope, key, request_hash, status, body)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(i32::from(refusal.status().as_u16()))
    .bind(refusal.body())
    .execute(db)
    .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, "refusal not kept for replay");
    }
    Err(refusal)
}
