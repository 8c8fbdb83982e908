//! The Stripe API paths billing-sync uses, one file per resource; this module only routes.
//!
//! A handler runs under the state lock, reads its [`Call`], and returns the JSON body plus the
//! events Stripe would emit for it; the server records, stores idempotent results and sends
//! the events after the lock is released.

pub mod checkout;
pub mod customers;
pub mod events;
pub mod invoices;
pub mod portal;
pub mod prices;
pub mod products;
pub mod subscriptions;

use http::Method;
use serde_json::Value;

use crate::error::ApiError;
use crate::params::Params;
use crate::state::State;

/// What every handler may need to know about the request besides its parameters.
pub struct Ctx {
    /// The stand-in's own base URL with a trailing `/` (for Checkout and portal `url`s).
    pub base_url: String,
    /// Unix time of the request.
    pub now: i64,
    /// Tax charged when automatic tax is on, in basis points of the subtotal.
    pub tax_rate_bps: i64,
    /// `req_…`, sent back as `Request-Id` and in events' `request.id`.
    pub request_id: Option<String>,
    /// The request's `Idempotency-Key`, echoed in events' `request.idempotency_key`.
    pub idempotency_key: Option<String>,
}

/// One API call: method, path after `/v1/`, parameters.
pub struct Call<'a> {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'a Method,
    /// The path after `/v1/`, split on `/` (`["checkout", "sessions", "cs_test_…"]`).
    pub segments: Vec<&'a str>,
    /// The form body (POST, DELETE with a body) or the query (GET).
    pub params: Params<'a>,
    /// Time, base URL, request id.
    pub ctx: &'a Ctx,
}

/// An event a handler wants sent.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// e.g. `customer.subscription.updated`
    pub type_: String,
    /// The object after the change.
    pub object: Value,
    /// For `*.updated`: the changed fields' previous values.
    pub previous_attributes: Option<Value>,
}

/// A handler's answer.
pub struct Reply {
    /// The JSON answered with status 200.
    pub body: Value,
    /// Events to send after the answer, in order.
    pub events: Vec<NewEvent>,
}

impl Reply {
    /// An answer without events.
    pub fn body(body: Value) -> Self {
        Self {
            body,
            events: Vec::new(),
        }
    }
}

/// Routes a call to its handler, or answers Stripe's 404 for an unknown path.
pub fn dispatch(state: &mut State, call: &Call<'_>) -> Result<Reply, ApiError> {
    let post = call.method == Method::POST;
    let get = call.method == Method::GET;
    let delete = call.method == Method::DELETE;
    match call.segments.as_slice() {
        ["customers"] if post => customers::create(state, call),
        ["customers"] if get => customers::list(state, call),
        ["customers", id] if get => customers::retrieve(state, call, id),
        ["customers", id] if post => customers::update(state, call, id),
        ["products"] if post => products::create(state, call),
        ["products"] if get => products::list(state, call),
        ["products", id] if get => products::retrieve(state, call, id),
        ["products", id] if post => products::update(state, call, id),
        ["prices"] if post => prices::create(state, call),
        ["prices"] if get => prices::list(state, call),
        ["prices", id] if get => prices::retrieve(state, call, id),
        ["prices", id] if post => prices::update(state, call, id),
        ["checkout", "sessions"] if post => checkout::create(state, call),
        ["checkout", "sessions"] if get => checkout::list(state, call),
        ["checkout", "sessions", id] if get => checkout::retrieve(state, call, id),
        ["checkout", "sessions", id, "line_items"] if get => {
            checkout::list_line_items(state, call, id)
        }
        ["billing_portal", "configurations"] if post => portal::create_configuration(state, call),
        ["billing_portal", "configurations"] if get => portal::list_configurations(state, call),
        ["billing_portal", "configurations", id] if get => {
            portal::retrieve_configuration(state, call, id)
        }
        ["billing_portal", "configurations", id] if post => {
            portal::update_configuration(state, call, id)
        }
        ["billing_portal", "sessions"] if post => portal::create_session(state, call),
        ["subscriptions"] if get => subscriptions::list(state, call),
        ["subscriptions", id] if get => subscriptions::retrieve(state, call, id),
        ["subscriptions", id] if post => subscriptions::update(state, call, id),
        ["subscriptions", id] if delete => subscriptions::cancel_via_api(state, call, id),
        ["invoices"] if get => invoices::list(state, call),
        ["invoices", id] if get => invoices::retrieve(state, call, id),
        ["events"] if get => events::list(state, call),
        ["events", id] if get => events::retrieve(state, call, id),
        _ => Err(ApiError::unknown_path(
            call.method.as_str(),
            &format!("/v1/{}", call.segments.join("/")),
        )),
    }
}

/// Applies the request's `expand[]` to a single object.
pub fn expanded(state: &State, call: &Call<'_>, mut body: Value) -> Result<Value, ApiError> {
    let paths = call.params.str_list("expand")?;
    state.expand(&mut body, &paths);
    Ok(body)
}

/// The `currency` parameter, lowercased and checked to be three letters.
pub fn currency(params: Params<'_>, key: &str) -> Result<Option<String>, ApiError> {
    match params.str(key)? {
        None => Ok(None),
        Some(c) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => {
            Ok(Some(c.to_ascii_lowercase()))
        }
        Some(c) => Err(ApiError::bad_param(key, format!("Invalid currency: {c}"))),
    }
}
