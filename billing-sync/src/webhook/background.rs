//! The Stripe side's background loop: the catalog and portal configuration at start, then
//! every few seconds the stored events due for a retry ([`super::retry`]) and the customers
//! whose grace period is over ([`super::grace`]).

use crate::State;

/// How often due events are retried and grace periods checked: the finest step of the
/// retry schedule ([`super::retry::EVENT_RETRY_DELAY_MIN`]).
pub const BACKGROUND_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The Stripe side's background work until `stop`: at start, the catalog sync and the
/// portal configuration (retried until Stripe answers); then, every few seconds, stored
/// events due for a retry and customers whose grace period is over.
pub async fn run_background(state: State, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut catalog_synced = state.stripe.is_none();
    let mut tick = tokio::time::interval(BACKGROUND_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !catalog_synced && let Some(stripe) = &state.stripe {
            match crate::stripe::catalog::sync(stripe, &state.policy()).await {
                Ok(report) => {
                    match crate::stripe::portal::ensure_configuration(
                        stripe,
                        &state.policy(),
                        &report.prices,
                    )
                    .await
                    {
                        Ok(id) => {
                            let _ = state.portal_configuration.set(id);
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::stripe::short(&e), "portal configuration not made")
                        }
                    }
                    tracing::info!(
                        prices = report.prices.len(),
                        created = report.prices_created.len(),
                        "stripe catalog in sync"
                    );
                    catalog_synced = true;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::stripe::short(&e), "stripe catalog sync failed; retrying")
                }
            }
        }
        if let Err(e) = super::retry::retry_due(&state).await {
            tracing::warn!(error = %e, "stripe event retry pass failed");
        }
        if let Err(e) = super::grace::drop_overdue(&state, state.now()).await {
            tracing::warn!(error = %e, "grace period pass failed");
        }
    }
}
