//! The Stripe-backed endpoints: `POST /v1/checkout`, `POST /v1/portal`,
//! `GET /v1/invoices`.

use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use shared::policy::Interval;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use crate::State;
use crate::stripe::checkout::{self, CheckoutError, Purchase};
use crate::stripe::{self, Stripe, customers, invoices, portal};

type ApiResult<T> = Result<T, ApiError>;

fn stripe_of(state: &State) -> ApiResult<&Stripe> {
    state
        .stripe
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("stripe is not configured (STRIPE_SECRET_KEY)".into()))
}

fn stripe_failed(e: &::stripe::StripeError) -> ApiError {
    tracing::warn!(error = %stripe::short(e), "stripe call failed");
    ApiError::Unavailable(format!("stripe: {}", stripe::short(e)))
}

/// The customer's Stripe Customer, created on first need (once, whatever the concurrency:
/// Stripe's idempotency key is derived from our id, and the link is written only if absent).
async fn stripe_customer(state: &State, stripe: &Stripe, customer: &str) -> ApiResult<String> {
    let row: Option<(Option<String>, String, String)> =
        sqlx::query_as("SELECT stripe_customer_id, email, tax_exempt FROM customers WHERE id = $1")
            .bind(customer)
            .fetch_optional(&state.db)
            .await?;
    let (existing, email, tax_exempt) = row.ok_or(ApiError::NotFound("customer"))?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let email = Some(&email).filter(|e| !e.is_empty()).map(String::as_str);
    let created = customers::create(
        stripe,
        customer,
        email,
        customers::TaxExempt::parse(&tax_exempt),
    )
    .await
    .map_err(|e| stripe_failed(&e))?;
    let linked: (String,) = sqlx::query_as(
        "UPDATE customers SET stripe_customer_id = COALESCE(stripe_customer_id, $2) WHERE id = $1
         RETURNING stripe_customer_id",
    )
    .bind(customer)
    .bind(&created)
    .fetch_one(&state.db)
    .await?;
    Ok(linked.0)
}

/// The customer's Stripe Customer id, if one was made.
async fn linked_stripe_customer(state: &State, customer: &str) -> ApiResult<Option<String>> {
    let linked: Option<(Option<String>,)> =
        sqlx::query_as("SELECT stripe_customer_id FROM customers WHERE id = $1")
            .bind(customer)
            .fetch_optional(&state.db)
            .await?;
    Ok(linked.and_then(|(id,)| id))
}

/// `POST /v1/checkout` body: a plan and interval, or a credit pack.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    plan: Option<String>,
    interval: Option<String>,
    credit_pack: Option<String>,
}

/// `POST /v1/checkout` → `{"url":…}`: a Stripe Checkout page. A customer with an active
/// subscription is refused (409 `subscription_exists`): switching plans goes through the
/// portal.
pub async fn checkout(
    caller: Caller,
    AxState(state): AxState<State>,
    headers: HeaderMap,
    ApiJson { value: body, .. }: ApiJson<CheckoutBody>,
) -> ApiResult<Response> {
    let policy = state.policy();
    let purchase = match (body.plan, body.interval, body.credit_pack) {
        (Some(plan), interval, None) => {
            let interval = match interval.as_deref().unwrap_or("monthly") {
                "monthly" => Interval::Monthly,
                "yearly" => Interval::Yearly,
                other => {
                    return Err(ApiError::bad(
                        "invalid_interval",
                        format!("interval must be monthly or yearly, got {other:?}"),
                    ));
                }
            };
            let Some(p) = policy.plans.get(&plan) else {
                return Err(ApiError::bad(
                    "unknown_plan",
                    format!("no plan named {plan:?}"),
                ));
            };
            if !p.prices.contains_key(&interval) {
                return Err(ApiError::bad(
                    "plan_not_sold",
                    format!("plan {plan:?} has no {} price", interval.as_str()),
                ));
            }
            Purchase::Plan { plan, interval }
        }
        (None, None, Some(pack)) => {
            if !policy.credit_packs.contains_key(&pack) {
                return Err(ApiError::bad(
                    "unknown_credit_pack",
                    format!("no credit pack named {pack:?}"),
                ));
            }
            Purchase::Pack { pack }
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_checkout",
                "send {\"plan\":…,\"interval\":\"monthly\"|\"yearly\"} or {\"credit_pack\":…}",
            ));
        }
    };
    let customer = caller.customer.as_str();
    if matches!(purchase, Purchase::Plan { .. }) {
        let sub: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT stripe_subscription_id, subscription_status FROM customers WHERE id = $1",
        )
        .bind(customer)
        .fetch_optional(&state.db)
        .await?;
        if let Some((Some(_), Some(status))) = sub
            && matches!(
                status.as_str(),
                "active" | "trialing" | "past_due" | "unpaid"
            )
        {
            return Err(ApiError::Conflict {
                code: "subscription_exists",
                message: "there is already an active subscription; switch plans in the customer portal (POST /v1/portal)"
                    .into(),
            });
        }
    }
    let stripe = stripe_of(&state)?;
    let stripe_customer = stripe_customer(&state, stripe, customer).await?;
    // The caller's Idempotency-Key, if any, makes a retried request return the same session.
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let url = checkout::create(stripe, &policy, customer, &stripe_customer, &purchase, &key).await.map_err(|e| match e {
        CheckoutError::PriceMissing(key) => ApiError::Unavailable(format!(
            "the price {key} is not in Stripe yet; the operator must run billing-sync stripe-sync"
        )),
        CheckoutError::Stripe(e) => stripe_failed(&e),
    })?;
    Ok(axum::Json(json!({ "url": url })).into_response())
}

/// `POST /v1/portal` → `{"url":…}`: the Stripe Customer Portal.
pub async fn portal(caller: Caller, AxState(state): AxState<State>) -> ApiResult<Response> {
    let stripe = stripe_of(&state)?;
    let stripe_customer = stripe_customer(&state, stripe, caller.customer.as_str()).await?;
    let configuration = state.portal_configuration.get().map(String::as_str);
    let url = portal::session(stripe, &state.policy(), configuration, &stripe_customer)
        .await
        .map_err(|e| stripe_failed(&e))?;
    Ok(axum::Json(json!({ "url": url })).into_response())
}

/// `GET /v1/invoices` → `{"data":[…]}`, newest first, from Stripe.
pub async fn list_invoices(caller: Caller, AxState(state): AxState<State>) -> ApiResult<Response> {
    let Some(stripe_customer) = linked_stripe_customer(&state, caller.customer.as_str()).await?
    else {
        // Never bought anything: no Stripe Customer, no invoices.
        return Ok(axum::Json(json!({ "data": [] })).into_response());
    };
    let stripe = stripe_of(&state)?;
    let data = invoices::list(stripe, &stripe_customer)
        .await
        .map_err(|e| stripe_failed(&e))?;
    Ok(axum::Json(json!({ "data": data })).into_response())
}

/// Pushes a customer's tax status to Stripe (after the admin endpoint recorded it).
pub async fn push_tax_exempt(state: &State, customer: &str, value: &str) -> ApiResult<()> {
    let linked = linked_stripe_customer(state, customer).await?;
    let (Some(stripe_customer), Some(stripe)) = (linked, state.stripe.as_ref()) else {
        // No Stripe Customer yet: it is created with this status when first needed.
        return Ok(());
    };
    customers::set_tax_exempt(stripe, &stripe_customer, customers::TaxExempt::parse(value))
        .await
        .map_err(|e| stripe_failed(&e))
}
