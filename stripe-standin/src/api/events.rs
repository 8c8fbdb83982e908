//! `/v1/events`: the events the stand-in sent, for handlers that re-fetch them.

use serde_json::Value;

use super::{Call, Reply};
use crate::error::ApiError;
use crate::state::State;

/// `GET /v1/events/{id}`
pub fn retrieve(state: &mut State, _call: &Call<'_>, id: &str) -> Result<Reply, ApiError> {
    state
        .events
        .iter()
        .find(|e| e.id == id)
        .map(|e| Reply::body(e.event.clone()))
        .ok_or_else(|| ApiError::no_such("event", id, "id"))
}

/// `GET /v1/events` (filter `type`), newest first, at most `limit` (default 10).
pub fn list(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let type_ = call.params.str("type")?;
    let limit = call.params.int("limit")?.unwrap_or(10).clamp(1, 100);
    let matching: Vec<Value> = state
        .events
        .iter()
        .rev()
        .filter(|e| type_.is_none_or(|t| e.type_ == t))
        .map(|e| e.event.clone())
        .collect();
    let limit = usize::try_from(limit).unwrap_or(10);
    let has_more = matching.len() > limit;
    Ok(Reply::body(serde_json::json!({
        "object": "list",
        "data": matching.into_iter().take(limit).collect::<Vec<_>>(),
        "has_more": has_more,
        "url": "/v1/events",
    })))
}
