//! The KServe v2 / Open Inference Protocol over HTTP, as the agent and the gateway both
//! serve it: typed request and response bodies, and the binary tensor data extension
//! (Triton's and KServe's), which `tritonclient.http` uses by default.
//!
//! Binary extension, both ways: a body may be a JSON header followed by raw tensor bytes,
//! the header's length given by the `Inference-Header-Content-Length` HTTP header. An
//! input with `parameters.binary_data_size` takes that many bytes from what follows the
//! JSON, in input order; an output is answered in binary when its request output says
//! `binary_data: true`, or, for outputs without their own setting, when the request's
//! `parameters.binary_data_output` is true. Tensor bytes are little-endian, row-major,
//! without padding; BOOL is one byte. BYTES (string) tensors are refused: nothing in
//! webaccel's runtime can carry them.
//!
//! Every length in a body is checked against the body and the tensor limit before any
//! buffer is sized by it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ErrorCategory;
use crate::tensor::{DataType, Tensor};
use crate::wire::{InferRequest, InferResponse};

/// The HTTP header giving the JSON part's length when binary tensor data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The extensions webaccel's servers report in server metadata.
pub const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

/// Why a request body was refused: a category (bad request or too large) and the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub category: ErrorCategory,
    pub message: String,
}

impl ProtocolError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            category: ErrorCategory::BadRequest,
            message: message.into(),
        }
    }
}

/// An inference request body (the JSON part).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<RequestInput>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<RequestOutput>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
}

/// An inference response body (the JSON part).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseBody {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    pub outputs: Vec<ResponseOutput>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseOutput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// The error body of every failed call: the protocol's `error`, plus what lets a client
/// decide without parsing the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub category: ErrorCategory,
    pub retryable: bool,
}

/// `GET /v2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// A tensor in model metadata; `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
}

/// `GET /v2/models/{name}/ready` (webaccel adds the model's state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// How each output is to be answered: binary or JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputEncoding {
    /// For outputs without their own `binary_data`: the request's `binary_data_output`.
    pub default_binary: bool,
    pub per_output: BTreeMap<String, bool>,
}

impl OutputEncoding {
    pub fn is_binary(&self, name: &str) -> bool {
        self.per_output
            .get(name)
            .copied()
            .unwrap_or(self.default_binary)
    }
}

/// A parsed inference request: the request the runtime runs and how to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub id: Option<String>,
    pub request: InferRequest,
    pub encoding: OutputEncoding,
    /// The protocol's per-request `timeout` parameter (microseconds), if given.
    pub timeout: Option<Duration>,
}

fn bool_param(
    params: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<bool>, ProtocolError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ProtocolError::bad(format!(
            "{what}: parameter '{key}' must be a boolean, got {other}"
        ))),
    }
}

/// Parameters of other extensions webaccel does not implement; refused by name rather
/// than ignored, so a client never silently gets something else than it asked for.
const UNSUPPORTED: [(&str, &str); 3] = [
    ("shared_memory_region", "the shared-memory extension"),
    ("classification", "the classification extension"),
    ("sequence_id", "the sequence extension"),
];

fn refuse_unsupported(params: &Map<String, Value>, what: &str) -> Result<(), ProtocolError> {
    for (key, extension) in UNSUPPORTED {
        if params.contains_key(key) {
            return Err(ProtocolError::bad(format!(
                "{what}: parameter '{key}' belongs to {extension}, which webaccel does not support"
            )));
        }
    }
    Ok(())
}

fn parse_datatype(input: &str, datatype: &str) -> Result<DataType, ProtocolError> {
    if datatype == "BYTES" {
        return Err(ProtocolError::bad(format!(
            "input '{input}': datatype BYTES (string tensors) is not supported: webaccel's browser runtime carries numeric and boolean tensors only"
        )));
    }
    DataType::parse(datatype).ok_or_else(|| {
        ProtocolError::bad(format!("input '{input}': unknown datatype '{datatype}'"))
    })
}

/// Parses an inference request body. `header_length` is the value of the
/// `Inference-Header-Content-Length` header (absent: the whole body is JSON).
pub fn parse_request(
    model: &str,
    body: &Bytes,
    header_length: Option<&str>,
    max_tensor_bytes: usize,
) -> Result<ParsedRequest, ProtocolError> {
    let json_len = match header_length {
        None => body.len(),
        Some(h) => {
            let n: usize = h.trim().parse().map_err(|_| {
                ProtocolError::bad(format!("{HEADER_LENGTH} must be a byte count, got '{h}'"))
            })?;
            if n > body.len() {
                return Err(ProtocolError::bad(format!(
                    "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            n
        }
    };
    let parsed: RequestBody = serde_json::from_slice(&body[..json_len])
        .map_err(|e| ProtocolError::bad(format!("invalid inference request JSON: {e}")))?;
    refuse_unsupported(&parsed.parameters, "request")?;
    let timeout = match parsed.parameters.get("timeout") {
        None => None,
        Some(v) => Some(Duration::from_micros(v.as_u64().ok_or_else(|| {
            ProtocolError::bad(format!(
                "request: parameter 'timeout' must be microseconds as a non-negative integer, got {v}"
            ))
        })?)),
    };
    let default_binary =
        bool_param(&parsed.parameters, "binary_data_output", "request")?.unwrap_or(false);
    let mut binary = body.slice(json_len..);
    let binary_total = binary.len();
    let mut inputs = Vec::with_capacity(parsed.inputs.len().min(64));
    for input in parsed.inputs {
        let what = format!("input '{}'", input.name);
        refuse_unsupported(&input.parameters, &what)?;
        let datatype = parse_datatype(&input.name, &input.datatype)?;
        // The size the shape implies, checked for overflow and against the limit before
        // anything is read or allocated.
        let bytes = Tensor::byte_len_for(&input.name, datatype, &input.shape)
            .map_err(|e| ProtocolError::bad(e.to_string()))?;
        if bytes > max_tensor_bytes {
            return Err(ProtocolError {
                category: ErrorCategory::PayloadTooLarge,
                message: format!("{what} is {bytes} bytes; the limit is {max_tensor_bytes}"),
            });
        }
        let tensor = match input.parameters.get("binary_data_size") {
            Some(size) => {
                if header_length.is_none() {
                    return Err(ProtocolError::bad(format!(
                        "{what} has binary_data_size but the request has no {HEADER_LENGTH} header"
                    )));
                }
                if input.data.is_some() {
                    return Err(ProtocolError::bad(format!(
                        "{what} has both 'data' and binary_data_size"
                    )));
                }
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        ProtocolError::bad(format!(
                            "{what}: binary_data_size must be a non-negative integer, got {size}"
                        ))
                    })?;
                if size != bytes {
                    return Err(ProtocolError::bad(format!(
                        "{what}: shape {:?} of {datatype} needs {bytes} bytes but binary_data_size is {size}",
                        input.shape
                    )));
                }
                if size > binary.len() {
                    return Err(ProtocolError::bad(format!(
                        "{what}: binary_data_size {size} runs past the end of the body ({} bytes of binary data left)",
                        binary.len()
                    )));
                }
                let data = binary.split_to(size);
                Tensor::from_bytes(input.name, datatype, input.shape, data)
                    .map_err(|e| ProtocolError::bad(e.to_string()))?
            }
            None => {
                let data = input.data.ok_or_else(|| {
                    ProtocolError::bad(format!("{what} has neither 'data' nor binary_data_size"))
                })?;
                Tensor::from_json(input.name, datatype, input.shape, &data)
                    .map_err(|e| ProtocolError::bad(e.to_string()))?
            }
        };
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(ProtocolError::bad(format!(
            "{} of the {binary_total} bytes after the JSON header belong to no input",
            binary.len()
        )));
    }
    let mut encoding = OutputEncoding {
        default_binary,
        per_output: BTreeMap::new(),
    };
    let mut outputs = Vec::with_capacity(parsed.outputs.len().min(64));
    for output in parsed.outputs {
        let what = format!("output '{}'", output.name);
        refuse_unsupported(&output.parameters, &what)?;
        if let Some(b) = bool_param(&output.parameters, "binary_data", &what)? {
            encoding.per_output.insert(output.name.clone(), b);
        }
        outputs.push(output.name);
    }
    Ok(ParsedRequest {
        id: parsed.id,
        request: InferRequest {
            model: model.to_owned(),
            inputs,
            outputs,
            ..Default::default()
        },
        encoding,
        timeout,
    })
}

/// A response body ready to send: the bytes and, when binary data follows the JSON, the
/// value of the `Inference-Header-Content-Length` header.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedBody {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

impl EncodedBody {
    /// The content type to send the body with.
    pub fn content_type(&self) -> &'static str {
        if self.header_length.is_some() {
            "application/octet-stream"
        } else {
            "application/json"
        }
    }
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs with string keys: serialising cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Encodes an inference response: each output in JSON or binary as `encoding` says.
pub fn encode_response(
    version: &str,
    id: Option<String>,
    resp: &InferResponse,
    encoding: &OutputEncoding,
    parameters: Map<String, Value>,
) -> EncodedBody {
    let mut tail: Vec<&Bytes> = Vec::new();
    let outputs = resp
        .outputs
        .iter()
        .map(|t| {
            let binary = encoding.is_binary(&t.name);
            let mut parameters = Map::new();
            let data = if binary {
                parameters.insert("binary_data_size".into(), t.data.len().into());
                tail.push(&t.data);
                None
            } else {
                Some(t.to_json_data())
            };
            ResponseOutput {
                name: t.name.clone(),
                datatype: t.datatype.as_str().to_owned(),
                shape: t.shape.clone(),
                parameters,
                data,
            }
        })
        .collect();
    let header = json_bytes(&ResponseBody {
        model_name: resp.model.clone(),
        model_version: Some(version.to_owned()),
        id,
        parameters,
        outputs,
    });
    if tail.is_empty() {
        return EncodedBody {
            body: header,
            header_length: None,
        };
    }
    let header_length = header.len();
    let mut body = header;
    body.reserve(tail.iter().map(|b| b.len()).sum());
    for b in tail {
        body.extend_from_slice(b);
    }
    EncodedBody {
        body,
        header_length: Some(header_length),
    }
}

/// Encodes a request the way a client does: inputs named in `binary` go as binary data,
/// the others as JSON. (Clients and benchmarks; the servers parse with
/// [`parse_request`].)
pub fn encode_request(
    req: &InferRequest,
    binary_inputs: bool,
    outputs: &[(String, Option<bool>)],
    parameters: Map<String, Value>,
) -> EncodedBody {
    let mut tail: Vec<&Bytes> = Vec::new();
    let inputs = req
        .inputs
        .iter()
        .map(|t| {
            let mut parameters = Map::new();
            let data = if binary_inputs {
                parameters.insert("binary_data_size".into(), t.data.len().into());
                tail.push(&t.data);
                None
            } else {
                Some(t.to_json_data())
            };
            RequestInput {
                name: t.name.clone(),
                shape: t.shape.clone(),
                datatype: t.datatype.as_str().to_owned(),
                parameters,
                data,
            }
        })
        .collect();
    let outputs = outputs
        .iter()
        .map(|(name, binary)| RequestOutput {
            name: name.clone(),
            parameters: binary
                .map(|b| Map::from_iter([("binary_data".to_owned(), Value::Bool(b))]))
                .unwrap_or_default(),
        })
        .collect();
    let header = json_bytes(&RequestBody {
        id: None,
        parameters,
        inputs,
        outputs,
    });
    if tail.is_empty() {
        return EncodedBody {
            body: header,
            header_length: None,
        };
    }
    let header_length = header.len();
    let mut body = header;
    for b in tail {
        body.extend_from_slice(b);
    }
    EncodedBody {
        body,
        header_length: Some(header_length),
    }
}

/// Parses a response body into its outputs as tensors (JSON or binary).
pub fn parse_response(
    body: &Bytes,
    header_length: Option<&str>,
    max_tensor_bytes: usize,
) -> Result<(ResponseBody, Vec<Tensor>), ProtocolError> {
    let json_len = match header_length {
        None => body.len(),
        Some(h) => h
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n <= body.len())
            .ok_or_else(|| ProtocolError::bad(format!("bad {HEADER_LENGTH} '{h}'")))?,
    };
    let parsed: ResponseBody = serde_json::from_slice(&body[..json_len])
        .map_err(|e| ProtocolError::bad(format!("invalid inference response JSON: {e}")))?;
    let mut binary = body.slice(json_len..);
    let mut tensors = Vec::with_capacity(parsed.outputs.len().min(64));
    for o in &parsed.outputs {
        let datatype = DataType::parse(&o.datatype).ok_or_else(|| {
            ProtocolError::bad(format!(
                "output '{}': unknown datatype '{}'",
                o.name, o.datatype
            ))
        })?;
        let bytes = Tensor::byte_len_for(&o.name, datatype, &o.shape)
            .map_err(|e| ProtocolError::bad(e.to_string()))?;
        if bytes > max_tensor_bytes {
            return Err(ProtocolError {
                category: ErrorCategory::PayloadTooLarge,
                message: format!("output '{}' is {bytes} bytes", o.name),
            });
        }
        let tensor = match (&o.data, o.parameters.get("binary_data_size")) {
            (Some(data), _) => Tensor::from_json(o.name.clone(), datatype, o.shape.clone(), data),
            (None, Some(_)) if bytes <= binary.len() => Tensor::from_bytes(
                o.name.clone(),
                datatype,
                o.shape.clone(),
                binary.split_to(bytes),
            ),
            _ => {
                return Err(ProtocolError::bad(format!(
                    "output '{}' has no data",
                    o.name
                )));
            }
        }
        .map_err(|e| ProtocolError::bad(e.to_string()))?;
        tensors.push(tensor);
    }
    Ok((parsed, tensors))
}

#[cfg(test)]
mod tests;
