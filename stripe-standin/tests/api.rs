//! The calls billing-sync makes, through the real async-stripe client, answered by the
//! stand-in and deserialized into async-stripe's types.

mod common;

use std::collections::HashMap;

use common::{client, standin};
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
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
    SubscriptionUpdateProductParam, UpdateBillingPortalConfiguration,
};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_billing::invoice::{ListInvoice, RetrieveInvoice};
use stripe_billing::subscription::{ListSubscription, RetrieveSubscription};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionAutomaticTax, CreateCheckoutSessionCustomerUpdate,
    CreateCheckoutSessionCustomerUpdateAddress, CreateCheckoutSessionCustomerUpdateName,
    CreateCheckoutSessionInvoiceCreation, CreateCheckoutSessionLineItems,
    CreateCheckoutSessionPaymentIntentData, CreateCheckoutSessionSubscriptionData,
    CreateCheckoutSessionTaxIdCollection, RetrieveCheckoutSession,
};
use stripe_core::customer::{
    CreateCustomer, RetrieveCustomer, RetrieveCustomerReturned, UpdateCustomer,
};
use stripe_product::price::{
    CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, ListPrice, UpdatePrice,
};
use stripe_product::product::{CreateProduct, ListProduct, RetrieveProduct};
use stripe_shared::{
    CheckoutSessionBillingAddressCollection, CheckoutSessionMode, CheckoutSessionPaymentStatus,
    CheckoutSessionStatus, CustomerTaxExempt, InvoiceStatus, PriceTaxBehavior, RecurringInterval,
    SubscriptionStatus,
};

fn idempotent(key: &str) -> RequestStrategy {
    RequestStrategy::Idempotent(IdempotencyKey::new(key).expect("valid key"))
}

fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn retrieve_customer(client: &stripe::Client, id: &str) -> stripe_shared::Customer {
    match RetrieveCustomer::new(id)
        .send(client)
        .await
        .expect("retrieved")
    {
        RetrieveCustomerReturned::Customer(customer) => customer,
        RetrieveCustomerReturned::DeletedCustomer(_) => panic!("customer {id} is deleted"),
    }
}

/// Creates product `id` and a monthly price with `lookup_key`.
async fn plan_price(
    client: &stripe::Client,
    product_id: &str,
    lookup_key: &str,
    cents: i64,
    interval: CreatePriceRecurringInterval,
) -> stripe_shared::Price {
    if RetrieveProduct::new(product_id).send(client).await.is_err() {
        CreateProduct::new("mid plan")
            .id(product_id)
            .tax_code("txcd_10103001")
            .send(client)
            .await
            .expect("product created");
    }
    CreatePrice::new(stripe_types::Currency::USD)
        .product(product_id)
        .unit_amount(cents)
        .lookup_key(lookup_key)
        .transfer_lookup_key(true)
        .tax_behavior(PriceTaxBehavior::Exclusive)
        .recurring(CreatePriceRecurring::new(interval))
        .metadata(metadata(&[("creditgate_plan", "mid")]))
        .send(client)
        .await
        .expect("price created")
}

#[tokio::test]
async fn customer_create_is_idempotent_and_typed() {
    let standin = standin().await;
    let client = client(&standin);
    let create = CreateCustomer::new()
        .email("a@example.com")
        .metadata(metadata(&[("creditgate_customer", "c-1")]));
    let first = create
        .customize()
        .request_strategy(idempotent("cg-customer-c-1"))
        .send(&client)
        .await
        .expect("customer created");
    let again = create
        .customize()
        .request_strategy(idempotent("cg-customer-c-1"))
        .send(&client)
        .await
        .expect("replayed");
    assert!(first.id.as_str().starts_with("cus_"));
    assert_eq!(
        first.id, again.id,
        "same key and body give the same customer"
    );
    assert_eq!(first.email.as_deref(), Some("a@example.com"));
    assert_eq!(
        first
            .metadata
            .as_ref()
            .and_then(|m| m.get("creditgate_customer"))
            .map(String::as_str),
        Some("c-1")
    );
    assert_eq!(first.tax_exempt, Some(CustomerTaxExempt::None));

    let requests = standin.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/v1/customers");
    assert_eq!(
        requests[0].idempotency_key.as_deref(),
        Some("cg-customer-c-1")
    );
    assert_eq!(requests[0].form["metadata"]["creditgate_customer"], "c-1");

    // Same key, other body: Stripe's idempotency error, not a second customer.
    let other = CreateCustomer::new()
        .email("b@example.com")
        .customize()
        .request_strategy(idempotent("cg-customer-c-1"))
        .send(&client)
        .await;
    match other {
        Err(stripe::StripeError::Stripe(error, 400)) => {
            assert_eq!(error.type_, stripe::ApiErrorsType::IdempotencyError);
        }
        other => panic!("expected an idempotency error, got {other:?}"),
    }
    let fetched = retrieve_customer(&client, first.id.as_str()).await;
    assert_eq!(fetched.email.as_deref(), Some("a@example.com"));
}

#[tokio::test]
async fn customer_tax_exempt_updates() {
    let standin = standin().await;
    let client = client(&standin);
    let customer = CreateCustomer::new().send(&client).await.expect("created");
    for value in [
        CustomerTaxExempt::Exempt,
        CustomerTaxExempt::Reverse,
        CustomerTaxExempt::None,
    ] {
        let updated = UpdateCustomer::new(customer.id.as_str())
            .tax_exempt(value.clone())
            .send(&client)
            .await
            .expect("updated");
        assert_eq!(updated.tax_exempt, Some(value));
    }
    let last = standin.requests().pop().expect("recorded");
    assert_eq!(last.path, format!("/v1/customers/{}", customer.id));
    assert_eq!(last.form["tax_exempt"], "none");
}

#[tokio::test]
async fn products_and_prices_are_found_again_by_lookup_key() {
    let standin = standin().await;
    let client = client(&standin);
    let monthly = plan_price(
        &client,
        "creditgate_plan_mid",
        "creditgate_plan_mid_monthly",
        2000,
        CreatePriceRecurringInterval::Month,
    )
    .await;
    let yearly = plan_price(
        &client,
        "creditgate_plan_mid",
        "creditgate_plan_mid_yearly",
        20000,
        CreatePriceRecurringInterval::Year,
    )
    .await;
    assert!(monthly.id.as_str().starts_with("price_"));
    assert_eq!(monthly.unit_amount, Some(2000));
    assert_eq!(
        monthly.lookup_key.as_deref(),
        Some("creditgate_plan_mid_monthly")
    );
    assert_eq!(monthly.product.id().as_str(), "creditgate_plan_mid");
    assert_eq!(monthly.tax_behavior, Some(PriceTaxBehavior::Exclusive));
    assert_eq!(
        monthly.recurring.as_ref().map(|r| r.interval.clone()),
        Some(RecurringInterval::Month)
    );
    assert_eq!(
        yearly.recurring.as_ref().map(|r| r.interval.clone()),
        Some(RecurringInterval::Year)
    );

    let pack = CreatePrice::new(stripe_types::Currency::USD)
        .product_data(stripe_product::price::CreatePriceProductData::new(
            "small credit pack",
        ))
        .unit_amount(1000)
        .lookup_key("creditgate_pack_small")
        .send(&client)
        .await
        .expect("one-off price");
    assert!(pack.recurring.is_none());

    let found = ListPrice::new()
        .lookup_keys(vec![
            "creditgate_plan_mid_monthly".to_owned(),
            "creditgate_pack_small".to_owned(),
        ])
        .active(true)
        .send(&client)
        .await
        .expect("listed");
    let mut ids: Vec<String> = found.data.iter().map(|p| p.id.to_string()).collect();
    ids.sort();
    let mut expected = vec![monthly.id.to_string(), pack.id.to_string()];
    expected.sort();
    assert_eq!(ids, expected);
    let last = standin.requests().pop().expect("recorded");
    assert_eq!(last.query["lookup_keys"][0], "creditgate_plan_mid_monthly");

    let product = RetrieveProduct::new("creditgate_plan_mid")
        .send(&client)
        .await
        .expect("product");
    assert_eq!(product.name, "mid plan");
    assert_eq!(
        product
            .tax_code
            .as_ref()
            .map(|t| t.id().to_string())
            .as_deref(),
        Some("txcd_10103001")
    );
    let products = ListProduct::new()
        .active(true)
        .send(&client)
        .await
        .expect("products");
    assert_eq!(products.data.len(), 2);

    // A changed price takes the lookup key over; the old one loses it.
    let changed = plan_price(
        &client,
        "creditgate_plan_mid",
        "creditgate_plan_mid_monthly",
        2500,
        CreatePriceRecurringInterval::Month,
    )
    .await;
    let found = ListPrice::new()
        .lookup_keys(vec!["creditgate_plan_mid_monthly".to_owned()])
        .send(&client)
        .await
        .expect("listed");
    assert_eq!(found.data.len(), 1);
    assert_eq!(found.data[0].id, changed.id);
    assert_eq!(found.data[0].unit_amount, Some(2500));

    // Without transfer_lookup_key the key is refused; with it, it moves.
    let refused = UpdatePrice::new(monthly.id.as_str())
        .lookup_key("creditgate_plan_mid_monthly")
        .send(&client)
        .await;
    assert!(
        matches!(refused, Err(stripe::StripeError::Stripe(_, 400))),
        "{refused:?}"
    );
    let moved = UpdatePrice::new(monthly.id.as_str())
        .lookup_key("creditgate_plan_mid_monthly")
        .transfer_lookup_key(true)
        .active(false)
        .send(&client)
        .await
        .expect("moved");
    assert_eq!(
        moved.lookup_key.as_deref(),
        Some("creditgate_plan_mid_monthly")
    );
    assert!(!moved.active);
    let active = ListPrice::new()
        .lookup_keys(vec!["creditgate_plan_mid_monthly".to_owned()])
        .active(true)
        .send(&client)
        .await
        .expect("listed");
    assert!(
        active.data.is_empty(),
        "the key now names an inactive price"
    );
}

#[tokio::test]
async fn subscription_checkout_with_automatic_tax_and_pack_checkout() {
    let standin = standin().await;
    let client = client(&standin);
    let price = plan_price(
        &client,
        "creditgate_plan_mid",
        "creditgate_plan_mid_monthly",
        2000,
        CreatePriceRecurringInterval::Month,
    )
    .await;
    let customer = CreateCustomer::new()
        .email("a@example.com")
        .send(&client)
        .await
        .expect("customer");

    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(price.id.to_string());
    line.quantity = Some(1);
    let meta = metadata(&[("creditgate_customer", "c-1"), ("creditgate_plan", "mid")]);
    let mut data = CreateCheckoutSessionSubscriptionData::new();
    data.metadata = Some(meta.clone());
    let mut update = CreateCheckoutSessionCustomerUpdate::new();
    update.address = Some(CreateCheckoutSessionCustomerUpdateAddress::Auto);
    update.name = Some(CreateCheckoutSessionCustomerUpdateName::Auto);
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .customer(customer.id.as_str())
        .client_reference_id("c-1")
        .line_items(vec![line.clone()])
        .success_url("http://127.0.0.1:8081/checkout/done?session={CHECKOUT_SESSION_ID}")
        .cancel_url("http://127.0.0.1:8081/checkout/canceled")
        .metadata(meta.clone())
        .subscription_data(data)
        .automatic_tax(CreateCheckoutSessionAutomaticTax::new(true))
        .billing_address_collection(CheckoutSessionBillingAddressCollection::Required)
        .tax_id_collection(CreateCheckoutSessionTaxIdCollection::new(true))
        .customer_update(update)
        .customize()
        .request_strategy(idempotent("cg-checkout-c-1-k1"))
        .send(&client)
        .await
        .expect("session created");
    let id = session.id.to_string();
    assert!(id.starts_with("cs_test_"));
    assert_eq!(session.mode, CheckoutSessionMode::Subscription);
    assert_eq!(
        session.url.as_deref(),
        Some(format!("{}checkout/{id}", standin.url()).as_str())
    );
    assert!(session.automatic_tax.enabled);
    assert_eq!(session.status, Some(CheckoutSessionStatus::Open));
    assert_eq!(session.payment_status, CheckoutSessionPaymentStatus::Unpaid);
    assert_eq!(session.amount_total, Some(2000));
    assert_eq!(
        session.customer.as_ref().map(|c| c.id().to_string()),
        Some(customer.id.to_string())
    );
    assert_eq!(
        session.billing_address_collection,
        Some(CheckoutSessionBillingAddressCollection::Required)
    );
    assert!(
        session
            .tax_id_collection
            .as_ref()
            .is_some_and(|t| t.enabled)
    );
    let form = standin.requests().pop().expect("recorded").form;
    assert_eq!(form["customer_update"]["address"], "auto");
    assert_eq!(form["line_items"][0]["price"], price.id.as_str());

    // Paying starts the subscription and its first, taxed, paid invoice.
    let outcome = standin.complete_checkout(&id).await.expect("completed");
    let sub_id = outcome
        .subscription
        .as_ref()
        .and_then(|s| s["id"].as_str())
        .expect("subscription")
        .to_owned();
    let paid = RetrieveCheckoutSession::new(id.as_str())
        .send(&client)
        .await
        .expect("retrieved");
    assert_eq!(paid.status, Some(CheckoutSessionStatus::Complete));
    assert_eq!(paid.payment_status, CheckoutSessionPaymentStatus::Paid);
    assert_eq!(paid.amount_total, Some(2200));
    assert_eq!(
        paid.subscription.as_ref().map(|s| s.id().to_string()),
        Some(sub_id.clone())
    );

    let with_items = RetrieveCheckoutSession::new(id.as_str())
        .expand(vec!["line_items".to_owned()])
        .send(&client)
        .await
        .expect("expanded");
    let items = with_items.line_items.expect("line_items expanded");
    assert_eq!(items.data.len(), 1);
    assert_eq!(items.data[0].amount_tax, 200);
    assert_eq!(
        items.data[0].price.as_ref().map(|p| p.id.clone()),
        Some(price.id.clone())
    );
    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&client)
        .await
        .expect("subscription");
    assert_eq!(sub.status, SubscriptionStatus::Active);
    assert_eq!(sub.customer.id().as_str(), customer.id.as_str());
    assert_eq!(
        sub.metadata.get("creditgate_plan").map(String::as_str),
        Some("mid")
    );
    let item = &sub.items.data[0];
    assert_eq!(item.price.id, price.id);
    assert!(item.current_period_end > item.current_period_start + 27 * 86_400);
    assert!(!sub.cancel_at_period_end);
    let subs = ListSubscription::new()
        .customer(customer.id.as_str())
        .send(&client)
        .await
        .expect("list");
    assert_eq!(subs.data.len(), 1);

    let invoices = ListInvoice::new()
        .customer(customer.id.as_str())
        .limit(100)
        .send(&client)
        .await
        .expect("invoices");
    assert_eq!(invoices.data.len(), 1);
    let invoice = &invoices.data[0];
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    assert_eq!(invoice.subtotal, 2000);
    assert_eq!(invoice.total, 2200);
    let tax: i64 = invoice.total_taxes.iter().flatten().map(|t| t.amount).sum();
    assert_eq!(tax, 200);
    assert!(
        invoice
            .hosted_invoice_url
            .as_deref()
            .is_some_and(|u| u.starts_with(&standin.url()))
    );
    assert!(
        invoice
            .invoice_pdf
            .as_deref()
            .is_some_and(|u| u.ends_with("/pdf"))
    );
    let invoice_id = invoice.id.as_ref().expect("id").to_string();
    let one = RetrieveInvoice::new(invoice_id.as_str())
        .send(&client)
        .await
        .expect("invoice");
    assert_eq!(one.amount_paid, 2200);
    let customer = retrieve_customer(&client, customer.id.as_str()).await;
    assert!(
        customer
            .address
            .as_ref()
            .and_then(|a| a.country.as_deref())
            .is_some(),
        "address collected"
    );

    // Credit pack: payment mode.
    let pack = CreatePrice::new(stripe_types::Currency::USD)
        .product_data(stripe_product::price::CreatePriceProductData::new(
            "small credit pack",
        ))
        .unit_amount(1000)
        .lookup_key("creditgate_pack_small")
        .send(&client)
        .await
        .expect("pack price");
    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(pack.id.to_string());
    line.quantity = Some(1);
    let mut pi = CreateCheckoutSessionPaymentIntentData::new();
    pi.metadata = Some(metadata(&[("creditgate_pack", "small")]));
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Payment)
        .customer(customer.id.as_str())
        .line_items(vec![line])
        .success_url("http://127.0.0.1:8081/ok")
        .metadata(metadata(&[("creditgate_pack", "small")]))
        .payment_intent_data(pi)
        .invoice_creation(CreateCheckoutSessionInvoiceCreation::new(true))
        .send(&client)
        .await
        .expect("pack session");
    assert_eq!(session.mode, CheckoutSessionMode::Payment);
    let id = session.id.to_string();
    let outcome = standin.complete_checkout(&id).await.expect("paid");
    assert!(outcome.subscription.is_none());
    let paid = RetrieveCheckoutSession::new(id.as_str())
        .send(&client)
        .await
        .expect("retrieved");
    assert_eq!(paid.payment_status, CheckoutSessionPaymentStatus::Paid);
    assert_eq!(
        paid.metadata
            .as_ref()
            .and_then(|m| m.get("creditgate_pack"))
            .map(String::as_str),
        Some("small")
    );
    // invoice_creation makes a paid receipt, listed with the subscription's invoices.
    let invoices = ListInvoice::new()
        .customer(customer.id.as_str())
        .send(&client)
        .await
        .expect("invoices");
    assert_eq!(invoices.data.len(), 2);
    let receipt = invoices
        .data
        .iter()
        .find(|i| i.subtotal == 1000)
        .expect("the pack's receipt");
    assert_eq!(receipt.status, Some(InvoiceStatus::Paid));
    assert_eq!(receipt.total, 1000, "no automatic tax on this session");

    // A recurring price in payment mode is refused, as Stripe does.
    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(price.id.to_string());
    line.quantity = Some(1);
    let refused = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Payment)
        .line_items(vec![line])
        .success_url("http://127.0.0.1:8081/ok")
        .send(&client)
        .await;
    assert!(
        matches!(refused, Err(stripe::StripeError::Stripe(_, 400))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn automatic_tax_for_an_existing_customer_needs_customer_update() {
    let standin = standin().await;
    let client = client(&standin);
    let price = plan_price(
        &client,
        "creditgate_plan_mid",
        "k",
        2000,
        CreatePriceRecurringInterval::Month,
    )
    .await;
    let customer = CreateCustomer::new().send(&client).await.expect("customer");
    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(price.id.to_string());
    line.quantity = Some(1);
    let refused = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .customer(customer.id.as_str())
        .line_items(vec![line])
        .success_url("http://127.0.0.1:8081/ok")
        .automatic_tax(CreateCheckoutSessionAutomaticTax::new(true))
        .send(&client)
        .await;
    match refused {
        Err(stripe::StripeError::Stripe(error, 400)) => {
            assert!(
                error
                    .message
                    .as_deref()
                    .unwrap_or("")
                    .contains("customer_update[address]")
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
}

#[tokio::test]
async fn portal_configuration_and_session() {
    let standin = standin().await;
    let client = client(&standin);
    let monthly = plan_price(
        &client,
        "creditgate_plan_mid",
        "mid_m",
        2000,
        CreatePriceRecurringInterval::Month,
    )
    .await;
    let yearly = plan_price(
        &client,
        "creditgate_plan_mid",
        "mid_y",
        20000,
        CreatePriceRecurringInterval::Year,
    )
    .await;
    let mut features = CreateBillingPortalConfigurationFeatures::new();
    features.payment_method_update = Some(PaymentMethodUpdateParam::new(true));
    features.invoice_history = Some(InvoiceListParam::new(true));
    let mut cancel = CreateBillingPortalConfigurationFeaturesSubscriptionCancel::new(true);
    cancel.mode = Some(CreateBillingPortalConfigurationFeaturesSubscriptionCancelMode::AtPeriodEnd);
    features.subscription_cancel = Some(cancel);
    let mut update = CreateBillingPortalConfigurationFeaturesSubscriptionUpdate::new(true);
    update.default_allowed_updates = Some(vec![
        CreateBillingPortalConfigurationFeaturesSubscriptionUpdateDefaultAllowedUpdates::Price,
    ]);
    update.products = Some(vec![SubscriptionUpdateProductParam::new(
        vec![monthly.id.to_string(), yearly.id.to_string()],
        "creditgate_plan_mid".to_owned(),
    )]);
    update.proration_behavior = Some(
        CreateBillingPortalConfigurationFeaturesSubscriptionUpdateProrationBehavior::AlwaysInvoice,
    );
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
    let config = CreateBillingPortalConfiguration::new(features)
        .default_return_url("http://127.0.0.1:8081/account")
        .metadata(metadata(&[("creditgate_portal", "abc")]))
        .send(&client)
        .await
        .expect("configuration created");
    assert!(config.id.as_str().starts_with("bpc_"));
    assert!(config.features.invoice_history.enabled);
    assert!(config.features.payment_method_update.enabled);
    assert!(config.features.subscription_cancel.enabled);
    let products = config
        .features
        .subscription_update
        .products
        .as_ref()
        .expect("products");
    assert_eq!(products[0].product, "creditgate_plan_mid");
    assert_eq!(products[0].prices.len(), 2);
    assert_eq!(
        config
            .features
            .subscription_update
            .schedule_at_period_end
            .conditions
            .len(),
        2
    );
    assert_eq!(
        config.default_return_url.as_deref(),
        Some("http://127.0.0.1:8081/account")
    );

    let listed = ListBillingPortalConfiguration::new()
        .active(true)
        .limit(100)
        .send(&client)
        .await
        .expect("list");
    assert!(listed.data.iter().any(|c| c.id == config.id));

    let updated = UpdateBillingPortalConfiguration::new(config.id.as_str())
        .default_return_url("http://127.0.0.1:8081/account2")
        .send(&client)
        .await
        .expect("updated");
    assert_eq!(
        updated.default_return_url.as_deref(),
        Some("http://127.0.0.1:8081/account2")
    );
    assert!(
        updated.features.invoice_history.enabled,
        "update keeps features"
    );

    let customer = CreateCustomer::new().send(&client).await.expect("customer");
    let session = CreateBillingPortalSession::new()
        .customer(customer.id.as_str())
        .configuration(config.id.as_str())
        .return_url("http://127.0.0.1:8081/account")
        .send(&client)
        .await
        .expect("portal session");
    assert!(session.id.as_str().starts_with("bps_"));
    assert!(session.url.starts_with(&standin.url()));
    assert_eq!(session.customer, customer.id.to_string());
}

#[tokio::test]
async fn a_subscription_shows_its_price_as_it_is_now() {
    let standin = standin().await;
    let client = client(&standin);
    let price = plan_price(
        &client,
        "creditgate_plan_mid",
        "creditgate_plan_mid_monthly",
        2000,
        CreatePriceRecurringInterval::Month,
    )
    .await;
    let customer = CreateCustomer::new().send(&client).await.expect("customer");
    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(price.id.to_string());
    line.quantity = Some(1);
    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Subscription)
        .customer(customer.id.as_str())
        .line_items(vec![line])
        .success_url("http://127.0.0.1:8081/ok")
        .send(&client)
        .await
        .expect("session");
    let outcome = standin
        .complete_checkout(session.id.as_str())
        .await
        .expect("paid");
    let sub_id = outcome.subscription.expect("subscription")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // The catalog's price changes: the new Price takes the lookup key over.
    plan_price(
        &client,
        "creditgate_plan_mid",
        "creditgate_plan_mid_monthly",
        2500,
        CreatePriceRecurringInterval::Month,
    )
    .await;
    let sub = RetrieveSubscription::new(sub_id.as_str())
        .send(&client)
        .await
        .expect("subscription");
    let item_price = &sub.items.data[0].price;
    assert_eq!(item_price.id, price.id, "the subscription keeps its price");
    assert_eq!(
        item_price.lookup_key, None,
        "which no longer has the lookup key"
    );
    assert_eq!(
        item_price
            .metadata
            .get("creditgate_plan")
            .map(String::as_str),
        Some("mid"),
        "price metadata stays"
    );
}
