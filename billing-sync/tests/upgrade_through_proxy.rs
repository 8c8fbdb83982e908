//! The upgrade loop with every real binary: a free customer spends their credits through
//! `creditgate-proxy` until it answers 402 with an upgrade link; Checkout for mid monthly
//! is completed on the Stripe stand-in, whose signed webhooks reach `billing-sync`; the
//! proxy then sends `X-Creditgate-Plan: mid` and allows more.
//!
//! Needs the binaries built (`cargo build --workspace --bins`, as scripts/test does).

mod common;

use std::time::{Duration, Instant};

use creditgate_e2e::free_port;
use creditgate_e2e::http::{Reply, get, send};
use creditgate_e2e::process::{Proc, wait_for_port};
use creditgate_e2e::redis_server::RedisServer;
use creditgate_e2e::upstream::Upstream;
use sqlx::PgPool;

const ADMIN: &str = "e2e-admin-token";
const WEBHOOK_SECRET: &str = "whsec_test_e2e_secret_not_real";

#[sqlx::test]
async fn free_customer_runs_out_upgrades_through_checkout_and_gets_more(db: PgPool) {
    let db_url = common::database_url_of(&db);
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let (proxy_port, proxy_admin, sync_port, sync_admin, standin_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    // A free plan of 3 credits, so it runs out quickly.
    let text = include_str!("../../deploy/creditgate.example.yaml")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{proxy_port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{proxy_admin}"))
        .replace("http://127.0.0.1:9000", &upstream.url())
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{sync_port}"))
        .replace("127.0.0.1:9091", &format!("127.0.0.1:{sync_admin}"))
        .replace("credits_per_month: 1000,", "credits_per_month: 3,");
    let config = std::env::temp_dir().join(format!(
        "cg-upgrade-{}-{proxy_port}.yaml",
        std::process::id()
    ));
    std::fs::write(&config, text).expect("temp dir is writable");
    let config_arg = config.to_string_lossy().into_owned();

    let standin_url = format!("http://127.0.0.1:{standin_port}/");
    let _standin = Proc::start(
        "stripe-standin",
        &["--listen", &format!("127.0.0.1:{standin_port}")],
        &[
            (
                "STANDIN_WEBHOOK_URL",
                &format!("http://127.0.0.1:{sync_port}/webhooks/stripe"),
            ),
            ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    );
    wait_for_port(&format!("127.0.0.1:{standin_port}"));
    let sync = Proc::start(
        "billing-sync",
        &["serve", "--config", &config_arg],
        &[
            ("DATABASE_URL", &db_url),
            ("REDIS_URL", &redis.url()),
            ("CREDITGATE_ADMIN_TOKEN", ADMIN),
            ("STRIPE_SECRET_KEY", "sk_test_standin_fake"),
            ("STRIPE_API_BASE", &standin_url),
            ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    );
    wait_for_port(&format!("127.0.0.1:{sync_port}"));
    let proxy = Proc::start(
        "creditgate-proxy",
        &["--config", &config_arg],
        &[("REDIS_URL", &redis.url())],
    );
    wait_for_port(&format!("127.0.0.1:{proxy_port}"));

    let s = |path: &str| format!("http://127.0.0.1:{sync_port}{path}");
    let p = |path: &str| format!("http://127.0.0.1:{proxy_port}{path}");
    let admin = format!("Bearer {ADMIN}");
    let created = send(
        "POST",
        &s("/admin/v1/customers"),
        &[("authorization", &admin)],
        r#"{"external_id":"upgrader","email":"u@example.com"}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", sync.output());
    let customer = created.json()["id"].as_str().unwrap_or_default().to_owned();
    let key_reply = send(
        "POST",
        &s(&format!("/admin/v1/customers/{customer}/api-keys")),
        &[("authorization", &admin)],
        "",
    )
    .await;
    let key = key_reply.json()["api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let bearer = format!("Bearer {key}");

    // Free: three requests, then 402 with the upgrade link and the plans.
    for _ in 0..3 {
        let r = get(&p("/v1/things"), &[("authorization", &bearer)]).await;
        assert_eq!(r.status, 200, "{}", proxy.output());
        assert_eq!(r.json()["headers"]["x-creditgate-plan"], "free");
    }
    let exhausted = get(&p("/v1/things"), &[("authorization", &bearer)]).await;
    assert_eq!(exhausted.status, 402);
    let error = &exhausted.json()["error"];
    assert_eq!(error["code"], "credits_exhausted");
    assert!(
        error["upgrade_url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&s("/")))
    );
    assert_eq!(error["plans"][0]["name"], "mid");

    // Checkout for mid monthly (billing-sync syncs the catalog at start; wait for it).
    let deadline = Instant::now() + Duration::from_secs(15);
    let checkout: Reply = loop {
        let r = send(
            "POST",
            &s("/v1/checkout"),
            &[("authorization", &bearer)],
            r#"{"plan":"mid","interval":"monthly"}"#,
        )
        .await;
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        checkout.status,
        200,
        "{:?}\n{}",
        checkout.body,
        sync.output()
    );
    let url = checkout.json()["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let session = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    // What the paying user does on the Checkout page.
    let paid = send(
        "POST",
        &format!("{standin_url}__standin/checkout/{session}/complete"),
        &[],
        "",
    )
    .await;
    assert_eq!(paid.status, 200, "{:?}", paid.body);

    // Within moments the proxy sees mid and its 50 000 credits.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&p("/v1/things"), &[("authorization", &bearer)]).await;
        if r.status == 200 && r.json()["headers"]["x-creditgate-plan"] == "mid" {
            // A few requests may be charged before the proxy's key cache (under a second)
            // shows the new plan: the credits are mid's either way.
            let remaining: i64 = r
                .header("x-credits-remaining")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(
                (49_900..50_000).contains(&remaining),
                "remaining {remaining}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {}: {}",
            r.status,
            sync.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        assert_eq!(
            get(&p("/v1/things"), &[("authorization", &bearer)])
                .await
                .status,
            200
        );
    }
    let view = get(
        &s(&format!("/admin/v1/customers/{customer}")),
        &[("authorization", &admin)],
    )
    .await
    .json();
    assert_eq!(view["plan"], "mid");
    assert_eq!(view["subscription"]["interval"], "monthly");
    assert_eq!(view["subscription"]["status"], "active");
    let _ = std::fs::remove_file(&config);
}
