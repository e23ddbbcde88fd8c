//! KServe v2 / Open Inference Protocol over HTTP with JSON tensors, field for field, so
//! existing KServe and Triton HTTP clients work unchanged.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use webaccel_api::wire::InferRequest;
use webaccel_api::{DataType, Tensor};

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

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "webaccel-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository_webaccel"],
    }))
}

fn io_json(list: &[IoMeta]) -> Vec<Value> {
    list.iter()
        .map(|m| {
            json!({
                "name": m.name,
                "datatype": m.datatype.map_or_else(|| m.ort_type.to_uppercase(), |d| d.as_str().to_owned()),
                "shape": m.shape,
            })
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
) -> Result<Json<Value>, AgentError> {
    let entry = agent.models.require(&name)?;
    let loaded = entry.loaded()?;
    Ok(Json(json!({
        "name": name,
        "versions": [VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": io_json(&loaded.inputs),
        "outputs": io_json(&loaded.outputs),
        "parameters": {"backend": loaded.backend},
    })))
}

async fn model_metadata_v(
    state: State<Arc<Agent>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, AgentError> {
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
    (
        status,
        Json(json!({"name": name, "ready": ready, "state": state.name()})),
    )
        .into_response()
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

#[derive(Deserialize)]
struct InferBody {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Vec<OutputBody>,
}

#[derive(Deserialize)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    data: Value,
}

#[derive(Deserialize)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
}

fn parse_request(
    name: &str,
    body: &[u8],
    max_tensor_bytes: usize,
) -> Result<(Option<String>, InferRequest), AgentError> {
    let body: InferBody = serde_json::from_slice(body)
        .map_err(|e| AgentError::BadRequest(format!("invalid inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(body.inputs.len());
    for i in body.inputs {
        if i.parameters
            .as_ref()
            .is_some_and(|p| p.contains_key("binary_data_size"))
        {
            return Err(AgentError::BadRequest(format!(
                "input '{}': the binary tensor extension is not supported over HTTP; use JSON data or the /v1/bridge WebSocket",
                i.name
            )));
        }
        let datatype = DataType::parse(&i.datatype).ok_or_else(|| {
            AgentError::BadRequest(format!(
                "input '{}': unknown datatype '{}'",
                i.name, i.datatype
            ))
        })?;
        // Refuse oversized tensors before materialising them.
        let bytes = Tensor::byte_len_for(&i.name, datatype, &i.shape)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        if bytes > max_tensor_bytes {
            return Err(AgentError::PayloadTooLarge(format!(
                "input '{}' is {bytes} bytes; the limit is {max_tensor_bytes}",
                i.name
            )));
        }
        inputs.push(
            Tensor::from_json(i.name, datatype, i.shape, &i.data)
                .map_err(|e| AgentError::BadRequest(e.to_string()))?,
        );
    }
    if let Some(o) = body.outputs.iter().find(|o| {
        o.parameters
            .as_ref()
            .is_some_and(|p| p.contains_key("binary_data"))
    }) && o.parameters.as_ref().and_then(|p| p.get("binary_data")) == Some(&Value::Bool(true))
    {
        return Err(AgentError::BadRequest(format!(
            "output '{}': the binary tensor extension is not supported over HTTP",
            o.name
        )));
    }
    Ok((
        body.id,
        InferRequest {
            model: name.to_owned(),
            inputs,
            outputs: body.outputs.into_iter().map(|o| o.name).collect(),
        },
    ))
}

async fn infer(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AgentError> {
    let (id, req) = match parse_request(&name, &body, agent.args.max_tensor_bytes) {
        Ok(parsed) => parsed,
        Err(e) => {
            agent.stats.error(e.category());
            return Err(e);
        }
    };
    let resp = agent.infer(req).await?;
    let outputs: Vec<Value> = resp
        .outputs
        .iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.to_json_data()}))
        .collect();
    let mut body = json!({
        "model_name": name,
        "model_version": VERSION,
        "outputs": outputs,
        "parameters": {"backend": resp.backend, "compute_ms": resp.compute_ms, "page_ms": resp.page_ms},
    });
    if let Some(id) = id {
        body["id"] = id.into();
    }
    Ok(Json(body))
}

async fn infer_v(
    state: State<Arc<Agent>>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, AgentError> {
    check_version(&version)?;
    infer(state, Path(name), body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_protocol_request() {
        let body = br#"{"id": "r1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}],
                        "outputs": [{"name": "y"}]}"#;
        let (id, req) = parse_request("m", body, 1 << 20).unwrap();
        assert_eq!(id.as_deref(), Some("r1"));
        assert_eq!(req.outputs, ["y"]);
        assert_eq!(req.inputs[0].to_f64_vec(), [1.0, 2.0]);
    }

    #[test]
    fn refuses_bad_requests_with_reasons() {
        let cases: [(&[u8], &str); 4] = [
            (b"{", "invalid inference request JSON"),
            (br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]}]}"#, "unknown datatype 'FLOAT'"),
            (br#"{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1]}]}"#, "needs 3 elements"),
            (
                br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"binary_data_size": 4}}]}"#,
                "binary tensor extension",
            ),
        ];
        for (body, want) in cases {
            let err = parse_request("m", body, 1 << 20).unwrap_err();
            assert!(matches!(err, AgentError::BadRequest(_)), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn oversized_shape_is_413_before_parsing_data() {
        let body =
            br#"{"inputs": [{"name": "x", "shape": [1000000], "datatype": "FP32", "data": []}]}"#;
        assert!(matches!(
            parse_request("m", body, 1000),
            Err(AgentError::PayloadTooLarge(_))
        ));
    }
}
