//! The request path, top to bottom: identify → price → admit → forward → settle.
//!
//! Each request runs as its own task. hyper drops the future it polls when the client
//! goes away before the answer; the task goes on regardless, so every admitted request is
//! settled (a debit whose upstream then fails is refunded, the access line is written).
//! [`InFlight`] counts these tasks so shutdown can wait for them, since hyper's graceful
//! shutdown only waits for connections. A task whose client has left no longer holds a
//! slot of `requests_in_flight_max`; it is bounded by `upstream_timeout_ms`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::Notify;

use crate::App;
use crate::ctx::RequestCtx;
use crate::phase::{self, Body};
use crate::refusal::{Refusal, wants_html};
use crate::runtime::Runtime;

/// Handles one request. Never fails: every outcome, refusal or upstream answer, becomes a
/// response in `settle`, which also refunds, sets the credit headers, counts and logs.
pub async fn handle(app: Arc<App>, remote: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let runtime = app.runtime.load_full();
    let html = wants_html(req.headers());
    let task = tokio::spawn(run(app, runtime.clone(), remote, req));
    match task.await {
        Ok(resp) => resp,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime itself is going away.
        Err(_) => Refusal::BillingUnavailable.render(&runtime, html),
    }
}

async fn run(
    app: Arc<App>,
    runtime: Arc<Runtime>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let _in_flight = app.in_flight.enter();
    let started = Instant::now();
    let mut ctx = RequestCtx::new(remote, wants_html(req.headers()));
    let outcome = run_phases(&app, &runtime, &mut ctx, req).await;
    phase::settle::run(&app, &runtime, ctx, outcome, started).await
}

async fn run_phases(
    app: &App,
    runtime: &Runtime,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Refusal> {
    phase::identify::run(app, runtime, ctx, &req).await?;
    phase::price::run(ctx);
    phase::admit::run(app, runtime, ctx).await?;
    phase::forward::run(app, runtime, ctx, req).await
}

/// Requests being handled, whether or not their client is still there.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One request being handled; dropping it ends it.
pub struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    /// Counts a request until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self)
    }

    /// Waits until no request is being handled, for at most `within`; whether none is.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Made before the check, so a request ending in between still wakes us.
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.count.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
