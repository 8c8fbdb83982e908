//! [`RequestCtx`]: what one request's phases learn and pass on.

use std::net::SocketAddr;

use shared::Millicredits;
use shared::policy::Auth;
use shared::redis::{Debit, Identity};

/// The state of one request, made once and passed `&mut` to each phase.
pub struct RequestCtx {
    /// Our id for the request (UUIDv7), the usage event's key; never taken from the client.
    pub request_id: String,
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether refusals are rendered as HTML (the client prefers `text/html`).
    pub wants_html: bool,
    /// The normalised path and the query as sent: what the route was matched on and
    /// exactly what the upstream receives. Set by identify.
    pub path_and_query: String,
    /// The matched route's label (name or pattern), or `default`.
    pub route: String,
    /// Whether the route needs a key.
    pub auth: Auth,
    /// Who is calling, once identified.
    pub identity: Option<Identity>,
    /// What the request costs.
    pub cost: Millicredits,
    /// What admission took, if it debited.
    pub debit: Option<Debit>,
    /// The plan's rate-limit state after this request, for the `RateLimit` headers.
    pub rate: Option<RateState>,
    /// Why the request went through uncharged although it costs credits (`fail_open`).
    pub uncharged: Option<&'static str>,
    /// Balance after settle's refund, if one happened.
    pub refunded_balance: Option<Millicredits>,
}

/// Rate-limit state for the IETF `RateLimit-Policy` / `RateLimit` fields.
#[derive(Clone, Debug)]
pub struct RateState {
    /// The policy's name (the plan).
    pub name: String,
    /// Requests allowed in a window.
    pub quota: u32,
    /// Window in seconds.
    pub window_s: u64,
    /// Requests left now.
    pub remaining: u32,
    /// Seconds until the quota is whole again.
    pub reset_s: u64,
}

impl RequestCtx {
    /// A fresh context.
    pub fn new(remote: SocketAddr, wants_html: bool) -> Self {
        RequestCtx {
            request_id: uuid::Uuid::now_v7().to_string(),
            remote,
            wants_html,
            path_and_query: String::from("/"),
            route: String::from("default"),
            auth: Auth::Required,
            identity: None,
            cost: Millicredits::ZERO,
            debit: None,
            rate: None,
            uncharged: None,
            refunded_balance: None,
        }
    }
}
