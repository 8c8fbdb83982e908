//! The real `billing-sync serve` binary killed (SIGKILL) mid-stream and restarted: every
//! usage event is counted exactly once. Also: SIGTERM shuts it down cleanly.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, mc};
use creditgate_e2e::process::{Proc, wait_for_port};
use shared::redis::Admission;
use sqlx::PgPool;

const EVENTS: usize = 3000;

async fn count(db: &PgPool, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db).await.expect("query");
    n
}

fn serve(config: &str, db_url: &str, redis_url: &str) -> Proc {
    Proc::start(
        "billing-sync",
        &["serve", "--config", config],
        &[
            ("DATABASE_URL", db_url),
            ("REDIS_URL", redis_url),
            ("CREDITGATE_ADMIN_TOKEN", common::ADMIN),
        ],
    )
}

#[sqlx::test]
async fn killing_billing_sync_mid_stream_loses_and_doubles_nothing(db: PgPool) {
    let db_url = common::database_url_of(&db);
    let h = Harness::start(db.clone()).await;
    let mut customers = Vec::new();
    for i in 0..5 {
        let c = h.customer(&format!("c{i}")).await;
        h.grant(&c, "100000", true).await;
        customers.push(c);
    }
    let (api, ops) = (creditgate_e2e::free_port(), creditgate_e2e::free_port());
    let text = include_str!("../../deploy/creditgate.example.yaml")
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{api}"))
        .replace("127.0.0.1:9091", &format!("127.0.0.1:{ops}"));
    let config = std::env::temp_dir().join(format!("cg-restart-{}-{api}.yaml", std::process::id()));
    std::fs::write(&config, text).expect("temp dir is writable");
    let config = config.to_string_lossy().into_owned();

    let mut proc = serve(&config, &db_url, &h.redis.url());
    wait_for_port(&format!("127.0.0.1:{api}"));
    let store = h.state.store.clone();
    let producer_customers = customers.clone();
    let producer = tokio::spawn(async move {
        let mut admitted = 0usize;
        for i in 0..EVENTS {
            let c = &producer_customers[i % producer_customers.len()];
            let now = chrono::Utc::now().timestamp_millis();
            if let Ok(Admission::Admitted(_)) = store
                .admit(c, mc("1.5"), "api", &format!("req-{i}"), now)
                .await
            {
                admitted += 1;
            }
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        admitted
    });
    // Kill it twice while events flow, each time once it has consumed some.
    for threshold in [300, 1200] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&db, "SELECT count(*) FROM usage_events").await < threshold {
            assert!(
                Instant::now() < deadline,
                "consumer is not consuming: {}",
                proc.output()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proc.signal("KILL");
        assert!(proc.wait_exit(Duration::from_secs(5)).is_some());
        proc = serve(&config, &db_url, &h.redis.url());
        wait_for_port(&format!("127.0.0.1:{api}"));
    }
    let admitted = producer.await.expect("producer") as i64;
    assert_eq!(admitted, EVENTS as i64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM usage_events").await < admitted {
        assert!(
            Instant::now() < deadline,
            "not all consumed: {}",
            proc.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM usage_events").await,
        admitted,
        "each event once"
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT request_id) FROM usage_events").await,
        admitted
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM ledger_txns WHERE kind = 'usage'").await,
        admitted
    );
    assert_eq!(
        count(&db, "SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger_entries WHERE account = 'system:usage'").await,
        admitted * 1500,
        "the ledger holds exactly the usage admitted"
    );
    for c in &customers {
        assert_eq!(h.redis_balances(c).await, h.ledger_balances(c).await, "{c}");
    }
    proc.signal("TERM");
    assert_eq!(
        proc.wait_exit(Duration::from_secs(15)),
        Some(0),
        "SIGTERM exits cleanly: {}",
        proc.output()
    );
    let _ = std::fs::remove_file(&config);
}
