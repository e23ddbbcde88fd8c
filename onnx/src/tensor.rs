//! Tensor sizes, element type names and the places a graph states a tensor's type.

use std::collections::HashMap;

use serde::Serialize;

use crate::proto::tensor_proto::{DataLocation, DataType};
use crate::proto::tensor_shape_proto::dimension::Value as DimValue;
use crate::proto::{
    GraphProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};

/// Width of one element in bits; `None` for strings and unknown types, whose size the
/// type alone does not give.
pub(crate) fn element_bits(data_type: i32) -> Option<u64> {
    use DataType::*;
    Some(match DataType::try_from(data_type).ok()? {
        Uint2 | Int2 => 2,
        Uint4 | Int4 | Float4e2m1 => 4,
        Float6e2m3 | Float6e3m2 => 6,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => 8,
        Uint16 | Int16 | Float16 | Bfloat16 => 16,
        Float | Int32 | Uint32 => 32,
        Double | Int64 | Uint64 | Complex64 => 64,
        Complex128 => 128,
        String | Undefined => return None,
    })
}

/// The ONNX name of an element type in lower case (`float`, `float16`, `int8`), as
/// `onnx.TensorProto.DataType` spells it.
pub fn type_name(data_type: i32) -> String {
    DataType::try_from(data_type)
        .map(|t| t.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| format!("type{data_type}"))
}

/// Bytes a tensor's values take: elements times width, from its dims (sub-byte types
/// are packed, so the last byte may be partly used); strings count their bytes. The
/// dims are used rather than the stored fields so that the figure does not depend on
/// whether the exporter wrote `raw_data` or the typed fields.
pub fn tensor_bytes(tensor: &TensorProto) -> u64 {
    let elements = tensor.dims.iter().fold(1u64, |n, &d| {
        n.saturating_mul(u64::try_from(d).unwrap_or(0))
    });
    match element_bits(tensor.data_type()) {
        Some(bits) => elements.saturating_mul(bits).div_ceil(8),
        None => tensor.string_data.iter().map(|s| s.len() as u64).sum(),
    }
}

/// Whether the tensor's values live in a file beside the model rather than in it.
pub(crate) fn is_external(tensor: &TensorProto) -> bool {
    tensor.data_location() == DataLocation::External || !tensor.external_data.is_empty()
}

/// The first tensor (initializer, sparse initializer or attribute value, in this graph
/// or a subgraph) whose data is stored outside the model file.
pub(crate) fn find_external(graph: &GraphProto) -> Option<String> {
    let sparse = graph
        .sparse_initializer
        .iter()
        .flat_map(|s| s.values.iter().chain(s.indices.iter()));
    if let Some(t) = graph
        .initializer
        .iter()
        .chain(sparse)
        .find(|t| is_external(t))
    {
        return Some(t.name().to_owned());
    }
    for node in &graph.node {
        for attr in &node.attribute {
            if let Some(t) = attr.t.iter().chain(&attr.tensors).find(|t| is_external(t)) {
                return Some(format!(
                    "{} (attribute of node '{}')",
                    t.name(),
                    node.name()
                ));
            }
            if let Some(found) = attr.g.iter().chain(&attr.graphs).find_map(find_external) {
                return Some(found);
            }
        }
    }
    None
}

/// This graph and every subgraph held by its nodes' attributes, depth first.
pub(crate) fn graphs(graph: &GraphProto) -> Vec<&GraphProto> {
    let mut out = vec![graph];
    let mut i = 0;
    while let Some(g) = out.get(i).copied() {
        for node in &g.node {
            for attr in &node.attribute {
                out.extend(attr.g.iter().chain(&attr.graphs));
            }
        }
        i += 1;
    }
    out
}

/// A value info stating `tensor`'s element type and dims, for a tensor known only as
/// data (an initializer or a Constant node's value).
pub(crate) fn value_info_of(name: &str, tensor: &TensorProto) -> ValueInfoProto {
    let dim = tensor
        .dims
        .iter()
        .map(|&d| crate::proto::tensor_shape_proto::Dimension {
            value: Some(DimValue::DimValue(d)),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: tensor.data_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// Whether a value info says what the value is (for a tensor: at least its element type).
pub(crate) fn has_type(info: &ValueInfoProto) -> bool {
    match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t.elem_type() != 0,
        Some(_) => true,
        None => false,
    }
}

/// Every typed value info the graph states, by tensor name: `value_info`, then graph
/// inputs and outputs (which win: they are the interface), then initializers and
/// Constant node values where nothing else gave a type.
pub(crate) fn typed_values(graph: &GraphProto) -> HashMap<&str, ValueInfoProto> {
    let mut out: HashMap<&str, ValueInfoProto> = HashMap::new();
    for info in graph
        .value_info
        .iter()
        .chain(&graph.input)
        .chain(&graph.output)
    {
        if has_type(info) {
            out.insert(info.name(), info.clone());
        }
    }
    for t in &graph.initializer {
        out.entry(t.name())
            .or_insert_with(|| value_info_of(t.name(), t));
    }
    for node in graph.node.iter().filter(|n| n.op_type() == "Constant") {
        let value = node.attribute.iter().find(|a| a.name() == "value");
        if let (Some(out_name), Some(t)) = (node.output.first(), value.and_then(|a| a.t.as_ref())) {
            out.entry(out_name.as_str())
                .or_insert_with(|| value_info_of(out_name, t));
        }
    }
    out
}

/// One dimension of a shape: a number, a symbolic name, or unknown (`null` in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Named(String),
    Unknown,
}

/// A tensor at a model's (or stage's) boundary, for people and `stages.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// Element type as ONNX names it in lower case (`float`, `int64`), or the kind of a
    /// non-tensor value (`sequence`, `map`, `optional`, `sparse_tensor`, `opaque`).
    pub datatype: String,
    /// `None` when not even the rank is known.
    pub shape: Option<Vec<Dim>>,
}

impl TensorInfo {
    pub(crate) fn from_value_info(info: &ValueInfoProto) -> Self {
        let (datatype, shape) = match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => (type_name(t.elem_type()), t.shape.as_ref()),
            Some(type_proto::Value::SparseTensorType(t)) => (
                format!("sparse_{}", type_name(t.elem_type())),
                t.shape.as_ref(),
            ),
            Some(type_proto::Value::SequenceType(_)) => ("sequence".to_owned(), None),
            Some(type_proto::Value::MapType(_)) => ("map".to_owned(), None),
            Some(type_proto::Value::OptionalType(_)) => ("optional".to_owned(), None),
            Some(type_proto::Value::OpaqueType(_)) => ("opaque".to_owned(), None),
            None => ("unknown".to_owned(), None),
        };
        let shape = shape.map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimValue::DimValue(v)) => Dim::Fixed(*v),
                    Some(DimValue::DimParam(p)) => Dim::Named(p.clone()),
                    None => Dim::Unknown,
                })
                .collect()
        });
        Self {
            name: info.name().to_owned(),
            datatype,
            shape,
        }
    }
}

impl std::fmt::Display for TensorInfo {
    /// `tokens: int64[1,8]`, with `?` for unknown dimensions.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.datatype)?;
        if let Some(shape) = &self.shape {
            let dims: Vec<String> = shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => v.to_string(),
                    Dim::Named(p) => p.clone(),
                    Dim::Unknown => "?".to_owned(),
                })
                .collect();
            write!(f, "[{}]", dims.join(","))?;
        }
        Ok(())
    }
}

/// Bytes for people: `512 B`, `7.3 kB`, `42.1 MB` (powers of 1000, one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    // Precision loss above 2^53 bytes does not matter for one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_dims_and_width() {
        let t = |dt: DataType, dims: Vec<i64>| TensorProto {
            dims,
            data_type: Some(dt as i32),
            ..Default::default()
        };
        assert_eq!(tensor_bytes(&t(DataType::Float, vec![16, 16])), 1024);
        assert_eq!(tensor_bytes(&t(DataType::Float16, vec![3])), 6);
        assert_eq!(tensor_bytes(&t(DataType::Int4, vec![3])), 2);
        assert_eq!(tensor_bytes(&t(DataType::Float, vec![])), 4, "a scalar");
        assert_eq!(tensor_bytes(&t(DataType::Int64, vec![0, 5])), 0);
        let mut s = t(DataType::String, vec![2]);
        s.string_data = vec![b"ab".to_vec(), b"cde".to_vec()];
        assert_eq!(tensor_bytes(&s), 5);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(7_300), "7.3 kB");
        assert_eq!(human_bytes(3_100_000), "3.1 MB");
        assert_eq!(human_bytes(999_999), "1.0 MB");
        assert_eq!(type_name(DataType::Float16 as i32), "float16");
    }
}
