//! The agent's HTTP surface: health probes (open), the page routes (page secret), and
//! everything else behind the bearer token.

mod admin;
mod bridge;
mod kserve;

use webaccel_kserve::http as v2;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::error::AgentError;

pub fn router(agent: Arc<Agent>, shutdown: CancellationToken) -> Router {
    let protected = Router::new()
        .merge(v2::routes::<Agent>())
        .merge(admin::routes())
        .merge(bridge::routes(shutdown))
        .layer(middleware::from_fn_with_state(agent.clone(), require_token));
    Router::new()
        .merge(admin::probe_routes())
        .merge(v2::probe_routes::<Agent>())
        .merge(protected)
        .with_state(agent.clone())
        .layer(DefaultBodyLimit::max(agent.args.max_body_bytes))
        .merge(crate::page::server::routes(
            agent.clone(),
            agent.args.web_root(),
        ))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn token_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let Some(token) = &agent.token else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if token_eq(p.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            agent.stats.error(webaccel_api::ErrorCategory::Unauthorized);
            AgentError::Unauthorized.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::token_eq;

    #[test]
    fn token_comparison() {
        assert!(token_eq(b"secret", b"secret"));
        assert!(!token_eq(b"secret", b"secreT"));
        assert!(!token_eq(b"secret", b"secret2"));
    }
}
