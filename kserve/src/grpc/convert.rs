//! Between the protocol's gRPC messages and webaccel's own request and response types.
//!
//! Inputs come either all from `raw_input_contents` (one entry per input, in input
//! order: the elements flattened row-major, little-endian, without padding; BOOL one
//! byte each) or each from its typed `contents`: BOOL in `bool_contents`, INT8/16/32 in
//! `int_contents`, INT64 in `int64_contents`, UINT8/16/32 in `uint_contents`, UINT64 in
//! `uint64_contents`, FP32 in `fp32_contents`, FP64 in `fp64_contents`. FP16 has no
//! typed field, so it is accepted raw only; BYTES (string tensors) is refused, as nothing
//! in webaccel's browser runtime carries it.
//!
//! Every length is checked before anything is sized by it: the shape's element count
//! (negative and overflowing shapes refused), its bytes against the tensor limit
//! (`payload_too_large`), the raw entry's length or the typed field's element count
//! against the shape, and each typed element against its datatype's range.
//!
//! Outputs: raw when the request's inputs were raw or when an output is FP16 (which no
//! typed field holds; the protocol does not allow mixing the forms in one response),
//! typed otherwise.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use webaccel_api::oip::ModelMetadata;
use webaccel_api::wire::{InferRequest, InferResponse};
use webaccel_api::{DataType, ErrorCategory, Tensor, TensorError};

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelMetadataResponse,
};
use crate::api::{ApiError, Inferred};
use crate::http::VERSION;

/// A converted inference request and how to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The request's `id`, echoed in the response (may be empty).
    pub id: String,
    pub request: InferRequest,
    /// Whether the inputs came raw (so the outputs go raw too).
    pub raw: bool,
    /// The protocol's `timeout` parameter (microseconds), if given.
    pub timeout: Option<Duration>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCategory::BadRequest, message)
}

fn tensor_error(e: &TensorError) -> ApiError {
    bad(e.to_string())
}

/// Refuses a version other than the only one each model has (empty: that one).
pub fn check_version(name: &str, version: &str) -> Result<(), ApiError> {
    if version.is_empty() || version == VERSION {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCategory::ModelNotFound,
            format!("model '{name}' has no version {version} (only {VERSION})"),
        ))
    }
}

/// Parameters of protocol extensions webaccel does not implement; refused by name rather
/// than ignored, so a client never silently gets something else than it asked for.
const UNSUPPORTED: [(&str, &str); 3] = [
    ("shared_memory_region", "the shared-memory extension"),
    ("classification", "the classification extension"),
    ("sequence_id", "the sequence extension"),
];

fn refuse_unsupported(
    params: &HashMap<String, InferParameter>,
    what: &str,
) -> Result<(), ApiError> {
    for (key, extension) in UNSUPPORTED {
        if params.contains_key(key) {
            return Err(bad(format!(
                "{what}: parameter '{key}' belongs to {extension}, which webaccel does not support"
            )));
        }
    }
    Ok(())
}

fn timeout_parameter(
    params: &HashMap<String, InferParameter>,
) -> Result<Option<Duration>, ApiError> {
    let Some(p) = params.get("timeout") else {
        return Ok(None);
    };
    let micros = match &p.parameter_choice {
        Some(ParameterChoice::Int64Param(n)) => u64::try_from(*n).ok(),
        Some(ParameterChoice::Uint64Param(n)) => Some(*n),
        _ => None,
    };
    micros.map(Duration::from_micros).map(Some).ok_or_else(|| {
        bad(format!(
            "request: parameter 'timeout' must be microseconds as a non-negative integer, got {:?}",
            p.parameter_choice
        ))
    })
}

fn parse_datatype(input: &str, datatype: &str) -> Result<DataType, ApiError> {
    if datatype == "BYTES" {
        return Err(bad(format!(
            "input '{input}': datatype BYTES (string tensors) is not supported: webaccel's browser runtime carries numeric and boolean tensors only"
        )));
    }
    DataType::parse(datatype)
        .ok_or_else(|| bad(format!("input '{input}': unknown datatype '{datatype}'")))
}

/// Whether a typed contents message holds any element at all.
fn has_elements(c: &InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

/// Converts a request, checking every length. `max_tensor_bytes` bounds each input.
pub fn request_from_proto(
    req: ModelInferRequest,
    max_tensor_bytes: usize,
) -> Result<Converted, ApiError> {
    if req.model_name.is_empty() {
        return Err(bad("model_name is empty"));
    }
    check_version(&req.model_name, &req.model_version)?;
    refuse_unsupported(&req.parameters, "request")?;
    let timeout = timeout_parameter(&req.parameters)?;
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries but the request has {} inputs: when raw contents are used, every input must have one, in input order",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut raw_contents = req.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let raw_entry = if raw { raw_contents.next() } else { None };
        inputs.push(input_tensor(input, raw_entry, max_tensor_bytes)?);
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for output in req.outputs {
        refuse_unsupported(&output.parameters, &format!("output '{}'", output.name))?;
        outputs.push(output.name);
    }
    Ok(Converted {
        id: req.id,
        request: InferRequest {
            model: req.model_name,
            inputs,
            outputs,
            // The deadline and request id travel in `CallOptions`.
            ..Default::default()
        },
        raw,
        timeout,
    })
}

fn input_tensor(
    input: InferInputTensor,
    raw: Option<Bytes>,
    max_tensor_bytes: usize,
) -> Result<Tensor, ApiError> {
    let what = format!("input '{}'", input.name);
    refuse_unsupported(&input.parameters, &what)?;
    let datatype = parse_datatype(&input.name, &input.datatype)?;
    // The size the shape implies, checked for overflow and against the limit first.
    let bytes =
        Tensor::byte_len_for(&input.name, datatype, &input.shape).map_err(|e| tensor_error(&e))?;
    if bytes > max_tensor_bytes {
        return Err(ApiError::new(
            ErrorCategory::PayloadTooLarge,
            format!("{what} is {bytes} bytes; the limit is {max_tensor_bytes}"),
        ));
    }
    let contents = input.contents.filter(has_elements);
    if let Some(data) = raw {
        if contents.is_some() {
            return Err(bad(format!(
                "{what} has typed contents but the request uses raw_input_contents: every input must come from one or the other"
            )));
        }
        if data.len() != bytes {
            return Err(bad(format!(
                "{what}: shape {:?} of {datatype} needs {bytes} bytes but its raw_input_contents entry has {}",
                input.shape,
                data.len()
            )));
        }
        return Tensor::from_bytes(input.name, datatype, input.shape, data)
            .map_err(|e| tensor_error(&e));
    }
    if datatype == DataType::Fp16 {
        return Err(bad(format!(
            "{what}: FP16 has no typed contents field; send FP16 tensors in raw_input_contents"
        )));
    }
    let count = bytes / datatype.size();
    let data = match contents {
        Some(c) => typed_bytes(&input.name, datatype, &input.shape, count, &c)?,
        None if count == 0 => Bytes::new(),
        None => {
            return Err(bad(format!(
                "{what} has no contents and the request has no raw_input_contents"
            )));
        }
    };
    Tensor::from_bytes(input.name, datatype, input.shape, data).map_err(|e| tensor_error(&e))
}

/// The name of the typed field a datatype's elements go in.
fn field_of(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Fp16 => "raw_input_contents",
    }
}

/// The typed fields that hold elements, with their element counts.
fn filled_fields(c: &InferTensorContents) -> Vec<(&'static str, usize)> {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// Little-endian bytes of the typed elements, each checked against the datatype.
fn typed_bytes(
    name: &str,
    datatype: DataType,
    shape: &[i64],
    count: usize,
    c: &InferTensorContents,
) -> Result<Bytes, ApiError> {
    let field = field_of(datatype);
    if let Some((other, _)) = filled_fields(c).into_iter().find(|(f, _)| *f != field) {
        return Err(bad(format!(
            "input '{name}': {datatype} elements belong in {field}, but {other} holds data"
        )));
    }
    let actual = match datatype {
        DataType::Bool => c.bool_contents.len(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => c.int_contents.len(),
        DataType::Int64 => c.int64_contents.len(),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => c.uint_contents.len(),
        DataType::Uint64 => c.uint64_contents.len(),
        DataType::Fp32 => c.fp32_contents.len(),
        DataType::Fp64 => c.fp64_contents.len(),
        DataType::Fp16 => 0,
    };
    if actual != count {
        return Err(tensor_error(&TensorError::ElementCount {
            name: name.to_owned(),
            shape: shape.to_vec(),
            datatype,
            expected: count,
            actual,
        }));
    }
    let out_of_range = |index: usize, value: String| {
        tensor_error(&TensorError::BadElement {
            name: name.to_owned(),
            index,
            value,
            datatype,
        })
    };
    // Narrows each element, refusing the first that does not fit.
    fn narrow<S: Copy + ToString, T: TryFrom<S>, const N: usize>(
        src: &[S],
        to_le: impl Fn(T) -> [u8; N],
        fail: impl Fn(usize, String) -> ApiError,
    ) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::with_capacity(src.len() * N);
        for (i, &v) in src.iter().enumerate() {
            let t = T::try_from(v).map_err(|_| fail(i, v.to_string()))?;
            out.extend_from_slice(&to_le(t));
        }
        Ok(out)
    }
    let out: Vec<u8> = match datatype {
        DataType::Bool => c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        DataType::Int8 => narrow(&c.int_contents, i8::to_le_bytes, out_of_range)?,
        DataType::Int16 => narrow(&c.int_contents, i16::to_le_bytes, out_of_range)?,
        DataType::Int32 => c
            .int_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Int64 => c
            .int64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint8 => narrow(&c.uint_contents, u8::to_le_bytes, out_of_range)?,
        DataType::Uint16 => narrow(&c.uint_contents, u16::to_le_bytes, out_of_range)?,
        DataType::Uint32 => c
            .uint_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Uint64 => c
            .uint64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp32 => c
            .fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp64 => c
            .fp64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::Fp16 => Vec::new(),
    };
    Ok(Bytes::from(out))
}

/// The elements of a tensor in the typed field of its datatype; `None` for FP16, which
/// has none.
pub fn typed_contents(t: &Tensor) -> Option<InferTensorContents> {
    fn le<const N: usize>(c: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    }
    fn each<const N: usize, T>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        data.chunks_exact(N).map(|c| f(le(c))).collect()
    }
    let d = &t.data[..];
    let mut c = InferTensorContents::default();
    match t.datatype {
        DataType::Bool => c.bool_contents = d.iter().map(|&b| b != 0).collect(),
        DataType::Int8 => c.int_contents = d.iter().map(|&b| i32::from(b.cast_signed())).collect(),
        DataType::Int16 => c.int_contents = each(d, |b| i32::from(i16::from_le_bytes(b))),
        DataType::Int32 => c.int_contents = each(d, i32::from_le_bytes),
        DataType::Int64 => c.int64_contents = each(d, i64::from_le_bytes),
        DataType::Uint8 => c.uint_contents = d.iter().map(|&b| u32::from(b)).collect(),
        DataType::Uint16 => c.uint_contents = each(d, |b| u32::from(u16::from_le_bytes(b))),
        DataType::Uint32 => c.uint_contents = each(d, u32::from_le_bytes),
        DataType::Uint64 => c.uint64_contents = each(d, u64::from_le_bytes),
        DataType::Fp32 => c.fp32_contents = each(d, f32::from_le_bytes),
        DataType::Fp64 => c.fp64_contents = each(d, f64::from_le_bytes),
        DataType::Fp16 => return None,
    }
    Some(c)
}

/// A JSON parameter value as a protocol parameter: booleans, integers (signed when they
/// fit, else unsigned), floats and strings as themselves, arrays and objects as JSON
/// text; `null` (a value not measured) is left out.
pub fn parameter_from_json(v: &Value) -> Option<InferParameter> {
    let choice = match v {
        Value::Null => return None,
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ParameterChoice::Int64Param(i),
            (None, Some(u), _) => ParameterChoice::Uint64Param(u),
            (None, None, f) => ParameterChoice::DoubleParam(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        other => ParameterChoice::StringParam(other.to_string()),
    };
    Some(InferParameter {
        parameter_choice: Some(choice),
    })
}

fn parameters_from_json(map: Map<String, Value>) -> HashMap<String, InferParameter> {
    map.into_iter()
        .filter_map(|(k, v)| parameter_from_json(&v).map(|p| (k, p)))
        .collect()
}

/// Builds the response: outputs raw when `raw_requested` or when an output is FP16,
/// typed otherwise; `id` is the request's.
pub fn response_to_proto(
    version: &str,
    id: String,
    inferred: Inferred,
    raw_requested: bool,
) -> ModelInferResponse {
    let InferResponse { model, outputs, .. } = inferred.response;
    let raw = raw_requested || outputs.iter().any(|t| typed_contents(t).is_none());
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut raw_output_contents = Vec::with_capacity(if raw { outputs.len() } else { 0 });
    for t in outputs {
        let contents = if raw { None } else { typed_contents(&t) };
        tensors.push(InferOutputTensor {
            name: t.name,
            datatype: t.datatype.as_str().to_owned(),
            shape: t.shape,
            parameters: HashMap::new(),
            contents,
        });
        if raw {
            raw_output_contents.push(t.data);
        }
    }
    ModelInferResponse {
        model_name: model,
        model_version: version.to_owned(),
        id,
        parameters: parameters_from_json(inferred.parameters),
        outputs: tensors,
        raw_output_contents,
    }
}

/// Model metadata as the protocol's message (which has no place for parameters).
pub fn metadata_to_proto(meta: ModelMetadata) -> ModelMetadataResponse {
    let tensors = |list: Vec<webaccel_api::oip::TensorMetadata>| {
        list.into_iter()
            .map(|t| TensorMetadata {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
            })
            .collect()
    };
    ModelMetadataResponse {
        name: meta.name,
        versions: meta.versions,
        platform: meta.platform,
        inputs: tensors(meta.inputs),
        outputs: tensors(meta.outputs),
    }
}

#[cfg(test)]
mod tests;
