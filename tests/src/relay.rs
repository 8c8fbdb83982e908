//! A TCP relay between a program and a server (Redis) that can swallow the server's
//! replies: requests still reach the server and run, their answers never arrive. That is
//! a timeout after the work was done, on demand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes moved per read.
const RELAY_CHUNK_BYTES: usize = 16 * 1024;

/// A running relay; stops accepting when dropped (its connections end with the runtime).
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    swallow: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free port of 127.0.0.1 and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let addr = listener.local_addr().expect("bound");
        let swallow = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let acceptor = {
            let swallow = swallow.clone();
            let generation = generation.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let Ok(server) = TcpStream::connect(target).await else {
                        continue; // dropping `client` refuses it, as a dead server would
                    };
                    tokio::spawn(pump(
                        client,
                        server,
                        swallow.clone(),
                        generation.subscribe(),
                    ));
                }
            })
        };
        Relay {
            addr,
            swallow,
            generation,
            acceptor,
        }
    }

    /// `redis://addr`.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// From now on the server's replies are dropped; requests still go through.
    pub fn swallow_replies(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }

    /// Replies flow again. Every open connection is closed first, since the ones that lost
    /// replies are out of step (their client reconnects, as after any broken connection).
    pub fn restore(&self) {
        self.generation.send_modify(|g| *g += 1);
        self.swallow.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    swallow: Arc<AtomicBool>,
    mut generation: watch::Receiver<u64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = vec![0u8; RELAY_CHUNK_BYTES];
    let mut down = vec![0u8; RELAY_CHUNK_BYTES];
    loop {
        tokio::select! {
            n = client_read.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
            },
            n = server_read.read(&mut down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !swallow.load(Ordering::SeqCst)
                        && client_write.write_all(&down[..n]).await.is_err()
                    {
                        return;
                    }
                }
            },
            _ = generation.changed() => return,
        }
    }
}
