//! API key → identity, cached in memory for under a second, so a revoked key (or a plan
//! change) reaches every proxy replica within one second without a Redis read per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shared::ApiKeyHash;
use shared::redis::Identity;

/// How long a lookup is trusted. Under a second, so revocation takes effect within one.
pub const KEY_CACHE_TTL: Duration = Duration::from_millis(900);
/// Most cached keys; when full, expired entries are dropped, and if that is not enough the
/// cache is cleared (the next lookups go to Redis).
pub const KEY_CACHE_ENTRIES_MAX: usize = 100_000;

/// The cache. A std `Mutex` fits: it is held for a map operation only, never across `.await`.
pub struct KeyCache {
    entries: Mutex<HashMap<ApiKeyHash, (Identity, Instant)>>,
}

impl KeyCache {
    /// An empty cache.
    pub fn new() -> Self {
        KeyCache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh entry for `hash`, if any.
    pub fn get(&self, hash: &ApiKeyHash) -> Option<Identity> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(identity, _)| identity.clone())
    }

    /// Remembers a lookup.
    pub fn put(&self, hash: ApiKeyHash, identity: Identity) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= KEY_CACHE_ENTRIES_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
            if entries.len() >= KEY_CACHE_ENTRIES_MAX {
                entries.clear();
            }
        }
        entries.insert(hash, (identity, Instant::now()));
    }
}
