//! The Customer Portal: one configuration made from the policy (payment method updates,
//! invoice history, cancel at period end, switching between the paid plans' prices with
//! upgrades prorated at once and downgrades at period end), and sessions on it.

use std::collections::HashMap;

use shared::policy::Policy;
use stripe::StripeError;
use stripe_billing::billing_portal_configuration::{
    CreateBillingPortalConfiguration, CreateBillingPortalConfigurationFeatures,
    CreateBillingPortalConfigurationFeaturesSubscriptionCancel,
    CreateBillingPortalConfigurationFeaturesSubscriptionCancelMode,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdate,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdateDefaultAllowedUpdates,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdateProrationBehavior,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdateScheduleAtPeriodEnd,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdateScheduleAtPeriodEndConditions,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdateScheduleAtPeriodEndConditionsType as ConditionType,
    InvoiceListParam, ListBillingPortalConfiguration, PaymentMethodUpdateParam,
    SubscriptionUpdateProductParam,
};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;

use super::catalog::{plan_lookup_key, plan_product_id};
use super::{Key, Stripe, is_not_found};

const METADATA_FINGERPRINT: &str = "creditgate_portal";

/// Finds the portal configuration made for this catalog (`prices`: lookup key → Price id,
/// from the catalog sync) or creates it; returns its id.
pub async fn ensure_configuration(
    stripe: &Stripe,
    policy: &Policy,
    prices: &HashMap<String, String>,
) -> Result<String, StripeError> {
    let mut products = Vec::new();
    for plan in policy.paid_plans() {
        let plan_prices: Vec<String> = plan
            .prices
            .keys()
            .filter_map(|i| prices.get(&plan_lookup_key(&plan.name, *i)).cloned())
            .collect();
        if !plan_prices.is_empty() {
            products.push(SubscriptionUpdateProductParam::new(
                plan_prices,
                plan_product_id(&plan.name),
            ));
        }
    }
    let mut fingerprint: Vec<String> = products
        .iter()
        .map(|p| format!("{}={}", p.product, p.prices.join("+")))
        .collect();
    fingerprint.push(policy.stripe.portal_return_url.clone());
    let fingerprint = fingerprint.join(";");
    // The first 12 bytes (24 hex digits) name the configuration in its metadata.
    let fingerprint = super::sha256_hex(&fingerprint)[..24].to_owned();

    match stripe
        .call(
            &ListBillingPortalConfiguration::new()
                .active(true)
                .limit(100),
            Key::Read,
        )
        .await
    {
        Ok(list) => {
            if let Some(found) = list.data.iter().find(|c| {
                c.metadata
                    .as_ref()
                    .and_then(|m| m.get(METADATA_FINGERPRINT))
                    .is_some_and(|f| *f == fingerprint)
            }) {
                return Ok(found.id.to_string());
            }
        }
        // A stand-in without listing: fall through and create.
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }

    let mut features = CreateBillingPortalConfigurationFeatures::new();
    features.payment_method_update = Some(PaymentMethodUpdateParam::new(true));
    features.invoice_history = Some(InvoiceListParam::new(true));
    let mut cancel = CreateBillingPortalConfigurationFeaturesSubscriptionCancel::new(true);
    cancel.mode = Some(CreateBillingPortalConfigurationFeaturesSubscriptionCancelMode::AtPeriodEnd);
    features.subscription_cancel = Some(cancel);
    if !products.is_empty() {
        let mut update = CreateBillingPortalConfigurationFeaturesSubscriptionUpdate::new(true);
        update.default_allowed_updates = Some(vec![
            CreateBillingPortalConfigurationFeaturesSubscriptionUpdateDefaultAllowedUpdates::Price,
        ]);
        update.products = Some(products);
        // Upgrades are invoiced at once, prorated…
        update.proration_behavior =
            Some(CreateBillingPortalConfigurationFeaturesSubscriptionUpdateProrationBehavior::AlwaysInvoice);
        // …downgrades (a smaller amount or a shorter interval) wait for the period's end.
        let mut at_end =
            CreateBillingPortalConfigurationFeaturesSubscriptionUpdateScheduleAtPeriodEnd::new();
        at_end.conditions = Some(vec![
            CreateBillingPortalConfigurationFeaturesSubscriptionUpdateScheduleAtPeriodEndConditions::new(
                ConditionType::DecreasingItemAmount,
            ),
            CreateBillingPortalConfigurationFeaturesSubscriptionUpdateScheduleAtPeriodEndConditions::new(
                ConditionType::ShorteningInterval,
            ),
        ]);
        update.schedule_at_period_end = Some(at_end);
        features.subscription_update = Some(update);
    }
    let create = CreateBillingPortalConfiguration::new(features)
        .default_return_url(policy.stripe.portal_return_url.as_str())
        .metadata(HashMap::from([(
            METADATA_FINGERPRINT.to_owned(),
            fingerprint.clone(),
        )]));
    let key = format!("cg-portal-{fingerprint}");
    let created = stripe.call(&create, Key::Stable(&key)).await?;
    tracing::info!(configuration = %created.id, "stripe portal configuration created");
    Ok(created.id.to_string())
}

/// A portal session for `stripe_customer`; returns its URL.
pub async fn session(
    stripe: &Stripe,
    policy: &Policy,
    configuration: Option<&str>,
    stripe_customer: &str,
) -> Result<String, StripeError> {
    let mut create = CreateBillingPortalSession::new()
        .customer(stripe_customer)
        .return_url(policy.stripe.portal_return_url.as_str());
    if let Some(configuration) = configuration {
        create = create.configuration(configuration);
    }
    let session = stripe.call(&create, Key::Fresh).await?;
    Ok(session.url)
}
