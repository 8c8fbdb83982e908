//! Events the stand-in emits verify with async-stripe's `Webhook::construct_event` and parse
//! into its typed objects, in the order Stripe sends them.

mod common;

use std::time::Duration;

use common::{Received, WEBHOOK_SECRET, auth, client, raw, standin, webhook_receiver};
use serde_json::json;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionAutomaticTax, CreateCheckoutSessionCustomerUpdate,
    CreateCheckoutSessionCustomerUpdateAddress, CreateCheckoutSessionCustomerUpdateName,
    CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
    CreateCheckoutSessionTaxIdCollection,
};
use stripe_core::customer::CreateCustomer;
use stripe_product::price::{
    CreatePrice, CreatePriceProductData, CreatePriceRecurring, CreatePriceRecurringInterval,
};
use stripe_shared::{
    CheckoutSessionMode, CheckoutSessionPaymentStatus, InvoiceStatus, SubscriptionStatus,
};
use stripe_standin::StandinHandle;
use stripe_webhook::{Event, EventObject, EventType, Webhook};
use tokio::sync::mpsc;

async fn next(rx: &mut mpsc::Receiver<Received>) -> (Received, Event) {
    let received = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a delivery within 5 s")
        .expect("receiver open");
    let signature = received.signature.clone().expect("Stripe-Signature header");
    let event = Webhook::construct_event(&received.payload, &signature, WEBHOOK_SECRET)
        .expect("signature verifies and the event parses");
    (received, event)
}

/// A monthly subscription Checkout Session for a new customer, with tax on.
async fn subscription_session(standin: &StandinHandle, recurring: bool) -> (String, String) {
    let client = client(standin);
    let mut price = CreatePrice::new(stripe_types::Currency::USD)
        .product_data(CreatePriceProductData::new("mid plan"))
        .unit_amount(2000);
    if recurring {
        price = price.recurring(CreatePriceRecurring::new(
            CreatePriceRecurringInterval::Month,
        ));
    }
    let price = price.send(&client).await.expect("price");
    let customer = CreateCustomer::new()
        .email("a@example.com")
        .send(&client)
        .await
        .expect("customer");
    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(price.id.to_string());
    line.quantity = Some(1);
    let meta: std::collections::HashMap<String, String> =
        [("creditgate_customer".to_owned(), "c-1".to_owned())].into();
    let mut session = CreateCheckoutSession::new()
        .customer(customer.id.as_str())
        .line_items(vec![line])
        .success_url("http://127.0.0.1:1/done?cs={CHECKOUT_SESSION_ID}")
        .metadata(meta.clone());
    if recurring {
        let mut data = CreateCheckoutSessionSubscriptionData::new();
        data.metadata = Some(meta);
        let mut update = CreateCheckoutSessionCustomerUpdate::new();
        update.address = Some(CreateCheckoutSessionCustomerUpdateAddress::Auto);
        update.name = Some(CreateCheckoutSessionCustomerUpdateName::Auto);
        session = session
            .mode(CheckoutSessionMode::Subscription)
            .subscription_data(data)
            .automatic_tax(CreateCheckoutSessionAutomaticTax::new(true))
            .tax_id_collection(CreateCheckoutSessionTaxIdCollection::new(true))
            .customer_update(update);
    } else {
        session = session.mode(CheckoutSessionMode::Payment);
    }
    let session = session.send(&client).await.expect("session");
    (session.id.to_string(), customer.id.to_string())
}

#[tokio::test]
async fn completing_a_subscription_checkout_sends_three_signed_events_in_order() {
    let standin = standin().await;
    let (addr, mut rx) = webhook_receiver().await;
    standin.set_webhook_url(format!("http://{addr}/webhooks/stripe"));
    let (session_id, customer_id) = subscription_session(&standin, true).await;

    let outcome = standin
        .complete_checkout(&session_id)
        .await
        .expect("completed");
    let types: Vec<&str> = outcome.events.iter().map(|e| e.type_.as_str()).collect();
    assert_eq!(
        types,
        [
            "checkout.session.completed",
            "customer.subscription.created",
            "invoice.paid"
        ]
    );
    assert!(
        outcome
            .events
            .iter()
            .all(|e| e.deliveries.len() == 1 && e.deliveries[0].succeeded())
    );

    let (received, event) = next(&mut rx).await;
    assert_eq!(event.type_, EventType::CheckoutSessionCompleted);
    assert_eq!(
        event.api_version.as_ref().map(|v| v.as_str()),
        Some(stripe_standin::API_VERSION)
    );
    assert!(event.id.as_str().starts_with("evt_"));
    assert!(!event.livemode);
    let payload: serde_json::Value = serde_json::from_str(&received.payload).expect("json");
    assert_eq!(payload["object"], "event");
    let EventObject::CheckoutSessionCompleted(session) = event.data.object else {
        panic!("not a checkout session");
    };
    assert_eq!(session.id.as_str(), session_id);
    assert_eq!(session.payment_status, CheckoutSessionPaymentStatus::Paid);
    assert_eq!(
        session.customer.as_ref().map(|c| c.id().to_string()),
        Some(customer_id.clone())
    );
    let sub_id = session
        .subscription
        .as_ref()
        .expect("subscription")
        .id()
        .to_string();

    let (_, event) = next(&mut rx).await;
    let EventObject::CustomerSubscriptionCreated(sub) = event.data.object else {
        panic!("expected customer.subscription.created");
    };
    assert_eq!(sub.id.as_str(), sub_id);
    assert_eq!(sub.status, SubscriptionStatus::Active);
    assert_eq!(
        sub.metadata.get("creditgate_customer").map(String::as_str),
        Some("c-1")
    );
    let item = &sub.items.data[0];
    assert_eq!(
        item.price.recurring.as_ref().map(|r| r.interval.as_str()),
        Some("month")
    );

    let (_, event) = next(&mut rx).await;
    let EventObject::InvoicePaid(invoice) = event.data.object else {
        panic!("expected invoice.paid");
    };
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    assert_eq!((invoice.subtotal, invoice.total), (2000, 2200));
    let parent_sub = invoice
        .parent
        .as_ref()
        .and_then(|p| p.subscription_details.as_ref())
        .map(|d| d.subscription.id().to_string());
    assert_eq!(parent_sub.as_deref(), Some(sub_id.as_str()));
    assert_eq!(invoice.lines.data[0].period.end, item.current_period_end);

    // A payment failure: invoice.payment_failed, then the subscription goes past_due.
    let failed = standin.fail_payment(&sub_id).await.expect("failed payment");
    assert_eq!(failed.subscription["status"], "past_due");
    let (_, event) = next(&mut rx).await;
    let EventObject::InvoicePaymentFailed(invoice) = event.data.object else {
        panic!("expected invoice.payment_failed");
    };
    assert_eq!(invoice.status, Some(InvoiceStatus::Open));
    assert_eq!(invoice.amount_remaining, 2200);
    let (_, event) = next(&mut rx).await;
    let EventObject::CustomerSubscriptionUpdated(sub) = event.data.object else {
        panic!("expected customer.subscription.updated");
    };
    assert_eq!(sub.status, SubscriptionStatus::PastDue);
    assert!(sub.items.data[0].current_period_start >= item.current_period_end);

    // A renewal that is paid, then a cancellation.
    standin.renew_subscription(&sub_id).await.expect("renewed");
    let (_, event) = next(&mut rx).await;
    assert_eq!(event.type_, EventType::CustomerSubscriptionUpdated);
    let (_, event) = next(&mut rx).await;
    assert_eq!(event.type_, EventType::InvoicePaid);
    // A renewal notice: the next period's draft invoice, without an id.
    standin.upcoming_invoice(&sub_id).await.expect("upcoming");
    let (_, event) = next(&mut rx).await;
    let EventObject::InvoiceUpcoming(upcoming) = event.data.object else {
        panic!("expected invoice.upcoming");
    };
    assert!(upcoming.id.is_none());
    assert_eq!(upcoming.status, Some(InvoiceStatus::Draft));
    assert_eq!(upcoming.total, 2200);
    standin
        .cancel_subscription(&sub_id)
        .await
        .expect("canceled");
    let (_, event) = next(&mut rx).await;
    let EventObject::CustomerSubscriptionDeleted(sub) = event.data.object else {
        panic!("expected customer.subscription.deleted");
    };
    assert_eq!(sub.status, SubscriptionStatus::Canceled);
}

#[tokio::test]
async fn pack_checkout_sends_only_checkout_session_completed_and_resends_on_demand() {
    let standin = standin().await;
    let (addr, mut rx) = webhook_receiver().await;
    standin.set_webhook_url(format!("http://{addr}/hook"));
    let (session_id, _) = subscription_session(&standin, false).await;
    let outcome = standin
        .complete_checkout(&session_id)
        .await
        .expect("completed");
    assert_eq!(outcome.events.len(), 1);
    let (first, event) = next(&mut rx).await;
    let EventObject::CheckoutSessionCompleted(session) = event.data.object else {
        panic!("not a checkout session");
    };
    assert_eq!(session.mode, CheckoutSessionMode::Payment);
    assert_eq!(session.payment_status, CheckoutSessionPaymentStatus::Paid);

    // A duplicate delivery: same event id and payload, freshly signed.
    let again = standin
        .resend_event(event.id.as_str())
        .await
        .expect("resent");
    assert_eq!(again.deliveries.len(), 2);
    let (second, duplicate) = next(&mut rx).await;
    assert_eq!(duplicate.id, event.id);
    assert_eq!(second.payload, first.payload);

    // Completing twice is refused.
    assert!(standin.complete_checkout(&session_id).await.is_err());
}

#[tokio::test]
async fn arbitrary_events_and_the_curl_control_endpoints() {
    let standin = standin().await;
    let (addr, mut rx) = webhook_receiver().await;
    standin.set_webhook_url(format!("http://{addr}/hook"));
    let (session_id, _) = subscription_session(&standin, true).await;

    // What the demo does with curl: complete over HTTP, no API key needed.
    let (status, _, body) = raw(
        &standin,
        "POST",
        &format!("/__standin/checkout/{session_id}/complete"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(3));
    let invoice = body["invoice"].clone();
    assert_eq!(invoice["status"], "paid");
    for _ in 0..3 {
        next(&mut rx).await;
    }

    // An arbitrary event, e.g. a renewal notice, through the lib API…
    let sent = standin
        .send_event("invoice.upcoming", invoice.clone())
        .await
        .expect("sent");
    let (_, event) = next(&mut rx).await;
    assert_eq!(event.id.as_str(), sent.id);
    assert!(matches!(event.data.object, EventObject::InvoiceUpcoming(_)));

    // …and over HTTP.
    let body = json!({"type": "invoice.upcoming", "object": invoice.clone()}).to_string();
    let (status, _, answer) = raw(
        &standin,
        "POST",
        "/__standin/events",
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (_, event) = next(&mut rx).await;
    assert_eq!(
        event.id.as_str(),
        answer["event"]["id"].as_str().expect("id")
    );

    // Signed with another secret, the event does not verify.
    let (status, _, _) = raw(
        &standin,
        "PUT",
        "/__standin/webhook",
        &[],
        r#"{"secret":"whsec_other,whsec_ignored"}"#,
    )
    .await;
    assert_eq!(status, 200);
    standin
        .send_event("invoice.upcoming", invoice)
        .await
        .expect("sent");
    let received = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivered")
        .expect("open");
    let signature = received.signature.expect("signed");
    assert!(Webhook::construct_event(&received.payload, &signature, WEBHOOK_SECRET).is_err());
    assert!(
        Webhook::construct_event(&received.payload, &signature, "whsec_other").is_ok(),
        "signed with the first secret of the list"
    );

    // The Checkout page a browser would see has a Pay button.
    let (status, _, page) = raw(&standin, "GET", &format!("/checkout/{session_id}"), &[], "").await;
    assert_eq!(status, 200);
    assert!(
        page.as_str()
            .is_some_and(|p| p.contains("This session is complete"))
    );
}

#[tokio::test]
async fn without_a_webhook_url_events_are_kept_undelivered() {
    let standin = standin().await;
    let (session_id, _) = subscription_session(&standin, true).await;
    let outcome = standin
        .complete_checkout(&session_id)
        .await
        .expect("completed");
    assert!(outcome.events.iter().all(|e| e.deliveries.is_empty()));
    assert_eq!(standin.events().len(), 3);
    let (status, _, body) = raw(
        &standin,
        "GET",
        &format!("/v1/events/{}", outcome.events[0].id),
        &[(auth().0, auth().1.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "checkout.session.completed");
}

#[tokio::test]
async fn subscription_changes_through_the_api_emit_updated_deleted_and_proration_invoices() {
    use stripe_billing::subscription::{
        CancelSubscription, UpdateSubscription, UpdateSubscriptionItems,
        UpdateSubscriptionProrationBehavior,
    };
    use stripe_shared::InvoiceBillingReason;

    let standin = standin().await;
    let (addr, mut rx) = webhook_receiver().await;
    standin.set_webhook_url(format!("http://{addr}/hook"));
    let client = client(&standin);
    let (session_id, _) = subscription_session(&standin, true).await;
    let outcome = standin
        .complete_checkout(&session_id)
        .await
        .expect("completed");
    for _ in 0..3 {
        next(&mut rx).await;
    }
    let sub_id = outcome
        .subscription
        .as_ref()
        .and_then(|s| s["id"].as_str())
        .expect("sub")
        .to_owned();
    let item_id = outcome
        .subscription
        .as_ref()
        .and_then(|s| s["items"]["data"][0]["id"].as_str())
        .expect("item")
        .to_owned();

    let sub = UpdateSubscription::new(sub_id.as_str())
        .cancel_at_period_end(true)
        .send(&client)
        .await
        .expect("updated");
    assert!(sub.cancel_at_period_end);
    assert_eq!(sub.cancel_at, Some(sub.items.data[0].current_period_end));
    let (received, event) = next(&mut rx).await;
    assert_eq!(event.type_, EventType::CustomerSubscriptionUpdated);
    assert!(event.data.previous_attributes.is_some());
    let payload: serde_json::Value = serde_json::from_str(&received.payload).expect("json");
    assert_eq!(
        payload["data"]["previous_attributes"]["cancel_at_period_end"],
        false
    );

    // Upgrade to a dearer price, invoiced now for the time left.
    let high = CreatePrice::new(stripe_types::Currency::USD)
        .product_data(CreatePriceProductData::new("high plan"))
        .unit_amount(15000)
        .recurring(CreatePriceRecurring::new(
            CreatePriceRecurringInterval::Month,
        ))
        .send(&client)
        .await
        .expect("price");
    let mut item = UpdateSubscriptionItems::new();
    item.id = Some(item_id);
    item.price = Some(high.id.to_string());
    let sub = UpdateSubscription::new(sub_id.as_str())
        .items(vec![item])
        .proration_behavior(UpdateSubscriptionProrationBehavior::AlwaysInvoice)
        .send(&client)
        .await
        .expect("upgraded");
    assert_eq!(sub.items.data[0].price.id, high.id);
    let (_, event) = next(&mut rx).await;
    assert_eq!(event.type_, EventType::CustomerSubscriptionUpdated);
    let (_, event) = next(&mut rx).await;
    let EventObject::InvoicePaid(invoice) = event.data.object else {
        panic!("expected the proration invoice");
    };
    assert_eq!(
        invoice.billing_reason,
        Some(InvoiceBillingReason::SubscriptionUpdate)
    );
    assert!(
        invoice.subtotal > 12_000 && invoice.subtotal <= 13_000,
        "{}",
        invoice.subtotal
    );

    let canceled = CancelSubscription::new(sub_id.as_str())
        .send(&client)
        .await
        .expect("canceled");
    assert_eq!(canceled.status, SubscriptionStatus::Canceled);
    let (_, event) = next(&mut rx).await;
    assert_eq!(event.type_, EventType::CustomerSubscriptionDeleted);
}

#[tokio::test]
async fn portal_switches_upgrade_now_downgrade_at_renewal_and_cancel_at_period_end() {
    let standin = standin().await;
    let (addr, mut rx) = webhook_receiver().await;
    standin.set_webhook_url(format!("http://{addr}/hook"));
    let (session_id, customer_id) = subscription_session(&standin, true).await;
    let outcome = standin
        .complete_checkout(&session_id)
        .await
        .expect("completed");
    for _ in 0..3 {
        next(&mut rx).await;
    }
    let sub = outcome.subscription.expect("subscription");
    let sub_id = sub["id"].as_str().expect("id").to_owned();
    let mid = sub["items"]["data"][0]["price"]["id"]
        .as_str()
        .expect("price")
        .to_owned();
    let product = sub["items"]["data"][0]["price"]["product"]
        .as_str()
        .expect("product")
        .to_owned();

    let (k, v) = auth();
    let a = [(k, v.as_str())];
    let (_, _, high) = raw(
        &standin,
        "POST",
        "/v1/prices",
        &a,
        &format!("currency=usd&unit_amount=15000&recurring[interval]=month&product={product}"),
    )
    .await;
    let high = high["id"].as_str().expect("high").to_owned();
    let config = format!(
        "features[subscription_update][enabled]=true&features[subscription_update][products][0][product]={product}\
         &features[subscription_update][products][0][prices][0]={mid}&features[subscription_update][products][0][prices][1]={high}\
         &features[subscription_update][proration_behavior]=always_invoice\
         &features[subscription_update][schedule_at_period_end][conditions][0][type]=decreasing_item_amount\
         &features[subscription_cancel][enabled]=true&features[subscription_cancel][mode]=at_period_end"
    );
    let (status, _, config) = raw(
        &standin,
        "POST",
        "/v1/billing_portal/configurations",
        &a,
        &config,
    )
    .await;
    assert_eq!(status, 200, "{config}");
    let (_, _, portal) = raw(&standin, "POST", "/v1/billing_portal/sessions", &a, &format!(
        "customer={customer_id}&return_url=http%3A%2F%2F127.0.0.1%3A1%2Faccount&configuration={}",
        config["id"].as_str().expect("config id")
    )).await;
    let path = portal["url"]
        .as_str()
        .expect("url")
        .replace(&standin.url(), "/");
    let (_, _, page) = raw(&standin, "GET", &path, &[], "").await;
    let page = page.as_str().expect("html").to_owned();
    assert!(
        page.contains("Switch to 150.00 USD month") && page.contains("Cancel at period end"),
        "{page}"
    );

    // Upgrade: now, with a prorated invoice.
    let up = standin
        .switch_price(&sub_id, &high)
        .await
        .expect("upgraded");
    assert_eq!(
        up.subscription["items"]["data"][0]["price"]["id"],
        high.as_str()
    );
    assert!(up.invoice.is_some());
    assert_eq!(
        next(&mut rx).await.1.type_,
        EventType::CustomerSubscriptionUpdated
    );
    assert_eq!(next(&mut rx).await.1.type_, EventType::InvoicePaid);

    // Downgrade: scheduled for the renewal.
    let down = standin
        .switch_price(&sub_id, &mid)
        .await
        .expect("scheduled");
    assert_eq!(
        down.subscription["items"]["data"][0]["price"]["id"],
        high.as_str()
    );
    assert!(down.subscription["schedule"].as_str().is_some());
    next(&mut rx).await;
    let renewed = standin.renew_subscription(&sub_id).await.expect("renewed");
    assert_eq!(
        renewed.subscription["items"]["data"][0]["price"]["id"],
        mid.as_str()
    );
    assert_eq!(
        renewed.invoice.as_ref().map(|i| i["subtotal"].clone()),
        Some(json!(2000))
    );
    let (_, event) = next(&mut rx).await;
    let EventObject::CustomerSubscriptionUpdated(sub) = event.data.object else {
        panic!("expected customer.subscription.updated");
    };
    assert_eq!(sub.items.data[0].price.id.as_str(), mid);
    assert!(sub.schedule.is_none());
    next(&mut rx).await;

    // Cancel at period end: updated now, deleted at the renewal.
    standin.cancel_at_period_end(&sub_id).await.expect("set");
    let (_, event) = next(&mut rx).await;
    let EventObject::CustomerSubscriptionUpdated(sub) = event.data.object else {
        panic!("expected customer.subscription.updated");
    };
    assert!(sub.cancel_at_period_end);
    let ended = standin.renew_subscription(&sub_id).await.expect("ended");
    assert_eq!(ended.subscription["status"], "canceled");
    assert!(ended.invoice.is_none());
    assert_eq!(
        next(&mut rx).await.1.type_,
        EventType::CustomerSubscriptionDeleted
    );
}
