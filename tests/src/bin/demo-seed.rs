//! Seeds one customer straight into Redis and prints its new API key, for the proxy-only
//! demo and the benchmark (with billing-sync running, use its admin API instead).
//!
//! `demo-seed CUSTOMER_ID PLAN CREDITS` with `REDIS_URL` in the environment.

use shared::redis::{Account, Store, StoreOptions};
use shared::{ApiKey, CustomerId, Millicredits};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [customer, plan, credits] = args.as_slice() else {
        eprintln!("usage: demo-seed CUSTOMER_ID PLAN CREDITS   (REDIS_URL from the environment)");
        std::process::exit(2);
    };
    let (customer, credits) = match (
        CustomerId::parse(customer),
        Millicredits::parse_amount(credits),
    ) {
        (Ok(c), Ok(m)) => (c, m),
        (Err(e), _) => fail(&e),
        (_, Err(e)) => fail(&e.to_string()),
    };
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store =
        Store::connect(&url, StoreOptions::default()).unwrap_or_else(|e| fail(&e.to_string()));
    let key = ApiKey::generate();
    let account = Account {
        plan: plan.clone(),
        non_transferable: credits,
        transferable: Millicredits::ZERO,
    };
    let seeded = async {
        store.put_account(&customer, &account).await?;
        store.put_api_key(&key.hash(), &customer).await?;
        store.mark_ready().await
    };
    if let Err(e) = seeded.await {
        fail(&e.to_string());
    }
    println!("{}", key.expose());
}

fn fail(message: &str) -> ! {
    eprintln!("demo-seed: {message}");
    std::process::exit(1);
}
