//! ONNX models as data: the protobuf types, precision detection and stage cutting.
//!
//! - [`parse`] reads a model file's bytes into [`ModelProto`] (prost types generated
//!   from the vendored `proto/onnx.proto`); [`encode`] writes one back.
//! - [`precision::detect`] tells whether a model computes in fp32, fp16, int8 or int4,
//!   and why, from its graph.
//! - [`shard::shard`] cuts a model into contiguous stages, each a valid model, for
//!   running one model across several browsers as a pipeline.
//!
//! Models whose tensors live in external data files are read by
//! [`parse_with_external_data`] (their precision is told from types and dims, and
//! [`external_data_files`] names the files beside them); cutting stages needs every
//! tensor's bytes, so [`parse`] and [`shard`] refuse them.

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
    #[error("tensor '{0}' keeps its data in an external file but names no location")]
    ExternalWithoutLocation(String),
    #[error(
        "tensor '{tensor}' keeps its data in '{location}', which is not a file name beside \
         the model (no absolute paths, no '..')"
    )]
    ExternalLocation { tensor: String, location: String },
}

/// Reads a model from the bytes of an `.onnx` file. Refuses bytes that are not a model,
/// a model without a graph, and models with external data.
pub fn parse(bytes: &[u8]) -> Result<ModelProto, Error> {
    let model = ModelProto::decode(bytes)?;
    main_graph(&model)?;
    Ok(model)
}

/// Reads a model whose tensors may live in external data files beside it (only the
/// graph file's bytes are read; [`external_data_files`] names the others).
pub fn parse_with_external_data(bytes: &[u8]) -> Result<ModelProto, Error> {
    let model = ModelProto::decode(bytes)?;
    graph_of(&model)?;
    Ok(model)
}

/// The external data files `model`'s tensors name, each once, in the order first named:
/// paths relative to the model file (onnxruntime reads them from beside it).
pub fn external_data_files(model: &ModelProto) -> Result<Vec<String>, Error> {
    let mut files: Vec<String> = Vec::new();
    for g in tensor::graphs(graph_of(model)?) {
        let sparse = g
            .sparse_initializer
            .iter()
            .flat_map(|s| s.values.iter().chain(s.indices.iter()));
        for t in g.initializer.iter().chain(sparse) {
            if !tensor::is_external(t) {
                continue;
            }
            let location = t
                .external_data
                .iter()
                .find(|e| e.key() == "location")
                .map(|e| e.value().to_owned())
                .ok_or_else(|| Error::ExternalWithoutLocation(t.name().to_owned()))?;
            let safe = !location.is_empty()
                && !location.starts_with('/')
                && !location.contains('\\')
                && !location
                    .split('/')
                    .any(|part| part == ".." || part.is_empty());
            if !safe {
                return Err(Error::ExternalLocation {
                    tensor: t.name().to_owned(),
                    location,
                });
            }
            if !files.contains(&location) {
                files.push(location);
            }
        }
    }
    Ok(files)
}

/// The graph's inputs (initializers excluded: older exporters list them as inputs too)
/// and outputs, as declared.
pub fn boundary(model: &ModelProto) -> Result<(Vec<TensorInfo>, Vec<TensorInfo>), Error> {
    let graph = graph_of(model)?;
    let initialized: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initialized.contains(i.name()))
        .map(TensorInfo::from_value_info)
        .collect();
    let outputs = graph
        .output
        .iter()
        .map(TensorInfo::from_value_info)
        .collect();
    Ok((inputs, outputs))
}

pub(crate) fn graph_of(model: &ModelProto) -> Result<&proto::GraphProto, Error> {
    model.graph.as_ref().ok_or(Error::NoGraph)
}

/// The bytes of an `.onnx` file holding `model`.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The model's graph, checked to hold all its data.
pub(crate) fn main_graph(model: &ModelProto) -> Result<&proto::GraphProto, Error> {
    let graph = graph_of(model)?;
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
    // Dims and types only: tensors kept in external files count as well.
    let graph = graph_of(model)?;
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
