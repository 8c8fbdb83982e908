//! The phases of a request, in the order [`crate::handler::handle`] calls them. Each
//! returns `Err(Refusal)` to stop the request; `settle` always runs.

pub mod admit;
pub mod forward;
pub mod identify;
pub mod price;
pub mod settle;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// The body type of every response the proxy sends: the upstream's, streamed, or ours.
pub type Body = BoxBody<Bytes, hyper::Error>;
