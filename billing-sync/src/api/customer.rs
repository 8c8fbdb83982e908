//! The customer API: a customer's balance, usage, transfers — their own data only, found
//! through the API key they call with ([`Caller`]); no handler takes a customer id from the
//! caller except a transfer's recipient.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, SubsecRound, TimeZone, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::policy::Interval;
use shared::redis::{BalanceField, TakeMode, Taken};
use shared::{Currency, CustomerId, Millicredits, Money, Policy};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, Caller, IdempotencyKey};
use super::idempotency;
use crate::State;
use crate::ledger;

/// Longest transfer note.
pub const NOTE_BYTES_MAX: usize = 500;
/// Longest usage report range.
pub const USAGE_RANGE_DAYS_MAX: i64 = 400;
/// Transfers listed per request.
pub const TRANSFERS_LISTED_MAX: i64 = 100;

/// `GET /v1/balance`: spendable (live, from Redis), of which transferable, plan, period
/// end, and the current allowance.
pub async fn balance(caller: Caller, AxState(state): AxState<State>) -> ApiResult<Response> {
    let id = caller.customer.as_str();
    let customer = ledger::customer(&state.db, id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let (nt, tr) = match state.store.account(&caller.customer).await {
        Ok(Some(a)) => (a.non_transferable.get(), a.transferable.get()),
        _ => ledger::balances(&state.db, id).await?,
    };
    let allowance: Option<(i64, i64)> = sqlx::query_as(
        "SELECT amount, remaining FROM buckets WHERE customer_id = $1
         AND kind IN ('free_allowance', 'plan_allowance') AND period_start = $2",
    )
    .bind(id)
    .bind(customer.period_start)
    .fetch_optional(&state.db)
    .await?;
    let (total, left) = allowance.unwrap_or((0, 0));
    Ok(axum::Json(json!({
        "spendable": Millicredits::new((nt + tr).max(0)),
        "transferable": Millicredits::new(tr.max(0)),
        "plan": customer.plan,
        "period_end": customer.period_end,
        "allowance": {"total": Millicredits::new(total), "used": Millicredits::new(total - left), "left": Millicredits::new(left)},
    }))
    .into_response())
}

/// The money value of `credits` at `plan`'s effective rate (its monthly price over its
/// monthly credits; a yearly-only plan's price over twelve months). Rounded half-to-even at
/// six decimals; free plans cost zero.
pub fn cost_of(policy: &Policy, plan: &str, credits: Millicredits) -> Money {
    let default_currency = policy
        .paid_plans()
        .first()
        .and_then(|p| p.prices.values().next())
        .map(|m| m.currency.clone())
        .or_else(|| Currency::parse("usd").ok());
    let zero = |currency: Option<Currency>| {
        Money::new(
            Decimal::ZERO,
            currency.unwrap_or_else(|| Currency::parse("usd").expect("usd is a valid code")),
        )
    };
    let Some(plan) = policy.plans.get(plan) else {
        return zero(default_currency);
    };
    let monthly = match (
        plan.prices.get(&Interval::Monthly),
        plan.prices.get(&Interval::Yearly),
    ) {
        (Some(m), _) => Some((m.amount, m.currency.clone())),
        (None, Some(y)) => Some((y.amount / Decimal::from(12), y.currency.clone())),
        _ => None,
    };
    let per_month = plan.credits_per_month.get();
    match monthly {
        Some((price, currency)) if per_month > 0 => {
            let amount = (price * Decimal::from(credits.get()) / Decimal::from(per_month))
                .round_dp_with_strategy(6, RoundingStrategy::MidpointNearestEven)
                .normalize();
            Money::new(amount, currency)
        }
        _ => zero(default_currency),
    }
}

fn parse_time(p: &HashMap<String, String>, name: &str) -> ApiResult<Option<DateTime<Utc>>> {
    p.get(name)
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::bad(
                        "invalid_query",
                        format!("{name} must be an RFC 3339 time such as 2026-11-01T00:00:00Z"),
                    )
                })
        })
        .transpose()
}

/// `GET /v1/usage?from=&to=&group_by=day|route`: net credits (debits less refunds) and
/// requests per group, with their cost at the plan's rate, and totals.
pub async fn usage(
    caller: Caller,
    AxState(state): AxState<State>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    let p = q
        .map(|Query(m)| m)
        .map_err(|e| ApiError::bad("invalid_query", e.body_text()))?;
    let id = caller.customer.as_str();
    let customer = ledger::customer(&state.db, id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let from = parse_time(&p, "from")?.unwrap_or(customer.period_start);
    let to = parse_time(&p, "to")?.unwrap_or_else(Utc::now);
    if to <= from || (to - from).num_days() > USAGE_RANGE_DAYS_MAX {
        return Err(ApiError::bad(
            "invalid_query",
            format!("to must be after from, at most {USAGE_RANGE_DAYS_MAX} days"),
        ));
    }
    let group_by = p.get("group_by").map(String::as_str).unwrap_or("day");
    let rows: Vec<(String, i64, i64)> = match group_by {
        "day" => sqlx::query_as(
            "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS k,
                    (count(*) FILTER (WHERE kind = 'debit') - count(*) FILTER (WHERE kind = 'refund'))::int8,
                    (COALESCE(SUM(cost) FILTER (WHERE kind = 'debit'), 0)
                     - COALESCE(SUM(cost) FILTER (WHERE kind = 'refund'), 0))::int8
             FROM usage_events WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3
             GROUP BY k ORDER BY k",
        ),
        "route" => sqlx::query_as(
            "SELECT route AS k,
                    (count(*) FILTER (WHERE kind = 'debit') - count(*) FILTER (WHERE kind = 'refund'))::int8,
                    (COALESCE(SUM(cost) FILTER (WHERE kind = 'debit'), 0)
                     - COALESCE(SUM(cost) FILTER (WHERE kind = 'refund'), 0))::int8
             FROM usage_events WHERE customer_id = $1 AND occurred_at >= $2 AND occurred_at < $3
             GROUP BY k ORDER BY k",
        ),
        _ => return Err(ApiError::bad("invalid_query", "group_by must be day or route")),
    }
    .bind(id)
    .bind(from)
    .bind(to)
    .fetch_all(&state.db)
    .await?;
    let (mut requests, mut credits) = (0i64, 0i64);
    let groups: Vec<Value> = rows
        .into_iter()
        .map(|(key, n, c)| {
            requests += n;
            credits += c;
            let c = Millicredits::new(c);
            json!({"key": key, "requests": n, "credits": c, "cost": cost_of(&state.policy(), &caller.plan, c)})
        })
        .collect();
    let total = Millicredits::new(credits);
    Ok(axum::Json(json!({
        "from": from, "to": to, "group_by": group_by, "groups": groups,
        "total": {"requests": requests, "credits": total, "cost": cost_of(&state.policy(), &caller.plan, total)},
    }))
    .into_response())
}

/// `POST /v1/transfers` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTransfer {
    to: String,
    credits: Millicredits,
    #[serde(default)]
    note: Option<String>,
}

fn transfer_json(
    id: Uuid,
    direction: &str,
    from: &str,
    to: &str,
    amount: i64,
    note: &str,
    at: DateTime<Utc>,
) -> Value {
    json!({"id": id, "direction": direction, "from": from, "to": to,
           "credits": Millicredits::new(amount), "note": note, "created_at": at})
}

fn start_of_utc_day(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
        .single()
        .unwrap_or(t)
}

/// `POST /v1/transfers` with `Idempotency-Key`: moves transferable credits to another
/// customer. The definitive balance check is in Redis (atomic with the proxy's debits), so
/// a transfer never takes a balance below zero nor touches non-transferable credits; the
/// ledger then records it, and if that fails the credits go back to the sender.
pub async fn create_transfer(
    caller: Caller,
    AxState(state): AxState<State>,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson { value: body, raw }: ApiJson<NewTransfer>,
) -> ApiResult<Response> {
    let from = caller.customer.clone();
    let scope = format!("customer:{from}");
    let hash = idempotency::request_hash("POST", "/v1/transfers", &raw);
    if let Some(replay) = idempotency::lookup(&state.db, &scope, &key, &hash).await? {
        return Ok(replay);
    }
    let result: ApiResult<Response> = async {
    let policy = state.policy();
    let rules = &policy.transfers;
    if !rules.enabled {
        return Err(ApiError::Forbidden {
            code: "transfers_disabled",
            message: "transfers are disabled".into(),
        });
    }
    let to = CustomerId::parse(&body.to)
        .map_err(|_| ApiError::bad("invalid_recipient", "to must be a customer id"))?;
    if to == from {
        return Err(ApiError::bad(
            "invalid_recipient",
            "a transfer needs another customer",
        ));
    }
    let amount = body.credits;
    if amount.get() <= 0 || amount < rules.min {
        return Err(ApiError::unprocessable(
            "transfer_below_minimum",
            format!("the smallest transfer is {} credits", rules.min),
        ));
    }
    let note = body.note.unwrap_or_default();
    if note.len() > NOTE_BYTES_MAX {
        return Err(ApiError::bad(
            "invalid_note",
            format!("note is longer than {NOTE_BYTES_MAX} bytes"),
        ));
    }
    let now = state.now().trunc_subsecs(6);
    let id = Uuid::now_v7();
    let answer = transfer_json(
        id,
        "sent",
        from.as_str(),
        to.as_str(),
        amount.get(),
        &note,
        now,
    );

    let _shared = state.projection.read().await;
    let mut tx = state.db.begin().await?;
    if !idempotency::save(&mut tx, &scope, &key, &hash, StatusCode::CREATED, &answer).await? {
        tx.rollback().await?;
        drop(_shared);
        return idempotency::lookup(&state.db, &scope, &key, &hash)
            .await?
            .ok_or_else(|| ApiError::Internal("idempotency record vanished".into()));
    }
    let mut both = vec![from.as_str().to_owned(), to.as_str().to_owned()];
    both.sort();
    let locked = ledger::lock_customers(&mut tx, &both).await?;
    if !locked.iter().any(|c| c == to.as_str()) {
        return Err(ApiError::NotFound("recipient"));
    }
    if let Some(max) = rules.max_per_day {
        let sent = ledger::sent_since(&mut tx, from.as_str(), start_of_utc_day(now)).await?;
        if sent + amount.get() > max.get() {
            return Err(ApiError::unprocessable(
                "transfer_limit_exceeded",
                format!(
                    "transfers are limited to {max} credits per UTC day; {} sent today",
                    Millicredits::new(sent)
                ),
            ));
        }
    }
    let before = state.store.account(&from).await?;
    match state
        .store
        .take(&from, BalanceField::Transferable, amount, TakeMode::All)
        .await?
    {
        Taken::Taken(_) => {}
        Taken::Insufficient(have) => {
            return Err(ApiError::unprocessable(
                "insufficient_credits",
                format!("{have} transferable credits available, {amount} asked"),
            ));
        }
        Taken::NoAccount => return Err(ApiError::Unavailable("account not projected".into())),
    }
    // From here on, a failure gives the credits back to the sender.
    let recorded: Result<Result<(), Millicredits>, sqlx::Error> = async {
        match ledger::record_transfer(&mut tx, id, &from, &to, amount, &note, now).await? {
            Ok(()) => {}
            Err(short) => return Ok(Err(short)),
        }
        ledger::audit(
            &mut tx,
            &format!("customer:{from}"),
            "transfer.create",
            Some(from.as_str()),
            before.map(|a| json!({"spendable": a.spendable(), "transferable": a.transferable})),
            Some(answer.clone()),
        )
        .await?;
        ledger::audit(
            &mut tx,
            &format!("customer:{from}"),
            "transfer.receive",
            Some(to.as_str()),
            None,
            Some(transfer_json(
                id,
                "received",
                from.as_str(),
                to.as_str(),
                amount.get(),
                &note,
                now,
            )),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
    .await;
    match recorded {
        Ok(Ok(())) => {}
        other => {
            if let Err(e) = state
                .store
                .add_credits(&from, Millicredits::ZERO, amount)
                .await
            {
                tracing::error!(customer_id = %from, error = %e, "transfer compensation failed; the reconciler will repair");
            }
            return match other {
                Ok(Err(_)) => Err(ApiError::unprocessable(
                    "insufficient_credits",
                    "the ledger holds fewer transferable credits; try again shortly",
                )),
                Err(e) => Err(e.into()),
                Ok(Ok(())) => Err(ApiError::Internal("unreachable".into())),
            };
        }
    }
    if let Err(e) = state
        .store
        .add_credits(&to, Millicredits::ZERO, amount)
        .await
    {
        tracing::warn!(customer_id = %to, error = %e, "received credits not projected yet; the reconciler will");
    }
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
    }
    .await;
    idempotency::remember_refusal(&state.db, &scope, &key, &hash, result).await
}

/// `GET /v1/transfers`: sent and received, newest first.
pub async fn list_transfers(caller: Caller, AxState(state): AxState<State>) -> ApiResult<Response> {
    let me = caller.customer.as_str();
    let rows: Vec<(Uuid, String, String, i64, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, from_customer, to_customer, amount, note, created_at FROM transfers
         WHERE from_customer = $1 OR to_customer = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(me)
    .bind(TRANSFERS_LISTED_MAX)
    .fetch_all(&state.db)
    .await?;
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(id, from, to, amount, note, at)| {
            let direction = if from == me { "sent" } else { "received" };
            transfer_json(id, direction, &from, &to, amount, &note, at)
        })
        .collect();
    Ok(axum::Json(json!({"data": data})).into_response())
}
