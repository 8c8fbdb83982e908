//! [`Runtime`]: the live policy and everything derived from it, built once per load and
//! swapped whole, so a request sees one consistent version from start to end.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use hyper::http::uri::{Authority, Scheme};
use shared::CustomerId;
use shared::policy::{Policy, RateLimit};

use crate::App;
use crate::ctx::RateState;
use crate::refusal::Refusal;

/// How often idle rate-limiter entries are dropped; keeps limiter memory bounded by the
/// customers active in the last burst window.
const LIMITER_CLEANUP_INTERVAL: Duration = Duration::from_secs(10);

/// The upstream's scheme and authority.
pub struct Upstream {
    /// `http`.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
}

/// A policy ready to serve.
pub struct Runtime {
    /// The validated policy.
    pub policy: Policy,
    /// Where requests go.
    pub upstream: Upstream,
    /// One keyed limiter per plan.
    pub limits: Limits,
    /// `<sync.public_url>/billing/upgrade`.
    pub upgrade_url: String,
    /// `<sync.public_url>/billing/top-up`.
    pub top_up_url: String,
    /// The paid plans as the 402 body lists them.
    pub plans_offer: serde_json::Value,
}

impl Runtime {
    /// Derives the runtime. Fails only on what policy validation cannot know (an upstream
    /// scheme this build does not speak).
    pub fn build(policy: Policy) -> Result<Runtime, String> {
        let upstream = &policy.proxy.upstream;
        let rest = upstream.strip_prefix("http://").ok_or_else(|| {
            format!("proxy.upstream: only http:// upstreams are supported, got {upstream:?}")
        })?;
        let authority = Authority::try_from(rest).map_err(|e| format!("proxy.upstream: {e}"))?;
        let plans_offer = serde_json::Value::Array(
            policy
                .paid_plans()
                .into_iter()
                .map(|plan| {
                    let prices: serde_json::Map<String, serde_json::Value> = plan
                        .prices
                        .iter()
                        .map(|(interval, money)| (interval.as_str().to_owned(), serde_json::json!(money)))
                        .collect();
                    serde_json::json!({ "name": plan.name, "credits": plan.credits_per_month, "prices": prices })
                })
                .collect(),
        );
        let public = &policy.sync.public_url;
        Ok(Runtime {
            upgrade_url: format!("{public}/billing/upgrade"),
            top_up_url: format!("{public}/billing/top-up"),
            plans_offer,
            limits: Limits::new(&policy),
            upstream: Upstream {
                scheme: Scheme::HTTP,
                authority,
            },
            policy,
        })
    }
}

type Limiter = RateLimiter<
    CustomerId,
    DefaultKeyedStateStore<CustomerId>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// Per-plan, per-customer rate limiters (GCRA, from governor).
pub struct Limits {
    by_plan: HashMap<String, (RateLimit, Limiter)>,
}

impl Limits {
    fn new(policy: &Policy) -> Limits {
        let by_plan = policy
            .plans
            .values()
            .filter_map(|plan| {
                let limit = plan.rate_limit?;
                let per_second = NonZeroU32::new(limit.per_second)?;
                let burst = NonZeroU32::new(limit.burst)?;
                let limiter = RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
                    .with_middleware::<StateInformationMiddleware>();
                Some((plan.name.clone(), (limit, limiter)))
            })
            .collect();
        Limits { by_plan }
    }

    /// Takes one request from the customer's allowance; 429 when there is none.
    pub fn check(&self, plan: &str, customer: &CustomerId) -> Result<RateState, Refusal> {
        let Some((limit, limiter)) = self.by_plan.get(plan) else {
            // A plan without a rate limit (or unknown to this policy version) is unlimited.
            return Ok(RateState::unlimited(plan));
        };
        let window_s = u64::from(limit.burst.div_ceil(limit.per_second)).max(1);
        match limiter.check_key(customer) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = u64::from(limit.burst - remaining.min(limit.burst));
                Ok(RateState {
                    name: plan.to_owned(),
                    quota: limit.burst,
                    window_s,
                    remaining,
                    reset_s: used.div_ceil(u64::from(limit.per_second)),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Err(Refusal::RateLimited {
                    retry_after_s: wait.as_millis().div_ceil(1000).max(1) as u64,
                })
            }
        }
    }

    fn cleanup(&self) {
        for (_, limiter) in self.by_plan.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

impl RateState {
    fn unlimited(plan: &str) -> RateState {
        RateState {
            name: plan.to_owned(),
            quota: u32::MAX,
            window_s: 1,
            remaining: u32::MAX,
            reset_s: 0,
        }
    }
}

/// Drops idle limiter entries every [`LIMITER_CLEANUP_INTERVAL`].
pub fn spawn_limiter_cleanup(app: Arc<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIMITER_CLEANUP_INTERVAL);
        loop {
            tick.tick().await;
            app.runtime.load().limits.cleanup();
        }
    });
}
