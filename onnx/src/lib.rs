//! ONNX models as data: the protobuf types, precision detection and stage cutting.
//!
//! - [`parse`] reads a model file's bytes into [`ModelProto`] (prost types generated
//!   from the vendored `proto/onnx.proto`); [`encode`] writes one back.
//! - [`precision::detect`] tells whether a model computes in fp32, fp16, int8 or int4,
//!   and why, from its graph.
//! - [`shard::shard`] cuts a model into contiguous stages, each a valid model, for
//!   running one model across several browsers as a pipeline.
//!
//! Models whose tensors live in external data files are refused: the bytes of one
//! `.onnx` file are all this crate reads.

pub mod precision;
pub mod shard;
mod tensor;

use std::collections::BTreeMap;

use prost::Message as _;
use serde::Serialize;

pub use precision::{Precision, PrecisionReport, detect, int_attr};
pub use proto::ModelProto;
pub use shard::{ShardError, Sharded, StagePlan, StageSummary, shard, shard_with_plan};
pub use tensor::{Dim, TensorInfo, human_bytes, tensor_bytes, type_name};

/// The types generated from the vendored `proto/onnx.proto` (package `onnx`).
#[allow(
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Why a model cannot be read or examined.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the model has no graph")]
    NoGraph,
    #[error(
        "tensor '{0}' keeps its data in an external file; only self-contained models \
         are supported (save the model with all tensors in one .onnx file, e.g. onnx.save(model, path, \
         save_as_external_data=False), if it is under 2 GB)"
    )]
    ExternalData(String),
}

/// Reads a model from the bytes of an `.onnx` file. Refuses bytes that are not a model,
/// a model without a graph, and models with external data.
pub fn parse(bytes: &[u8]) -> Result<ModelProto, Error> {
    let model = ModelProto::decode(bytes)?;
    main_graph(&model)?;
    Ok(model)
}

/// The bytes of an `.onnx` file holding `model`.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The model's graph, checked to hold all its data.
pub(crate) fn main_graph(model: &ModelProto) -> Result<&proto::GraphProto, Error> {
    let graph = model.graph.as_ref().ok_or(Error::NoGraph)?;
    match tensor::find_external(graph) {
        Some(name) => Err(Error::ExternalData(name)),
        None => Ok(graph),
    }
}

/// How much a model's parameters (initializers, in the main graph and in subgraphs)
/// weigh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParameterSummary {
    /// Number of initializer tensors.
    pub tensors: usize,
    /// Number of values in them.
    pub elements: u64,
    /// Bytes they take (see [`tensor_bytes`]).
    pub bytes: u64,
    /// Bytes per element type (`float`, `float16`, `int8`, ...).
    pub bytes_by_type: BTreeMap<String, u64>,
}

/// The parameters of `model`: its initializers, counted from their dims and types.
pub fn parameters(model: &ModelProto) -> Result<ParameterSummary, Error> {
    let graph = main_graph(model)?;
    let mut summary = ParameterSummary::default();
    for g in tensor::graphs(graph) {
        let sparse = g
            .sparse_initializer
            .iter()
            .filter_map(|s| s.values.as_ref());
        for t in g.initializer.iter().chain(sparse) {
            let bytes = tensor_bytes(t);
            summary.tensors += 1;
            summary.elements += t.dims.iter().fold(1u64, |n, &d| {
                n.saturating_mul(u64::try_from(d).unwrap_or(0))
            });
            summary.bytes += bytes;
            *summary
                .bytes_by_type
                .entry(type_name(t.data_type()))
                .or_default() += bytes;
        }
    }
    Ok(summary)
}
