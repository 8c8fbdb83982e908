//! The demo's product API: `demo-upstream [ADDR]` (default 127.0.0.1:9000).

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let addr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo-upstream: bad address {addr:?}: {e}");
            std::process::exit(2);
        }
    };
    let upstream = creditgate_e2e::upstream::Upstream::start_on(addr).await;
    println!("demo-upstream listening on {}", upstream.url());
    let _ = tokio::signal::ctrl_c().await;
}
