//! Checkout Sessions: `subscription` mode for a plan × interval, `payment` mode for a credit
//! pack. Automatic tax when `tax.enabled` (then billing address and tax ID collection, and
//! `customer_update[address]=auto` as Stripe Tax requires for an existing Customer).
//! Payment methods come from Stripe's dynamic configuration, optionally filtered by
//! `stripe.payment_methods`. Metadata ties the session, and the subscription or payment it
//! makes, to our customer.

use std::collections::HashMap;

use shared::policy::{Interval, Policy};
use stripe::StripeError;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionAllowedPaymentMethodTypes,
    CreateCheckoutSessionAutomaticTax, CreateCheckoutSessionCustomerUpdate,
    CreateCheckoutSessionCustomerUpdateAddress, CreateCheckoutSessionCustomerUpdateName,
    CreateCheckoutSessionInvoiceCreation, CreateCheckoutSessionLineItems,
    CreateCheckoutSessionPaymentIntentData, CreateCheckoutSessionSubscriptionData,
    CreateCheckoutSessionTaxIdCollection,
};
use stripe_shared::{CheckoutSessionBillingAddressCollection, CheckoutSessionMode};

use super::catalog::{find_price, pack_lookup_key, plan_lookup_key};
use super::{Key, Stripe};

/// Metadata key holding our customer id on sessions, subscriptions and payments.
pub const METADATA_CUSTOMER: &str = "creditgate_customer";
/// Metadata key holding the plan bought.
pub const METADATA_PLAN: &str = "creditgate_plan";
/// Metadata key holding the plan's interval.
pub const METADATA_INTERVAL: &str = "creditgate_interval";
/// Metadata key holding the credit pack bought.
pub const METADATA_PACK: &str = "creditgate_pack";
/// Metadata key holding the credits a pack adds, as sold.
pub const METADATA_CREDITS: &str = "creditgate_credits";

/// What is being bought.
#[derive(Clone, Debug)]
pub enum Purchase {
    /// A subscription.
    Plan {
        /// Plan name (a paid plan of the policy).
        plan: String,
        /// Billing interval.
        interval: Interval,
    },
    /// A one-off credit pack.
    Pack {
        /// Pack name.
        pack: String,
    },
}

/// Why no session was made.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The Price is not in Stripe: `billing-sync stripe-sync` has not run for this policy.
    #[error("the price {0} is not in Stripe yet; run billing-sync stripe-sync")]
    PriceMissing(String),
    /// Stripe refused or could not be reached.
    #[error("{}", super::short(.0))]
    Stripe(#[from] StripeError),
}

/// Creates a Checkout Session for `customer_id` (whose Stripe Customer is
/// `stripe_customer`) and returns its URL. `idempotency_key` is the caller's, so a retried
/// request gets the same session.
pub async fn create(
    stripe: &Stripe,
    policy: &Policy,
    customer_id: &str,
    stripe_customer: &str,
    purchase: &Purchase,
    idempotency_key: &str,
) -> Result<String, CheckoutError> {
    let (lookup_key, mode, mut metadata) = match purchase {
        Purchase::Plan { plan, interval } => (
            plan_lookup_key(plan, *interval),
            CheckoutSessionMode::Subscription,
            HashMap::from([
                (METADATA_PLAN.to_owned(), plan.clone()),
                (METADATA_INTERVAL.to_owned(), interval.as_str().to_owned()),
            ]),
        ),
        Purchase::Pack { pack } => {
            let credits = policy
                .credit_packs
                .get(pack)
                .map(|p| p.credits.to_string())
                .unwrap_or_default();
            (
                pack_lookup_key(pack),
                CheckoutSessionMode::Payment,
                HashMap::from([
                    (METADATA_PACK.to_owned(), pack.clone()),
                    (METADATA_CREDITS.to_owned(), credits),
                ]),
            )
        }
    };
    metadata.insert(METADATA_CUSTOMER.to_owned(), customer_id.to_owned());
    let price = find_price(stripe, &lookup_key)
        .await?
        .ok_or(CheckoutError::PriceMissing(lookup_key))?;

    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(price.id.to_string());
    line.quantity = Some(1);
    let mut session = CreateCheckoutSession::new()
        .mode(mode.clone())
        .customer(stripe_customer)
        .client_reference_id(customer_id)
        .line_items(vec![line])
        .success_url(policy.stripe.success_url.as_str())
        .cancel_url(policy.stripe.cancel_url.as_str())
        .metadata(metadata.clone());
    match mode {
        CheckoutSessionMode::Subscription => {
            let mut data = CreateCheckoutSessionSubscriptionData::new();
            data.metadata = Some(metadata);
            session = session.subscription_data(data);
        }
        _ => {
            let mut data = CreateCheckoutSessionPaymentIntentData::new();
            data.metadata = Some(metadata);
            // An invoice for the pack: a tax-compliant receipt, listed in GET /v1/invoices.
            session = session
                .payment_intent_data(data)
                .invoice_creation(CreateCheckoutSessionInvoiceCreation::new(true));
        }
    }
    if policy.tax.enabled {
        let mut update = CreateCheckoutSessionCustomerUpdate::new();
        update.address = Some(CreateCheckoutSessionCustomerUpdateAddress::Auto);
        update.name = Some(CreateCheckoutSessionCustomerUpdateName::Auto);
        session = session
            .automatic_tax(CreateCheckoutSessionAutomaticTax::new(true))
            .billing_address_collection(CheckoutSessionBillingAddressCollection::Required)
            .tax_id_collection(CreateCheckoutSessionTaxIdCollection::new(true))
            .customer_update(update);
    }
    if !policy.stripe.payment_methods.is_empty() {
        let methods: Vec<CreateCheckoutSessionAllowedPaymentMethodTypes> = policy
            .stripe
            .payment_methods
            .iter()
            .filter_map(|m| m.parse().ok())
            .collect();
        session = session.allowed_payment_method_types(methods);
    }
    // Stripe caps keys at 255 characters: the caller's key is hashed into ours.
    let key = format!(
        "cg-checkout-{customer_id}-{}",
        super::sha256_hex(idempotency_key)
    );
    let created = stripe.call(&session, Key::Stable(&key)).await?;
    created.url.ok_or_else(|| {
        CheckoutError::Stripe(StripeError::JSONDeserialize(
            "checkout session has no url".into(),
        ))
    })
}
