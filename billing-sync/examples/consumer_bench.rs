//! Measures the usage consumer's throughput: events per second from the Redis streams into
//! the Postgres ledger (usage rows, ledger transactions, bucket updates, acks).
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --release -p billing-sync --example consumer_bench [events] [customers]`
//!
//! Creates (and drops) its own database and starts a private redis-server. Prints the
//! figure; asserts nothing about time.

use std::time::Instant;

use billing_sync::State;
use billing_sync::worker::{self, WorkerOptions};
use creditgate_e2e::redis_server::RedisServer;
use shared::{Millicredits, Policy};
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let customers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set");
    let name = format!("cg_consumer_bench_{}", std::process::id());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await
        .expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    let url = match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{name}"),
        None => panic!("DATABASE_URL has a database path"),
    };
    let db = billing_sync::db::connect(&url)
        .await
        .expect("bench database");
    billing_sync::db::migrate(&db).await.expect("migrations");
    let redis = RedisServer::start();
    let policy = Policy::parse(
        include_str!("../../deploy/creditgate.example.yaml"),
        "creditgate.example.yaml",
    )
    .expect("valid policy");
    let state = State::new(db.clone(), redis.store(), policy, None);
    let stream_store = redis.store();
    worker::start(&state, &stream_store, &WorkerOptions::default())
        .await
        .expect("projection");

    let mut ids = Vec::new();
    for i in 0..customers {
        let mut tx = db.begin().await.expect("tx");
        let (c, _, (nt, tr)) = billing_sync::ledger::create_customer(
            &mut tx,
            &state.policy(),
            &format!("bench-{i}"),
            "b@example.com",
            chrono::Utc::now(),
        )
        .await
        .expect("customer");
        tx.commit().await.expect("commit");
        let id = shared::CustomerId::parse(&c.id).expect("id");
        state
            .store
            .put_account(
                &id,
                &shared::redis::Account {
                    plan: c.plan,
                    non_transferable: nt,
                    transferable: tr,
                },
            )
            .await
            .expect("account");
        ids.push(id);
    }
    // Fill the streams as the proxy would (admission script), then time the drain alone.
    let fill = Instant::now();
    let mut admitted = 0usize;
    for i in 0..events {
        let c = &ids[i % ids.len()];
        let now = chrono::Utc::now().timestamp_millis();
        if let Ok(shared::redis::Admission::Admitted(_)) = state
            .store
            .admit(c, Millicredits::new(1), "api", &format!("bench-{i}"), now)
            .await
        {
            admitted += 1;
        }
    }
    let fill_s = fill.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut applied = 0usize;
    loop {
        let done = billing_sync::consumer::poll(&stream_store, &db, "billing-sync", false)
            .await
            .expect("poll");
        if done.read == 0 {
            break;
        }
        applied += done.applied;
    }
    let secs = start.elapsed().as_secs_f64();
    #[allow(clippy::float_arithmetic)]
    let (rate, fill_rate) = (applied as f64 / secs, admitted as f64 / fill_s);
    println!(
        "consumer: {applied} usage events of {customers} customers into Postgres in {secs:.2} s = {rate:.0} events/s \
         (stream filled at {fill_rate:.0} admissions/s by one sequential client)"
    );
    db.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}
