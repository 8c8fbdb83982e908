//! The policy's catalog in Stripe: one Product per paid plan and per credit pack, one
//! Price per plan × interval and per pack. Products have ids we choose; Prices are found
//! again by `lookup_key`, so a second sync with the same policy creates nothing. Stripe
//! Prices are immutable: a changed price is a new Price that takes over the lookup key.

use std::collections::HashMap;

use shared::Money;
use shared::policy::{Interval, Policy, TaxBehavior};
use stripe::StripeError;
use stripe_product::price::{
    CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, ListPrice,
};
use stripe_product::product::{CreateProduct, RetrieveProduct};
use stripe_shared::{Price, PriceTaxBehavior, RecurringInterval};

use super::{Key, Stripe, is_not_found};

/// The Product id of a plan.
pub fn plan_product_id(plan: &str) -> String {
    format!("creditgate_plan_{plan}")
}

/// The Product id of a credit pack.
pub fn pack_product_id(pack: &str) -> String {
    format!("creditgate_pack_{pack}")
}

/// The lookup key of a plan's Price for an interval.
pub fn plan_lookup_key(plan: &str, interval: Interval) -> String {
    format!("creditgate_plan_{plan}_{}", interval.as_str())
}

/// The lookup key of a pack's Price.
pub fn pack_lookup_key(pack: &str) -> String {
    format!("creditgate_pack_{pack}")
}

/// What a sync found and did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Lookup key → Price id, for every price of the policy.
    pub prices: HashMap<String, String>,
    /// Products created by this run.
    pub products_created: Vec<String>,
    /// Prices created by this run (new or changed), by lookup key.
    pub prices_created: Vec<String>,
}

/// One Price the policy wants.
struct Wanted {
    product_id: String,
    product_name: String,
    lookup_key: String,
    money: Money,
    recurring: Option<Interval>,
    metadata: HashMap<String, String>,
}

/// Pushes the catalog to Stripe. Idempotent: what already matches is left alone.
pub async fn sync(stripe: &Stripe, policy: &Policy) -> Result<SyncReport, StripeError> {
    let mut wanted = Vec::new();
    for plan in policy.paid_plans() {
        for (interval, money) in &plan.prices {
            wanted.push(Wanted {
                product_id: plan_product_id(&plan.name),
                product_name: format!(
                    "{} plan ({} credits a month)",
                    plan.name, plan.credits_per_month
                ),
                lookup_key: plan_lookup_key(&plan.name, *interval),
                money: money.clone(),
                recurring: Some(*interval),
                metadata: HashMap::from([
                    ("creditgate_plan".to_owned(), plan.name.clone()),
                    (
                        "creditgate_interval".to_owned(),
                        interval.as_str().to_owned(),
                    ),
                ]),
            });
        }
    }
    for pack in policy.credit_packs.values() {
        wanted.push(Wanted {
            product_id: pack_product_id(&pack.name),
            product_name: format!("{} credit pack ({} credits)", pack.name, pack.credits),
            lookup_key: pack_lookup_key(&pack.name),
            money: pack.price.clone(),
            recurring: None,
            metadata: HashMap::from([("creditgate_pack".to_owned(), pack.name.clone())]),
        });
    }

    let mut report = SyncReport::default();
    let mut products_seen: Vec<String> = Vec::new();
    for item in &wanted {
        if !products_seen.contains(&item.product_id) {
            if ensure_product(stripe, policy, item).await? {
                report.products_created.push(item.product_id.clone());
            }
            products_seen.push(item.product_id.clone());
        }
        let (price_id, created) = ensure_price(stripe, policy, item).await?;
        if created {
            report.prices_created.push(item.lookup_key.clone());
        }
        report.prices.insert(item.lookup_key.clone(), price_id);
    }
    Ok(report)
}

/// Finds a Price by lookup key (active only).
pub async fn find_price(stripe: &Stripe, lookup_key: &str) -> Result<Option<Price>, StripeError> {
    let list = stripe
        .call(
            &ListPrice::new()
                .lookup_keys(vec![lookup_key.to_owned()])
                .active(true),
            Key::Read,
        )
        .await?;
    Ok(list
        .data
        .into_iter()
        .find(|p| p.lookup_key.as_deref() == Some(lookup_key)))
}

async fn ensure_product(
    stripe: &Stripe,
    policy: &Policy,
    item: &Wanted,
) -> Result<bool, StripeError> {
    match stripe
        .call(&RetrieveProduct::new(item.product_id.as_str()), Key::Read)
        .await
    {
        Ok(_) => Ok(false),
        Err(e) if is_not_found(&e) => {
            let mut create = CreateProduct::new(item.product_name.as_str())
                .id(item.product_id.as_str())
                .metadata(item.metadata.clone());
            if let Some(code) = &policy.tax.product_tax_code {
                create = create.tax_code(code.as_str());
            }
            let key = format!("cg-product-{}", item.product_id);
            stripe.call(&create, Key::Stable(&key)).await?;
            tracing::info!(product = %item.product_id, "stripe product created");
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

fn tax_behavior(policy: &Policy) -> PriceTaxBehavior {
    match policy.tax.tax_behavior {
        TaxBehavior::Exclusive => PriceTaxBehavior::Exclusive,
        TaxBehavior::Inclusive => PriceTaxBehavior::Inclusive,
    }
}

async fn ensure_price(
    stripe: &Stripe,
    policy: &Policy,
    item: &Wanted,
) -> Result<(String, bool), StripeError> {
    let cents = item.money.minor_units().ok_or_else(|| {
        StripeError::ConfigError(format!(
            "{}: price has fractions of a cent",
            item.lookup_key
        ))
    })?;
    let currency: stripe_types::Currency = item.money.currency.as_str().parse().map_err(|_| {
        StripeError::ConfigError(format!("{}: currency unknown to Stripe", item.lookup_key))
    })?;
    let behavior = tax_behavior(policy);
    if let Some(existing) = find_price(stripe, &item.lookup_key).await? {
        let same = existing.unit_amount == Some(cents)
            && existing.currency == currency
            && existing.product.id().as_str() == item.product_id
            && existing.recurring.as_ref().map(|r| r.interval.clone())
                == item.recurring.map(recurring_interval)
            && existing.tax_behavior.as_ref() == Some(&behavior);
        if same {
            return Ok((existing.id.to_string(), false));
        }
    }
    let mut create = CreatePrice::new(currency)
        .product(item.product_id.as_str())
        .unit_amount(cents)
        .lookup_key(item.lookup_key.as_str())
        .transfer_lookup_key(true)
        .tax_behavior(behavior)
        .metadata(item.metadata.clone());
    if let Some(interval) = item.recurring {
        let interval = match interval {
            Interval::Monthly => CreatePriceRecurringInterval::Month,
            Interval::Yearly => CreatePriceRecurringInterval::Year,
        };
        create = create.recurring(CreatePriceRecurring::new(interval));
    }
    let key = format!(
        "cg-price-{}-{}-{}-{}",
        item.lookup_key,
        cents,
        item.money.currency,
        policy.tax.tax_behavior == TaxBehavior::Inclusive
    );
    let price = stripe.call(&create, Key::Stable(&key)).await?;
    tracing::info!(lookup_key = %item.lookup_key, price = %price.id, "stripe price created");
    Ok((price.id.to_string(), true))
}

fn recurring_interval(interval: Interval) -> RecurringInterval {
    match interval {
        Interval::Monthly => RecurringInterval::Month,
        Interval::Yearly => RecurringInterval::Year,
    }
}
