//! Webhook signatures. Stripe signs `"<t>.<payload>"` with HMAC-SHA256 and sends
//! `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`; during secret rotation several
//! secrets are configured and any may match.
//!
//! The check is written here on `hmac` rather than taken from `async-stripe-webhook`, whose
//! `construct_event` also parses the object into its typed structs: an event signed
//! correctly but shaped by a newer API version would then be refused, and Stripe would retry
//! it for days. We verify, store the raw body, and read the few fields we need (re-fetching
//! objects from Stripe where order matters). Tests sign with
//! `stripe_webhook::Webhook::generate_test_header` to prove we accept what Stripe signs.
//!
//! The header is the caller's input, so its cost is bounded before any MAC is computed: at
//! most [`SIGNATURE_HEADER_BYTES_MAX`] bytes and [`SIGNATURE_CANDIDATES_MAX`] `v1` entries.
//! The MAC over the (up to 512 KiB) body is computed once per configured secret, never once
//! per candidate, and each candidate is compared with it in constant time.

use hmac::digest::{CtOutput, Output};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How far a signature's timestamp may be from now (Stripe's own default).
pub const SIGNATURE_TOLERANCE_S: i64 = 300;
/// Longest `Stripe-Signature` header read; a longer one is refused (400) before any MAC is
/// computed. Stripe's own headers are about 150 bytes (a timestamp and one or two MACs).
pub const SIGNATURE_HEADER_BYTES_MAX: usize = 4096;
/// Most `v1` entries accepted in one header; a header with more is refused (400) before any
/// MAC is computed. Stripe sends one per secret it signs with: two while a secret rolls.
pub const SIGNATURE_CANDIDATES_MAX: usize = 8;

/// An HMAC-SHA256 tag that compares in constant time.
type Tag = CtOutput<Hmac<Sha256>>;

/// A webhook whose signature matched one of our secrets within the tolerance. Only
/// [`verify`] makes one: its fields are private, so holding one proves the check ran.
#[derive(Clone, Debug)]
pub struct VerifiedEvent {
    id: String,
    type_: String,
    created: i64,
    object: serde_json::Value,
    raw: String,
}

impl VerifiedEvent {
    /// `evt_…`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `checkout.session.completed`, …
    pub fn type_(&self) -> &str {
        &self.type_
    }

    /// When Stripe created the event (Unix seconds): orders events of one object.
    pub fn created(&self) -> i64 {
        self.created
    }

    /// `data.object`.
    pub fn object(&self) -> &serde_json::Value {
        &self.object
    }

    /// The body exactly as received, stored before any effect.
    pub fn raw(&self) -> &str {
        &self.raw
    }
}

/// Why a webhook was refused (each a 400 with its own code).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `Stripe-Signature` header.
    #[error("the Stripe-Signature header is missing")]
    MissingSignature,
    /// The header is longer than [`SIGNATURE_HEADER_BYTES_MAX`].
    #[error("the Stripe-Signature header is longer than {SIGNATURE_HEADER_BYTES_MAX} bytes")]
    HeaderTooLarge,
    /// The header has more than [`SIGNATURE_CANDIDATES_MAX`] `v1` entries.
    #[error("the Stripe-Signature header has more than {SIGNATURE_CANDIDATES_MAX} v1 signatures")]
    TooManySignatures,
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
            Rejection::MissingSignature
            | Rejection::HeaderTooLarge
            | Rejection::TooManySignatures
            | Rejection::BadSignature => "invalid_signature",
            Rejection::StaleTimestamp => "stale_signature",
            Rejection::Malformed(_) => "malformed_event",
        }
    }
}

/// Checks `payload` against every secret in `secrets`, as of `now` (Unix seconds, wall
/// time: Stripe's clock, not a test's).
pub fn verify(
    payload: &str,
    header: Option<&str>,
    secrets: &[String],
    now: i64,
) -> Result<VerifiedEvent, Rejection> {
    verify_with(payload, header, secrets, now, &mut |secret, timestamp| {
        tag_of(secret, timestamp, payload)
    })
}

/// [`verify`] with the MAC computation passed in (`tag_of(secret, timestamp)`), so a test
/// can count how many MACs a header costs.
fn verify_with(
    payload: &str,
    header: Option<&str>,
    secrets: &[String],
    now: i64,
    tag_of: &mut dyn FnMut(&str, &str) -> Option<Tag>,
) -> Result<VerifiedEvent, Rejection> {
    let header = SignatureHeader::parse(header.ok_or(Rejection::MissingSignature)?)?;
    // One MAC per secret, compared with every candidate (at most SIGNATURE_CANDIDATES_MAX).
    let matches = secrets.iter().any(|secret| {
        tag_of(secret, header.timestamp_text).is_some_and(|expected| {
            // No short cut: every candidate is compared, each in constant time.
            header
                .candidates
                .iter()
                .fold(false, |found, candidate| found | (*candidate == expected))
        })
    });
    if !matches {
        return Err(Rejection::BadSignature);
    }
    if (now - header.timestamp).abs() > SIGNATURE_TOLERANCE_S {
        return Err(Rejection::StaleTimestamp);
    }
    parse_event(payload)
}

/// HMAC-SHA256(secret, `"<timestamp>.<payload>"`); `None` only for a key HMAC refuses
/// (none: HMAC takes keys of any length).
fn tag_of(secret: &str, timestamp: &str, payload: &str) -> Option<Tag> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    Some(mac.finalize())
}

/// A `Stripe-Signature` header, bounded: its timestamp and at most
/// [`SIGNATURE_CANDIDATES_MAX`] well-formed `v1` tags.
#[derive(Debug)]
struct SignatureHeader<'h> {
    /// `t` as sent: it is what Stripe signed.
    timestamp_text: &'h str,
    /// `t` as a number, for the tolerance.
    timestamp: i64,
    /// The `v1` entries that are 32 bytes of hex; others can match nothing and are dropped.
    candidates: Vec<Tag>,
}

impl<'h> SignatureHeader<'h> {
    /// Refuses a header over [`SIGNATURE_HEADER_BYTES_MAX`] or with more than
    /// [`SIGNATURE_CANDIDATES_MAX`] `v1` entries (empty ones count) before decoding any.
    fn parse(header: &'h str) -> Result<SignatureHeader<'h>, Rejection> {
        if header.len() > SIGNATURE_HEADER_BYTES_MAX {
            return Err(Rejection::HeaderTooLarge);
        }
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => {
                    if timestamp.is_some() {
                        return Err(Rejection::BadSignature);
                    }
                    timestamp = Some(t);
                }
                Some(("v1", sig)) => {
                    if signatures.len() == SIGNATURE_CANDIDATES_MAX {
                        return Err(Rejection::TooManySignatures);
                    }
                    signatures.push(sig);
                }
                // Other schemes (`v0`, test mode) are not ours to check.
                _ => {}
            }
        }
        let timestamp_text = timestamp.ok_or(Rejection::BadSignature)?;
        let timestamp = timestamp_text
            .parse::<i64>()
            .map_err(|_| Rejection::BadSignature)?;
        let candidates = signatures
            .into_iter()
            .filter_map(|sig| {
                let bytes = hex::decode(sig).ok()?;
                let tag = Output::<Hmac<Sha256>>::try_from(bytes.as_slice()).ok()?;
                Some(Tag::new(tag))
            })
            .collect();
        Ok(SignatureHeader {
            timestamp_text,
            timestamp,
            candidates,
        })
    }
}

/// The fields we read from a verified body.
fn parse_event(payload: &str) -> Result<VerifiedEvent, Rejection> {
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

    /// `v1=<hex>` for `secret` over `EVENT` at `t`, as Stripe writes it.
    fn v1(secret: &str, t: i64) -> String {
        let tag = tag_of(secret, &t.to_string(), EVENT).expect("any key");
        format!("v1={}", hex::encode(tag.into_bytes()))
    }

    /// Runs [`verify_with`] with the real MAC, counting how many it computed.
    fn verify_counting(
        header: &str,
        secrets: &[String],
        now: i64,
    ) -> (Result<String, Rejection>, usize) {
        let mut macs = 0;
        let result = verify_with(EVENT, Some(header), secrets, now, &mut |secret, t| {
            macs += 1;
            tag_of(secret, t, EVENT)
        });
        (result.map(|e| e.id().to_owned()), macs)
    }

    #[test]
    fn a_signature_header_with_thousands_of_v1_entries_is_refused_before_any_mac() {
        let now = 1_700_000_100;
        let secrets = vec!["whsec_old".to_owned(), "whsec_new".to_owned()];
        // Defect 9: each of these cost an HMAC over the whole body, per secret.
        let empty = format!("t={now},{}", "v1=,".repeat(5000));
        let full = format!("t={now},{}", vec![v1("whsec_x", now); 3000].join(","));
        for header in [&empty, &full] {
            assert_eq!(
                verify_counting(header, &secrets, now),
                (Err(Rejection::HeaderTooLarge), 0)
            );
            assert_eq!(
                verify(EVENT, Some(header), &secrets, now).err(),
                Some(Rejection::HeaderTooLarge)
            );
        }
        // Under the length cap, but more candidates than any signer sends: still no MAC.
        let many = format!("t={now},{}", "v1=,".repeat(SIGNATURE_CANDIDATES_MAX + 1));
        assert!(many.len() <= SIGNATURE_HEADER_BYTES_MAX);
        assert_eq!(
            verify_counting(&many, &secrets, now),
            (Err(Rejection::TooManySignatures), 0)
        );
        let code = Rejection::TooManySignatures.code();
        assert_eq!(
            (code, Rejection::HeaderTooLarge.code()),
            ("invalid_signature", "invalid_signature")
        );
    }

    #[test]
    fn the_mac_is_computed_once_per_secret_however_many_candidates_the_header_has() {
        let now = 1_700_000_100;
        let secrets: Vec<String> = ["whsec_a", "whsec_b", "whsec_c"]
            .map(str::to_owned)
            .to_vec();
        let mut entries: Vec<String> = (0..SIGNATURE_CANDIDATES_MAX - 1)
            .map(|i| v1(&format!("whsec_stranger_{i}"), now))
            .collect();
        let bogus = format!("t={now},{}", entries.join(","));
        assert_eq!(
            verify_counting(&bogus, &secrets, now),
            (Err(Rejection::BadSignature), secrets.len())
        );
        // The real one last, signed with the last secret: every secret's MAC once, no more.
        entries.push(v1("whsec_c", now));
        let header = format!("t={now},{}", entries.join(","));
        assert_eq!(
            verify_counting(&header, &secrets, now),
            (Ok("evt_1".to_owned()), secrets.len())
        );
    }

    #[test]
    fn during_rotation_a_header_signed_with_both_secrets_verifies_with_either_configured() {
        let now = 1_700_000_100;
        // Stripe signs with the old and the new secret while one is rolled.
        let header = format!("t={now},{},{}", v1("whsec_old", now), v1("whsec_new", now));
        for configured in [
            &["whsec_old"][..],
            &["whsec_new"],
            &["whsec_new", "whsec_old"],
        ] {
            let secrets: Vec<String> = configured.iter().map(|s| (*s).to_owned()).collect();
            assert!(
                verify(EVENT, Some(&header), &secrets, now).is_ok(),
                "{configured:?}"
            );
        }
        let others = vec!["whsec_other".to_owned()];
        assert_eq!(
            verify(EVENT, Some(&header), &others, now).err(),
            Some(Rejection::BadSignature)
        );
        // The same header as Stripe's own library writes it verifies too.
        let stripe = Webhook::generate_test_header(EVENT, "whsec_new", Some(now));
        assert_eq!(stripe, format!("t={now},{}", v1("whsec_new", now)));
    }
}
