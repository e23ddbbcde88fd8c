//! KServe v2 / Open Inference Protocol over HTTP with JSON tensors and the binary tensor
//! data extension (`webaccel_api::kserve`), so existing KServe and Triton HTTP clients
//! work unchanged with their default settings.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};
use webaccel_api::ErrorCategory;
use webaccel_api::kserve::{self, ModelMetadata, ModelReady, ServerMetadata, TensorMetadata};

use crate::agent::Agent;
use crate::error::AgentError;
use crate::models::IoMeta;

/// The only version each model has; the protocol's version path segment must match it.
const VERSION: &str = "1";

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "webaccel-agent".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: kserve::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
    })
}

fn io_metadata(list: &[IoMeta]) -> Vec<TensorMetadata> {
    list.iter()
        .map(|m| TensorMetadata {
            name: m.name.clone(),
            datatype: m
                .datatype
                .map_or_else(|| m.ort_type.to_uppercase(), |d| d.as_str().to_owned()),
            shape: m.shape.clone(),
        })
        .collect()
}

fn check_version(version: &str) -> Result<(), AgentError> {
    if version == VERSION {
        Ok(())
    } else {
        Err(AgentError::ModelNotFound(format!("version {version}")))
    }
}

async fn model_metadata(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, AgentError> {
    let entry = agent.models.require(&name)?;
    let loaded = entry.loaded()?;
    Ok(Json(ModelMetadata {
        name,
        versions: vec![VERSION.into()],
        platform: "onnxruntime_onnx".into(),
        inputs: io_metadata(&loaded.inputs),
        outputs: io_metadata(&loaded.outputs),
        parameters: Map::from_iter([("backend".to_owned(), loaded.backend.into())]),
    }))
}

async fn model_metadata_v(
    state: State<Arc<Agent>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, AgentError> {
    check_version(&version)?;
    model_metadata(state, Path(name)).await
}

async fn model_ready(State(agent): State<Arc<Agent>>, Path(name): Path<String>) -> Response {
    let Some(entry) = agent.models.get(&name) else {
        return AgentError::ModelNotFound(name).into_response();
    };
    let state = entry.state();
    let ready = entry.loaded().is_ok() && agent.browser.link().is_some();
    // The protocol: 200 when ready, 4xx when not.
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let body = ModelReady {
        name,
        ready,
        state: Some(state.name().to_owned()),
    };
    (status, Json(body)).into_response()
}

async fn model_ready_v(
    state: State<Arc<Agent>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match check_version(&version) {
        Ok(()) => model_ready(state, Path(name)).await,
        Err(e) => e.into_response(),
    }
}

fn protocol_error(e: kserve::ProtocolError) -> AgentError {
    match e.category {
        ErrorCategory::PayloadTooLarge => AgentError::PayloadTooLarge(e.message),
        _ => AgentError::BadRequest(e.message),
    }
}

/// `POST .../infer`: JSON tensors, binary tensors (the binary data extension, announced
/// by `Inference-Header-Content-Length`), or both mixed; outputs answered each the way
/// the request asked.
async fn infer(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AgentError> {
    let header_length = headers
        .get(kserve::HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("?"));
    let parsed =
        match kserve::parse_request(&name, &body, header_length, agent.args.max_tensor_bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                let e = protocol_error(e);
                agent.stats.error(e.category());
                return Err(e);
            }
        };
    let resp = agent.infer(parsed.request).await?;
    let parameters = Map::from_iter([
        ("backend".to_owned(), Value::from(resp.backend.clone())),
        ("compute_ms".to_owned(), Value::from(resp.compute_ms)),
        (
            "page_ms".to_owned(),
            resp.page_ms.map_or(Value::Null, Value::from),
        ),
    ]);
    let encoded = kserve::encode_response(VERSION, parsed.id, &resp, &parsed.encoding, parameters);
    let mut response = (
        [(header::CONTENT_TYPE, encoded.content_type())],
        encoded.body,
    )
        .into_response();
    if let Some(n) = encoded.header_length {
        response
            .headers_mut()
            .insert(kserve::HEADER_LENGTH, HeaderValue::from(n));
    }
    Ok(response)
}

async fn infer_v(
    state: State<Arc<Agent>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AgentError> {
    check_version(&version)?;
    infer(state, Path(name), headers, body).await
}
