//! creditgate-proxy end to end: the real binary, a private redis-server, a real upstream.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use creditgate_e2e::free_port;
use creditgate_e2e::http::{self, Reply};
use creditgate_e2e::process::{Proc, wait_for_port};
use creditgate_e2e::redis_server::RedisServer;
use creditgate_e2e::relay::Relay;
use creditgate_e2e::upstream::Upstream;
use shared::redis::{Account, Admission, Store, UsageEvent, UsageKind, keys};
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
    /// The proxy reaches Redis through a [`Relay`] that can lose Redis's answers.
    redis_via_relay: bool,
    /// Redis is stopped before the proxy starts (and holds nothing).
    redis_down_at_start: bool,
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
            redis_via_relay: false,
            redis_down_at_start: false,
        }
    }
}

/// Redis, an upstream and the proxy binary, wired together; all stopped on drop.
struct Gateway {
    redis: RedisServer,
    relay: Option<Relay>,
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
        let mut redis = RedisServer::start_with(opts.appendonly);
        let relay = if opts.redis_via_relay {
            let target = format!("127.0.0.1:{}", redis.port)
                .parse()
                .expect("literal address");
            Some(Relay::start(target).await)
        } else {
            None
        };
        let redis_url = relay.as_ref().map_or_else(|| redis.url(), Relay::redis_url);
        if opts.redis_down_at_start {
            redis.stop(false);
        }
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
            &[("REDIS_URL", &redis_url)],
        );
        wait_for_port(&format!("127.0.0.1:{port}"));
        let gw = Gateway {
            redis,
            relay,
            upstream,
            proxy,
            port,
            admin_port,
            config,
            opts,
            upstream_url,
        };
        if !gw.opts.redis_down_at_start {
            gw.redis.store().mark_ready().await.expect("redis up");
        }
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

/// Every usage event in every shard, oldest first per shard, read over a connection of the
/// test's own (the programs talk to Redis only through `Store`).
async fn usage_events(server: &RedisServer) -> Vec<UsageEvent> {
    let client = redis::Client::open(server.url()).expect("valid url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers");
    let mut events = Vec::new();
    for shard in 0..keys::SHARDS {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::usage_stream(shard))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
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

    let events = usage_events(&gw.redis).await;
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
        usage_events(&gw.redis).await.len() as u64,
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
    assert!(usage_events(&gw.redis).await.is_empty());
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
    let ready = http::get(&format!("http://127.0.0.1:{}/readyz", gw.admin_port), &[]).await;
    assert_eq!(ready.status, 503, "fail_closed cannot serve without Redis");
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

    let events = usage_events(&gw.redis).await;
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
    let events = usage_events(&gw.redis).await;
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
    let events = usage_events(&gw.redis).await;
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
    let events = usage_events(&gw.redis).await;
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

/// The debits and refunds recorded for one request.
fn kinds_of(events: &[UsageEvent], request_id: &str) -> (usize, usize) {
    let of: Vec<UsageEvent> = events
        .iter()
        .filter(|e| e.request_id == request_id)
        .cloned()
        .collect();
    (count(&of, UsageKind::Debit), count(&of, UsageKind::Refund))
}

/// Redis runs the admission but its answer is lost, twice: the proxy answers as the mode
/// says and refunds by request id, so the balance ends where it was.
async fn lost_admission_answer_is_refunded(fail_open: bool) {
    let gw = Gateway::start(Opts {
        fail_open,
        redis_via_relay: true,
        ..Opts::default()
    })
    .await;
    let key = gw.customer("cus_lost", "free", "100").await;
    assert_eq!(gw.get("/v1/x", &key).await.status, 200); // the key is cached now
    let relay = gw.relay.as_ref().expect("relay on");
    relay.swallow_replies();
    let reply = gw.get("/v1/x", &key).await;
    if fail_open {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-credits-cost").as_deref(), Some("0"));
    } else {
        assert_eq!(reply.status, 503);
        assert_eq!(reply.json()["error"]["code"], "billing_unavailable");
    }
    let request_id = reply
        .header("x-creditgate-request-id")
        .expect("every answer carries the request id");
    relay.restore();

    wait_until(Duration::from_secs(10), || async {
        kinds_of(&usage_events(&gw.redis).await, &request_id) == (1, 1)
    })
    .await;
    assert_eq!(
        gw.balance("cus_lost").await,
        Millicredits::new(99_000),
        "the lost admission was debited once and refunded once"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = usage_events(&gw.redis).await;
    assert_eq!(
        kinds_of(&events, &request_id),
        (1, 1),
        "nothing arrives late"
    );
    assert_eq!(gw.balance("cus_lost").await, Millicredits::new(99_000));
    let mode = if fail_open {
        "fail_open"
    } else {
        "fail_closed"
    };
    assert!(
        gw.metrics().await.contains(&format!(
            "creditgate_proxy_admissions_given_up_total{{mode=\"{mode}\"}} 1"
        )),
        "{}",
        gw.metrics().await
    );
    assert_eq!(gw.upstream.hits(), if fail_open { 2 } else { 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_whose_answer_is_lost_answers_503_and_is_refunded_under_fail_closed() {
    lost_admission_answer_is_refunded(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_whose_answer_is_lost_is_forwarded_uncharged_and_refunded_under_fail_open() {
    lost_admission_answer_is_refunded(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_is_idempotent_per_request_id_and_refuses_once_given_up() {
    let redis = RedisServer::start();
    let store = redis.store();
    let customer = CustomerId::parse("cus_idem").expect("valid id");
    let account = Account {
        plan: "free".to_owned(),
        non_transferable: Millicredits::new(10_000),
        transferable: Millicredits::new(5_000),
    };
    store
        .put_account(&customer, &account)
        .await
        .expect("seed account");
    let balance = || async {
        store
            .account(&customer)
            .await
            .expect("redis up")
            .expect("account exists")
            .spendable()
    };
    let cost = Millicredits::new(12_000);

    let first = store
        .admit(&customer, cost, "api", "req-1", 1)
        .await
        .expect("redis up");
    let Admission::Admitted(debit) = first else {
        panic!("admitted, got {first:?}");
    };
    assert_eq!(debit.from_non_transferable, Millicredits::new(10_000));
    assert_eq!(debit.from_transferable, Millicredits::new(2_000));
    let retried = store
        .admit(&customer, cost, "api", "req-1", 2)
        .await
        .expect("redis up");
    assert_eq!(
        retried,
        Admission::Admitted(debit),
        "a retry reports the first admission"
    );
    assert_eq!(balance().await, Millicredits::new(3_000), "debited once");

    assert!(
        store
            .refund_if_admitted(&customer, "api", "req-1", 3, "admission_failed")
            .await
            .expect("redis up")
    );
    assert!(
        !store
            .refund_if_admitted(&customer, "api", "req-1", 4, "admission_failed")
            .await
            .expect("redis up"),
        "refunded once"
    );
    let after = store
        .account(&customer)
        .await
        .expect("redis up")
        .expect("account exists");
    assert_eq!(after, account, "the split went back where it came from");

    // Given up on before the admission arrived: the late admission refuses.
    assert!(
        !store
            .refund_if_admitted(&customer, "api", "req-2", 5, "admission_failed")
            .await
            .expect("redis up")
    );
    let late = store
        .admit(&customer, cost, "api", "req-2", 6)
        .await
        .expect("redis up");
    assert_eq!(late, Admission::GivenUp);
    assert_eq!(balance().await, Millicredits::new(15_000));

    let events = usage_events(&redis).await;
    assert_eq!(kinds_of(&events, "req-1"), (1, 1));
    assert_eq!(kinds_of(&events, "req-2"), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_a_failing_upstream_answers_is_still_refunded() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_gone", "free", "100").await;
    let port = gw.port;
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let head = format!(
            "GET /slow/800/status/503 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("write head");
        std::thread::sleep(Duration::from_millis(300));
        // Dropped: the client leaves before the product answers.
    })
    .await
    .expect("client ran");
    let events = usage_events(&gw.redis).await;
    assert_eq!(
        count(&events, UsageKind::Debit),
        1,
        "admitted before the client left"
    );
    let request_id = events[0].request_id.clone();

    wait_until(Duration::from_secs(5), || async {
        kinds_of(&usage_events(&gw.redis).await, &request_id) == (1, 1)
    })
    .await;
    assert_eq!(gw.balance("cus_gone").await, Millicredits::new(100_000));
    assert_eq!(gw.upstream.hits(), 1);
    assert!(
        gw.proxy.output().contains(&request_id),
        "settle logged the request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_fails_while_redis_is_down_is_applied_when_it_returns() {
    let mut gw = Gateway::start(Opts {
        appendonly: true,
        ..Opts::default()
    })
    .await;
    let key = gw.customer("cus_later", "free", "100").await;
    let url = gw.url("/slow/1000/status/503");
    let auth = format!("Bearer {key}");
    let request = tokio::spawn(async move { http::get(&url, &[("authorization", &auth)]).await });
    wait_until(Duration::from_secs(3), || async {
        count(&usage_events(&gw.redis).await, UsageKind::Debit) == 1
    })
    .await;
    gw.redis.stop(false); // SIGKILL; the AOF (fsync always) keeps the debit

    let reply = request.await.expect("request ran");
    assert_eq!(reply.status, 503, "the product's 5xx is passed through");
    assert_eq!(reply.header("x-credits-cost").as_deref(), Some("0"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.redis.start_again();

    wait_until(Duration::from_secs(15), || async {
        count(&usage_events(&gw.redis).await, UsageKind::Refund) == 1
    })
    .await;
    assert_eq!(gw.balance("cus_later").await, Millicredits::new(100_000));
    let events = usage_events(&gw.redis).await;
    assert_eq!(
        (
            count(&events, UsageKind::Debit),
            count(&events, UsageKind::Refund)
        ),
        (1, 1)
    );
    assert!(
        gw.metrics()
            .await
            .contains("creditgate_proxy_refunds_queued_total{reason=\"upstream_5xx\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_while_redis_is_down_forwards_uncharged_under_fail_open() {
    let mut gw = Gateway::start(Opts {
        fail_open: true,
        redis_down_at_start: true,
        ..Opts::default()
    })
    .await;
    let ready = http::get(&format!("http://127.0.0.1:{}/readyz", gw.admin_port), &[]).await;
    assert_eq!(
        ready.status, 200,
        "fail_open serves without Redis, so it is ready"
    );
    let key = ApiKey::generate();
    let reply = gw.get("/v1/x", key.expose()).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.header("x-credits-cost").is_none(),
        "nobody was charged"
    );
    let echo = reply.json();
    assert!(
        echo["headers"].get("x-creditgate-customer").is_none(),
        "no identity without Redis"
    );
    assert!(echo["headers"].get("authorization").is_none());
    assert_eq!(gw.upstream.hits(), 1);
    assert!(
        gw.metrics()
            .await
            .contains("creditgate_proxy_fail_open_total 1")
    );

    // Redis comes back with its projection: requests are charged again.
    gw.redis.start_again();
    let key = gw.customer("cus_back", "free", "10").await;
    gw.store().mark_ready().await.expect("redis up");
    wait_until(Duration::from_secs(5), || async {
        gw.get("/v1/x", &key)
            .await
            .header("x-credits-cost")
            .as_deref()
            == Some("1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_priced_and_forwarded_in_their_normal_form() {
    let gw = Gateway::start(Opts::default()).await;
    let key = gw.customer("cus_paths", "free", "100").await;
    let post = |path: &'static str| {
        let url = gw.url(path);
        let key = key.clone();
        async move { http::send("POST", &url, &[("x-api-key", key.as_str())], "").await }
    };

    for (sent, normal) in [
        ("/v1//generate/./text?x=1", "/v1/generate/text"),
        ("/v1/%67enerate", "/v1/generate"),
        ("/v1/other/../generate", "/v1/generate"),
        ("/v1/%2E/generate/", "/v1/generate/"),
    ] {
        let reply = post(sent).await;
        assert_eq!(reply.status, 200, "{sent}");
        assert_eq!(
            reply.header("x-credits-cost").as_deref(),
            Some("10"),
            "{sent} is priced as the generate route"
        );
        assert_eq!(reply.json()["path"], normal, "{sent}");
    }
    let with_query = post("/v1//generate?x=1&y=%2F").await.json();
    assert_eq!(with_query["path"], "/v1/generate");
    assert_eq!(
        with_query["query"], "x=1&y=%2F",
        "the query is forwarded as sent"
    );

    // An encoded '/' is part of a segment, never a separator: not the generate route.
    let encoded_slash = post("/v1%2Fgenerate").await;
    assert_eq!(encoded_slash.header("x-credits-cost").as_deref(), Some("1"));
    assert_eq!(encoded_slash.json()["path"], "/v1%2Fgenerate");

    // A public route's spelling does not make a paid route public.
    let hits = gw.upstream.hits();
    let sneaky = http::get(&gw.url("/health/../v1/x"), &[]).await;
    assert_eq!(sneaky.status, 401);
    for bad in ["/../v1/x", "/v1/%zz", "/v1/%2e%2e/%2e%2e/x"] {
        let reply = gw.get(bad, &key).await;
        assert_eq!(reply.status, 400, "{bad}");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "bad_request", "{bad}");
        assert!(error["message"].is_string());
    }
    assert_eq!(
        gw.upstream.hits(),
        hits,
        "refused paths are never forwarded"
    );
    assert_eq!(
        gw.balance("cus_paths").await,
        Millicredits::new(100_000 - 5 * 10_000 - 1_000),
        "refused paths are never charged"
    );
}
