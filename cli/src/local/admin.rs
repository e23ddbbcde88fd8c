//! `webaccel up`'s own API on loopback, which `webaccel apply`, `delete` and `status`
//! talk to: the status, and manifests to apply or delete (validated as the API server
//! would, with its messages); and a restart of the gateway, as a rollout would do it.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use webaccel_crds_validate::{self as validate, Resource};

use super::cluster::Shared;

/// The header naming the folder a manifest came from (relative model URIs resolve
/// against it).
pub const BASE_HEADER: &str = "x-webaccel-manifest-dir";

/// What `apply` or `delete` did, one line per object, as kubectl says it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Changes {
    pub lines: Vec<String>,
}

/// Why it was refused: the messages the API server would give.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refused {
    pub errors: Vec<String>,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (StatusCode::UNPROCESSABLE_ENTITY, Json(self)).into_response()
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/apply", post(apply))
        .route("/v1/delete", post(delete))
        .route("/v1/gateway/restart", post(restart_gateway))
        .with_state(shared)
}

/// Restarts the gateway as a rollout would (drained, then started again on the same
/// ports); answers at once, the restart takes a second or so.
async fn restart_gateway(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.restart_gateway.notify_one();
    StatusCode::ACCEPTED
}

async fn status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json((**shared.status.borrow()).clone())
}

fn parse(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<Resource>, PathBuf), Refused> {
    let base = headers
        .get(BASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let text = String::from_utf8_lossy(body);
    validate::parse(&text, "request")
        .map(|r| (r, base))
        .map_err(|invalid| Refused {
            errors: invalid.into_iter().map(|i| i.message).collect(),
        })
}

/// What applying an object over `old` does, and the generation it then has: as the API
/// server counts it, 1 when created, one more whenever the spec changes.
fn applied<S: PartialEq>(old: Option<(&S, Option<i64>)>, spec: &S) -> (&'static str, i64) {
    match old {
        None => ("created", 1),
        Some((old, generation)) if old == spec => ("unchanged", generation.unwrap_or(1)),
        Some((_, generation)) => ("configured", generation.unwrap_or(1) + 1),
    }
}

/// Applies resources to the desired state (created, configured or unchanged).
pub fn apply_all(shared: &Shared, resources: Vec<Resource>, base: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    shared.update(|d| {
        for r in resources {
            match r {
                Resource::BrowserPool(mut p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let old = d.pools.get(&name).map(|o| (&o.spec, o.metadata.generation));
                    let (verb, generation) = applied(old, &p.spec);
                    p.metadata.generation = Some(generation);
                    lines.push(format!("browserpool.webaccel.dev/{name} {verb}"));
                    d.pools.insert(name, p);
                }
                Resource::ModelDeployment(mut m) => {
                    let name = m.metadata.name.clone().unwrap_or_default();
                    let old = d
                        .models
                        .get(&name)
                        .map(|(o, _)| (&o.spec, o.metadata.generation));
                    let (verb, generation) = applied(old, &m.spec);
                    m.metadata.generation = Some(generation);
                    lines.push(format!("modeldeployment.webaccel.dev/{name} {verb}"));
                    d.models.insert(name, (m, base.to_owned()));
                }
            }
        }
    });
    lines
}

async fn apply(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    match parse(&headers, &body) {
        Ok((resources, base)) => Json(Changes {
            lines: apply_all(&shared, resources, &base),
        })
        .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn delete(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (resources, _) = match parse(&headers, &body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let mut lines = Vec::new();
    shared.update(|d| {
        for r in resources {
            let (kind, name, existed) = match r {
                Resource::BrowserPool(p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    ("browserpool", name.clone(), d.pools.remove(&name).is_some())
                }
                Resource::ModelDeployment(m) => {
                    let name = m.metadata.name.clone().unwrap_or_default();
                    (
                        "modeldeployment",
                        name.clone(),
                        d.models.remove(&name).is_some(),
                    )
                }
            };
            lines.push(if existed {
                format!("{kind}.webaccel.dev \"{name}\" deleted")
            } else {
                format!("Error from server (NotFound): {kind}s.webaccel.dev \"{name}\" not found")
            });
        }
    });
    Json(Changes { lines }).into_response()
}
