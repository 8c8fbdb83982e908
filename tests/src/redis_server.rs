//! A private `redis-server` for one test: its own port and directory, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shared::redis::{Store, StoreOptions};

/// A running `redis-server` child process.
pub struct RedisServer {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    dir: PathBuf,
    appendonly: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server; with `appendonly`, every write is fsynced to its AOF.
    pub fn start_with(appendonly: bool) -> RedisServer {
        let port = crate::free_port();
        let dir =
            std::env::temp_dir().join(format!("creditgate-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let mut server = RedisServer {
            port,
            dir,
            appendonly,
            child: None,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A store handle on this server.
    pub fn store(&self) -> Store {
        Store::connect(&self.url(), StoreOptions::default()).expect("valid url")
    }

    /// Runs a raw command on this server over a connection of its own: for tests that
    /// look at (or break) what the programs keep in Redis. The programs themselves only go
    /// through `Store`.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).expect("valid url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis answers");
        cmd.query_async(&mut conn)
            .await
            .expect("the command succeeds")
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services installs it)");
        self.child = Some(child);
        self.wait_until_up();
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    /// Stops the server: `SHUTDOWN` (which writes the AOF) when `graceful`, else SIGKILL.
    pub fn stop(&mut self, graceful: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if graceful {
            let _ = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "shutdown"])
                .output();
        } else {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Starts it again on the same port and directory (so an AOF is replayed).
    pub fn restart(&mut self) {
        self.stop(true);
        self.spawn();
    }

    /// Starts it again after [`RedisServer::stop`].
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
