//! The README's flow end to end, with both real binaries: billing-sync creates a customer,
//! a key and a grant; requests are spent through `creditgate-proxy`; billing-sync reports
//! the usage and makes a transfer; a revoked key is refused by the proxy within a second.
//!
//! Needs `creditgate-proxy` built (`cargo build --workspace --bins`, as scripts/test does).

mod common;

use std::time::{Duration, Instant};

use creditgate_e2e::free_port;
use creditgate_e2e::http::{get, send};
use creditgate_e2e::process::{Proc, wait_for_port};
use creditgate_e2e::redis_server::RedisServer;
use creditgate_e2e::upstream::Upstream;
use serde_json::Value;
use sqlx::PgPool;

const ADMIN: &str = "e2e-admin-token";

#[sqlx::test]
async fn spend_through_the_proxy_then_read_usage_transfer_and_revoke(db: PgPool) {
    let db_url = common::database_url_of(&db);
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let (proxy_port, proxy_admin, sync_port, sync_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let text = include_str!("../../deploy/creditgate.example.yaml")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{proxy_port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{proxy_admin}"))
        .replace("http://127.0.0.1:9000", &upstream.url())
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{sync_port}"))
        .replace("127.0.0.1:9091", &format!("127.0.0.1:{sync_admin}"))
        .replace("per_second: 5,   burst: 10", "per_second: 500, burst: 1000");
    let config =
        std::env::temp_dir().join(format!("cg-e2e-{}-{proxy_port}.yaml", std::process::id()));
    std::fs::write(&config, text).expect("temp dir is writable");
    let config_arg = config.to_string_lossy().into_owned();

    let sync = Proc::start(
        "billing-sync",
        &["serve", "--config", &config_arg],
        &[
            ("DATABASE_URL", &db_url),
            ("REDIS_URL", &redis.url()),
            ("CREDITGATE_ADMIN_TOKEN", ADMIN),
        ],
    );
    wait_for_port(&format!("127.0.0.1:{sync_port}"));
    let s = |path: &str| format!("http://127.0.0.1:{sync_port}{path}");
    let admin = format!("Bearer {ADMIN}");
    let post = |url: String, headers: Vec<(&'static str, String)>, body: &'static str| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send("POST", &url, &h, body).await
    };
    let created = post(
        s("/admin/v1/customers"),
        vec![("authorization", admin.clone())],
        r#"{"external_id":"acme-42","email":"a@example.com"}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", sync.output());
    let customer = created.json()["id"].as_str().unwrap_or_default().to_owned();
    let friend = post(
        s("/admin/v1/customers"),
        vec![("authorization", admin.clone())],
        r#"{"external_id":"friend","email":"f@example.com"}"#,
    )
    .await
    .json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key_reply = post(
        s(&format!("/admin/v1/customers/{customer}/api-keys")),
        vec![("authorization", admin.clone())],
        "",
    )
    .await;
    assert_eq!(key_reply.status, 201);
    let key = key_reply.json()["api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key_id = key_reply.json()["key_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let grant = post(
        s(&format!("/admin/v1/customers/{customer}/grants")),
        vec![
            ("authorization", admin.clone()),
            ("idempotency-key", "promo-1".into()),
        ],
        r#"{"credits":"100","reason":"launch promo","transferable":true}"#,
    )
    .await;
    assert_eq!(grant.status, 201, "{:?}", grant.body);

    let proxy = Proc::start(
        "creditgate-proxy",
        &["--config", &config_arg],
        &[("REDIS_URL", &redis.url())],
    );
    wait_for_port(&format!("127.0.0.1:{proxy_port}"));
    let p = |path: &str| format!("http://127.0.0.1:{proxy_port}{path}");
    let bearer = format!("Bearer {key}");
    for _ in 0..20 {
        let r = get(&p("/v1/things"), &[("authorization", &bearer)]).await;
        assert_eq!(r.status, 200, "{}", proxy.output());
        assert_eq!(r.header("x-credits-cost").as_deref(), Some("1"));
    }
    let r = send(
        "POST",
        &p("/v1/generate"),
        &[("authorization", &bearer)],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);

    // The usage reaches the ledger and the customer's report.
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage: Value = loop {
        let u = get(
            &s("/v1/usage?group_by=route"),
            &[("authorization", &bearer)],
        )
        .await
        .json();
        if u["total"]["requests"] == 21 {
            break u;
        }
        assert!(
            Instant::now() < deadline,
            "usage not consumed: {u}\n{}",
            sync.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(usage["total"]["credits"], "30");
    let keys: Vec<&str> = usage["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(|x| x["key"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(keys, vec!["api", "generate"]);

    let transfer_body = format!(r#"{{"to":"{friend}","credits":"5","note":"thanks!"}}"#);
    let t = send(
        "POST",
        &s("/v1/transfers"),
        &[("authorization", &bearer), ("idempotency-key", "t-1")],
        transfer_body,
    )
    .await;
    assert_eq!(t.status, 201, "{:?}", t.body);
    let balance = get(&s("/v1/balance"), &[("authorization", &bearer)])
        .await
        .json();
    assert_eq!(
        balance["spendable"], "1065",
        "1000 free + 100 granted − 30 spent − 5 sent: {balance}"
    );
    assert_eq!(balance["transferable"], "95");
    let r = get(&p("/v1/things"), &[("authorization", &bearer)]).await;
    assert_eq!(r.header("x-credits-remaining").as_deref(), Some("1064"));

    // Revocation: the proxy refuses the key within a second.
    let revoked = send(
        "DELETE",
        &s(&format!("/admin/v1/api-keys/{key_id}")),
        &[("authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(revoked.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&p("/v1/things"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 401, "the proxy still accepts a revoked key");
    let r = get(&s("/v1/balance"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 401);
    let _ = std::fs::remove_file(&config);
}
