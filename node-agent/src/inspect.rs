//! What the agent reads from a model file before a browser sees it: the precision its
//! graph computes in (reported, and checked against what the spec asks for) and
//! operators onnxruntime-web is known to compute wrongly on a backend, measured here
//! against native onnxruntime, so such a model is refused there instead of answering
//! with wrong numbers.

use webaccel_api::Precision;
use webaccel_api::agent::Capabilities;
use webaccel_onnx::{ModelProto, PrecisionReport, int_attr};

use crate::generation::graph::{EncoderLayout, GraphError, decoder_layout, encoder_layout};
use crate::page::protocol::DecoderLayout;

/// Why a model file is refused before a browser sees it.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The cached file could not be read.
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// The parser's reason the bytes are no usable model.
    #[error("not a usable ONNX model: {0}")]
    Parse(#[source] webaccel_onnx::Error),
    /// The graph's precision could not be told.
    #[error("{0}")]
    Precision(#[source] webaccel_onnx::Error),
    /// The graph names external data files it may not (outside the model's folder).
    #[error("{0}")]
    ExternalData(#[source] webaccel_onnx::Error),
}

/// What the graph says about a model.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub precision: PrecisionReport,
    /// Why WebGPU would compute this model wrongly, if it would.
    pub webgpu_defect: Option<String>,
    /// The files beside the model holding tensors its graph keeps outside it.
    pub external_data: Vec<String>,
    /// The graph as a decoder for text generation, or why it is not one.
    pub decoder: Result<DecoderLayout, GraphError>,
    /// The graph as an encoder-decoder's encoder, or why it is not one.
    pub encoder: Result<EncoderLayout, GraphError>,
}

impl Inspection {
    /// Why this model would be computed wrongly on this browser's WebGPU, if it would:
    /// a defect of the graph's operators, or fp16 arithmetic on an adapter without
    /// `shader-f16`, where onnxruntime-web 1.30 answers zeros instead of refusing
    /// (measured on SwiftShader: `tests/quantized.rs`).
    pub fn webgpu_hazard(&self, capabilities: Option<&Capabilities>) -> Option<String> {
        if let Some(defect) = &self.webgpu_defect {
            return Some(defect.clone());
        }
        let adapter = capabilities?.webgpu.adapter.as_ref()?;
        (self.precision.precision == Precision::Fp16
            && !adapter.features.iter().any(|f| f == "shader-f16"))
        .then(|| {
            "the model computes in fp16 and this browser's WebGPU adapter lacks the shader-f16 feature: onnxruntime-web answers zeros there instead of refusing".to_owned()
        })
    }
}

/// Reads the model at `bytes` (a file that is not an ONNX model is refused with the
/// parser's reason).
pub fn inspect(bytes: &[u8]) -> Result<Inspection, InspectError> {
    let model = webaccel_onnx::parse_with_external_data(bytes).map_err(InspectError::Parse)?;
    let precision = webaccel_onnx::detect(&model).map_err(InspectError::Precision)?;
    Ok(Inspection {
        precision,
        webgpu_defect: webgpu_defect(&model),
        external_data: webaccel_onnx::external_data_files(&model)
            .map_err(InspectError::ExternalData)?,
        decoder: decoder_layout(&model),
        encoder: encoder_layout(&model),
    })
}

/// onnxruntime-web 1.30's WebGPU `MatMulNBits` gives wrong results when the reduced
/// dimension K is not a whole number of quantization blocks (measured: K = 16 in one
/// 32-wide block is off by up to 4.4 where K = 64 matches native onnxruntime within
/// 1e-6; `tests/quantized.rs`). Such a model runs correctly on wasm.
fn webgpu_defect(model: &ModelProto) -> Option<String> {
    let graph = model.graph.as_ref()?;
    let bad: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "MatMulNBits")
        .filter_map(|n| {
            let k = int_attr(n, "K")?;
            let block = int_attr(n, "block_size").unwrap_or(32).max(1);
            (k % block != 0).then(|| format!("'{}' (K {k}, block size {block})", n.name()))
        })
        .collect();
    if bad.is_empty() {
        return None;
    }
    Some(format!(
        "onnxruntime-web's WebGPU MatMulNBits computes wrong results when K is not a multiple of the block size, as in {} of its nodes: {}",
        bad.len(),
        bad.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
    ))
}
