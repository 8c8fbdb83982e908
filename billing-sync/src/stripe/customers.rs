//! Stripe Customers: created lazily, once per customer (a stable idempotency key), and only
//! their ids are kept on our side; email and address live in Stripe.

use std::collections::HashMap;
use stripe::StripeError;
use stripe_core::customer::{CreateCustomer, UpdateCustomer};
use stripe_shared::CustomerTaxExempt as UpdateCustomerTaxExempt;

use super::{Key, Stripe};

/// Creates the Stripe Customer for our customer `customer_id`; retried or concurrent calls
/// return the same Customer. Returns its `cus_…` id.
pub async fn create(
    stripe: &Stripe,
    customer_id: &str,
    email: Option<&str>,
) -> Result<String, StripeError> {
    let mut create = CreateCustomer::new().metadata(HashMap::from([(
        "creditgate_customer".to_owned(),
        customer_id.to_owned(),
    )]));
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
    /// The name in JSON and Stripe.
    pub fn as_str(self) -> &'static str {
        match self {
            TaxExempt::None => "none",
            TaxExempt::Exempt => "exempt",
            TaxExempt::Reverse => "reverse",
        }
    }
}

/// Sets the Customer's `tax_exempt`.
pub async fn set_tax_exempt(
    stripe: &Stripe,
    stripe_customer: &str,
    value: TaxExempt,
) -> Result<(), StripeError> {
    let value = match value {
        TaxExempt::None => UpdateCustomerTaxExempt::None,
        TaxExempt::Exempt => UpdateCustomerTaxExempt::Exempt,
        TaxExempt::Reverse => UpdateCustomerTaxExempt::Reverse,
    };
    stripe
        .call(
            &UpdateCustomer::new(stripe_customer).tax_exempt(value),
            Key::Fresh,
        )
        .await?;
    Ok(())
}
