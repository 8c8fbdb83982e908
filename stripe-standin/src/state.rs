//! The in-memory Stripe account: objects by id, creation order, idempotency results, the
//! recorded requests and the events sent.
//!
//! One `std::sync::Mutex<State>` guards it all: every API call runs start to finish under the
//! lock without awaiting (webhooks are sent after it is released), so an idempotency check and
//! the request it protects can never interleave with another request.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::params::Params;

/// Objects the account may hold before creation requests are refused.
pub const OBJECTS_MAX: usize = 100_000;

/// Idempotency results kept; the oldest is forgotten first (Stripe keeps keys 24 hours).
pub const IDEMPOTENCY_KEYS_MAX: usize = 10_000;

/// Events kept for `GET /v1/events/{id}`, `/__standin/events` and resending.
pub const EVENTS_MAX: usize = 10_000;

/// Largest `limit` on a list request, as in Stripe.
pub const LIST_LIMIT_MAX: i64 = 100;

/// One API request as the stand-in received it, for tests' assertions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedRequest {
    /// `GET`, `POST` or `DELETE`.
    pub method: String,
    /// The path, e.g. `/v1/customers`.
    pub path: String,
    /// The query string parsed like a form (`{}` when none).
    pub query: Value,
    /// The urlencoded body parsed into nested JSON (`{}` when none).
    pub form: Value,
    /// The `Idempotency-Key` header, if sent.
    pub idempotency_key: Option<String>,
    /// The status the stand-in answered with.
    pub status: u16,
}

/// One attempt to deliver an event to the webhook URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Unix time of the attempt.
    pub at: i64,
    /// The URL posted to.
    pub url: String,
    /// HTTP status of the answer, when one came.
    pub status: Option<u16>,
    /// Why no answer came (connection refused, timeout…).
    pub error: Option<String>,
}

impl Delivery {
    /// Whether the endpoint answered 2xx.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// An event the stand-in created, with its delivery attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SentEvent {
    /// `evt_…`
    pub id: String,
    /// e.g. `checkout.session.completed`
    #[serde(rename = "type")]
    pub type_: String,
    /// The full event JSON, as posted.
    pub event: Value,
    /// Attempts so far, oldest first (empty when no webhook URL is configured).
    pub deliveries: Vec<Delivery>,
}

/// A stored idempotent result.
pub(crate) struct IdempotentResult {
    /// Method of the first request with the key.
    pub method: String,
    /// Its path.
    pub path: String,
    /// Its parameters: a replay must send the same ones.
    pub form: Value,
    /// The status answered.
    pub status: u16,
    /// The body answered, given again on replay.
    pub body: Value,
}

/// Data a Checkout Session keeps that Stripe does not show on the object.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionExtra {
    /// `(price id, quantity)` per line item.
    pub line_items: Vec<(String, u64)>,
    /// `li_…` id of each line item, stable across reads.
    pub line_item_ids: Vec<String>,
    /// `subscription_data[metadata]`, copied onto the subscription.
    pub subscription_metadata: Value,
    /// `customer_update[address]=auto`: the collected address is saved on the customer.
    pub update_address: bool,
    /// `customer_update[name]=auto`: the collected name is saved on the customer.
    pub update_name: bool,
}

/// The whole account.
#[derive(Default)]
pub(crate) struct State {
    /// Every object by id, as the API shows it (at most [`OBJECTS_MAX`]).
    objects: HashMap<String, Value>,
    /// Ids per `object` type, oldest first; lists read it newest first like Stripe.
    order: HashMap<String, Vec<String>>,
    /// What Checkout Sessions keep besides the object, by session id.
    pub sessions: HashMap<String, SessionExtra>,
    /// Idempotent results by key (at most [`IDEMPOTENCY_KEYS_MAX`]).
    pub idempotency: HashMap<String, IdempotentResult>,
    /// Keys in arrival order, to forget the oldest.
    idempotency_order: VecDeque<String>,
    /// Recorded `/v1` requests, oldest first (bounded by the config's `requests_max`).
    pub requests: VecDeque<RecordedRequest>,
    /// Events made, oldest first (at most [`EVENTS_MAX`]).
    pub events: VecDeque<SentEvent>,
    /// The portal configuration used when a session names none, made on first use.
    pub default_portal_configuration: Option<String>,
    /// Downgrades chosen in the portal, applied at the next renewal: subscription → price.
    pub pending_prices: HashMap<String, String>,
    /// Last invoice number given (numbers are `<customer prefix>-<n>`).
    pub invoice_number: u64,
}

impl State {
    /// The object with `id`, if any.
    pub fn get(&self, id: &str) -> Option<&Value> {
        self.objects.get(id)
    }

    /// Puts the current Price objects into a subscription's items, as Stripe renders them
    /// (a price that gave its `lookup_key` away shows `lookup_key: null` there too).
    pub fn refresh_prices(&self, sub: &mut Value) {
        if let Some(items) = sub["items"]["data"].as_array_mut() {
            for item in items {
                let current = self.objects.get(str_field(&item["price"], "id")).cloned();
                if let Some(price) = current {
                    item["price"] = price;
                }
            }
        }
    }

    /// Stores a new object (its `id` and `object` fields name it).
    pub fn insert(&mut self, object: Value) -> Result<Value, ApiError> {
        if self.objects.len() >= OBJECTS_MAX {
            return Err(ApiError::invalid(format!(
                "the stand-in holds {OBJECTS_MAX} objects already; restart it"
            )));
        }
        let id = str_field(&object, "id").to_owned();
        let kind = str_field(&object, "object").to_owned();
        if self.objects.contains_key(&id) {
            return Err(ApiError::bad_param(
                "id",
                format!("Object already exists with id {id}"),
            ));
        }
        self.order.entry(kind).or_default().push(id.clone());
        self.objects.insert(id, object.clone());
        Ok(object)
    }

    /// Replaces a stored object (same id).
    pub fn replace(&mut self, object: Value) -> Value {
        let id = str_field(&object, "id").to_owned();
        self.objects.insert(id, object.clone());
        object
    }

    /// The object with `id` of type `object` as the API shows it now, or Stripe's 404.
    pub fn fetch(&self, object: &str, id: &str, param: &str) -> Result<Value, ApiError> {
        match self.objects.get(id) {
            Some(v) if v.get("object").and_then(Value::as_str) == Some(object) => {
                let mut v = v.clone();
                if object == "subscription" {
                    self.refresh_prices(&mut v);
                }
                Ok(v)
            }
            _ => Err(ApiError::no_such(resource_word(object), id, param)),
        }
    }

    /// All objects of a type, newest first, that pass `keep`.
    pub fn all<'s>(
        &'s self,
        object: &str,
        keep: impl Fn(&Value) -> bool + 's,
    ) -> impl Iterator<Item = &'s Value> + 's {
        self.order
            .get(object)
            .into_iter()
            .flat_map(|ids| ids.iter().rev())
            .filter_map(|id| self.objects.get(id))
            .filter(move |v| keep(v))
    }

    /// A Stripe list (`{"object":"list","data":…,"has_more":…,"url":…}`) of the objects of a
    /// type passing `keep`, honouring `limit`, `starting_after` and `ending_before`.
    pub fn list(
        &self,
        object: &str,
        url: &str,
        params: Params<'_>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Value, ApiError> {
        let limit = params.int("limit")?.unwrap_or(10);
        if !(1..=LIST_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::bad_param(
                "limit",
                format!("This value must be between 1 and {LIST_LIMIT_MAX}."),
            ));
        }
        let limit = usize::try_from(limit).unwrap_or(10);
        let all: Vec<&Value> = self.all(object, keep).collect();
        let position = |id: &str, param: &str| {
            all.iter()
                .position(|v| str_field(v, "id") == id)
                .ok_or_else(|| ApiError::no_such(resource_word(object), id, param))
        };
        let (data, has_more) = if let Some(after) = params.str("starting_after")? {
            let start = position(after, "starting_after")? + 1;
            let rest = &all[start.min(all.len())..];
            (
                rest.iter().take(limit).collect::<Vec<_>>(),
                rest.len() > limit,
            )
        } else if let Some(before) = params.str("ending_before")? {
            let end = position(before, "ending_before")?;
            let head = &all[..end];
            let from = head.len().saturating_sub(limit);
            (head[from..].iter().collect(), from > 0)
        } else {
            (all.iter().take(limit).collect(), all.len() > limit)
        };
        let data: Vec<Value> = data
            .into_iter()
            .map(|v| {
                let mut v = (*v).clone();
                if object == "subscription" {
                    self.refresh_prices(&mut v);
                }
                v
            })
            .collect();
        let mut list = json!({
            "object": "list",
            "data": data,
            "has_more": has_more,
            "url": url,
        });
        let expand = params.str_list("expand")?;
        self.expand(&mut list, &expand);
        Ok(list)
    }

    /// Replaces ids by objects along each `expand` path (`customer`, `data.latest_invoice`,
    /// `items.data.price.product`). Paths naming unknown fields are ignored.
    pub fn expand(&self, value: &mut Value, paths: &[&str]) {
        for path in paths {
            let segments: Vec<&str> = path.split('.').collect();
            self.expand_path(value, &segments);
        }
    }

    fn expand_path(&self, value: &mut Value, segments: &[&str]) {
        let Some((first, rest)) = segments.split_first() else {
            return;
        };
        if let Value::Array(items) = value {
            for item in items {
                self.expand_path(item, segments);
            }
            return;
        }
        let Some(field) = value.get_mut(*first) else {
            return;
        };
        if rest.is_empty() {
            if let Value::String(id) = field
                && let Some(object) = self.objects.get(id.as_str())
            {
                *field = object.clone();
            }
            return;
        }
        if let Value::String(id) = field
            && let Some(object) = self.objects.get(id.as_str())
        {
            *field = object.clone();
        }
        self.expand_path(field, rest);
    }

    /// Keeps an idempotent result, forgetting the oldest past [`IDEMPOTENCY_KEYS_MAX`].
    pub fn remember_idempotent(&mut self, key: String, result: IdempotentResult) {
        if self.idempotency.insert(key.clone(), result).is_none() {
            self.idempotency_order.push_back(key);
        }
        while self.idempotency_order.len() > IDEMPOTENCY_KEYS_MAX {
            if let Some(old) = self.idempotency_order.pop_front() {
                self.idempotency.remove(&old);
            }
        }
    }

    /// Keeps a recorded request, forgetting the oldest past `requests_max`.
    pub fn record(&mut self, request: RecordedRequest, requests_max: usize) {
        self.requests.push_back(request);
        while self.requests.len() > requests_max {
            self.requests.pop_front();
        }
    }

    /// Keeps an event, forgetting the oldest past [`EVENTS_MAX`].
    pub fn keep_event(&mut self, event: SentEvent) {
        self.events.push_back(event);
        while self.events.len() > EVENTS_MAX {
            self.events.pop_front();
        }
    }

    /// The stored event with `id`.
    pub fn event_mut(&mut self, id: &str) -> Option<&mut SentEvent> {
        self.events.iter_mut().find(|e| e.id == id)
    }
}

/// The `id`, `object`… string field of a stored object (`""` when absent).
pub fn str_field<'v>(value: &'v Value, key: &str) -> &'v str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The word Stripe uses in `No such …` messages.
fn resource_word(object: &str) -> &str {
    match object {
        "checkout.session" => "checkout.session",
        "billing_portal.configuration" => "configuration",
        other => other,
    }
}
