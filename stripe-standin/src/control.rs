//! Test control (`/__standin/…`) and the browser pages (`/checkout/<id>`, `/portal/<id>`,
//! `/invoices/<id>[/pdf]`) that stand in for Stripe-hosted ones.
//!
//! Control endpoints need no API key (the stand-in is for localhost tests and demos) and
//! answer after the events they cause were delivered, with each delivery's outcome.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::api::{Ctx, NewEvent, checkout, subscriptions};
use crate::error::ApiError;
use crate::server::{Inner, error_response, json_response};
use crate::state::{SentEvent, State, str_field};
use crate::webhook::{Job, create_event, lock};

/// What completing a Checkout Session produced and the events sent for it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckoutOutcome {
    /// The session, now `complete` and `paid`.
    pub session: Value,
    /// The subscription started (subscription mode).
    pub subscription: Option<Value>,
    /// Its first, paid invoice (subscription mode).
    pub invoice: Option<Value>,
    /// Events in the order sent, with their deliveries.
    pub events: Vec<SentEvent>,
}

/// A subscription change driven by a control endpoint and the events sent for it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionOutcome {
    /// The subscription after the change.
    pub subscription: Value,
    /// The renewal invoice, for `renew`, `fail_payment` and `upcoming`.
    pub invoice: Option<Value>,
    /// Events in the order sent, with their deliveries.
    pub events: Vec<SentEvent>,
}

/// Dispatches `/__standin/<rest>`.
pub(crate) async fn handle(
    inner: &Inner,
    method: &Method,
    rest: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    // Filters for the GET lists: `?path=/v1/customers&method=POST`, `?type=invoice.paid`.
    let filter = crate::form::parse(query.as_bytes()).unwrap_or(Value::Null);
    let matches = |value: &str, key: &str| filter[key].as_str().is_none_or(|f| f == value);
    let result = match (method.as_str(), segments.as_slice()) {
        ("GET", ["healthz"]) => Ok(json!({"ok": true})),
        ("GET", ["requests"]) => {
            let state = lock(&inner.state);
            let data: Vec<_> = state
                .requests
                .iter()
                .filter(|r| matches(&r.path, "path") && matches(&r.method, "method"))
                .collect();
            Ok(json!({ "data": data }))
        }
        ("DELETE", ["requests"]) => {
            lock(&inner.state).requests.clear();
            Ok(json!({"deleted": true}))
        }
        ("GET", ["events"]) => {
            let state = lock(&inner.state);
            let data: Vec<_> = state
                .events
                .iter()
                .filter(|e| matches(&e.type_, "type"))
                .collect();
            Ok(json!({ "data": data }))
        }
        ("POST", ["events"]) => send_event_from_json(inner, body)
            .await
            .map(|e| json!({"event": e})),
        ("POST", ["events", id, "resend"]) => {
            resend_event(inner, id).await.map(|e| json!({"event": e}))
        }
        ("GET", ["objects", id]) => lock(&inner.state)
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::no_such("object", id, "id")),
        ("GET", ["webhook"]) => {
            let config = lock(&inner.webhook).clone();
            Ok(json!({"url": config.url, "secret_configured": config.secret.is_some()}))
        }
        ("PUT", ["webhook"]) => set_webhook_from_json(inner, body),
        ("POST", ["checkout", id, "complete"]) => {
            let outcome = complete_checkout(inner, id).await;
            if is_browser_form(headers) {
                return match outcome {
                    Ok(outcome) => after_payment_redirect(&outcome.session),
                    Err(e) => html_response(
                        StatusCode::BAD_REQUEST,
                        &layout("Payment failed", &escape(&e.message)),
                    ),
                };
            }
            outcome
                .and_then(|o| serde_json::to_value(o).map_err(|e| ApiError::invalid(e.to_string())))
        }
        ("POST", ["subscriptions", id, action]) => {
            let outcome = match *action {
                "fail_payment" => subscription_action(inner, id, subscriptions::fail_payment).await,
                "renew" => subscription_action(inner, id, subscriptions::renew).await,
                "pay_open_invoice" => {
                    subscription_action(inner, id, subscriptions::pay_open_invoice).await
                }
                "upcoming" => subscription_action(inner, id, subscriptions::upcoming).await,
                "cancel" => cancel_subscription(inner, id).await,
                "cancel_at_period_end" => {
                    subscription_action(inner, id, |state, ctx, id| {
                        subscriptions::portal_cancel_at_period_end(state, ctx, id, true)
                    })
                    .await
                }
                "resume" => {
                    subscription_action(inner, id, |state, ctx, id| {
                        subscriptions::portal_cancel_at_period_end(state, ctx, id, false)
                    })
                    .await
                }
                "switch" => match price_from_body(headers, body) {
                    Ok(price) => {
                        subscription_action(inner, id, |state, ctx, id| {
                            subscriptions::portal_switch(state, ctx, id, &price)
                        })
                        .await
                    }
                    Err(e) => Err(e),
                },
                _ => Err(ApiError::unknown_path(
                    "POST",
                    &format!("/__standin/{rest}"),
                )),
            };
            if is_browser_form(headers) && outcome.is_ok() {
                return html_response(
                    StatusCode::OK,
                    &layout("Done", "<p>The subscription was updated.</p>"),
                );
            }
            outcome
                .and_then(|o| serde_json::to_value(o).map_err(|e| ApiError::invalid(e.to_string())))
        }
        _ => Err(ApiError::unknown_path(
            method.as_str(),
            &format!("/__standin/{rest}"),
        )),
    };
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => error_response(&e),
    }
}

/// Runs `op` under the state lock, turns its events into stored events, delivers them in
/// order and waits for the deliveries.
async fn run<T>(
    inner: &Inner,
    op: impl FnOnce(&mut State, &Ctx) -> Result<(T, Vec<NewEvent>), ApiError>,
) -> Result<(T, Vec<SentEvent>), ApiError> {
    let ctx = Ctx {
        base_url: inner.base_url.clone(),
        now: crate::now(),
        tax_rate_bps: inner.tax_rate_bps,
        request_id: None,
        idempotency_key: None,
    };
    let (value, ids) = {
        let mut state = lock(&inner.state);
        let (value, events) = op(&mut state, &ctx)?;
        let ids: Vec<String> = events
            .into_iter()
            .map(|e| create_event(&mut state, ctx.now, None, None, e))
            .collect();
        (value, ids)
    };
    let sent = deliver_and_wait(inner, ids).await?;
    Ok((value, sent))
}

/// Queues events for delivery and waits until the worker has tried each.
pub(crate) async fn deliver_and_wait(
    inner: &Inner,
    event_ids: Vec<String>,
) -> Result<Vec<SentEvent>, ApiError> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    let (done, wait) = oneshot::channel();
    let stopped = || ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "api_error",
        ..ApiError::invalid("the stand-in's webhook worker has stopped")
    };
    inner
        .deliveries
        .send(Job {
            event_ids,
            done: Some(done),
        })
        .await
        .map_err(|_| stopped())?;
    wait.await.map_err(|_| stopped())
}

/// Completes a Checkout Session (see [`checkout::complete`]).
pub(crate) async fn complete_checkout(
    inner: &Inner,
    id: &str,
) -> Result<CheckoutOutcome, ApiError> {
    let (completion, events) = run(inner, |state, ctx| {
        let c = checkout::complete(state, ctx, id)?;
        let events = c.events.clone();
        Ok(((c.session, c.subscription, c.invoice), events))
    })
    .await?;
    let (session, subscription, invoice) = completion;
    Ok(CheckoutOutcome {
        session,
        subscription,
        invoice,
        events,
    })
}

/// `renew` or `fail_payment` on a subscription.
pub(crate) async fn subscription_action(
    inner: &Inner,
    id: &str,
    action: impl FnOnce(&mut State, &Ctx, &str) -> Result<subscriptions::Renewal, ApiError>,
) -> Result<SubscriptionOutcome, ApiError> {
    let ((subscription, invoice), events) = run(inner, |state, ctx| {
        let (sub, inv, events) = action(state, ctx, id)?;
        Ok(((sub, Some(inv).filter(|i| !i.is_null())), events))
    })
    .await?;
    Ok(SubscriptionOutcome {
        subscription,
        invoice,
        events,
    })
}

/// Cancels a subscription now (`customer.subscription.deleted`).
pub(crate) async fn cancel_subscription(
    inner: &Inner,
    id: &str,
) -> Result<SubscriptionOutcome, ApiError> {
    let (subscription, events) = run(inner, |state, ctx| {
        subscriptions::cancel(state, ctx, id, "cancellation_requested")
    })
    .await?;
    Ok(SubscriptionOutcome {
        subscription,
        invoice: None,
        events,
    })
}

/// Sends an arbitrary event whose `data.object` is `object`.
pub(crate) async fn send_event(
    inner: &Inner,
    type_: &str,
    object: Value,
    previous_attributes: Option<Value>,
) -> Result<SentEvent, ApiError> {
    if type_.is_empty() || !object.is_object() {
        return Err(ApiError::invalid(
            "an event needs a `type` and an `object` (a JSON object)",
        ));
    }
    let new = NewEvent {
        type_: type_.to_owned(),
        object,
        previous_attributes,
    };
    let ((), mut sent) = run(inner, |_, _| Ok(((), vec![new]))).await?;
    sent.pop()
        .ok_or_else(|| ApiError::invalid("the event was dropped before delivery"))
}

/// Delivers a stored event again (same id and payload, fresh signature).
pub(crate) async fn resend_event(inner: &Inner, id: &str) -> Result<SentEvent, ApiError> {
    if lock(&inner.state).event_mut(id).is_none() {
        return Err(ApiError::no_such("event", id, "id"));
    }
    let mut sent = deliver_and_wait(inner, vec![id.to_owned()]).await?;
    sent.pop()
        .ok_or_else(|| ApiError::no_such("event", id, "id"))
}

async fn send_event_from_json(inner: &Inner, body: &Bytes) -> Result<SentEvent, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("body is not JSON: {e}")))?;
    let type_ = request.get("type").and_then(Value::as_str).unwrap_or("");
    let object = request.get("object").cloned().unwrap_or(Value::Null);
    let previous = request.get("previous_attributes").cloned();
    send_event(inner, type_, object, previous).await
}

/// `price` from a form body (`price=price_…`, as the portal page posts) or JSON
/// (`{"price":"price_…"}`, as curl or tests do).
fn price_from_body(headers: &HeaderMap, body: &Bytes) -> Result<String, ApiError> {
    let parsed = if is_browser_form(headers) {
        crate::form::parse(body)?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("body is not JSON: {e}")))?
    };
    parsed
        .get("price")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::missing_param("price"))
}

fn set_webhook_from_json(inner: &Inner, body: &Bytes) -> Result<Value, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("body is not JSON: {e}")))?;
    let mut config = lock(&inner.webhook);
    if let Some(url) = request.get("url") {
        config.url = url.as_str().map(str::to_owned);
    }
    if let Some(secret) = request.get("secret") {
        config.secret = secret.as_str().map(crate::first_secret);
    }
    Ok(json!({"url": config.url, "secret_configured": config.secret.is_some()}))
}

fn is_browser_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// Where Checkout sends the browser after paying: `success_url` with Stripe's
/// `{CHECKOUT_SESSION_ID}` template filled in.
fn after_payment_redirect(session: &Value) -> Response<Full<Bytes>> {
    match session.get("success_url").and_then(Value::as_str) {
        Some(url) => {
            let url = url.replace("{CHECKOUT_SESSION_ID}", str_field(session, "id"));
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::SEE_OTHER;
            if let Ok(v) = HeaderValue::from_str(&url) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        None => html_response(
            StatusCode::OK,
            &layout("Payment complete", "<p>Thank you.</p>"),
        ),
    }
}

/// The browser pages (GET only); anything else is Stripe's 404.
pub(crate) fn page(inner: &Inner, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if method != Method::GET {
        return error_response(&ApiError::unknown_path(method.as_str(), path));
    }
    let state = lock(&inner.state);
    match segments.as_slice() {
        [] => html_response(
            StatusCode::OK,
            &layout(
                "Stripe stand-in",
                "<p>The creditgate Stripe stand-in. API under <code>/v1/</code>, control under <code>/__standin/</code>.</p>",
            ),
        ),
        ["checkout", id] => match state.fetch("checkout.session", id, "session") {
            Ok(session) => html_response(StatusCode::OK, &checkout_page(&state, &session)),
            Err(e) => not_found_page(&e),
        },
        ["portal", id] => match state.fetch("billing_portal.session", id, "session") {
            Ok(session) => html_response(StatusCode::OK, &portal_page(&state, &session)),
            Err(e) => not_found_page(&e),
        },
        ["invoices", id] => match state.fetch("invoice", id, "invoice") {
            Ok(invoice) => html_response(StatusCode::OK, &invoice_page(&invoice)),
            Err(e) => not_found_page(&e),
        },
        ["invoices", id, "pdf"] => match state.fetch("invoice", id, "invoice") {
            Ok(invoice) => {
                let mut response = Response::new(Full::new(Bytes::from(invoice_pdf(&invoice))));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/pdf"),
                );
                response
            }
            Err(e) => not_found_page(&e),
        },
        _ => error_response(&ApiError::unknown_path("GET", path)),
    }
}

fn checkout_page(state: &State, session: &Value) -> String {
    let id = escape(str_field(session, "id"));
    let currency = str_field(session, "currency");
    let mut rows = String::new();
    if let Some(extra) = state.sessions.get(str_field(session, "id")) {
        for (price_id, quantity) in &extra.line_items {
            let price = state.get(price_id).cloned().unwrap_or(Value::Null);
            let product = state
                .get(str_field(&price, "product"))
                .cloned()
                .unwrap_or(Value::Null);
            let interval = price["recurring"]["interval"]
                .as_str()
                .map(|i| format!(" / {i}"))
                .unwrap_or_default();
            rows.push_str(&format!(
                "<tr><td>{} × {}</td><td>{}{}</td></tr>",
                quantity,
                escape(str_field(&product, "name")),
                money(price["unit_amount"].as_i64().unwrap_or(0), currency),
                escape(&interval),
            ));
        }
    }
    let open = str_field(session, "status") == "open";
    let action = if open {
        format!(
            "<form method=\"post\" action=\"/__standin/checkout/{id}/complete\"><input type=\"hidden\" name=\"pay\" value=\"1\">\
             <button type=\"submit\">Pay {}</button></form>",
            money(session["amount_subtotal"].as_i64().unwrap_or(0), currency)
        )
    } else {
        format!(
            "<p>This session is {}.</p>",
            escape(str_field(session, "status"))
        )
    };
    let cancel = session
        .get("cancel_url")
        .and_then(Value::as_str)
        .map(|u| format!("<p><a href=\"{}\">Cancel</a></p>", escape(u)))
        .unwrap_or_default();
    let tax = if session["automatic_tax"]["enabled"] == json!(true) {
        "<p>Tax is calculated when you pay.</p>"
    } else {
        ""
    };
    layout(
        "Checkout (Stripe stand-in)",
        &format!(
            "<p>Session <code>{id}</code> ({})</p><table>{rows}</table>{tax}{action}{cancel}",
            escape(str_field(session, "mode"))
        ),
    )
}

fn portal_page(state: &State, session: &Value) -> String {
    let customer = str_field(session, "customer");
    let config = state
        .get(str_field(session, "configuration"))
        .cloned()
        .unwrap_or(Value::Null);
    let features = &config["features"];
    let switchable: Vec<String> = features["subscription_update"]["products"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["prices"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    let at_period_end = features["subscription_cancel"]["mode"] != json!("immediately");
    let mut rows = String::new();
    for sub in state.all("subscription", |s| str_field(s, "customer") == customer) {
        let sid = escape(str_field(sub, "id"));
        let price = &sub["items"]["data"][0]["price"];
        let mut actions = String::new();
        let button = |path: &str, label: &str, fields: &str| {
            format!(
                "<form method=\"post\" action=\"/__standin/subscriptions/{sid}/{path}\">{fields}\
                 <button>{label}</button></form>"
            )
        };
        if str_field(sub, "status") != "canceled" {
            if sub["cancel_at_period_end"] == json!(true) {
                actions.push_str(&button("resume", "Don't cancel", ""));
            } else if at_period_end {
                actions.push_str(&button("cancel_at_period_end", "Cancel at period end", ""));
            } else {
                actions.push_str(&button("cancel", "Cancel now", ""));
            }
            for price_id in switchable
                .iter()
                .filter(|p| p.as_str() != str_field(price, "id"))
            {
                let Some(other) = state.get(price_id) else {
                    continue;
                };
                let label = format!(
                    "Switch to {} {}",
                    money(
                        other["unit_amount"].as_i64().unwrap_or(0),
                        str_field(other, "currency")
                    ),
                    escape(other["recurring"]["interval"].as_str().unwrap_or("")),
                );
                let field = format!(
                    "<input type=\"hidden\" name=\"price\" value=\"{}\">",
                    escape(price_id)
                );
                actions.push_str(&button("switch", &label, &field));
            }
        }
        rows.push_str(&format!(
            "<li><code>{sid}</code> {}{} — {} {}{actions}</li>",
            escape(str_field(sub, "status")),
            if sub["cancel_at_period_end"] == json!(true) {
                " (cancels at period end)"
            } else {
                ""
            },
            money(
                price["unit_amount"].as_i64().unwrap_or(0),
                str_field(price, "currency")
            ),
            escape(price["recurring"]["interval"].as_str().unwrap_or("")),
        ));
    }
    layout(
        "Customer portal (Stripe stand-in)",
        &format!(
            "<p>Customer <code>{}</code></p><ul>{rows}</ul><p><a href=\"{}\">Return</a></p>",
            escape(customer),
            escape(str_field(session, "return_url"))
        ),
    )
}

fn invoice_page(invoice: &Value) -> String {
    let currency = str_field(invoice, "currency");
    let amount = |k: &str| money(invoice[k].as_i64().unwrap_or(0), currency);
    let tax: i64 = invoice["total_taxes"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x["amount"].as_i64()).sum())
        .unwrap_or(0);
    layout(
        "Invoice (Stripe stand-in)",
        &format!(
            "<p>Invoice {} <code>{}</code>: {}</p><table><tr><td>Subtotal</td><td>{}</td></tr>\
             <tr><td>Tax</td><td>{}</td></tr><tr><td>Total</td><td>{}</td></tr></table>",
            escape(str_field(invoice, "number")),
            escape(str_field(invoice, "id")),
            escape(str_field(invoice, "status")),
            amount("subtotal"),
            money(tax, currency),
            amount("total"),
        ),
    )
}

/// A one-page PDF receipt, so `invoice_pdf` links open in a viewer.
fn invoice_pdf(invoice: &Value) -> Vec<u8> {
    let text: String = format!(
        "Invoice {} total {}",
        str_field(invoice, "number"),
        money(
            invoice["total"].as_i64().unwrap_or(0),
            str_field(invoice, "currency")
        )
    )
    .chars()
    .filter(|c| c.is_ascii_alphanumeric() || " .-_".contains(*c))
    .collect();
    let stream = format!("BT /F1 14 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut pdf = String::from("%PDF-1.4\n");
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.push_str(&format!("{} 0 obj\n{object}\nendobj\n", i + 1));
    }
    let xref = pdf.len();
    pdf.push_str(&format!(
        "xref\n0 {}\n0000000000 65535 f \n",
        objects.len() + 1
    ));
    for offset in offsets {
        pdf.push_str(&format!("{offset:010} 00000 n \n"));
    }
    pdf.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    ));
    pdf.into_bytes()
}

fn not_found_page(error: &ApiError) -> Response<Full<Bytes>> {
    html_response(
        StatusCode::NOT_FOUND,
        &layout("Not found", &escape(&error.message)),
    )
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:3em auto}}td{{padding:0 1em}}\
         button{{font-size:1.2em;padding:.4em 1.2em}}</style></head><body><h1>{title}</h1>{body}</body></html>"
    )
}

fn html_response(status: StatusCode, html: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(html.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// `2000`, `usd` → `20.00 USD` (two-decimal currencies; display only).
fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!(
        "{sign}{}.{:02} {}",
        abs / 100,
        abs % 100,
        escape(&currency.to_ascii_uppercase())
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
