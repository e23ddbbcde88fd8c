//! Tensors as they travel between webaccel's parts: a name, a datatype, a shape and the
//! raw little-endian element bytes, plus the conversion to and from the JSON form of the
//! KServe v2 / Open Inference Protocol.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Element types, named as in the Open Inference Protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    Uint8,
    #[serde(rename = "INT8")]
    Int8,
    #[serde(rename = "UINT16")]
    Uint16,
    #[serde(rename = "INT16")]
    Int16,
    #[serde(rename = "UINT32")]
    Uint32,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "UINT64")]
    Uint64,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "FP16")]
    Fp16,
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
}

impl DataType {
    pub const ALL: [DataType; 12] = [
        Self::Bool,
        Self::Uint8,
        Self::Int8,
        Self::Uint16,
        Self::Int16,
        Self::Uint32,
        Self::Int32,
        Self::Uint64,
        Self::Int64,
        Self::Fp16,
        Self::Fp32,
        Self::Fp64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::Uint8 | Self::Int8 => 1,
            Self::Uint16 | Self::Int16 | Self::Fp16 => 2,
            Self::Uint32 | Self::Int32 | Self::Fp32 => 4,
            Self::Uint64 | Self::Int64 | Self::Fp64 => 8,
        }
    }

    /// The Open Inference Protocol name (`FP32`, `INT64`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Int8 => "INT8",
            Self::Uint16 => "UINT16",
            Self::Int16 => "INT16",
            Self::Uint32 => "UINT32",
            Self::Int32 => "INT32",
            Self::Uint64 => "UINT64",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
        }
    }

    /// Parses an Open Inference Protocol name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// The name onnxruntime(-web) uses for this type (`float32`, `int64`, ...).
    pub fn ort_name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Uint8 => "uint8",
            Self::Int8 => "int8",
            Self::Uint16 => "uint16",
            Self::Int16 => "int16",
            Self::Uint32 => "uint32",
            Self::Int32 => "int32",
            Self::Uint64 => "uint64",
            Self::Int64 => "int64",
            Self::Fp16 => "float16",
            Self::Fp32 => "float32",
            Self::Fp64 => "float64",
        }
    }

    /// Parses an onnxruntime type name.
    pub fn from_ort_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.ort_name() == name)
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tensor is malformed. Every variant names the tensor so a caller can fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("tensor '{name}': shape {shape:?} has a negative dimension")]
    NegativeDim { name: String, shape: Vec<i64> },
    #[error("tensor '{name}': shape {shape:?} is too large")]
    ShapeOverflow { name: String, shape: Vec<i64> },
    #[error(
        "tensor '{name}': shape {shape:?} needs {expected} elements of {datatype} but data has {actual}"
    )]
    ElementCount {
        name: String,
        shape: Vec<i64>,
        datatype: DataType,
        expected: usize,
        actual: usize,
    },
    #[error(
        "tensor '{name}': shape {shape:?} of {datatype} needs {expected} bytes but got {actual}"
    )]
    ByteLength {
        name: String,
        shape: Vec<i64>,
        datatype: DataType,
        expected: usize,
        actual: usize,
    },
    #[error("tensor '{name}': element {index} ({value}) is not a valid {datatype}")]
    BadElement {
        name: String,
        index: usize,
        value: String,
        datatype: DataType,
    },
    #[error("tensor '{name}': 'data' must be an array (flat or nested), got {got}")]
    NotAnArray { name: String, got: &'static str },
}

/// A named tensor: shape plus little-endian element bytes (`FP16` as IEEE half bits,
/// `BOOL` as one byte 0 or 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// Number of elements a shape holds, or why it is invalid.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, TensorError> {
    let mut n: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| TensorError::NegativeDim {
            name: name.to_owned(),
            shape: shape.to_vec(),
        })?;
        n = n.checked_mul(d).ok_or_else(|| TensorError::ShapeOverflow {
            name: name.to_owned(),
            shape: shape.to_vec(),
        })?;
    }
    Ok(n)
}

impl Tensor {
    /// Builds a tensor from raw bytes, checking that their length matches the shape.
    pub fn from_bytes(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<i64>,
        data: Bytes,
    ) -> Result<Self, TensorError> {
        let name = name.into();
        let expected = Self::byte_len_for(&name, datatype, &shape)?;
        if data.len() != expected {
            return Err(TensorError::ByteLength {
                name,
                shape,
                datatype,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            name,
            datatype,
            shape,
            data,
        })
    }

    /// Bytes a tensor of this type and shape occupies.
    pub fn byte_len_for(
        name: &str,
        datatype: DataType,
        shape: &[i64],
    ) -> Result<usize, TensorError> {
        element_count(name, shape)?
            .checked_mul(datatype.size())
            .ok_or_else(|| TensorError::ShapeOverflow {
                name: name.to_owned(),
                shape: shape.to_vec(),
            })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.datatype.size()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Builds a tensor from the JSON `data` field of an Open Inference Protocol input.
    /// Nested arrays are flattened in row-major order, as Triton and KServe accept.
    pub fn from_json(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<i64>,
        data: &Value,
    ) -> Result<Self, TensorError> {
        let name = name.into();
        let expected = element_count(&name, &shape)?;
        // Sized by what was actually received, never by the (untrusted) shape.
        let mut flat = Vec::new();
        flatten(&name, data, &mut flat)?;
        if flat.len() != expected {
            return Err(TensorError::ElementCount {
                name,
                shape,
                datatype,
                expected,
                actual: flat.len(),
            });
        }
        let mut out = Vec::with_capacity(flat.len() * datatype.size());
        for (index, v) in flat.iter().enumerate() {
            if !encode_element(datatype, v, &mut out) {
                return Err(TensorError::BadElement {
                    name,
                    index,
                    value: v.to_string(),
                    datatype,
                });
            }
        }
        Ok(Self {
            name,
            datatype,
            shape,
            data: Bytes::from(out),
        })
    }

    /// The elements as a flat JSON array (the Open Inference Protocol `data` field).
    /// Non-finite floats become `null`, as JSON has no NaN or infinity.
    pub fn to_json_data(&self) -> Value {
        let size = self.datatype.size();
        let values = self
            .data
            .chunks_exact(size)
            .map(|c| decode_element(self.datatype, c))
            .collect();
        Value::Array(values)
    }

    /// The elements widened to `f64`, for comparisons in tests and tools.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.to_json_data()
            .as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect())
            .unwrap_or_default()
    }
}

fn flatten<'a>(name: &str, v: &'a Value, out: &mut Vec<&'a Value>) -> Result<(), TensorError> {
    match v {
        Value::Array(items) => {
            for item in items {
                if item.is_array() {
                    flatten(name, item, out)?;
                } else {
                    out.push(item);
                }
            }
            Ok(())
        }
        other => Err(TensorError::NotAnArray {
            name: name.to_owned(),
            got: json_kind(other),
        }),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn encode_element(dt: DataType, v: &Value, out: &mut Vec<u8>) -> bool {
    fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Option<T> {
        if let Some(i) = v.as_i64() {
            T::try_from(i).ok()
        } else {
            v.as_u64().and_then(|u| T::try_from(u).ok())
        }
    }
    match dt {
        DataType::Bool => match v.as_bool() {
            Some(b) => out.push(u8::from(b)),
            None => return false,
        },
        DataType::Uint8 => match int::<u8>(v) {
            Some(x) => out.push(x),
            None => return false,
        },
        DataType::Int8 => match int::<i8>(v) {
            Some(x) => out.extend_from_slice(&x.to_le_bytes()),
            None => return false,
        },
        DataType::Uint16 => match int::<u16>(v) {
            Some(x) => out.extend_from_slice(&x.to_le_bytes()),
            None => return false,
        },
        DataType::Int16 => match int::<i16>(v) {
            Some(x) => out.extend_from_slice(&x.to_le_bytes()),
            None => return false,
        },
        DataType::Uint32 => match int::<u32>(v) {
            Some(x) => out.extend_from_slice(&x.to_le_bytes()),
            None => return false,
        },
        DataType::Int32 => match int::<i32>(v) {
            Some(x) => out.extend_from_slice(&x.to_le_bytes()),
            None => return false,
        },
        DataType::Uint64 => match int::<u64>(v) {
            Some(x) => out.extend_from_slice(&x.to_le_bytes()),
            None => return false,
        },
        DataType::Int64 => match int::<i64>(v) {
            Some(x) => out.extend_from_slice(&x.to_le_bytes()),
            None => return false,
        },
        DataType::Fp16 => match v.as_f64() {
            Some(x) => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            None => return false,
        },
        // Narrowing a JSON double to f32 is the conversion every client expects.
        #[allow(clippy::cast_possible_truncation)]
        DataType::Fp32 => match v.as_f64() {
            Some(x) => out.extend_from_slice(&(x as f32).to_le_bytes()),
            None => return false,
        },
        DataType::Fp64 => match v.as_f64() {
            Some(x) => out.extend_from_slice(&x.to_le_bytes()),
            None => return false,
        },
    }
    true
}

fn decode_element(dt: DataType, c: &[u8]) -> Value {
    fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    }
    fn float(x: f64) -> Value {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
    match dt {
        DataType::Bool => Value::Bool(c[0] != 0),
        DataType::Uint8 => c[0].into(),
        DataType::Int8 => i8::from_le_bytes(arr(c)).into(),
        DataType::Uint16 => u16::from_le_bytes(arr(c)).into(),
        DataType::Int16 => i16::from_le_bytes(arr(c)).into(),
        DataType::Uint32 => u32::from_le_bytes(arr(c)).into(),
        DataType::Int32 => i32::from_le_bytes(arr(c)).into(),
        DataType::Uint64 => u64::from_le_bytes(arr(c)).into(),
        DataType::Int64 => i64::from_le_bytes(arr(c)).into(),
        DataType::Fp16 => float(half::f16::from_le_bytes(arr(c)).to_f64()),
        DataType::Fp32 => float(f64::from(f32::from_le_bytes(arr(c)))),
        DataType::Fp64 => float(f64::from_le_bytes(arr(c))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(dt: DataType, shape: Vec<i64>, data: Value) -> Value {
        Tensor::from_json("x", dt, shape, &data)
            .unwrap()
            .to_json_data()
    }

    #[test]
    fn every_datatype_roundtrips_through_json() {
        assert_eq!(
            roundtrip(DataType::Fp32, vec![2], json!([1.5, -2.0])),
            json!([1.5, -2.0])
        );
        assert_eq!(
            roundtrip(DataType::Fp16, vec![2], json!([0.5, 2])),
            json!([0.5, 2.0])
        );
        assert_eq!(
            roundtrip(DataType::Fp64, vec![1], json!([0.1])),
            json!([0.1])
        );
        assert_eq!(
            roundtrip(DataType::Int64, vec![2], json!([i64::MIN, i64::MAX])),
            json!([i64::MIN, i64::MAX])
        );
        assert_eq!(
            roundtrip(DataType::Uint64, vec![1], json!([u64::MAX])),
            json!([u64::MAX])
        );
        assert_eq!(
            roundtrip(DataType::Int32, vec![2], json!([-7, 7])),
            json!([-7, 7])
        );
        assert_eq!(
            roundtrip(DataType::Uint8, vec![2], json!([0, 255])),
            json!([0, 255])
        );
        assert_eq!(
            roundtrip(DataType::Int8, vec![1], json!([-128])),
            json!([-128])
        );
        assert_eq!(
            roundtrip(DataType::Int16, vec![1], json!([-300])),
            json!([-300])
        );
        assert_eq!(
            roundtrip(DataType::Uint16, vec![1], json!([65535])),
            json!([65535])
        );
        assert_eq!(
            roundtrip(DataType::Uint32, vec![1], json!([4_000_000_000u64])),
            json!([4_000_000_000u64])
        );
        assert_eq!(
            roundtrip(DataType::Bool, vec![2], json!([true, false])),
            json!([true, false])
        );
    }

    #[test]
    fn nested_data_is_flattened_row_major() {
        assert_eq!(
            roundtrip(DataType::Int32, vec![2, 2], json!([[1, 2], [3, 4]])),
            json!([1, 2, 3, 4])
        );
    }

    #[test]
    fn fp32_bytes_are_little_endian() {
        let t = Tensor::from_json("x", DataType::Fp32, vec![1], &json!([1.0])).unwrap();
        assert_eq!(&t.data[..], &1.0f32.to_le_bytes());
    }

    #[test]
    fn wrong_element_count_names_the_tensor_and_counts() {
        let err =
            Tensor::from_json("input", DataType::Fp32, vec![2, 3], &json!([1, 2])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor 'input': shape [2, 3] needs 6 elements of FP32 but data has 2"
        );
    }

    #[test]
    fn out_of_range_and_wrong_kind_elements_are_refused() {
        let err = Tensor::from_json("b", DataType::Uint8, vec![1], &json!([256])).unwrap_err();
        assert!(
            matches!(err, TensorError::BadElement { index: 0, .. }),
            "{err}"
        );
        let err = Tensor::from_json("b", DataType::Bool, vec![1], &json!([1])).unwrap_err();
        assert!(matches!(err, TensorError::BadElement { .. }), "{err}");
        let err = Tensor::from_json("b", DataType::Int64, vec![1], &json!([1.5])).unwrap_err();
        assert!(matches!(err, TensorError::BadElement { .. }), "{err}");
        let err = Tensor::from_json("b", DataType::Fp32, vec![1], &json!(["x"])).unwrap_err();
        assert!(matches!(err, TensorError::BadElement { .. }), "{err}");
    }

    #[test]
    fn negative_and_overflowing_shapes_are_refused() {
        assert!(matches!(
            Tensor::from_json("s", DataType::Fp32, vec![-1], &json!([])),
            Err(TensorError::NegativeDim { .. })
        ));
        assert!(matches!(
            Tensor::byte_len_for("s", DataType::Fp64, &[i64::MAX, i64::MAX]),
            Err(TensorError::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn from_bytes_checks_length() {
        let err = Tensor::from_bytes("r", DataType::Int64, vec![2], Bytes::from(vec![0u8; 15]))
            .unwrap_err();
        assert!(matches!(
            err,
            TensorError::ByteLength {
                expected: 16,
                actual: 15,
                ..
            }
        ));
    }

    #[test]
    fn datatype_names_roundtrip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
            assert_eq!(DataType::from_ort_name(dt.ort_name()), Some(dt));
        }
        assert_eq!(DataType::parse("FLOAT"), None);
    }
}
