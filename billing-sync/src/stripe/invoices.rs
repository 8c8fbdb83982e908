//! A customer's invoices from Stripe, in our JSON shape (money as exact decimals).

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::{Currency, Money};
use stripe::StripeError;
use stripe_billing::invoice::ListInvoice;

use super::{Key, Stripe};

/// Most invoices listed per request.
pub const INVOICES_LIST_MAX: i64 = 100;

/// One invoice as `GET /v1/invoices` shows it.
#[derive(Debug, Serialize)]
pub struct InvoiceView {
    /// `in_…`.
    pub id: String,
    /// `draft`, `open`, `paid`, `uncollectible`, `void`.
    pub status: String,
    /// Before tax.
    pub subtotal: Money,
    /// Tax (Stripe Tax's lines summed).
    pub tax: Money,
    /// What is due.
    pub total: Money,
    /// Stripe's hosted page (a tax-compliant receipt once paid).
    pub hosted_invoice_url: Option<String>,
    /// The PDF.
    pub invoice_pdf: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: DateTime<Utc>,
}

/// The newest invoices of `stripe_customer`, newest first.
pub async fn list(stripe: &Stripe, stripe_customer: &str) -> Result<Vec<InvoiceView>, StripeError> {
    let list = stripe
        .call(
            &ListInvoice::new()
                .customer(stripe_customer)
                .limit(INVOICES_LIST_MAX),
            Key::Read,
        )
        .await?;
    let mut views = Vec::with_capacity(list.data.len());
    for invoice in list.data {
        let Some(id) = invoice.id else { continue };
        let currency = Currency::parse(&invoice.currency.to_string())
            .map_err(|e| StripeError::JSONDeserialize(format!("invoice {id}: {e}")))?;
        let tax: i64 = invoice.total_taxes.iter().flatten().map(|t| t.amount).sum();
        views.push(InvoiceView {
            id: id.to_string(),
            status: invoice
                .status
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "draft".to_owned()),
            subtotal: Money::from_minor_units(invoice.subtotal, currency.clone()),
            tax: Money::from_minor_units(tax, currency.clone()),
            total: Money::from_minor_units(invoice.total, currency),
            hosted_invoice_url: invoice.hosted_invoice_url,
            invoice_pdf: invoice.invoice_pdf,
            created_at: DateTime::from_timestamp(invoice.created, 0).unwrap_or_default(),
        });
    }
    views.sort_by_key(|v| std::cmp::Reverse(v.created_at));
    Ok(views)
}
