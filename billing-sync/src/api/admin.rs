//! The admin API: customers, API keys, grants, tax status, audit, stored Stripe events.
//! Every handler takes [`Admin`] first, so a bad token is refused before anything else is
//! read.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::{ApiKey, CustomerId, Millicredits};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, ApiJson, ApiPath, IdempotencyKey};
use super::idempotency;
use crate::State;
use crate::ledger::{self, BucketKind, Customer, Grant, TxnKey};
use crate::webhook;
use crate::webhook::stored::{self, EventStatus};

const ACTOR: &str = "admin";
/// Longest accepted external id and email.
const TEXT_BYTES_MAX: usize = 320;
/// Largest page of customers, audit records or stored Stripe events.
pub const PAGE_LEN_MAX: i64 = 500;

/// The customer as the admin API shows it.
pub async fn customer_view(state: &State, c: &Customer) -> ApiResult<Value> {
    let buckets = ledger::live_buckets(&state.db, &c.customer_id()?).await?;
    let (nt, tr) = ledger::balances(&state.db, &c.id).await?;
    // As Stripe last said it; none once the customer is back on an unpaid plan.
    let on_paid_plan = state
        .policy()
        .plans
        .get(&c.plan)
        .is_some_and(|p| p.is_paid());
    let subscription = c
        .stripe_subscription_id
        .as_ref()
        .filter(|_| on_paid_plan)
        .map(|id| {
            json!({"id": id, "interval": c.subscription_interval, "status": c.subscription_status,
               "current_period_start": c.subscription_period_start,
               "current_period_end": c.subscription_period_end,
               "cancel_at_period_end": c.cancel_at_period_end})
        });
    Ok(json!({
        "id": c.id, "external_id": c.external_id, "email": c.email, "plan": c.plan,
        "status": c.status, "subscription": subscription, "tax_exempt": c.tax_exempt,
        "period_start": c.period_start, "period_end": c.period_end, "created_at": c.created_at,
        "balance": {"spendable": Millicredits::new(nt + tr), "transferable": Millicredits::new(tr)},
        "buckets": buckets.iter().map(|b| json!({
            "id": b.id, "kind": b.kind.as_str(), "amount": b.amount,
            "remaining": b.remaining, "transferable": b.transferable,
            "expires_at": b.expires_at,
        })).collect::<Vec<_>>(),
    }))
}

fn short_view(c: &Customer) -> Value {
    json!({"id": c.id, "external_id": c.external_id, "email": c.email, "plan": c.plan,
           "status": c.status, "created_at": c.created_at})
}

fn params(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<HashMap<String, String>> {
    q.map(|Query(m)| m)
        .map_err(|e| ApiError::bad("invalid_query", e.body_text()))
}

fn limit(p: &HashMap<String, String>, default: i64) -> ApiResult<i64> {
    match p.get("limit") {
        None => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=PAGE_LEN_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::bad("invalid_query", format!("limit must be 1..={PAGE_LEN_MAX}"))
            }),
    }
}

async fn find_customer(state: &State, id: &str) -> ApiResult<Customer> {
    if CustomerId::parse(id).is_err() {
        return Err(ApiError::NotFound("customer"));
    }
    ledger::customer(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("customer"))
}

/// `POST /admin/v1/customers` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    external_id: String,
    email: String,
}

/// `POST /admin/v1/customers`: 201 with the new customer on the default plan and its whole
/// allowance, or 200 with the one that has this `external_id`.
pub async fn create_customer(
    _: Admin,
    AxState(state): AxState<State>,
    ApiJson { value: body, .. }: ApiJson<NewCustomer>,
) -> ApiResult<Response> {
    let external_id = body.external_id.trim();
    if external_id.is_empty() || external_id.len() > TEXT_BYTES_MAX {
        return Err(ApiError::bad(
            "invalid_external_id",
            "external_id must be 1 to 320 bytes",
        ));
    }
    let email = body.email.trim();
    if email.len() > TEXT_BYTES_MAX
        || !email.contains('@')
        || email.chars().any(char::is_whitespace)
    {
        return Err(ApiError::bad(
            "invalid_email",
            "email must be an address such as a@example.com",
        ));
    }
    let _shared = state.projection.read().await;
    let mut tx = state.db.begin().await?;
    let (customer, created, (nt, tr)) =
        ledger::create_customer(&mut tx, &state.policy(), external_id, email, state.now()).await?;
    let view = short_view(&customer);
    if created {
        ledger::audit(
            &mut tx,
            ACTOR,
            "customer.create",
            Some(&customer.id),
            None,
            Some(view.clone()),
        )
        .await?;
    }
    tx.commit().await?;
    if created {
        let id = CustomerId::parse(&customer.id).map_err(ApiError::Internal)?;
        let account = shared::redis::Account {
            plan: customer.plan.clone(),
            non_transferable: nt,
            transferable: tr,
        };
        if let Err(e) = state.store.put_account(&id, &account).await {
            // The reconciler writes missing accounts on its next pass.
            tracing::warn!(customer_id = %customer.id, error = %e, "account not projected yet");
        }
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)).into_response())
}

/// `GET /admin/v1/customers?limit=&after=`: customers by id, `next` is the cursor.
pub async fn list_customers(
    _: Admin,
    AxState(state): AxState<State>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    let p = params(q)?;
    let limit = limit(&p, 100)?;
    let after = p.get("after").cloned().unwrap_or_default();
    let rows: Vec<Customer> = sqlx::query_as(concat!(
        "SELECT ",
        crate::customer_columns!(),
        " FROM customers WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(&after)
    .bind(limit)
    .fetch_all(&state.db)
    .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|c| c.id.clone()))
        .flatten();
    let data: Vec<Value> = rows.iter().map(short_view).collect();
    Ok(axum::Json(json!({"data": data, "next": next})).into_response())
}

/// `GET /admin/v1/customers/{id}`.
pub async fn get_customer(
    _: Admin,
    AxState(state): AxState<State>,
    ApiPath(id): ApiPath,
) -> ApiResult<Response> {
    let c = find_customer(&state, &id).await?;
    Ok(axum::Json(customer_view(&state, &c).await?).into_response())
}

/// `POST /admin/v1/customers/{id}/api-keys`: 201 `{"key_id","api_key","prefix"}`; the key
/// is shown this once and only its hash is kept.
pub async fn create_api_key(
    _: Admin,
    AxState(state): AxState<State>,
    ApiPath(id): ApiPath,
) -> ApiResult<Response> {
    let c = find_customer(&state, &id).await?;
    let customer = CustomerId::parse(&c.id).map_err(ApiError::Internal)?;
    let key = ApiKey::generate();
    let hash = key.hash();
    let key_id = Uuid::now_v7();
    let _shared = state.projection.read().await;
    let mut tx = state.db.begin().await?;
    sqlx::query("INSERT INTO api_keys (id, customer_id, key_hash, prefix) VALUES ($1, $2, $3, $4)")
        .bind(key_id)
        .bind(&c.id)
        .bind(hash.as_str())
        .bind(key.display_prefix())
        .execute(&mut *tx)
        .await?;
    ledger::audit(
        &mut tx,
        ACTOR,
        "api_key.create",
        Some(&c.id),
        None,
        Some(json!({"key_id": key_id, "prefix": key.display_prefix()})),
    )
    .await?;
    // Redis before the commit: a key Postgres knows is always one the proxy knows.
    state.store.put_api_key(&hash, &customer).await?;
    if let Err(e) = tx.commit().await {
        let _ = state.store.delete_api_key(&hash).await;
        return Err(e.into());
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({"key_id": key_id, "api_key": key.expose(), "prefix": key.display_prefix()}),
        ),
    )
        .into_response())
}

/// `DELETE /admin/v1/api-keys/{key_id}`: revokes; the key leaves Redis before this answers,
/// so the proxy refuses it as soon as its own cache (≤ 1 s) lets go.
pub async fn revoke_api_key(
    _: Admin,
    AxState(state): AxState<State>,
    ApiPath(key_id): ApiPath,
) -> ApiResult<Response> {
    let key_id = Uuid::parse_str(&key_id).map_err(|_| ApiError::NotFound("api key"))?;
    // Shared with the rebuild's exclusive hold: it cannot re-project this key mid-revocation.
    let _shared = state.projection.read().await;
    let mut tx = state.db.begin().await?;
    let row: Option<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT key_hash, customer_id, revoked_at FROM api_keys WHERE id = $1 FOR UPDATE",
    )
    .bind(key_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (hash, customer, revoked_at) = row.ok_or(ApiError::NotFound("api key"))?;
    let hash = shared::ApiKeyHash::from_hex(hash);
    let revoked_at = match revoked_at {
        Some(at) => at,
        None => {
            let now = state.now();
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1")
                .bind(key_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            ledger::audit(
                &mut tx,
                ACTOR,
                "api_key.revoke",
                Some(&customer),
                Some(json!({"key_id": key_id, "revoked_at": null})),
                Some(json!({"key_id": key_id, "revoked_at": now})),
            )
            .await?;
            now
        }
    };
    state.store.delete_api_key(&hash).await?;
    tx.commit().await?;
    Ok(
        axum::Json(json!({"key_id": key_id, "customer": customer, "revoked_at": revoked_at}))
            .into_response(),
    )
}

/// `POST /admin/v1/customers/{id}/grants` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    credits: Millicredits,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    transferable: bool,
}

/// `POST /admin/v1/customers/{id}/grants` with `Idempotency-Key`: 201 with the grant.
pub async fn grant(
    _: Admin,
    AxState(state): AxState<State>,
    ApiPath(id): ApiPath,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson { value: body, raw }: ApiJson<NewGrant>,
) -> ApiResult<Response> {
    let hash = idempotency::request_hash("POST", &format!("/admin/v1/customers/{id}/grants"), &raw);
    if let Some(replay) = idempotency::lookup(&state.db, ACTOR, &key, &hash).await? {
        return Ok(replay);
    }
    let result: ApiResult<Response> = async {
    let c = find_customer(&state, &id).await?;
    if body.credits.get() <= 0 {
        return Err(ApiError::bad(
            "invalid_credits",
            "credits must be more than 0",
        ));
    }
    let now = state.now().trunc_subsecs(6);
    if body.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::bad(
            "invalid_expires_at",
            "expires_at must be in the future",
        ));
    }
    let reason = body.reason.unwrap_or_default();
    if reason.len() > 500 {
        return Err(ApiError::bad(
            "invalid_reason",
            "reason is longer than 500 bytes",
        ));
    }
    let customer = CustomerId::parse(&c.id).map_err(ApiError::Internal)?;
    let bucket_id = Uuid::now_v7();
    let grant = Grant {
        bucket: bucket_id,
        kind: BucketKind::Granted,
        amount: body.credits,
        transferable: body.transferable,
        expires_at: body.expires_at,
        reason,
        paid_by: None,
    };
    let answer = json!({
        "id": bucket_id, "customer": c.id, "credits": grant.amount, "transferable": grant.transferable,
        "expires_at": grant.expires_at, "reason": grant.reason, "created_at": now,
    });
    let _shared = state.projection.read().await;
    let mut tx = state.db.begin().await?;
    // The record first: a concurrent retry with the same key waits here, then replays.
    if !idempotency::save(&mut tx, ACTOR, &key, &hash, StatusCode::CREATED, &answer).await? {
        tx.rollback().await?;
        drop(_shared);
        return idempotency::lookup(&state.db, ACTOR, &key, &hash)
            .await?
            .ok_or_else(|| ApiError::Internal("idempotency record vanished".into()));
    }
    ledger::lock_customers(&mut tx, std::slice::from_ref(&c.id)).await?;
    let (nt_before, tr_before) = ledger::balances(&mut *tx, &c.id).await?;
    ledger::credit(&mut tx, &customer, &grant, TxnKey::grant(&customer, &key), now).await?;
    let (nt_after, tr_after) = if grant.transferable {
        (nt_before, tr_before + grant.amount.get())
    } else {
        (nt_before + grant.amount.get(), tr_before)
    };
    ledger::audit(&mut tx, ACTOR, "grant.create", Some(&c.id),
        Some(json!({"spendable": Millicredits::new(nt_before + tr_before), "transferable": Millicredits::new(tr_before)})),
        Some(json!({"spendable": Millicredits::new(nt_after + tr_after), "transferable": Millicredits::new(tr_after), "grant": answer}))).await?;
    tx.commit().await?;
    let (nt, tr) = if grant.transferable {
        (0, grant.amount.get())
    } else {
        (grant.amount.get(), 0)
    };
    if let Err(e) = state
        .store
        .add_credits(&customer, Millicredits::new(nt), Millicredits::new(tr))
        .await
    {
        tracing::warn!(customer_id = %c.id, error = %e, "grant not projected yet; the reconciler will");
    }
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
    }
    .await;
    idempotency::remember_refusal(&state.db, ACTOR, &key, &hash, result).await
}

/// `PUT /admin/v1/customers/{id}/tax-exempt` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxExempt {
    tax_exempt: String,
}

/// `PUT /admin/v1/customers/{id}/tax-exempt`: `none`, `exempt` or `reverse`.
pub async fn set_tax_exempt(
    _: Admin,
    AxState(state): AxState<State>,
    ApiPath(id): ApiPath,
    ApiJson { value: body, .. }: ApiJson<TaxExempt>,
) -> ApiResult<Response> {
    if !matches!(body.tax_exempt.as_str(), "none" | "exempt" | "reverse") {
        return Err(ApiError::bad(
            "invalid_tax_exempt",
            "tax_exempt must be none, exempt or reverse",
        ));
    }
    let c = find_customer(&state, &id).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query("UPDATE customers SET tax_exempt = $2 WHERE id = $1")
        .bind(&c.id)
        .bind(&body.tax_exempt)
        .execute(&mut *tx)
        .await?;
    ledger::audit(
        &mut tx,
        ACTOR,
        "customer.tax_exempt",
        Some(&c.id),
        Some(json!({"tax_exempt": c.tax_exempt})),
        Some(json!({"tax_exempt": body.tax_exempt})),
    )
    .await?;
    tx.commit().await?;
    // Passed on to Stripe Tax (when the customer has a Stripe Customer; one created later
    // is given the status when it is made).
    super::billing::push_tax_exempt(&state, &c.id, &body.tax_exempt).await?;
    let c = find_customer(&state, &id).await?;
    Ok(axum::Json(customer_view(&state, &c).await?).into_response())
}

/// `GET /admin/v1/audit?customer=&limit=`: newest first.
pub async fn audit(
    _: Admin,
    AxState(state): AxState<State>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    let p = params(q)?;
    let limit = limit(&p, 50)?;
    type Row = (
        DateTime<Utc>,
        String,
        String,
        Option<String>,
        Option<Value>,
        Option<Value>,
    );
    let rows: Vec<Row> = match p.get("customer") {
        Some(customer) => {
            sqlx::query_as(
                "SELECT at, actor, action, customer_id, before, after FROM audit_log
             WHERE customer_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(customer)
            .bind(limit)
            .fetch_all(&state.db)
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT at, actor, action, customer_id, before, after FROM audit_log
             ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&state.db)
            .await?
        }
    };
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(at, actor, action, customer, before, after)| {
            json!({"at": at, "actor": actor, "action": action, "customer": customer, "before": before, "after": after})
        })
        .collect();
    Ok(axum::Json(json!({"data": data})).into_response())
}

/// `GET /admin/v1/stripe/events?status=&limit=`: stored Stripe events, newest first,
/// `{"data":[{"id","type","status","attempts","received_at","last_error",…}]}`; `status`
/// (`pending`, `processed` or `failed`) filters, `limit` is 1 to [`PAGE_LEN_MAX`] (100).
pub async fn stripe_events(
    _: Admin,
    AxState(state): AxState<State>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    let p = params(q)?;
    let limit = limit(&p, 100)?;
    let status = p
        .get("status")
        .map(|s| s.parse::<EventStatus>())
        .transpose()
        .map_err(|message| ApiError::bad("invalid_status", message))?;
    let data = stored::list(&state.db, status, limit).await?;
    Ok(axum::Json(json!({ "data": data })).into_response())
}

/// `POST /admin/v1/stripe/events/{id}/retry`: applies a stored event now, whatever its
/// schedule (a given-up one too), and answers 200 with its row: `processed`, or `failed`
/// with the new `last_error` (the attempt is counted and the next one scheduled as for any
/// failure). An event applied before changes nothing. Unknown id: 404 `not_found`.
pub async fn retry_stripe_event(
    _: Admin,
    AxState(state): AxState<State>,
    ApiPath(id): ApiPath,
) -> ApiResult<Response> {
    if stored::find(&state.db, &id).await?.is_none() {
        return Err(ApiError::NotFound("stripe event"));
    }
    match webhook::process(&state, &id).await {
        Ok(applied) => tracing::info!(event_id = %id, applied, "stripe event retried by hand"),
        Err(e) => tracing::warn!(event_id = %id, error = %e, "stripe event retried by hand failed"),
    }
    let row = stored::find(&state.db, &id)
        .await?
        .ok_or(ApiError::NotFound("stripe event"))?;
    Ok(axum::Json(row).into_response())
}
