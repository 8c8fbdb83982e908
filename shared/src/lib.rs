//! The creditgate domain, shared by `creditgate-proxy` and `billing-sync`.
//!
//! Layout:
//! - [`credits`]: [`Millicredits`], the integer unit every balance is kept in, and its
//!   decimal-string form (`"12.5"`) used in YAML and JSON.
//! - [`money`]: [`Money`], an exact decimal amount with its ISO currency.
//! - [`ids`]: identifiers whose invariants live in their types (`CustomerId`, `ApiKeyHash`).
//! - [`policy`]: the operator's YAML policy, parsed with line and column, validated whole.
//! - [`redis`]: the one place that knows Redis key names and the Lua scripts.

pub mod credits;
pub mod ids;
pub mod money;
pub mod policy;
pub mod redis;

pub use credits::{CreditsError, Millicredits};
pub use ids::{ApiKey, ApiKeyHash, CustomerId};
pub use money::{Currency, Money};
pub use policy::Policy;
