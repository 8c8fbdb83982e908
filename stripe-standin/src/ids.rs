//! Stripe-looking object ids (`cus_…`, `price_…`, `cs_test_…`) and request ids.

use rand::Rng;
use rand::distr::Alphanumeric;

/// Length of the random part of most ids; Stripe's are 14 to 24 characters.
const ID_RANDOM_LEN: usize = 24;

/// Checkout Session ids are much longer in Stripe (`cs_test_a1YS…`); kept alike.
const CHECKOUT_SESSION_RANDOM_LEN: usize = 58;

/// A new id with `prefix` (without the underscore), e.g. `new_id("cus")`.
pub fn new_id(prefix: &str) -> String {
    let len = if prefix == "cs_test" {
        CHECKOUT_SESSION_RANDOM_LEN
    } else {
        ID_RANDOM_LEN
    };
    format!("{prefix}_{}", random_alphanumeric(len))
}

/// `len` random ASCII letters and digits.
pub fn random_alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
