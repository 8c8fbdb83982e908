//! `checkout.session.completed` (and `…async_payment_succeeded` for delayed methods such as
//! ACH debits): a paid credit pack becomes purchased credits, once per session; a
//! subscription session links the subscription (its state is read from Stripe).

use serde_json::Value;
use shared::Millicredits;
use uuid::Uuid;

use super::plan::{self, Effects};
use super::subscription;
use super::{Event, ProcessError, begin, finish};
use crate::State;
use crate::ledger::{self, BucketKind, Grant, TxnKey};
use crate::stripe::checkout::{METADATA_CREDITS, METADATA_CUSTOMER, METADATA_PACK};

/// Handles a completed session.
pub async fn handle(state: &State, event: &Event) -> Result<Option<Effects>, ProcessError> {
    let session = &event.object;
    let text = |v: &Value| v.as_str().map(str::to_owned);
    // A session without an id cannot be keyed: recorded and left for an operator, never
    // credited under an empty key.
    let Some(session_id) = text(&session["id"]).filter(|id| !id.is_empty()) else {
        tracing::error!(event_id = %event.id, "checkout session without an id; recorded only");
        let Some(tx) = begin(state, &event.id).await? else {
            return Ok(None);
        };
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    let our_id = text(&session["metadata"][METADATA_CUSTOMER])
        .or_else(|| text(&session["client_reference_id"]));
    let stripe_customer = text(&session["customer"]).or_else(|| text(&session["customer"]["id"]));
    let sub = match (
        session["mode"].as_str(),
        subscription::subscription_id(session),
    ) {
        (Some("subscription"), Some(id)) => Some(subscription::fetch(state, &id).await?),
        _ => None,
    };

    let Some(mut tx) = begin(state, &event.id).await? else {
        return Ok(None);
    };
    let Some(customer) =
        plan::find_customer(&mut tx, stripe_customer.as_deref(), our_id.as_deref()).await?
    else {
        tracing::warn!(session = %session_id, "checkout session of an unknown customer; recorded only");
        finish(tx, &event.id).await?;
        return Ok(Some(Effects::none()));
    };
    let mut effects = Effects::on(&customer.id);
    if let Some(stripe_customer) = &stripe_customer {
        sqlx::query("UPDATE customers SET stripe_customer_id = $2 WHERE id = $1 AND stripe_customer_id IS NULL")
            .bind(&customer.id)
            .bind(stripe_customer)
            .execute(&mut **tx)
            .await?;
    }
    match sub {
        Some(sub) => {
            subscription::apply(&mut tx, state, &customer, &sub, state.now(), &mut effects).await?
        }
        None if session["mode"] == "payment" && session["payment_status"] == "paid" => {
            let pack = text(&session["metadata"][METADATA_PACK]);
            // The credits sold are those the session recorded, not today's policy.
            let credits = text(&session["metadata"][METADATA_CREDITS])
                .and_then(|c| Millicredits::parse_amount(&c).ok())
                .or_else(|| {
                    pack.as_ref()
                        .and_then(|p| state.policy().credit_packs.get(p).map(|pack| pack.credits))
                });
            match credits {
                Some(credits) if credits.get() > 0 => {
                    let payment_intent = text(&session["payment_intent"])
                        .or_else(|| text(&session["payment_intent"]["id"]));
                    if purchase(
                        &mut tx,
                        &customer.id,
                        credits,
                        &session_id,
                        pack.as_deref(),
                        payment_intent.as_deref(),
                        state.now(),
                    )
                    .await?
                    {
                        effects.tr += credits.get();
                    }
                }
                _ => {
                    tracing::warn!(session = %session_id, "paid session names no known credit pack; recorded only")
                }
            }
        }
        None => {}
    }
    effects.projection = Some(finish(tx, &event.id).await?);
    Ok(Some(effects))
}

/// Credits a purchased pack: a transferable bucket that does not expire, keyed by the
/// Checkout Session so it is credited once, and tied to the PaymentIntent that paid it (a
/// refund or dispute of that charge takes back what is left). `false` if credited before.
async fn purchase(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    customer: &str,
    credits: Millicredits,
    session_id: &str,
    pack: Option<&str>,
    payment_intent: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<bool, sqlx::Error> {
    let typed = ledger::stored_customer_id(customer)?;
    let grant = Grant {
        bucket: Uuid::now_v7(),
        kind: BucketKind::Purchased,
        amount: credits,
        transferable: true,
        expires_at: None,
        reason: format!("checkout:{session_id}:{}", pack.unwrap_or("pack")),
        paid_by: payment_intent.map(str::to_owned),
    };
    let credited = ledger::credit(tx, &typed, &grant, TxnKey::purchase(session_id), now).await?;
    if credited.is_none() {
        return Ok(false);
    }
    ledger::audit(
        tx,
        "stripe",
        "credits.purchased",
        Some(customer),
        None,
        Some(
            serde_json::json!({"credits": credits, "session": session_id, "pack": pack,
                                "payment_intent": payment_intent}),
        ),
    )
    .await?;
    Ok(true)
}
