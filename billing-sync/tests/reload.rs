//! billing-sync reloads its policy on SIGHUP and when the file changes; a bad file keeps
//! the last good policy and the process running.

mod common;

use std::time::{Duration, Instant};

use creditgate_e2e::free_port;
use creditgate_e2e::http::{get, send};
use creditgate_e2e::process::{Proc, wait_for_port};
use creditgate_e2e::redis_server::RedisServer;
use sqlx::PgPool;

const ADMIN: &str = "reload-admin-token";

#[sqlx::test]
async fn sighup_and_file_changes_reload_and_a_bad_file_keeps_the_last_good_policy(db: PgPool) {
    let db_url = common::database_url_of(&db);
    let redis = RedisServer::start();
    let (port, admin_port) = (free_port(), free_port());
    let policy = |free_credits: u32| {
        include_str!("../../deploy/creditgate.example.yaml")
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:9091", &format!("127.0.0.1:{admin_port}"))
            .replace(
                "credits_per_month: 1000,",
                &format!("credits_per_month: {free_credits},"),
            )
    };
    let dir = std::env::temp_dir().join(format!("cg-reload-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("policy.yaml");
    std::fs::write(&config, policy(1000)).expect("write");
    let config_arg = config.to_string_lossy().into_owned();
    let mut sync = Proc::start(
        "billing-sync",
        &["serve", "--config", &config_arg],
        &[
            ("DATABASE_URL", &db_url),
            ("REDIS_URL", &redis.url()),
            ("CREDITGATE_ADMIN_TOKEN", ADMIN),
        ],
    );
    wait_for_port(&format!("127.0.0.1:{port}"));
    let admin = format!("Bearer {ADMIN}");
    let new_customer_balance = |n: u32| {
        let admin = admin.clone();
        async move {
            let body = format!(r#"{{"external_id":"c-{n}","email":"c{n}@example.com"}}"#);
            let created = send(
                "POST",
                &format!("http://127.0.0.1:{port}/admin/v1/customers"),
                &[("authorization", &admin)],
                body,
            )
            .await;
            let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
            let view = get(
                &format!("http://127.0.0.1:{port}/admin/v1/customers/{id}"),
                &[("authorization", &admin)],
            )
            .await;
            view.json()["balance"]["spendable"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    assert_eq!(new_customer_balance(1).await, "1000");

    // A file change is picked up within two seconds.
    std::fs::write(&config, policy(2000)).expect("write");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut n = 2;
    while new_customer_balance(n).await != "2000" {
        assert!(
            Instant::now() < deadline,
            "the changed file was not reloaded: {}",
            sync.output()
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A bad file (and a SIGHUP on it) keeps the last good policy and the process.
    std::fs::write(&config, "plans: [not a policy\n").expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sync.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sync.is_running(), "SIGHUP must not stop billing-sync");
    assert_eq!(new_customer_balance(100).await, "2000");
    assert!(
        sync.output().contains("policy reload refused"),
        "{}",
        sync.output()
    );

    // Fixed and signalled: in force.
    std::fs::write(&config, policy(3000)).expect("write");
    sync.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut n = 200;
    while new_customer_balance(n).await != "3000" {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {}",
            sync.output()
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = get(&format!("http://127.0.0.1:{admin_port}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("creditgate_policy_reloads_total{result=\"error\"}"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
