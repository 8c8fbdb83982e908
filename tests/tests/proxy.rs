//! creditgate-proxy end to end: the real binary, a private redis-server, a real upstream.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use creditgate_e2e::free_port;
use creditgate_e2e::http::{self, Reply};
use creditgate_e2e::process::{Proc, wait_for_port};
use creditgate_e2e::redis_server::RedisServer;
use creditgate_e2e::upstream::Upstream;
use shared::redis::{Account, Store, UsageEvent, UsageKind, keys};
use shared::{ApiKey, CustomerId, Millicredits};

/// Knobs of one gateway under test.
struct Opts {
    fail_open: bool,
    upstream_timeout_ms: u64,
    header_read_timeout_ms: u64,
    per_second: u32,
    burst: u32,
    api_cost: &'static str,
    appendonly: bool,
    upstream_down: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            fail_open: false,
            upstream_timeout_ms: 5000,
            header_read_timeout_ms: 5000,
            per_second: 10_000,
            burst: 10_000,
            api_cost: "1",
            appendonly: false,
            upstream_down: false,
        }
    }
}

/// Redis, an upstream and the proxy binary, wired together; all stopped on drop.
struct Gateway {
    redis: RedisServer,
    upstream: Upstream,
    proxy: Proc,
    port: u16,
    admin_port: u16,
    config: PathBuf,
    opts: Opts,
    upstream_url: String,
}

impl Gateway {
    async fn start(opts: Opts) -> Gateway {
        let redis = RedisServer::start_with(opts.appendonly);
        let upstream = Upstream::start().await;
        let upstream_url = if opts.upstream_down {
            format!("http://127.0.0.1:{}", free_port())
        } else {
            upstream.url()
        };
        let (port, admin_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("creditgate-proxy-test-{port}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("policy.yaml");
        std::fs::write(
            &config,
            policy_yaml(&opts, port, admin_port, &upstream_url, opts.api_cost),
        )
        .expect("write policy");
        let proxy = Proc::start(
            "creditgate-proxy",
            &["--config", config.to_str().expect("utf-8 path")],
            &[("REDIS_URL", &redis.url())],
        );
        wait_for_port(&format!("127.0.0.1:{port}"));
        let gw = Gateway {
            redis,
            upstream,
            proxy,
            port,
            admin_port,
            config,
            opts,
            upstream_url,
        };
        gw.redis.store().mark_ready().await.expect("redis up");
        gw
    }

    fn policy(&self, api_cost: &str) -> String {
        policy_yaml(
            &self.opts,
            self.port,
            self.admin_port,
            &self.upstream_url,
            api_cost,
        )
    }

    fn store(&self) -> Store {
        self.redis.store()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A customer on `plan` with `credits` non-transferable credits; returns its API key.
    async fn customer(&self, id: &str, plan: &str, credits: &str) -> String {
        let customer = CustomerId::parse(id).expect("valid id");
        let key = ApiKey::generate();
        let store = self.store();
        let account = Account {
            plan: plan.to_owned(),
            non_transferable: Millicredits::parse_amount(credits).expect("valid credits"),
            transferable: Millicredits::ZERO,
        };
        store
            .put_account(&customer, &account)
            .await
            .expect("seed account");
        store
            .put_api_key(&key.hash(), &customer)
            .await
            .expect("seed key");
        key.expose().to_owned()
    }

    async fn balance(&self, id: &str) -> Millicredits {
        let customer = CustomerId::parse(id).expect("valid id");
        self.store()
            .account(&customer)
            .await
            .expect("redis up")
            .expect("account exists")
            .spendable()
    }

    async fn get(&self, path: &str, key: &str) -> Reply {
        http::get(
            &self.url(path),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await
    }

    async fn metrics(&self) -> String {
        let reply = http::get(
            &format!("http://127.0.0.1:{}/metrics", self.admin_port),
            &[],
        )
        .await;
        String::from_utf8_lossy(&reply.body).into_owned()
    }
}

/// Every usage event in every shard, oldest first per shard.
async fn usage_events(store: &Store) -> Vec<UsageEvent> {
    let mut events = Vec::new();
    for shard in 0..keys::SHARDS {
        let reply: redis::streams::StreamRangeReply = store
            .query(
                redis::cmd("XRANGE")
                    .arg(keys::usage_stream(shard))
                    .arg("-")
                    .arg("+"),
            )
            .await
            .expect("xrange");
        for entry in reply.ids {
            events.push(UsageEvent::from_fields(&entry.id, &entry.map).expect("well-formed event"));
        }
    }
    events
}

fn count(events: &[UsageEvent], kind: UsageKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_is_forwarded_with_identity_and_charged() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_happy", "free", "100").await;

    let reply = http::send(
        "POST",
        &gw.url("/v1/generate/text?x=1"),
        &[
            ("x-api-key", key.as_str()),
            ("content-type", "application/json"),
        ],
        "{\"prompt\":\"hi\"}",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-credits-cost").as_deref(), Some("10"));
    assert_eq!(reply.header("x-credits-remaining").as_deref(), Some("90"));
    assert!(
        reply
            .header("ratelimit-policy")
            .is_some_and(|v| v.starts_with("\"free\";q="))
    );
    assert!(reply.header("ratelimit").is_some_and(|v| v.contains(";r=")));
    let echo = reply.json();
    assert_eq!(echo["path"], "/v1/generate/text");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["x-creditgate-customer"], "cus_happy");
    assert_eq!(echo["headers"]["x-creditgate-plan"], "free");
    assert!(
        echo["headers"].get("x-api-key").is_none(),
        "the API key is never forwarded"
    );
    assert_eq!(echo["body_bytes"], 15);

    // Bearer works too; the key does not reach the upstream.
    let reply = gw.get("/v1/things", &key).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-credits-remaining").as_deref(), Some("89"));
    assert!(reply.json()["headers"].get("authorization").is_none());
    assert_eq!(gw.balance("cus_happy").await, Millicredits::new(89_000));

    let events = usage_events(&gw.store()).await;
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .any(|e| e.route == "generate" && e.cost == Millicredits::new(10_000))
    );
    assert!(
        events
            .iter()
            .all(|e| e.customer.as_str() == "cus_happy" && !e.request_id.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_and_revoked_keys_answer_401() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_401", "free", "100").await;

    let none = http::get(&gw.url("/v1/x"), &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["code"], "unauthorized");
    assert!(none.header("www-authenticate").is_some());
    let unknown = gw.get("/v1/x", "cg_doesnotexist0000000000").await;
    assert_eq!(unknown.status, 401);
    let garbage = gw.get("/v1/x", "not-a-key").await;
    assert_eq!(garbage.status, 401);

    assert_eq!(gw.get("/v1/x", &key).await.status, 200);
    let hash = ApiKey::parse(&key).expect("valid key").hash();
    gw.store().delete_api_key(&hash).await.expect("revoke");
    let revoked_at = Instant::now();
    let mut forwarded = 1;
    loop {
        let status = gw.get("/v1/x", &key).await.status;
        if status == 401 {
            break;
        }
        forwarded += 1;
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1500),
            "revoked key still accepted after a second"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gw.upstream.hits(),
        forwarded,
        "refused requests are never forwarded"
    );
    assert_eq!(
        usage_events(&gw.store()).await.len() as u64,
        forwarded,
        "refused requests are never charged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_balance_answers_402_with_upgrade_url() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_poor", "free", "0.5").await;

    let reply = gw.get("/v1/x", &key).await;
    assert_eq!(reply.status, 402);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "credits_exhausted");
    assert_eq!(error["balance"], "0.5");
    assert_eq!(error["required"], "1");
    assert_eq!(
        error["upgrade_url"],
        "http://billing.example/billing/upgrade"
    );
    assert_eq!(error["top_up_url"], "http://billing.example/billing/top-up");
    assert_eq!(error["plans"][0]["name"], "mid");
    assert_eq!(error["plans"][0]["credits"], "50000");
    assert_eq!(error["plans"][0]["prices"]["monthly"]["amount"], "20.00");
    assert_eq!(error["plans"][0]["prices"]["yearly"]["currency"], "usd");

    let html = http::get(
        &gw.url("/v1/x"),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("accept", "text/html"),
        ],
    )
    .await;
    assert_eq!(html.status, 402);
    assert!(
        html.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(String::from_utf8_lossy(&html.body).contains("http://billing.example/billing/upgrade"));

    assert_eq!(gw.balance("cus_poor").await, Millicredits::new(500));
    assert_eq!(gw.upstream.hits(), 0);
    assert!(usage_events(&gw.store()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_answers_429_with_retry_after() {
    let gw = Gateway::start(Opts {
        per_second: 1,
        burst: 3,
        ..Opts::default()
    })
    .await;
    let key = gw.customer("cus_fast", "free", "100").await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let reply = gw.get("/v1/x", &key).await;
        statuses.push(reply.status);
        last = Some(reply);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let last = last.expect("five replies");
    assert_eq!(last.json()["error"]["code"], "rate_limited");
    assert!(
        last.header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1)
    );
    assert_eq!(
        gw.balance("cus_fast").await,
        Millicredits::new(97_000),
        "429s are not charged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_under_fail_closed() {
    let mut gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_closed", "free", "100").await;
    assert_eq!(gw.get("/v1/x", &key).await.status, 200);
    gw.redis.stop(false);
    tokio::time::sleep(Duration::from_millis(1000)).await; // past the key cache
    let reply = gw.get("/v1/x", &key).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["code"], "billing_unavailable");
    assert_eq!(gw.upstream.hits(), 1);
    // Public routes do not need Redis.
    assert_eq!(http::get(&gw.url("/health"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_forwards_uncharged_under_fail_open() {
    let mut gw = Gateway::start(Opts {
        fail_open: true,
        ..Opts::default()
    })
    .await;
    let key = gw.customer("cus_open", "free", "100").await;
    gw.redis.stop(false);
    let reply = gw.get("/v1/x", &key).await;
    assert_eq!(reply.status, 200);
    assert_eq!(gw.upstream.hits(), 1);
    assert!(
        gw.metrics()
            .await
            .contains("creditgate_proxy_fail_open_total 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_refunded_and_4xx_charged() {
    let gw = Gateway::start(Opts {
        upstream_timeout_ms: 300,
        ..Opts::default()
    })
    .await;
    let key = gw.customer("cus_refund", "free", "100").await;

    let five = gw.get("/status/503", &key).await;
    assert_eq!(five.status, 503, "a 5xx from the product is passed through");
    assert_eq!(five.body.as_ref(), b"status 503\n");
    assert_eq!(five.header("x-credits-cost").as_deref(), Some("0"));
    assert_eq!(five.header("x-credits-remaining").as_deref(), Some("100"));

    let slow = gw.get("/slow/2000", &key).await;
    assert_eq!(slow.status, 504);
    assert_eq!(slow.json()["error"]["code"], "upstream_timeout");

    let four = gw.get("/status/404", &key).await;
    assert_eq!(four.status, 404);
    assert_eq!(four.header("x-credits-cost").as_deref(), Some("1"));
    assert_eq!(gw.balance("cus_refund").await, Millicredits::new(99_000));

    let events = usage_events(&gw.store()).await;
    assert_eq!(count(&events, UsageKind::Debit), 3);
    assert_eq!(count(&events, UsageKind::Refund), 2);
    for refund in events.iter().filter(|e| e.kind == UsageKind::Refund) {
        assert!(
            events
                .iter()
                .any(|d| d.kind == UsageKind::Debit && d.request_id == refund.request_id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_answers_502_refunded() {
    let gw = Gateway::start(Opts {
        upstream_down: true,
        ..Opts::default()
    })
    .await;
    let key = gw.customer("cus_502", "free", "100").await;
    let reply = gw.get("/v1/x", &key).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_error");
    assert_eq!(reply.header("x-credits-cost").as_deref(), Some("0"));
    assert_eq!(gw.balance("cus_502").await, Millicredits::new(100_000));
    let events = usage_events(&gw.store()).await;
    assert_eq!(
        (
            count(&events, UsageKind::Debit),
            count(&events, UsageKind::Refund)
        ),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_hop_by_hop_headers_are_removed_both_ways() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_hygiene", "free", "100").await;
    let auth = format!("Bearer {key}");
    let reply = http::get(
        &gw.url("/v1/echo"),
        &[
            ("authorization", auth.as_str()),
            ("x-creditgate-customer", "cus_someone_else"),
            ("x-creditgate-plan", "high"),
            ("x-creditgate-anything", "forged"),
            ("connection", "x-client-private"),
            ("x-client-private", "secret"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-client-public", "kept"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let headers = &reply.json()["headers"];
    assert_eq!(headers["x-creditgate-customer"], "cus_hygiene");
    assert_eq!(headers["x-creditgate-plan"], "free");
    assert!(headers.get("x-creditgate-anything").is_none());
    assert!(headers.get("x-client-private").is_none());
    assert!(headers.get("proxy-authorization").is_none());
    assert_eq!(headers["x-client-public"], "kept");

    let hop = gw.get("/hop", &key).await;
    assert_eq!(hop.status, 200);
    assert!(
        hop.header("x-upstream-private").is_none(),
        "headers named in Connection are removed"
    );
    assert!(hop.header("keep-alive").is_none());
    assert!(hop.header("proxy-authenticate").is_none());
    assert_eq!(hop.header("x-upstream-public").as_deref(), Some("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_overspend() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_race", "free", "50").await;
    let client = http::client();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = gw.url("/v1/x");
        let auth = format!("Bearer {key}");
        tasks.push(tokio::spawn(async move {
            http::send_with(
                &client,
                "GET",
                &url,
                &[("authorization", &auth)],
                bytes::Bytes::new(),
            )
            .await
            .status
        }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    for task in tasks {
        match task.await.expect("task ran") {
            200 => ok += 1,
            402 => exhausted += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, exhausted), (50, 150));
    assert_eq!(gw.upstream.hits(), 50);
    assert_eq!(gw.balance("cus_race").await, Millicredits::ZERO);
    let events = usage_events(&gw.store()).await;
    assert_eq!(
        count(&events, UsageKind::Debit),
        50,
        "exactly one usage event per debited request"
    );
    let mut ids: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_route_needs_no_key_and_http2_works() {
    let gw = Gateway::start(Opts::default()).await;
    let health = http::get(&gw.url("/health"), &[]).await;
    assert_eq!(health.status, 200);
    assert!(health.header("x-credits-cost").is_none());

    let key = gw.customer("cus_h2", "free", "10").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let auth = format!("Bearer {key}");
    let reply = http::send_with(
        &h2,
        "GET",
        &gw.url("/v1/over-h2"),
        &[("authorization", &auth)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-credits-remaining").as_deref(), Some("9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reloads_on_change_and_sighup_and_keeps_the_last_good_one() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_reload", "free", "1000").await;
    let cost = |r: Reply| r.header("x-credits-cost");
    assert_eq!(cost(gw.get("/v1/x", &key).await).as_deref(), Some("1"));

    std::fs::write(&gw.config, gw.policy("5")).expect("write policy");
    wait_until(Duration::from_secs(3), || async {
        cost(gw.get("/v1/x", &key).await).as_deref() == Some("5")
    })
    .await;

    std::fs::write(&gw.config, "plans: [this is not a policy\n").expect("write policy");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        cost(gw.get("/v1/x", &key).await).as_deref(),
        Some("5"),
        "a bad file keeps the last good policy"
    );
    assert!(
        gw.metrics()
            .await
            .contains("creditgate_policy_reloads_total{result=\"error\"}")
    );
    assert!(gw.proxy.output().contains("policy reload refused"));

    std::fs::write(&gw.config, gw.policy("2.5")).expect("write policy");
    gw.proxy.signal("HUP");
    wait_until(Duration::from_secs(3), || async {
        cost(gw.get("/v1/x", &key).await).as_deref() == Some("2.5")
    })
    .await;
    assert!(
        gw.metrics()
            .await
            .contains("creditgate_policy_reloads_total{result=\"ok\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_with_aof_on_loses_no_usage_event() {
    let mut gw = Gateway::start(Opts {
        appendonly: true,
        ..Opts::default()
    })
    .await;
    let key = gw.customer("cus_aof", "free", "1000").await;
    for _ in 0..40 {
        assert_eq!(gw.get("/v1/x", &key).await.status, 200);
    }
    gw.redis.stop(false); // SIGKILL: only the AOF survives
    gw.redis.start_again();
    let mut ok = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok < 10 && Instant::now() < deadline {
        if gw.get("/v1/x", &key).await.status == 200 {
            ok += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(ok, 10, "the proxy reconnects after Redis restarts");
    let events = usage_events(&gw.store()).await;
    assert_eq!(count(&events, UsageKind::Debit), 50);
    assert_eq!(gw.balance("cus_aof").await, Millicredits::new(950_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_body_streams_through_without_buffering() {
    const BODY_BYTES: usize = 50 * 1024 * 1024;
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_big", "free", "10").await;
    let rss_before = gw.proxy.rss_kib();
    let port = gw.port;
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let head = format!(
            "POST /v1/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {BODY_BYTES}\r\nconnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("write head");
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..BODY_BYTES / chunk.len() {
            s.write_all(&chunk).expect("write body");
        }
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read reply");
        out
    })
    .await
    .expect("client ran");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains(&format!("\"body_bytes\":{BODY_BYTES}")),
        "{reply}"
    );
    let peak_growth_kib = gw.proxy.peak_rss_kib().saturating_sub(rss_before);
    assert!(
        peak_growth_kib < 16 * 1024,
        "proxy memory grew by {peak_growth_kib} KiB for a 50 MB body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_a_byte_at_a_time_is_cut_off() {
    let gw = Gateway::start(Opts {
        header_read_timeout_ms: 1000,
        ..Opts::default()
    })
    .await;
    let port = gw.port;
    let sent = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let head = b"GET /v1/slowloris HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaa\r\n\r\n";
        for (i, byte) in head.iter().enumerate() {
            if s.write_all(&[*byte]).is_err() {
                return i;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 408") => 0,
            _ => head.len(),
        }
    })
    .await
    .expect("client ran");
    assert!(
        sent < 30,
        "the proxy kept reading a slow request head ({sent} bytes sent)"
    );
    assert_eq!(gw.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let mut gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_drain", "free", "10").await;
    let url = gw.url("/slow/800");
    let auth = format!("Bearer {key}");
    let in_flight =
        tokio::spawn(async move { http::get(&url, &[("authorization", &auth)]).await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.proxy.signal("TERM");
    assert_eq!(in_flight.await.expect("request ran"), 200);
    assert_eq!(gw.proxy.wait_exit(Duration::from_secs(5)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_metrics", "free", "1").await;
    gw.get("/v1/x", &key).await;
    gw.get("/v1/x", &key).await;
    http::get(&gw.url("/v1/x"), &[]).await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("creditgate_proxy_requests_total{outcome=\"forwarded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("creditgate_proxy_requests_total{outcome=\"credits_exhausted\"} 1"));
    assert!(metrics.contains("creditgate_proxy_requests_total{outcome=\"unauthorized\"} 1"));
    assert!(metrics.contains("creditgate_proxy_debit_seconds_bucket"));
    let ready = http::get(&format!("http://127.0.0.1:{}/readyz", gw.admin_port), &[]).await;
    assert_eq!(ready.status, 200);
}

#[test]
fn an_invalid_policy_stops_the_proxy_at_start_with_located_problems() {
    let dir = std::env::temp_dir().join(format!("creditgate-bad-policy-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "plans:\n  free: { credits_per_month: -3 }\ndefault_plan: gold\n",
    )
    .expect("write");
    let mut proxy = Proc::start(
        "creditgate-proxy",
        &["--config", path.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(proxy.wait_exit(Duration::from_secs(5)), Some(2));
    let out = proxy.output();
    let file = path.display().to_string();
    assert!(out.contains(&format!("{file}:2:")), "{out}");
    assert!(out.contains(&format!("{file}:3:15: default_plan")), "{out}");
}

async fn wait_until<F, Fut>(timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn policy_yaml(o: &Opts, port: u16, admin: u16, upstream: &str, api_cost: &str) -> String {
    format!(
        "proxy:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin}
  upstream: {upstream}
  upstream_timeout_ms: {timeout}
  on_store_error: {mode}
  header_read_timeout_ms: {hrt}
sync: {{ public_url: 'http://billing.example' }}
plans:
  free: {{ credits_per_month: 1000, rate_limit: {{ per_second: {rps}, burst: {burst} }} }}
  mid: {{ credits_per_month: 50000, prices: {{ monthly: \"20.00\", yearly: \"200.00\" }}, currency: usd }}
default_plan: free
routes:
  - {{ path: /health, cost: 0, auth: none }}
  - {{ name: generate, method: POST, path_prefix: /v1/generate, cost: 10 }}
  - {{ name: api, path_prefix: /, cost: {api_cost} }}
",
        timeout = o.upstream_timeout_ms,
        mode = if o.fail_open { "fail_open" } else { "fail_closed" },
        hrt = o.header_read_timeout_ms,
        rps = o.per_second,
        burst = o.burst,
    )
}
