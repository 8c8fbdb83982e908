//! The request path, top to bottom: identify → price → admit → forward → settle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::App;
use crate::ctx::RequestCtx;
use crate::phase::{self, Body};
use crate::refusal::{Refusal, wants_html};

/// Handles one request. Never fails: every outcome, refusal or upstream answer, becomes a
/// response in `settle`, which also refunds, sets the credit headers, counts and logs.
pub async fn handle(app: Arc<App>, remote: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let runtime = app.runtime.load_full();
    let mut ctx = RequestCtx::new(remote, wants_html(req.headers()));
    let outcome = run_phases(&app, &runtime, &mut ctx, req).await;
    phase::settle::run(&app, &runtime, ctx, outcome, started).await
}

async fn run_phases(
    app: &App,
    runtime: &crate::runtime::Runtime,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Refusal> {
    phase::identify::run(app, runtime, ctx, &req).await?;
    phase::price::run(ctx);
    phase::admit::run(app, runtime, ctx).await?;
    phase::forward::run(app, runtime, ctx, req).await
}
