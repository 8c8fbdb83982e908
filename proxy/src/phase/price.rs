//! Price: what this request is charged. Identify put the route's cost in `ctx.cost`;
//! this decides whether it applies.

use shared::Millicredits;
use shared::policy::Auth;

use crate::ctx::RequestCtx;

/// Public routes (`auth: none`) and requests `fail_open` let through unidentified are
/// charged nothing; everything else pays the route's cost.
pub fn run(ctx: &mut RequestCtx) {
    if ctx.auth == Auth::None || ctx.identity.is_none() {
        ctx.cost = Millicredits::ZERO;
    }
}
