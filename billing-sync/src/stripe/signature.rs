//! Webhook signatures. Stripe signs `"<t>.<payload>"` with HMAC-SHA256 and sends
//! `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`; during secret rotation several
//! secrets are configured and any may match.
//!
//! The check is written here on `hmac` (constant-time `verify_slice`) rather than taken
//! from `async-stripe-webhook`, whose `construct_event` also parses the object into its
//! typed structs: an event signed correctly but shaped by a newer API version would then be
//! refused, and Stripe would retry it for days. We verify, store the raw body, and read the
//! few fields we need (re-fetching objects from Stripe where order matters). Tests sign with
//! `stripe_webhook::Webhook::generate_test_header` to prove we accept what Stripe signs.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How far a signature's timestamp may be from now (Stripe's own default).
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

/// A webhook whose signature matched one of our secrets within the tolerance. Only
/// [`verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedEvent {
    /// `evt_…`.
    pub id: String,
    /// `checkout.session.completed`, …
    pub type_: String,
    /// When Stripe created the event (Unix seconds): orders events of one object.
    pub created: i64,
    /// `data.object`.
    pub object: serde_json::Value,
    /// The body exactly as received, stored before any effect.
    pub raw: String,
}

/// Why a webhook was refused (each a 400 with its own code).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `Stripe-Signature` header.
    #[error("the Stripe-Signature header is missing")]
    MissingSignature,
    /// No secret produced a matching signature (or the header is malformed).
    #[error("the signature matches none of the configured webhook secrets")]
    BadSignature,
    /// The signature is valid but its timestamp is outside the tolerance.
    #[error("the signature timestamp is outside the 5-minute tolerance")]
    StaleTimestamp,
    /// Signed, but not a Stripe event.
    #[error("the body is not a Stripe event: {0}")]
    Malformed(String),
}

impl Rejection {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingSignature | Rejection::BadSignature => "invalid_signature",
            Rejection::StaleTimestamp => "stale_signature",
            Rejection::Malformed(_) => "malformed_event",
        }
    }
}

/// Checks `payload` against every secret in `secrets`, as of `now` (Unix seconds).
pub fn verify(
    payload: &str,
    header: Option<&str>,
    secrets: &[String],
    now: i64,
) -> Result<VerifiedEvent, Rejection> {
    let header = header.ok_or(Rejection::MissingSignature)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => signatures.extend(hex::decode(sig).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Rejection::BadSignature)?;
    let signed = format!("{timestamp}.{payload}");
    let matches = secrets.iter().any(|secret| {
        signatures.iter().any(|sig| {
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).is_ok_and(|mut mac| {
                mac.update(signed.as_bytes());
                mac.verify_slice(sig).is_ok()
            })
        })
    });
    if !matches {
        return Err(Rejection::BadSignature);
    }
    if (now - timestamp).abs() > SIGNATURE_TOLERANCE_S {
        return Err(Rejection::StaleTimestamp);
    }
    let value: serde_json::Value =
        serde_json::from_str(payload).map_err(|e| Rejection::Malformed(e.to_string()))?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let id = text(&value["id"])
        .filter(|id| id.starts_with("evt_"))
        .ok_or_else(|| Rejection::Malformed("no event id".into()))?;
    let type_ = text(&value["type"]).ok_or_else(|| Rejection::Malformed("no event type".into()))?;
    let created = value["created"]
        .as_i64()
        .ok_or_else(|| Rejection::Malformed("no created time".into()))?;
    let object = value["data"]["object"].clone();
    if !object.is_object() {
        return Err(Rejection::Malformed("no data.object".into()));
    }
    Ok(VerifiedEvent {
        id,
        type_,
        created,
        object,
        raw: payload.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stripe_webhook::Webhook;

    const EVENT: &str = r#"{"id":"evt_1","object":"event","api_version":"2025-11-17.clover","created":1700000000,"data":{"object":{"id":"cus_1","object":"customer"}},"livemode":false,"pending_webhooks":1,"request":{"id":null,"idempotency_key":null},"type":"customer.created"}"#;

    #[test]
    fn any_configured_secret_verifies_and_others_do_not() {
        let now = 1_700_000_100;
        let header = Webhook::generate_test_header(EVENT, "whsec_new", Some(now));
        let secrets = vec!["whsec_old".to_owned(), "whsec_new".to_owned()];
        let event = verify(EVENT, Some(&header), &secrets, now).expect("second secret matches");
        assert_eq!(
            (event.id.as_str(), event.type_.as_str()),
            ("evt_1", "customer.created")
        );
        assert_eq!(
            verify(EVENT, Some(&header), &secrets[..1], now).err(),
            Some(Rejection::BadSignature)
        );
        assert_eq!(
            verify(EVENT, None, &secrets, now).err(),
            Some(Rejection::MissingSignature)
        );
        assert_eq!(
            verify(EVENT, Some(&header), &secrets, now + 301).err(),
            Some(Rejection::StaleTimestamp)
        );
        let tampered = EVENT.replace("cus_1", "cus_2");
        assert_eq!(
            verify(&tampered, Some(&header), &secrets, now).err(),
            Some(Rejection::BadSignature)
        );
        let unsigned = Webhook::generate_test_header("{}", "whsec_new", Some(now));
        assert!(matches!(
            verify("{}", Some(&unsigned), &secrets, now),
            Err(Rejection::Malformed(_))
        ));
    }
}
