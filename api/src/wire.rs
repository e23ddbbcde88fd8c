//! The binary frame format of the WebSocket bridge (`/v1/bridge`), also spoken between
//! the agent and its in-page runtime.
//!
//! Every WebSocket binary message is one frame. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "WAF1"
//! 4       1     kind: 1 = inference request, 2 = inference response, 3 = error,
//!               4 = cancel, 5 = generate request, 6 = generation event
//! 5       3     reserved, zero
//! 8       8     request id, chosen by the sender of the request and echoed in its reply
//! 16      4     header length H
//! 20      H     header: UTF-8 JSON, described below
//! ...           zero padding up to the next multiple of 8
//! ...           tensor data: the tensors listed in the header, in order, each one's
//!               bytes starting at a multiple of 8 from the start of the frame (zero
//!               padding between them), so a receiver can view them as typed arrays
//!               without copying
//! ```
//!
//! Headers:
//! - request: `{"model": "m", "inputs": [{"name", "datatype", "shape"}], "outputs": ["y"]}`
//!   (`outputs` optional: all outputs when empty)
//! - response: `{"model": "m", "backend": "wasm", "compute_ms": 0.4, "page_ms": 0.5,
//!   "outputs": [{"name", "datatype", "shape"}]}`; `compute_ms` is the time the runtime
//!   spent running the model, `page_ms` (optional) the page's whole handling of the
//!   request from receiving its frame to encoding the reply, queueing included;
//!   `stages` (optional) the milliseconds of each stage measured so far
//!   (`webaccel_api::timing::StageTimes`: the page writes `page_queue`, `decode`, `run`
//!   and `encode`, each later hop adds its own)
//! - error: `{"category": "bad_request", "message": "...", "retryable": false}`
//! - cancel (kind 4, client to agent): `{}`; the request with this id is no longer
//!   wanted. No reply follows (a generation stops at its next step).
//! - generate request (kind 5, client to agent): a [`GenerateRequest`], no tensors. It is
//!   answered by any number of generation events with its id, the last an `end` event,
//!   or by an error frame, which also ends it.
//! - generation event (kind 6, agent to client): a [`GenerationEvent`] (tokens, or the
//!   end), no tensors.
//!
//! A request header may also carry `"timeout_ms"` (how long its sender waits) and
//! `"request_id"` (for logs across hops).
//!
//! Tensor data is raw little-endian elements (`FP16` as IEEE half bits, `BOOL` one byte).
//! Ids are per connection; replies may arrive in any order. A frame that cannot be
//! parsed is answered with an error frame carrying its id when the id could be read
//! (else 0), and the connection stays open.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ErrorCategory;
use crate::generate::{GenerateRequest, GenerationEvent};
use crate::tensor::{DataType, Tensor, TensorError};
use crate::timing::StageTimes;

pub const MAGIC: &[u8; 4] = b"WAF1";
/// A model name the in-page runtime answers by sending the request's tensors straight
/// back, without running anything: the floor of the bridge's cost (agent plus the
/// browser's WebSocket), which benchmarks measure beside real models. Agents accept it
/// only with their debug endpoints enabled.
pub const ECHO_MODEL: &str = "__echo__";
/// Size of the fixed part before the JSON header.
pub const PREFIX_LEN: usize = 20;
/// Alignment of every tensor's data from the start of the frame.
pub const ALIGN: usize = 8;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Request = 1,
    Response = 2,
    Error = 3,
    Cancel = 4,
    Generate = 5,
    Generation = 6,
}

/// Name, type and shape of a tensor, as listed in a frame header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorHeader {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferRequest {
    pub model: String,
    pub inputs: Vec<Tensor>,
    /// Outputs wanted; empty means all.
    pub outputs: Vec<String>,
    /// How long the sender will wait for the answer; the receiver stops working on it
    /// past that (and never waits longer than its own limit).
    pub timeout_ms: Option<u64>,
    /// The caller's request id, for logs across hops.
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    pub model: String,
    /// The execution provider that actually ran the request.
    pub backend: String,
    /// Milliseconds the runtime in the page spent running the model.
    pub compute_ms: f64,
    /// Milliseconds from the page receiving the request to sending the reply, when the
    /// sender measured it (the in-page runtime does; the agent passes it on).
    pub page_ms: Option<f64>,
    /// Where the request's time went, each hop adding the stages it measured.
    pub stages: StageTimes,
    pub outputs: Vec<Tensor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub category: ErrorCategory,
    pub message: String,
    pub retryable: bool,
}

impl ErrorFrame {
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            retryable: category.is_retryable(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(InferRequest),
    Response(InferResponse),
    Error(ErrorFrame),
    /// The sender of request `id` no longer wants the answer (it gave up or its client
    /// went away): work not started yet is dropped. No reply is sent.
    Cancel,
    /// Generate text; answered by [`Message::Generation`] events (the last an end) or an
    /// error.
    Generate(GenerateRequest),
    Generation(GenerationEvent),
}

#[derive(Serialize, Deserialize)]
struct RequestHeader {
    model: String,
    inputs: Vec<TensorHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct CancelHeader {}

#[derive(Serialize, Deserialize)]
struct ResponseHeader {
    model: String,
    backend: String,
    compute_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "is_unmeasured")]
    stages: StageTimes,
    outputs: Vec<TensorHeader>,
}

fn is_unmeasured(t: &StageTimes) -> bool {
    *t == StageTimes::default()
}

/// Why a frame could not be decoded. `id` is set when the prefix was readable, so the
/// error reply can be matched to the request.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("malformed frame: {reason}")]
pub struct DecodeError {
    pub id: Option<u64>,
    pub reason: String,
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn header_of(t: &Tensor) -> TensorHeader {
    TensorHeader {
        name: t.name.clone(),
        datatype: t.datatype,
        shape: t.shape.clone(),
    }
}

/// Encodes one message as a frame.
pub fn encode(id: u64, msg: &Message) -> Vec<u8> {
    let (kind, header, tensors): (Kind, Vec<u8>, &[Tensor]) = match msg {
        Message::Request(r) => (
            Kind::Request,
            to_json(&RequestHeader {
                model: r.model.clone(),
                inputs: r.inputs.iter().map(header_of).collect(),
                outputs: r.outputs.clone(),
                timeout_ms: r.timeout_ms,
                request_id: r.request_id.clone(),
            }),
            &r.inputs,
        ),
        Message::Response(r) => (
            Kind::Response,
            to_json(&ResponseHeader {
                model: r.model.clone(),
                backend: r.backend.clone(),
                compute_ms: r.compute_ms,
                page_ms: r.page_ms,
                stages: r.stages,
                outputs: r.outputs.iter().map(header_of).collect(),
            }),
            &r.outputs,
        ),
        Message::Error(e) => (Kind::Error, to_json(e), &[]),
        Message::Cancel => (Kind::Cancel, to_json(&CancelHeader {}), &[]),
        Message::Generate(r) => (Kind::Generate, to_json(r), &[]),
        Message::Generation(e) => (Kind::Generation, to_json(e), &[]),
    };
    let data_len: usize = tensors.iter().map(|t| align_up(t.data.len())).sum();
    let mut buf = Vec::with_capacity(align_up(PREFIX_LEN + header.len()) + data_len);
    buf.extend_from_slice(MAGIC);
    buf.push(kind as u8);
    buf.extend_from_slice(&[0, 0, 0]);
    buf.extend_from_slice(&id.to_le_bytes());
    let header_len = u32::try_from(header.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&header_len.to_le_bytes());
    buf.extend_from_slice(&header);
    for t in tensors {
        buf.resize(align_up(buf.len()), 0);
        buf.extend_from_slice(&t.data);
    }
    buf
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string keys.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Decodes a frame. Tensor data borrows from `frame` without copying.
pub fn decode(frame: Bytes) -> Result<(u64, Message), DecodeError> {
    if frame.len() < PREFIX_LEN {
        return Err(DecodeError {
            id: None,
            reason: format!(
                "{} bytes is shorter than the {PREFIX_LEN}-byte prefix",
                frame.len()
            ),
        });
    }
    if &frame[0..4] != MAGIC {
        return Err(DecodeError {
            id: None,
            reason: "bad magic (expected \"WAF1\")".into(),
        });
    }
    let id = u64::from_le_bytes(frame[8..16].try_into().unwrap_or_default());
    let fail = |reason: String| DecodeError {
        id: Some(id),
        reason,
    };
    let header_len = u32::from_le_bytes(frame[16..20].try_into().unwrap_or_default()) as usize;
    let header_end = PREFIX_LEN
        .checked_add(header_len)
        .filter(|&end| end <= frame.len())
        .ok_or_else(|| {
            fail(format!(
                "header length {header_len} runs past the end of the frame"
            ))
        })?;
    let header = &frame[PREFIX_LEN..header_end];
    let mut cursor = header_end;
    let mut take = |h: TensorHeader| -> Result<Tensor, DecodeError> {
        let len =
            Tensor::byte_len_for(&h.name, h.datatype, &h.shape).map_err(|e| fail(e.to_string()))?;
        let start = align_up(cursor);
        let end = start
            .checked_add(len)
            .filter(|&end| end <= frame.len())
            .ok_or_else(|| {
                fail(
                    TensorError::ByteLength {
                        name: h.name.clone(),
                        shape: h.shape.clone(),
                        datatype: h.datatype,
                        expected: len,
                        actual: frame.len().saturating_sub(start),
                    }
                    .to_string(),
                )
            })?;
        cursor = end;
        Tensor::from_bytes(h.name, h.datatype, h.shape, frame.slice(start..end))
            .map_err(|e| fail(e.to_string()))
    };
    let msg = match frame[4] {
        1 => {
            let h: RequestHeader = parse_header(header).map_err(fail)?;
            let inputs = h
                .inputs
                .into_iter()
                .map(&mut take)
                .collect::<Result<_, _>>()?;
            Message::Request(InferRequest {
                model: h.model,
                inputs,
                outputs: h.outputs,
                timeout_ms: h.timeout_ms,
                request_id: h.request_id,
            })
        }
        2 => {
            let h: ResponseHeader = parse_header(header).map_err(fail)?;
            let outputs = h
                .outputs
                .into_iter()
                .map(&mut take)
                .collect::<Result<_, _>>()?;
            Message::Response(InferResponse {
                model: h.model,
                backend: h.backend,
                compute_ms: h.compute_ms,
                page_ms: h.page_ms,
                stages: h.stages,
                outputs,
            })
        }
        3 => Message::Error(parse_header(header).map_err(fail)?),
        4 => {
            let _: CancelHeader = parse_header(header).map_err(fail)?;
            Message::Cancel
        }
        5 => Message::Generate(parse_header(header).map_err(fail)?),
        6 => Message::Generation(parse_header(header).map_err(fail)?),
        k => return Err(fail(format!("unknown frame kind {k}"))),
    };
    if align_up(cursor) < frame.len() {
        return Err(fail(format!(
            "{} trailing bytes after the last tensor",
            frame.len() - cursor
        )));
    }
    Ok((id, msg))
}

fn parse_header<T: for<'de> Deserialize<'de>>(header: &[u8]) -> Result<T, String> {
    serde_json::from_slice(header).map_err(|e| format!("bad header JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32(name: &str, vals: &[f32]) -> Tensor {
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(
            name,
            DataType::Fp32,
            vec![vals.len() as i64],
            Bytes::from(data),
        )
        .unwrap()
    }

    #[test]
    fn request_roundtrips_and_tensors_are_aligned() {
        let req = Message::Request(InferRequest {
            model: "mlp".into(),
            inputs: vec![
                Tensor::from_bytes(
                    "flag",
                    DataType::Bool,
                    vec![3],
                    Bytes::from_static(&[1, 0, 1]),
                )
                .unwrap(),
                fp32("x", &[1.0, 2.0, 3.0]),
            ],
            outputs: vec!["y".into()],
            ..Default::default()
        });
        let buf = encode(42, &req);
        let (id, back) = decode(Bytes::from(buf.clone())).unwrap();
        assert_eq!(id, 42);
        assert_eq!(back, req);
        // The FP32 tensor is the last 12 bytes and starts 8-aligned.
        assert_eq!((buf.len() - 12) % ALIGN, 0);
    }

    #[test]
    fn response_and_error_roundtrip() {
        let resp = Message::Response(InferResponse {
            model: "m".into(),
            backend: "wasm".into(),
            compute_ms: 0.25,
            page_ms: Some(0.5),
            stages: StageTimes {
                run: Some(0.25),
                page_link: Some(0.125),
                ..StageTimes::default()
            },
            outputs: vec![fp32("y", &[0.5])],
        });
        assert_eq!(
            decode(Bytes::from(encode(7, &resp))).unwrap(),
            (7, resp.clone())
        );
        // The page writes some figures over its header once the frame is made, padding
        // it with spaces (JSON whitespace): the header still parses, the data still lines up.
        let buf = encode(7, &resp);
        let header_len = u32::from_le_bytes(buf[16..20].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&buf[PREFIX_LEN..PREFIX_LEN + header_len]).unwrap();
        let padded_header = format!("{header}{}", " ".repeat(13));
        let mut padded = buf[..16].to_vec();
        padded.extend_from_slice(&(padded_header.len() as u32).to_le_bytes());
        padded.extend_from_slice(padded_header.as_bytes());
        padded.resize(align_up(padded.len()), 0);
        padded.extend_from_slice(&0.5f32.to_le_bytes());
        assert_eq!(decode(Bytes::from(padded)).unwrap(), (7, resp));
        let err = Message::Error(ErrorFrame::new(ErrorCategory::BrowserCrashed, "gone"));
        let (id, back) = decode(Bytes::from(encode(9, &err))).unwrap();
        assert_eq!(id, 9);
        assert!(matches!(
            back,
            Message::Error(ErrorFrame {
                retryable: true,
                ..
            })
        ));
    }

    #[test]
    fn garbage_is_refused_without_id() {
        let err = decode(Bytes::from_static(b"hello")).unwrap_err();
        assert_eq!(err.id, None);
        let err = decode(Bytes::from_static(b"XXXX0000000000000000000000")).unwrap_err();
        assert!(err.reason.contains("magic"), "{err}");
    }

    #[test]
    fn truncated_data_is_refused_with_the_id() {
        let mut buf = encode(
            5,
            &Message::Request(InferRequest {
                model: "m".into(),
                inputs: vec![fp32("x", &[1.0, 2.0])],
                outputs: vec![],
                ..Default::default()
            }),
        );
        buf.truncate(buf.len() - 1);
        let err = decode(Bytes::from(buf)).unwrap_err();
        assert_eq!(err.id, Some(5));
        assert!(err.reason.contains("needs 8 bytes"), "{}", err.reason);
    }

    #[test]
    fn bad_header_and_unknown_kind_are_refused_with_the_id() {
        let mut buf = encode(
            3,
            &Message::Error(ErrorFrame::new(ErrorCategory::Internal, "x")),
        );
        buf[4] = 9;
        assert_eq!(
            decode(Bytes::from(buf)).unwrap_err().reason,
            "unknown frame kind 9"
        );
        let mut buf = Vec::from(&MAGIC[..]);
        buf.extend_from_slice(&[1, 0, 0, 0]);
        buf.extend_from_slice(&11u64.to_le_bytes());
        buf.extend_from_slice(&2u32.to_le_bytes());
        buf.extend_from_slice(b"{]");
        let err = decode(Bytes::from(buf)).unwrap_err();
        assert_eq!(err.id, Some(11));
        assert!(err.reason.starts_with("bad header JSON"), "{}", err.reason);
    }

    #[test]
    fn header_length_past_end_is_refused() {
        let mut buf = encode(
            1,
            &Message::Error(ErrorFrame::new(ErrorCategory::Internal, "x")),
        );
        buf[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            decode(Bytes::from(buf))
                .unwrap_err()
                .reason
                .contains("past the end")
        );
    }
}
