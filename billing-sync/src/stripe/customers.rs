//! Stripe Customers: created lazily, once per customer (a stable idempotency key), and only
//! their ids are kept on our side; email and address live in Stripe.

use std::collections::HashMap;

use stripe::StripeError;
use stripe_core::customer::{CreateCustomer, UpdateCustomer};
use stripe_shared::CustomerTaxExempt;

use super::{Key, Stripe};

/// Creates the Stripe Customer for our customer `customer_id`, with its tax status;
/// retried or concurrent calls return the same Customer. Returns its `cus_…` id.
pub async fn create(
    stripe: &Stripe,
    customer_id: &str,
    email: Option<&str>,
    tax_exempt: TaxExempt,
) -> Result<String, StripeError> {
    let mut create = CreateCustomer::new()
        .metadata(HashMap::from([(
            "creditgate_customer".to_owned(),
            customer_id.to_owned(),
        )]))
        .tax_exempt(tax_exempt.to_stripe());
    if let Some(email) = email {
        create = create.email(email);
    }
    let key = format!("cg-customer-{customer_id}");
    let customer = stripe.call(&create, Key::Stable(&key)).await?;
    Ok(customer.id.to_string())
}

/// Tax status we pass to Stripe Tax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxExempt {
    /// Taxed normally.
    None,
    /// Exempt from tax.
    Exempt,
    /// Reverse charge (the buyer accounts for VAT).
    Reverse,
}

impl TaxExempt {
    /// Reads the stored name; anything unknown is `none`.
    pub fn parse(value: &str) -> TaxExempt {
        match value {
            "exempt" => TaxExempt::Exempt,
            "reverse" => TaxExempt::Reverse,
            _ => TaxExempt::None,
        }
    }

    fn to_stripe(self) -> CustomerTaxExempt {
        match self {
            TaxExempt::None => CustomerTaxExempt::None,
            TaxExempt::Exempt => CustomerTaxExempt::Exempt,
            TaxExempt::Reverse => CustomerTaxExempt::Reverse,
        }
    }
}

/// Sets the Customer's `tax_exempt`.
pub async fn set_tax_exempt(
    stripe: &Stripe,
    stripe_customer: &str,
    value: TaxExempt,
) -> Result<(), StripeError> {
    stripe
        .call(
            &UpdateCustomer::new(stripe_customer).tax_exempt(value.to_stripe()),
            Key::Fresh,
        )
        .await?;
    Ok(())
}
