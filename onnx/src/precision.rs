//! Which precision a model computes in (fp32, fp16, int8, int4), read from its graph.
//!
//! Quantization shows in the operators, not only in the weights: a 4-bit model keeps
//! packed weights in `uint8` initializers, and an int8 QDQ model may keep float biases
//! and embeddings. So operators decide first: any 4-bit `MatMulNBits` (or int4 QDQ)
//! means int4; any 8-bit quantization operator means int8; otherwise the float type
//! holding most initializer bytes decides between fp16 and fp32.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::proto::tensor_proto::DataType;
use crate::proto::{GraphProto, ModelProto, NodeProto};
use crate::tensor::{self, human_bytes, type_name};
use crate::{Error, parameters};

pub use webaccel_api::Precision;

/// What [`detect`] found, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrecisionReport {
    pub precision: Precision,
    /// For people: the evidence, e.g. `14 MatMulNBits nodes with bits=4`.
    pub reason: String,
    /// Initializer bytes per element type (`float`, `float16`, `uint8`, ...).
    pub weight_bytes_by_type: BTreeMap<String, u64>,
}

/// Operators (besides QuantizeLinear/DequantizeLinear) that compute on 8-bit integers.
/// `QLinear*` operators, in any domain, are recognised by their prefix.
const INT8_OPS: &[&str] = &[
    // Default domain.
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    // com.microsoft.
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat",
    "QAttention",
    "QGemm",
    "QEmbedLayerNormalization",
    "QOrderedMatMul",
    "QOrderedAttention",
    "QOrderedGelu",
    "QOrderedLayerNormalization",
    "QOrderedLongformerAttention",
];

/// Blockwise n-bit operators (com.microsoft) whose `bits` attribute defaults to 4.
const NBITS_OPS: &[&str] = &["MatMulNBits", "GatherBlockQuantized"];

/// The evidence: node counts by key (an op name, or an op and its bits), in the order
/// first seen.
#[derive(Debug)]
struct Tally<K>(Vec<(K, usize)>);

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: PartialEq> Tally<K> {
    fn add(&mut self, key: K) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => self.0.push((key, 1)),
        }
    }

    fn total(&self) -> usize {
        self.0.iter().map(|(_, n)| n).sum()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn nodes(n: usize) -> &'static str {
    if n == 1 { "node" } else { "nodes" }
}

impl Tally<String> {
    /// `6 DynamicQuantizeLinear/MatMulInteger nodes`.
    fn ops_phrase(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let names: Vec<&str> = self.0.iter().map(|(l, _)| l.as_str()).collect();
        let total = self.total();
        Some(format!("{total} {} {}", names.join("/"), nodes(total)))
    }
}

/// Counts per kind of evidence.
#[derive(Debug, Default)]
struct Evidence {
    /// n-bit operators with bits <= 4, by op and bits.
    nbits4: Tally<(String, i64)>,
    /// QuantizeLinear / DequantizeLinear to or from 4-bit integers, by op.
    qdq4: Tally<String>,
    qdq4_types: Vec<String>,
    /// QuantizeLinear / DequantizeLinear to or from 8-bit integers, by op.
    qdq8: Tally<String>,
    qdq8_types: Vec<String>,
    /// Other 8-bit integer operators, by op (n-bit operators with bits=8 included).
    int8_ops: Tally<String>,
}

fn note_type(types: &mut Vec<String>, data_type: i32) {
    let name = type_name(data_type);
    if !types.contains(&name) {
        types.push(name);
    }
}

/// The integer attribute `name` of `node`, when it is set.
pub fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.i)
}

fn is_default_domain(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx")
}

/// The integer type a QuantizeLinear produces or a DequantizeLinear reads, where the
/// graph says; the operators' defaults otherwise (uint8 without a zero point).
fn quantized_type(node: &NodeProto, types: &HashMap<&str, i32>) -> i32 {
    let typed = |i: usize| {
        node.input
            .get(i)
            .filter(|n| !n.is_empty())
            .and_then(|n| types.get(n.as_str()).copied())
    };
    match node.op_type() {
        // Dequantize: the input itself is the quantized tensor.
        "DequantizeLinear" => typed(0).or_else(|| typed(2)),
        // Quantize: the zero point's type, or (opset 21) the `output_dtype` attribute.
        _ => typed(2).or_else(|| {
            int_attr(node, "output_dtype")
                .filter(|&t| t != 0)
                .and_then(|t| i32::try_from(t).ok())
        }),
    }
    .unwrap_or(DataType::Uint8 as i32)
}

fn collect(graph: &GraphProto, evidence: &mut Evidence) {
    // Element types by tensor name, across subgraphs too: a Dequantize in a branch may
    // read a tensor of the enclosing graph.
    let all = tensor::graphs(graph);
    let types: HashMap<&str, i32> = all
        .iter()
        .flat_map(|g| tensor::typed_values(g))
        .filter_map(|(name, info)| match info.r#type?.value? {
            crate::proto::type_proto::Value::TensorType(t) => Some((name, t.elem_type())),
            _ => None,
        })
        .collect();
    for node in all.iter().flat_map(|g| &g.node) {
        let op = node.op_type();
        if NBITS_OPS.contains(&op) && node.domain() == "com.microsoft" {
            match int_attr(node, "bits").unwrap_or(4) {
                b if b <= 4 => evidence.nbits4.add((op.to_owned(), b)),
                b => evidence.int8_ops.add(format!("{op} (bits={b})")),
            }
        } else if matches!(op, "QuantizeLinear" | "DequantizeLinear")
            && (is_default_domain(node) || node.domain() == "com.microsoft")
        {
            let t = quantized_type(node, &types);
            match DataType::try_from(t) {
                Ok(DataType::Int4 | DataType::Uint4) => {
                    evidence.qdq4.add(op.to_owned());
                    note_type(&mut evidence.qdq4_types, t);
                }
                Ok(DataType::Int8 | DataType::Uint8) => {
                    evidence.qdq8.add(op.to_owned());
                    note_type(&mut evidence.qdq8_types, t);
                }
                // int32 biases, 16-bit or float8 quantization: not evidence of int8/int4.
                _ => {}
            }
        } else if INT8_OPS.contains(&op) || op.starts_with("QLinear") {
            evidence.int8_ops.add(op.to_owned());
        }
    }
}

/// `QDQ: 12 QuantizeLinear and 20 DequantizeLinear nodes with uint8/int8`.
fn qdq_phrase(tally: &Tally<String>, types: &[String]) -> Option<String> {
    if tally.is_empty() {
        return None;
    }
    let parts: Vec<String> = tally.0.iter().map(|(op, n)| format!("{n} {op}")).collect();
    Some(format!(
        "QDQ: {} {} with {}",
        parts.join(" and "),
        nodes(tally.total()),
        types.join("/")
    ))
}

/// Detects the precision of `model` from its operators and initializers.
pub fn detect(model: &ModelProto) -> Result<PrecisionReport, Error> {
    let graph = crate::graph_of(model)?;
    let weight_bytes_by_type = parameters(model)?.bytes_by_type;
    let mut evidence = Evidence::default();
    collect(graph, &mut evidence);

    let join =
        |parts: [Option<String>; 2]| parts.into_iter().flatten().collect::<Vec<_>>().join("; ");
    let (precision, reason) = if !evidence.nbits4.is_empty() || !evidence.qdq4.is_empty() {
        // "14 MatMulNBits nodes with bits=4"
        let nbits: Vec<String> = evidence
            .nbits4
            .0
            .iter()
            .map(|((op, bits), n)| format!("{n} {op} {} with bits={bits}", nodes(*n)))
            .collect();
        let nbits = Some(nbits.join(", ")).filter(|s| !s.is_empty());
        let qdq = qdq_phrase(&evidence.qdq4, &evidence.qdq4_types);
        (Precision::Int4, join([nbits, qdq]))
    } else if !evidence.qdq8.is_empty() || !evidence.int8_ops.is_empty() {
        let qdq = qdq_phrase(&evidence.qdq8, &evidence.qdq8_types);
        (Precision::Int8, join([evidence.int8_ops.ops_phrase(), qdq]))
    } else {
        float_precision(&weight_bytes_by_type)
    };
    Ok(PrecisionReport {
        precision,
        reason,
        weight_bytes_by_type,
    })
}

/// fp16 when 16-bit floats hold more initializer bytes than 32/64-bit floats.
fn float_precision(by_type: &BTreeMap<String, u64>) -> (Precision, String) {
    let bytes = |names: &[&'static str]| -> (u64, Vec<&'static str>) {
        let present: Vec<&'static str> = names
            .iter()
            .copied()
            .filter(|n| by_type.get(*n).is_some_and(|&b| b > 0))
            .collect();
        (
            present.iter().filter_map(|n| by_type.get(*n)).sum(),
            present,
        )
    };
    let (half, half_types) = bytes(&["float16", "bfloat16"]);
    let (full, full_types) = bytes(&["float", "double"]);
    let total: u64 = by_type.values().sum();
    if half == 0 && full == 0 {
        return (
            Precision::Fp32,
            "no float initializers and no quantization operators: fp32 assumed".to_owned(),
        );
    }
    let (precision, amount, names) = if half > full {
        (Precision::Fp16, half, half_types)
    } else {
        // ONNX calls float32 "float": say "float32", which people read unambiguously.
        let names = full_types
            .into_iter()
            .map(|n| if n == "float" { "float32" } else { "float64" })
            .collect();
        (Precision::Fp32, full, names)
    };
    let reason = format!(
        "{} initializers: {} of {}",
        names.join("/"),
        human_bytes(amount),
        human_bytes(total)
    );
    (precision, reason)
}
