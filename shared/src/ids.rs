//! Identifiers with their invariants in their types.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest customer id accepted anywhere (bytes).
pub const CUSTOMER_ID_BYTES_MAX: usize = 64;

/// A customer id: the same string in Redis, Postgres, the APIs and `X-Creditgate-Customer`.
/// ASCII letters, digits, `-` and `_` only, so it is safe in a Redis key and a header.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    /// Checks the id's alphabet and length.
    pub fn parse(id: &str) -> Result<Self, String> {
        let ok = !id.is_empty()
            && id.len() <= CUSTOMER_ID_BYTES_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(CustomerId(id.to_owned()))
        } else {
            Err(format!("invalid customer id {id:?}"))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        CustomerId::parse(&value)
    }
}

impl From<CustomerId> for String {
    fn from(value: CustomerId) -> Self {
        value.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Prefix every API key starts with.
pub const API_KEY_PREFIX: &str = "cg_";
/// Characters shown of a key for display (`cg_AbCd`).
pub const API_KEY_DISPLAY_CHARS: usize = 7;
const API_KEY_RANDOM_CHARS: usize = 40;
const API_KEY_BYTES_MAX: usize = 128;

/// A plaintext API key, `cg_<random>`. It exists only while a request is handled or a key
/// is issued; it is never stored, logged or printed by `Debug`.
pub struct ApiKey(String);

impl ApiKey {
    /// Issues a new random key (40 base-62 characters, about 238 bits).
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let random: String = (0..API_KEY_RANDOM_CHARS)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        ApiKey(format!("{API_KEY_PREFIX}{random}"))
    }

    /// Accepts what a client sent if it has the key's shape; anything else is no key.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = text.starts_with(API_KEY_PREFIX)
            && text.len() > API_KEY_PREFIX.len()
            && text.len() <= API_KEY_BYTES_MAX
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| ApiKey(text.to_owned()))
    }

    /// The plaintext, to show once when the key is issued.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first characters, safe to show in lists (`cg_AbCd`).
    pub fn display_prefix(&self) -> &str {
        &self.0[..API_KEY_DISPLAY_CHARS.min(self.0.len())]
    }

    /// The SHA-256 of the key. Keys carry over 200 random bits, so an unsalted fast hash
    /// is as strong as the key itself (the practice of GitHub and Stripe tokens) and lets
    /// the proxy look a key up in one read.
    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash(hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.display_prefix())
    }
}

/// The stored form of an API key: lowercase hex SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ApiKeyHash(String);

impl ApiKeyHash {
    /// Wraps a stored hash (as read back from Postgres).
    pub fn from_hex(hex: String) -> Self {
        ApiKeyHash(hex)
    }

    /// The hash as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_stably() {
        let key = ApiKey::generate();
        assert!(key.expose().starts_with("cg_"));
        let again = ApiKey::parse(key.expose()).expect("generated keys parse");
        assert_eq!(key.hash(), again.hash());
        assert_eq!(key.hash().as_str().len(), 64);
        assert!(!format!("{key:?}").contains(&key.expose()[8..]));
    }

    #[test]
    fn customer_ids_are_header_safe() {
        assert!(CustomerId::parse("cus_01J-abc").is_ok());
        assert!(CustomerId::parse("a b").is_err());
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse("x\r\n").is_err());
    }
}
