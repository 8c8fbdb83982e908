//! The operator's policy: one YAML file read by both programs.
//!
//! Loading is two passes. serde-saphyr first reads the text into `raw` types whose leaves
//! keep their line and column (`Spanned`); a syntax or type error stops there with its
//! location. The second pass validates every rule and collects *all* problems, so
//! `billing-sync check-config` can print each one as `file:line:column: message`.
//! What comes out is a [`Policy`] whose values are already typed: credits are
//! [`Millicredits`], prices are [`Money`], addresses are parsed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::credits::Millicredits;
use crate::money::{Currency, Money};

/// Default time the upstream has to answer before 504 `upstream_timeout`.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// Default time a client has to send its request headers before the connection is closed.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default largest request head (request line and headers) the proxy reads.
pub const DEFAULT_HEADER_BYTES_MAX: usize = 64 * 1024;
/// Default number of requests the proxy handles at once; more wait for a slot.
pub const DEFAULT_REQUESTS_IN_FLIGHT_MAX: usize = 10_000;
/// Longest accepted policy file; larger files are refused before parsing.
pub const POLICY_BYTES_MAX: u64 = 1024 * 1024;
/// Most decimals a price may have (cents).
const PRICE_DECIMALS_MAX: u32 = 2;

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The gateway's listeners, upstream and failure mode.
    pub proxy: ProxyConfig,
    /// billing-sync's listeners and public URL.
    pub sync: SyncConfig,
    /// Whether and how Stripe Tax is used.
    pub tax: TaxConfig,
    /// The rules for credit transfers between customers.
    pub transfers: TransfersConfig,
    /// Checkout, portal and payment-failure settings.
    pub stripe: StripeConfig,
    /// Plans by name.
    pub plans: BTreeMap<String, Plan>,
    /// The plan new customers start on (and fall back to when a subscription ends).
    pub default_plan: String,
    /// One-off credit packs by name.
    pub credit_packs: BTreeMap<String, CreditPack>,
    /// Routes in order; the first match wins.
    pub routes: Vec<Route>,
    /// Cost of a request no route matches.
    pub default_cost: Millicredits,
}

/// What the proxy does when Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorMode {
    /// Refuse with 503 `billing_unavailable`.
    FailClosed,
    /// Forward uncharged and count it in a metric.
    FailOpen,
}

/// The `proxy:` section.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_listen: SocketAddr,
    /// The product's base URL, `http://host:port`.
    pub upstream: String,
    /// Time the upstream has to send its response head.
    pub upstream_timeout_ms: u64,
    /// What to do when Redis is unreachable.
    pub on_store_error: StoreErrorMode,
    /// Time a client has to send its request head; slower clients are disconnected.
    pub header_read_timeout_ms: u64,
    /// Largest request head; a larger one is refused by the HTTP layer (431 or closed).
    pub header_bytes_max: usize,
    /// Requests handled at once; more wait.
    pub requests_in_flight_max: usize,
    /// Time in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
}

/// The `sync:` section.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Where the customer and admin APIs listen.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_listen: SocketAddr,
    /// The base of links given to customers (upgrade, top-up), without a trailing `/`.
    pub public_url: String,
}

/// Whether prices include tax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxBehavior {
    /// Tax is added on top of the price.
    Exclusive,
    /// The price includes tax.
    Inclusive,
}

/// The `tax:` section.
#[derive(Clone, Debug)]
pub struct TaxConfig {
    /// Whether Stripe Tax computes and collects tax.
    pub enabled: bool,
    /// Tax behaviour given to every Price.
    pub tax_behavior: TaxBehavior,
    /// Stripe product tax code given to every Product.
    pub product_tax_code: Option<String>,
}

/// The `transfers:` section. Absent, transfers are off: moving value between customers is
/// something an operator opts into.
#[derive(Clone, Debug)]
pub struct TransfersConfig {
    /// Whether customers may transfer credits.
    pub enabled: bool,
    /// Smallest transfer.
    pub min: Millicredits,
    /// Most a sender may transfer per UTC day; `None` is no cap.
    pub max_per_day: Option<Millicredits>,
}

/// The `stripe:` section (all optional; URLs default to pages under `sync.public_url`).
#[derive(Clone, Debug)]
pub struct StripeConfig {
    /// Where Checkout sends a customer after paying.
    pub success_url: String,
    /// Where Checkout sends a customer who gives up.
    pub cancel_url: String,
    /// Where the Customer Portal's "return" link goes.
    pub portal_return_url: String,
    /// Payment method types Checkout may offer, filtering Stripe's dynamic set
    /// (`card`, `us_bank_account`, `sepa_debit`, …); empty offers whatever the Stripe
    /// dashboard enables.
    pub payment_methods: Vec<String>,
    /// Days a subscription may stay `past_due` before the customer drops to the default plan.
    pub past_due_grace_days: u32,
}

/// Default days a customer keeps a paid plan after a failed payment.
pub const DEFAULT_PAST_DUE_GRACE_DAYS: u32 = 7;

/// A plan's request rate: `per_second` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

/// Billing intervals a paid plan may be sold on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interval {
    /// Billed each month.
    Monthly,
    /// Billed each year; credits are still granted monthly.
    Yearly,
}

impl Interval {
    /// The name used in YAML and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Monthly => "monthly",
            Interval::Yearly => "yearly",
        }
    }
}

/// A plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The plan's name (`free`, `mid`, …).
    pub name: String,
    /// Allowance granted each month.
    pub credits_per_month: Millicredits,
    /// Rate limit; `None` is unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Prices by interval; empty for a free plan.
    pub prices: BTreeMap<Interval, Money>,
}

impl Plan {
    /// A plan with a price is sold through Stripe; one without is free.
    pub fn is_paid(&self) -> bool {
        !self.prices.is_empty()
    }
}

/// A one-off pack of credits.
#[derive(Clone, Debug)]
pub struct CreditPack {
    /// The pack's name.
    pub name: String,
    /// Credits the pack adds (purchased, transferable, not expiring).
    pub credits: Millicredits,
    /// What it costs.
    pub price: Money,
}

/// Whether a route needs an API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// An API key is required and the cost debited (the default).
    Required,
    /// No key is needed; the request is forwarded uncharged.
    None,
}

/// How a route matches the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// `path:` equal to this.
    Exact(String),
    /// `path_prefix:` starts with this.
    Prefix(String),
}

/// A priced route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Name used in usage reports.
    pub name: Option<String>,
    /// Upper-case method, or any.
    pub method: Option<String>,
    /// What paths it matches.
    pub path: PathMatch,
    /// Credits per request.
    pub cost: Millicredits,
    /// Whether a key is needed.
    pub auth: Auth,
}

impl Route {
    /// Whether this route takes a request with `method` and `path`.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let method_ok = self.method.as_deref().is_none_or(|m| m == method);
        method_ok
            && match &self.path {
                PathMatch::Exact(p) => path == p,
                PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            }
    }

    /// The label usage reports group by: the name, or the pattern (`POST /v1/generate*`).
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let method = self
            .method
            .as_deref()
            .map(|m| format!("{m} "))
            .unwrap_or_default();
        match &self.path {
            PathMatch::Exact(p) => format!("{method}{p}"),
            PathMatch::Prefix(p) => format!("{method}{p}*"),
        }
    }

    /// Whether every request this route matches is already taken by `earlier`.
    fn is_shadowed_by(&self, earlier: &Route) -> bool {
        let method_covered = match (&earlier.method, &self.method) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        let path_covered = match (&earlier.path, &self.path) {
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
            (PathMatch::Prefix(a), PathMatch::Exact(b) | PathMatch::Prefix(b)) => {
                b.starts_with(a.as_str())
            }
        };
        method_covered && path_covered
    }
}

/// What a request is matched to: the route (if any) and its cost.
#[derive(Clone, Copy, Debug)]
pub struct Priced<'a> {
    /// The first matching route, or `None` for `default_cost`.
    pub route: Option<&'a Route>,
    /// The cost.
    pub cost: Millicredits,
    /// Whether a key is needed.
    pub auth: Auth,
}

impl Policy {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
        let file = path.display().to_string();
        let io_problem = |message: String| PolicyErrors {
            file: file.clone(),
            problems: vec![Problem {
                line: 1,
                column: 1,
                message,
            }],
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| io_problem(format!("cannot read policy file: {e}")))?;
        if meta.len() > POLICY_BYTES_MAX {
            return Err(io_problem(format!(
                "policy file is larger than {POLICY_BYTES_MAX} bytes"
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| io_problem(format!("cannot read policy file: {e}")))?;
        Policy::parse(&text, &file)
    }

    /// Parses and validates YAML text; `file` names it in problems.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyErrors> {
        let raw: raw::Policy = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let message = e.to_string();
            // serde-saphyr may append the position itself; keep one line per problem.
            let message = message.lines().next().unwrap_or("invalid YAML").to_owned();
            PolicyErrors {
                file: file.to_owned(),
                problems: vec![Problem {
                    line,
                    column,
                    message,
                }],
            }
        })?;
        let mut check = Checker::default();
        let policy = check.policy(raw);
        if check.problems.is_empty() {
            Ok(policy)
        } else {
            check.problems.sort_by_key(|p| (p.line, p.column));
            Err(PolicyErrors {
                file: file.to_owned(),
                problems: check.problems,
            })
        }
    }

    /// Prices a request: the first route that matches, else `default_cost` with a key
    /// required.
    pub fn price(&self, method: &str, path: &str) -> Priced<'_> {
        match self.routes.iter().find(|r| r.matches(method, path)) {
            Some(route) => Priced {
                route: Some(route),
                cost: route.cost,
                auth: route.auth,
            },
            None => Priced {
                route: None,
                cost: self.default_cost,
                auth: Auth::Required,
            },
        }
    }

    /// The plans sold through Stripe, cheapest monthly first.
    pub fn paid_plans(&self) -> Vec<&Plan> {
        let mut plans: Vec<&Plan> = self.plans.values().filter(|p| p.is_paid()).collect();
        plans.sort_by_key(|p| (p.prices.values().next().map(|m| m.amount), p.name.clone()));
        plans
    }
}

/// One validation problem, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What is wrong, lowercase.
    pub message: String,
}

/// Every problem found in one file. `Display` prints one `file:line:column: message` per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors {
    /// The file as given.
    pub file: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file, p.line, p.column, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// The YAML as written, every leaf with its location.
mod raw {
    use super::*;

    pub type S<T> = Spanned<T>;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Policy {
        pub proxy: Option<Proxy>,
        pub sync: Option<Sync>,
        pub tax: Option<Tax>,
        pub transfers: Option<Transfers>,
        pub stripe: Option<Stripe>,
        pub plans: S<BTreeMap<String, S<Plan>>>,
        pub default_plan: S<String>,
        pub credit_packs: Option<BTreeMap<String, S<Pack>>>,
        pub routes: Option<Vec<S<Route>>>,
        pub default_cost: Option<S<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Proxy {
        pub listen: Option<S<String>>,
        pub admin_listen: Option<S<String>>,
        pub upstream: Option<S<String>>,
        pub upstream_timeout_ms: Option<S<u64>>,
        pub on_store_error: Option<StoreErrorMode>,
        pub header_read_timeout_ms: Option<S<u64>>,
        pub header_bytes_max: Option<S<usize>>,
        pub requests_in_flight_max: Option<S<usize>>,
        pub shutdown_grace_ms: Option<S<u64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Sync {
        pub listen: Option<S<String>>,
        pub admin_listen: Option<S<String>>,
        pub public_url: Option<S<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tax {
        pub enabled: Option<bool>,
        pub tax_behavior: Option<TaxBehavior>,
        pub product_tax_code: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Transfers {
        pub enabled: Option<bool>,
        pub min: Option<S<String>>,
        pub max_per_day: Option<S<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Stripe {
        pub success_url: Option<S<String>>,
        pub cancel_url: Option<S<String>>,
        pub portal_return_url: Option<S<String>>,
        pub payment_methods: Option<Vec<S<String>>>,
        pub past_due_grace_days: Option<u32>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Plan {
        pub credits_per_month: S<String>,
        pub rate_limit: Option<S<RateLimit>>,
        pub prices: Option<BTreeMap<String, S<String>>>,
        pub currency: Option<S<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RateLimit {
        pub per_second: u32,
        pub burst: Option<u32>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Pack {
        pub credits: S<String>,
        pub price: S<String>,
        pub currency: Option<S<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub name: Option<S<String>>,
        pub method: Option<S<String>>,
        pub path: Option<S<String>>,
        pub path_prefix: Option<S<String>>,
        pub cost: Option<S<String>>,
        pub auth: Option<Auth>,
    }
}

/// Collects problems while turning raw values into typed ones.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: at.referenced.line(),
            column: at.referenced.column(),
            message: message.into(),
        });
    }

    fn policy(&mut self, raw: raw::Policy) -> Policy {
        let proxy = self.proxy(raw.proxy);
        let sync = self.sync(raw.sync);
        let tax = raw.tax.map_or(
            TaxConfig {
                enabled: false,
                tax_behavior: TaxBehavior::Exclusive,
                product_tax_code: None,
            },
            |t| TaxConfig {
                enabled: t.enabled.unwrap_or(false),
                tax_behavior: t.tax_behavior.unwrap_or(TaxBehavior::Exclusive),
                product_tax_code: t.product_tax_code,
            },
        );
        let transfers = self.transfers(raw.transfers);
        let stripe = self.stripe(raw.stripe, &sync.public_url);

        let mut plans = BTreeMap::new();
        if raw.plans.value.is_empty() {
            self.problem(&raw.plans, "at least one plan is required");
        }
        for (name, plan) in raw.plans.value {
            let plan = self.plan(name.clone(), plan);
            plans.insert(name, plan);
        }
        if !plans.contains_key(&raw.default_plan.value) {
            let message = format!(
                "default_plan {:?} is not one of the plans",
                raw.default_plan.value
            );
            self.problem(&raw.default_plan, message);
        } else if plans[&raw.default_plan.value].is_paid() {
            self.problem(
                &raw.default_plan,
                "default_plan must be a plan without prices",
            );
        }

        let mut credit_packs = BTreeMap::new();
        for (name, pack) in raw.credit_packs.unwrap_or_default() {
            if let Some(pack) = self.pack(name.clone(), pack) {
                credit_packs.insert(name, pack);
            }
        }

        let routes = self.routes(raw.routes.unwrap_or_default());
        let default_cost = match raw.default_cost {
            Some(cost) => self.credits(&cost, "default_cost"),
            None => Millicredits::from_credits(1).unwrap_or_default(),
        };

        Policy {
            proxy,
            sync,
            tax,
            transfers,
            stripe,
            plans,
            default_plan: raw.default_plan.value,
            credit_packs,
            routes,
            default_cost,
        }
    }

    fn proxy(&mut self, raw: Option<raw::Proxy>) -> ProxyConfig {
        let raw = raw.unwrap_or(raw::Proxy {
            listen: None,
            admin_listen: None,
            upstream: None,
            upstream_timeout_ms: None,
            on_store_error: None,
            header_read_timeout_ms: None,
            header_bytes_max: None,
            requests_in_flight_max: None,
            shutdown_grace_ms: None,
        });
        let upstream_timeout_ms = self.positive(
            raw.upstream_timeout_ms,
            DEFAULT_UPSTREAM_TIMEOUT_MS,
            "upstream_timeout_ms",
        );
        let header_read_timeout_ms = self.positive(
            raw.header_read_timeout_ms,
            DEFAULT_HEADER_READ_TIMEOUT_MS,
            "header_read_timeout_ms",
        );
        let header_bytes_max = match raw.header_bytes_max {
            // hyper's HTTP/1 reader needs at least 8 KiB of buffer.
            Some(v) if v.value < 8192 => {
                self.problem(&v, "header_bytes_max must be at least 8192");
                DEFAULT_HEADER_BYTES_MAX
            }
            Some(v) => v.value,
            None => DEFAULT_HEADER_BYTES_MAX,
        };
        let requests_in_flight_max = match raw.requests_in_flight_max {
            Some(v) if v.value == 0 => {
                self.problem(&v, "requests_in_flight_max must be at least 1");
                DEFAULT_REQUESTS_IN_FLIGHT_MAX
            }
            Some(v) => v.value,
            None => DEFAULT_REQUESTS_IN_FLIGHT_MAX,
        };
        // Draining must outlast the longest upstream wait, or shutdown cuts requests.
        let shutdown_grace_ms = match raw.shutdown_grace_ms {
            Some(v) if v.value < upstream_timeout_ms => {
                self.problem(&v, "shutdown_grace_ms must be at least upstream_timeout_ms");
                v.value
            }
            Some(v) => v.value,
            None => upstream_timeout_ms + 1000,
        };
        let upstream = match raw.upstream {
            Some(u) => self.base_url(&u, "upstream"),
            None => "http://127.0.0.1:9000".to_owned(),
        };
        ProxyConfig {
            listen: self.addr(raw.listen, "127.0.0.1:8080", "listen"),
            admin_listen: self.addr(raw.admin_listen, "127.0.0.1:9090", "admin_listen"),
            upstream,
            upstream_timeout_ms,
            on_store_error: raw.on_store_error.unwrap_or(StoreErrorMode::FailClosed),
            header_read_timeout_ms,
            header_bytes_max,
            requests_in_flight_max,
            shutdown_grace_ms,
        }
    }

    fn sync(&mut self, raw: Option<raw::Sync>) -> SyncConfig {
        let raw = raw.unwrap_or(raw::Sync {
            listen: None,
            admin_listen: None,
            public_url: None,
        });
        let public_url = match raw.public_url {
            Some(u) => self.base_url(&u, "public_url"),
            None => "http://127.0.0.1:8081".to_owned(),
        };
        SyncConfig {
            listen: self.addr(raw.listen, "127.0.0.1:8081", "listen"),
            admin_listen: self.addr(raw.admin_listen, "127.0.0.1:9091", "admin_listen"),
            public_url,
        }
    }

    fn stripe(&mut self, raw: Option<raw::Stripe>, public_url: &str) -> StripeConfig {
        let raw = raw.unwrap_or(raw::Stripe {
            success_url: None,
            cancel_url: None,
            portal_return_url: None,
            payment_methods: None,
            past_due_grace_days: None,
        });
        let mut url = |v: Option<Spanned<String>>, field: &str, default: String| match v {
            Some(u) => {
                let ok = (u.value.starts_with("http://") || u.value.starts_with("https://"))
                    && !u.value.contains(' ');
                if !ok {
                    self.problem(
                        &u,
                        format!("stripe.{field}: want an http(s) URL, got {:?}", u.value),
                    );
                }
                u.value
            }
            None => default,
        };
        let success_url = url(
            raw.success_url,
            "success_url",
            format!("{public_url}/billing/success"),
        );
        let cancel_url = url(
            raw.cancel_url,
            "cancel_url",
            format!("{public_url}/billing/cancel"),
        );
        let portal_return_url = url(
            raw.portal_return_url,
            "portal_return_url",
            format!("{public_url}/billing"),
        );
        let mut payment_methods = Vec::new();
        for method in raw.payment_methods.unwrap_or_default() {
            let ok = !method.value.is_empty()
                && method
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_');
            if ok {
                payment_methods.push(method.value);
            } else {
                self.problem(
                    &method,
                    format!(
                        "stripe.payment_methods: {:?} is not a payment method type",
                        method.value
                    ),
                );
            }
        }
        StripeConfig {
            success_url,
            cancel_url,
            portal_return_url,
            payment_methods,
            past_due_grace_days: raw
                .past_due_grace_days
                .unwrap_or(DEFAULT_PAST_DUE_GRACE_DAYS),
        }
    }

    fn transfers(&mut self, raw: Option<raw::Transfers>) -> TransfersConfig {
        let Some(raw) = raw else {
            return TransfersConfig {
                enabled: false,
                min: Millicredits::new(1),
                max_per_day: None,
            };
        };
        let min = match &raw.min {
            Some(m) => self.credits(m, "transfers.min"),
            None => Millicredits::new(1),
        };
        if let (true, Some(m)) = (min.is_zero(), &raw.min) {
            self.problem(m, "transfers.min must be more than 0");
        }
        let max_per_day = raw
            .max_per_day
            .as_ref()
            .map(|m| self.credits(m, "transfers.max_per_day"));
        if let (Some(max), Some(at)) = (max_per_day, &raw.max_per_day)
            && max < min
        {
            self.problem(at, "transfers.max_per_day must be at least transfers.min");
        }
        TransfersConfig {
            enabled: raw.enabled.unwrap_or(true),
            min,
            max_per_day,
        }
    }

    fn plan(&mut self, name: String, raw: Spanned<raw::Plan>) -> Plan {
        self.name(&raw, &name, "plan");
        let plan = raw.value;
        let credits_per_month = self.credits(&plan.credits_per_month, "credits_per_month");
        let rate_limit = plan.rate_limit.map(|rl| {
            if rl.value.per_second == 0 {
                self.problem(&rl, "rate_limit.per_second must be at least 1");
            }
            let burst = rl.value.burst.unwrap_or(rl.value.per_second);
            if burst == 0 {
                self.problem(&rl, "rate_limit.burst must be at least 1");
            }
            RateLimit {
                per_second: rl.value.per_second.max(1),
                burst: burst.max(1),
            }
        });
        let currency = plan.currency.as_ref().and_then(|c| self.currency(c));
        let mut prices = BTreeMap::new();
        for (interval, price) in plan.prices.unwrap_or_default() {
            let interval = match interval.as_str() {
                "monthly" => Interval::Monthly,
                "yearly" => Interval::Yearly,
                other => {
                    self.problem(
                        &price,
                        format!(
                            "plan {name:?}: unknown price interval {other:?} (monthly or yearly)"
                        ),
                    );
                    continue;
                }
            };
            let Some(amount) = self.price(&price) else {
                continue;
            };
            match &currency {
                Some(c) => {
                    prices.insert(interval, Money::new(amount, c.clone()));
                }
                None if plan.currency.is_none() => {
                    self.problem(&price, format!("plan {name:?} has prices but no currency"));
                }
                None => {}
            }
        }
        Plan {
            name,
            credits_per_month,
            rate_limit,
            prices,
        }
    }

    fn pack(&mut self, name: String, raw: Spanned<raw::Pack>) -> Option<CreditPack> {
        self.name(&raw, &name, "credit pack");
        let pack = raw.value;
        let credits = self.credits(&pack.credits, "credits");
        if credits.is_zero() {
            self.problem(
                &pack.credits,
                format!("credit pack {name:?} must add more than 0 credits"),
            );
        }
        let amount = self.price(&pack.price);
        let currency = match &pack.currency {
            Some(c) => self.currency(c),
            None => {
                self.problem(
                    &pack.price,
                    format!("credit pack {name:?} has a price but no currency"),
                );
                None
            }
        };
        Some(CreditPack {
            name,
            credits,
            price: Money::new(amount?, currency?),
        })
    }

    fn routes(&mut self, raw: Vec<Spanned<raw::Route>>) -> Vec<Route> {
        let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
        for spanned in raw {
            let r = &spanned.value;
            let path = match (&r.path, &r.path_prefix) {
                (Some(p), None) => self.route_path(p).map(PathMatch::Exact),
                (None, Some(p)) => self.route_path(p).map(PathMatch::Prefix),
                (Some(_), Some(_)) => {
                    self.problem(&spanned, "a route has either path or path_prefix, not both");
                    None
                }
                (None, None) => {
                    self.problem(&spanned, "a route needs path or path_prefix");
                    None
                }
            };
            let method = r.method.as_ref().and_then(|m| {
                let upper = m.value.to_ascii_uppercase();
                const METHODS: [&str; 9] = [
                    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
                ];
                if METHODS.contains(&upper.as_str()) {
                    Some(upper)
                } else {
                    self.problem(m, format!("unknown HTTP method {:?}", m.value));
                    None
                }
            });
            let cost = match &r.cost {
                Some(c) => self.credits(c, "cost"),
                None => {
                    self.problem(&spanned, "a route needs a cost");
                    Millicredits::ZERO
                }
            };
            if let Some(name) = &r.name
                && name.value.trim().is_empty()
            {
                self.problem(name, "route name must not be empty");
            }
            let Some(path) = path else { continue };
            let route = Route {
                name: r.name.as_ref().map(|n| n.value.clone()),
                method,
                path,
                cost,
                auth: r.auth.unwrap_or(Auth::Required),
            };
            if let Some(earlier) = routes.iter().find(|e| route.is_shadowed_by(e)) {
                let same = earlier.method == route.method && earlier.path == route.path;
                let message = if same {
                    format!("duplicate route {}", route.label())
                } else {
                    format!(
                        "route {} is unreachable: route {} matches every request it would",
                        route.label(),
                        earlier.label()
                    )
                };
                self.problem(&spanned, message);
            }
            routes.push(route);
        }
        routes
    }

    fn route_path(&mut self, p: &Spanned<String>) -> Option<String> {
        if !p.value.starts_with('/') {
            self.problem(
                p,
                format!("route path must start with '/', got {:?}", p.value),
            );
            return None;
        }
        Some(p.value.clone())
    }

    fn name<T>(&mut self, at: &Spanned<T>, name: &str, what: &str) {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            self.problem(
                at,
                format!("{what} name {name:?} may use only letters, digits, '-' and '_'"),
            );
        }
    }

    fn credits(&mut self, at: &Spanned<String>, field: &str) -> Millicredits {
        match Millicredits::parse_amount(at.value.trim()) {
            Ok(m) => m,
            Err(e) => {
                self.problem(at, format!("{field}: {e}"));
                Millicredits::ZERO
            }
        }
    }

    fn price(&mut self, at: &Spanned<String>) -> Option<Decimal> {
        let text = at.value.trim();
        let parsed = if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !text.is_empty() {
            Decimal::from_str(text).ok()
        } else {
            None
        };
        match parsed {
            Some(d) if d.scale() <= PRICE_DECIMALS_MAX => Some(d),
            Some(_) => {
                self.problem(
                    at,
                    format!("price {text:?} has more than {PRICE_DECIMALS_MAX} decimals"),
                );
                None
            }
            None => {
                self.problem(
                    at,
                    format!("price must be a non-negative decimal such as \"20.00\", got {text:?}"),
                );
                None
            }
        }
    }

    fn currency(&mut self, at: &Spanned<String>) -> Option<Currency> {
        match Currency::parse(&at.value) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(at, e);
                None
            }
        }
    }

    fn positive(&mut self, v: Option<Spanned<u64>>, default: u64, field: &str) -> u64 {
        match v {
            Some(v) if v.value == 0 => {
                self.problem(&v, format!("{field} must be more than 0"));
                default
            }
            Some(v) => v.value,
            None => default,
        }
    }

    fn addr(&mut self, v: Option<Spanned<String>>, default: &str, field: &str) -> SocketAddr {
        let fallback = SocketAddr::from_str(default).expect("defaults are valid addresses");
        let Some(v) = v else { return fallback };
        match v.value.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    &v,
                    format!(
                        "{field}: bad listen address {:?} (want ip:port, e.g. 127.0.0.1:8080)",
                        v.value
                    ),
                );
                fallback
            }
        }
    }

    fn base_url(&mut self, v: &Spanned<String>, field: &str) -> String {
        let url = v.value.trim_end_matches('/');
        let ok = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']));
        if !ok {
            self.problem(
                v,
                format!(
                    "{field}: want a base URL such as http://127.0.0.1:9000, got {:?}",
                    v.value
                ),
            );
        }
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const CONTRACT_EXAMPLE: &str = include_str!("../../deploy/creditgate.example.yaml");

    fn problems(yaml: &str) -> Vec<String> {
        match Policy::parse(yaml, "p.yaml") {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    fn check_price(yaml: &str, method: &str, path: &str, expected: (&str, Option<&str>)) {
        let policy = Policy::parse(yaml, "p.yaml").expect("valid policy");
        let priced = policy.price(method, path);
        assert_eq!(priced.cost.to_string(), expected.0, "{method} {path}");
        assert_eq!(
            priced.route.map(Route::label).as_deref(),
            expected.1,
            "{method} {path}"
        );
    }

    #[test]
    fn the_contract_example_is_valid() {
        let policy = Policy::parse(CONTRACT_EXAMPLE, "example.yaml").expect("the example is valid");
        assert_eq!(policy.default_plan, "free");
        assert_eq!(
            policy.plans["mid"].credits_per_month,
            Millicredits::new(50_000_000)
        );
        assert_eq!(
            policy.plans["mid"].prices[&Interval::Monthly]
                .amount
                .to_string(),
            "20.00"
        );
        assert_eq!(
            policy
                .paid_plans()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["mid", "high"]
        );
        assert_eq!(policy.proxy.upstream, "http://127.0.0.1:9000");
    }

    #[test]
    fn routes_price_first_match_wins() {
        let y = CONTRACT_EXAMPLE;
        check_price(y, "GET", "/health", ("0", Some("/health")));
        check_price(y, "POST", "/v1/generate/x", ("10", Some("generate")));
        check_price(y, "GET", "/v1/generate", ("1", Some("api")));
        check_price(y, "GET", "/other", ("1", None));
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let yaml = "\
plans:
  free: { credits_per_month: 10 }
  mid: { credits_per_month: 5, prices: { monthly: \"20.00\" } }
default_plan: gold
routes:
  - { path: /a, cost: -1 }
  - { path: /b, cost: \"1.0001\" }
  - { path_prefix: /v1/, cost: 1 }
  - { path_prefix: /v1/x, cost: 1 }
  - { path: /b, cost: 2 }
proxy: { listen: nowhere }
credit_packs:
  small: { credits: 10, price: \"10.00\" }
";
        let got = problems(yaml);
        assert_eq!(got.len(), 8, "{got:#?}");
        assert!(got[0].starts_with("p.yaml:3:"), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("no currency")));
        assert!(
            got.iter()
                .any(|p| p.starts_with("p.yaml:4:15: default_plan \"gold\"")),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("p.yaml:6:") && p.contains("negative"))
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("p.yaml:7:") && p.contains("three decimals"))
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("p.yaml:9:") && p.contains("unreachable"))
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("p.yaml:10:") && p.contains("duplicate"))
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("p.yaml:11:") && p.contains("listen address"))
        );
    }

    #[test]
    fn syntax_and_unknown_keys_are_located() {
        let got =
            problems("plans:\n  free: { credits_per_month: 1, colour: red }\ndefault_plan: free\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("p.yaml:2:"), "{got:?}");
        let got = problems("plans: [\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("p.yaml:"), "{got:?}");
    }

    #[test]
    fn a_method_specific_route_does_not_shadow_others() {
        let yaml = "plans: { free: { credits_per_month: 1 } }\ndefault_plan: free\nroutes:\n  - { method: POST, path_prefix: /v1/, cost: 2 }\n  - { path_prefix: /v1/, cost: 1 }\n";
        assert!(problems(yaml).is_empty());
        check_price(yaml, "GET", "/v1/x", ("1", Some("/v1/*")));
        check_price(yaml, "POST", "/v1/x", ("2", Some("POST /v1/*")));
    }
}
