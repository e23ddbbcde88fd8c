//! Health probes, capabilities, stats, metrics and the model load/unload API the
//! operator drives.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use webaccel_api::agent::{
    AgentStats, BrowserSummary, Capabilities, ModelDescription, ModelList, ModelState,
};

use crate::agent::Agent;
use crate::config::ModelSpec;
use crate::error::AgentError;
use crate::page::protocol::{CallError, HangWorker};

/// Launch failures in a row after which the agent calls itself unhealthy, so the
/// kubelet restarts the pod instead of leaving it to retry forever.
const UNHEALTHY_AFTER_FAILED_LAUNCHES: u32 = 5;

/// Routes that need no token: Kubernetes probes cannot carry one.
pub fn probe_routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/capabilities", get(capabilities))
        .route("/v1/stats", get(stats))
        .route("/v1/repository/models", get(list_models).post(load_model))
        .route(
            "/v1/repository/models/{name}",
            get(get_model).delete(unload_model),
        )
        .route("/v1/drain", post(drain))
        .route("/v1/debug/hang", post(debug_hang))
        .route("/v1/debug/hang-worker/{index}", post(debug_hang_worker))
        .route("/metrics", get(metrics))
}

/// Why the agent is not live (the kubelet should restart it), if it is not.
pub(crate) fn unhealthy_reason(agent: &Agent) -> Option<String> {
    let info = agent.browser.info();
    if info.status.failed_launches >= UNHEALTHY_AFTER_FAILED_LAUNCHES {
        return Some(format!(
            "{} browser launches failed in a row; last error: {}",
            info.status.failed_launches,
            info.status.last_launch_error.unwrap_or_default()
        ));
    }
    agent
        .browser
        .stalled()
        .map(|stall| format!("the browser supervisor is stuck: {stall}"))
}

async fn healthz(State(agent): State<Arc<Agent>>) -> Response {
    match unhealthy_reason(&agent) {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"live": false, "reason": reason})),
        )
            .into_response(),
        None => Json(json!({"live": true})).into_response(),
    }
}

pub(crate) fn readiness(agent: &Agent) -> (bool, Value) {
    let models: serde_json::Map<String, Value> = agent
        .models
        .all()
        .iter()
        .map(|e| (e.spec.name.clone(), json!(e.state().name())))
        .collect();
    let info = agent.browser.info();
    let ready = agent.is_ready();
    // Metrics reaching ClickHouse or not does not decide readiness (rows spool), but
    // it is said here so an operator sees it.
    let detail = json!({
        "ready": ready,
        "draining": agent.admission.is_draining(),
        "browser": info.status.state,
        "last_launch_error": info.status.last_launch_error,
        "models": models,
        "metrics": agent.recorder.status(),
    });
    (ready, detail)
}

async fn readyz(State(agent): State<Arc<Agent>>) -> Response {
    let (ready, detail) = readiness(&agent);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(detail)).into_response()
}

/// The browser's capabilities; a retryable 503 until a browser has started and its page
/// reported them (a caller must never take an empty answer for "no backends").
async fn capabilities(State(agent): State<Arc<Agent>>) -> Result<Json<Capabilities>, AgentError> {
    let Some(mut caps) = agent.browser.capabilities() else {
        return Err(AgentError::browser(
            webaccel_api::ErrorCategory::BrowserUnavailable,
            "the browser is starting; its capabilities are not known yet",
        ));
    };
    let info = agent.browser.info();
    caps.browser = Some(BrowserSummary {
        version: info.status.version,
        pid: info.status.pid,
        state: info.status.state,
    });
    Ok(Json(caps))
}

async fn stats(State(agent): State<Arc<Agent>>) -> Json<AgentStats> {
    let info = agent.browser.info();
    let unhealthy = unhealthy_reason(&agent);
    let gauge = |g: i64| u64::try_from(g).unwrap_or(0);
    let mut models = agent.stats.per_model();
    let mut reserved_bytes = 0;
    for entry in agent.models.all() {
        if let ModelState::Loaded(m) = entry.state() {
            reserved_bytes += m.kv_reserve_bytes.unwrap_or(0);
        }
        let n = entry.outstanding();
        if n > 0 || models.contains_key(&entry.spec.name) {
            models
                .entry(entry.spec.name.clone())
                .or_default()
                .outstanding = n;
        }
    }
    Json(AgentStats {
        healthy: unhealthy.is_none(),
        unhealthy_reason: unhealthy,
        ready: agent.is_ready(),
        draining: agent.admission.is_draining(),
        pool: agent.recorder.origin().pool.clone(),
        pod: agent.recorder.origin().pod.clone(),
        outstanding: agent.admission.outstanding() as u64,
        in_flight: gauge(agent.stats.in_flight.get()),
        queued: gauge(agent.stats.queued.get()),
        max_in_flight: agent.args.max_in_flight as u64,
        heartbeat_rtt_ms: agent.browser.link().and_then(|l| l.heartbeat_rtt_ms()),
        page_workers: agent
            .browser
            .link()
            .map(|l| l.page_workers())
            .unwrap_or_default(),
        models,
        errors_by_category: agent
            .stats
            .errors_by_category()
            .into_iter()
            .map(|(c, n)| (c.as_str().to_owned(), n))
            .collect(),
        browser: info.status,
        metrics: agent.recorder.status(),
        browser_memory_bytes: crate::procmem::browsers_bytes(),
        reserved_bytes,
        tail: Some(agent.stats.stages.tail.report()),
    })
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    for (table, totals) in agent.recorder.totals() {
        agent.stats.observe_metric_rows(table, &totals);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        agent.stats.encode(),
    )
        .into_response()
}

async fn list_models(State(agent): State<Arc<Agent>>) -> Json<ModelList> {
    Json(ModelList {
        models: agent.models.all().iter().map(|e| e.describe()).collect(),
    })
}

async fn get_model(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
) -> Result<Json<ModelDescription>, AgentError> {
    let entry = agent.models.require(&name)?;
    Ok(Json(entry.describe()))
}

#[derive(Debug, serde::Deserialize)]
struct LoadQuery {
    /// `false`: answer 202 at once and load in the background (look again with
    /// `GET /v1/repository/models/{name}`); the default waits for the load.
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/repository/models` with a model spec as JSON: `{"name", "uri", "sha256"?, "backend"?,
/// "webnn_device"?, "warmup"?}`. Answers once the model is loaded (201), or refused
/// (4xx with the reason); 202 if the browser is restarting and will load it, or at once
/// with `?wait=false` (the load goes on in the background; its outcome is the model's
/// state).
async fn load_model(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<LoadQuery>,
    body: Bytes,
) -> Result<Response, AgentError> {
    let spec: ModelSpec = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("invalid model spec: {e}")))?;
    let name = spec.name.clone();
    if !query.wait {
        let entry = agent.start_loading(spec)?;
        return Ok((StatusCode::ACCEPTED, Json(entry.describe())).into_response());
    }
    match agent.load_model(spec).await? {
        Some(_) => {
            let entry = agent.models.require(&name)?;
            Ok((StatusCode::CREATED, Json(entry.describe())).into_response())
        }
        None => Ok((
            StatusCode::ACCEPTED,
            Json(agent.models.require(&name)?.describe()),
        )
            .into_response()),
    }
}

async fn unload_model(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
) -> Result<StatusCode, AgentError> {
    agent.unload_model(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops taking new requests (readiness turns false, new requests get a retryable 503) and
/// answers how many are still in flight; the caller polls `/v1/stats` until that is 0. There
/// is no undo: a drained agent is about to be deleted.
async fn drain(State(agent): State<Arc<Agent>>) -> Json<Value> {
    agent.admission.start_drain();
    Json(json!({"draining": true, "outstanding": agent.admission.outstanding()}))
}

/// Fault injection for tests; absent (404) unless `--enable-debug-endpoints`.
async fn debug_hang(State(agent): State<Arc<Agent>>) -> StatusCode {
    if !agent.args.enable_debug_endpoints {
        return StatusCode::NOT_FOUND;
    }
    agent.browser.request_hang();
    StatusCode::ACCEPTED
}

/// Fault injection for tests: page worker `index` spins forever, as a runaway kernel
/// would, and the page must replace it. Absent (404) unless `--enable-debug-endpoints`.
async fn debug_hang_worker(State(agent): State<Arc<Agent>>, Path(index): Path<u32>) -> Response {
    if !agent.args.enable_debug_endpoints {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(link) = agent.browser.link() else {
        return AgentError::browser(
            webaccel_api::ErrorCategory::BrowserUnavailable,
            "no browser is serving",
        )
        .into_response();
    };
    match link.call(HangWorker { index }).await {
        Ok(hanging) => Json(hanging).into_response(),
        Err(CallError::Refused(message)) => AgentError::BadRequest(message).into_response(),
        Err(CallError::Failed(e)) => e.into_response(),
    }
}
