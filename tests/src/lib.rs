//! Test harness for creditgate's end-to-end tests, plus the demo upstream.
//!
//! Layout:
//! - [`redis_server`]: a private `redis-server` per test on a free port, killed on drop.
//! - [`process`]: starting the workspace's real binaries (`creditgate-proxy`,
//!   `billing-sync`) and stopping them with signals.
//! - [`upstream`]: a small HTTP product API (echo, status, slow, sink) used by the tests and
//!   the demo (`demo-upstream` binary).
//! - [`http`]: a minimal client for the tests.
//! - [`relay`]: a TCP relay that can swallow a server's replies (answers lost on the way).

pub mod http;
pub mod process;
pub mod redis_server;
pub mod relay;
pub mod upstream;

/// A free TCP port on 127.0.0.1 (bound, then released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}
