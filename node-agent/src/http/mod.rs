//! The agent's HTTP surface: health probes (open), the page routes (page secret), and
//! everything else behind the bearer token.

mod admin;
mod bridge;
mod generate;
mod kserve;
mod page;

use webaccel_kserve::http as v2;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

pub fn router(agent: Arc<Agent>, shutdown: CancellationToken) -> Router {
    let protected = Router::new()
        .merge(v2::routes::<Agent>())
        .merge(webaccel_kserve::generate::routes::<Agent>())
        .merge(webaccel_kserve::openai::routes::<Agent>())
        .merge(admin::routes())
        .merge(bridge::routes(shutdown))
        .layer(middleware::from_fn_with_state(agent.clone(), require_token));
    Router::new()
        .merge(admin::probe_routes())
        .merge(v2::probe_routes::<Agent>())
        .merge(protected)
        .with_state(agent.clone())
        .layer(DefaultBodyLimit::max(agent.args.max_body_bytes))
        .merge(page::routes(agent.clone(), agent.args.web_root()))
}

/// The bearer token, from `authorization`, or from `x-webaccel-token` when a proxy in
/// between (the API server's pod proxy) consumes `authorization` itself.
async fn require_token(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let header = webaccel_kserve::auth::presented(req.headers());
    match agent.tokens.check(header) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            agent.stats.error(e.category);
            e.into_response()
        }
    }
}
