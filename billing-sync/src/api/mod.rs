//! The HTTP APIs: admin (`/admin/v1/…`, bearer `CREDITGATE_ADMIN_TOKEN`) and customer
//! (`/v1/…`, the customer's own API key). [`app`] builds the router; tests call it
//! in-process.

pub mod admin;
pub mod billing;
pub mod customer;
pub mod error;
pub mod extract;
pub mod idempotency;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};

use crate::State;
use crate::config::REQUEST_BODY_BYTES_MAX;
use error::ApiError;

/// The router of both APIs.
pub fn app(state: State) -> Router {
    Router::new()
        .route(
            "/admin/v1/customers",
            post(admin::create_customer).get(admin::list_customers),
        )
        .route("/admin/v1/customers/{id}", get(admin::get_customer))
        .route(
            "/admin/v1/customers/{id}/api-keys",
            post(admin::create_api_key),
        )
        .route("/admin/v1/api-keys/{key_id}", delete(admin::revoke_api_key))
        .route("/admin/v1/customers/{id}/grants", post(admin::grant))
        .route(
            "/admin/v1/customers/{id}/tax-exempt",
            put(admin::set_tax_exempt),
        )
        .route("/admin/v1/audit", get(admin::audit))
        .route("/v1/balance", get(customer::balance))
        .route("/v1/usage", get(customer::usage))
        .route(
            "/v1/transfers",
            post(customer::create_transfer).get(customer::list_transfers),
        )
        .route("/v1/invoices", get(billing::list_invoices))
        .route("/v1/checkout", post(billing::checkout))
        .route("/v1/portal", post(billing::portal))
        .route("/admin/v1/stripe/events", get(admin::stripe_events))
        .route(
            "/admin/v1/stripe/events/{id}/retry",
            post(admin::retry_stripe_event),
        )
        .route(
            "/webhooks/stripe",
            post(crate::webhook::receive).layer(DefaultBodyLimit::max(
                crate::webhook::WEBHOOK_BODY_BYTES_MAX,
            )),
        )
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Bodies above the limit are refused with 413 before any handler reads them.
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}
