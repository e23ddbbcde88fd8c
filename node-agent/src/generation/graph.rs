//! The decoder graph convention, checked at load: the layout Optimum, transformers.js
//! and onnxruntime-genai export decoder-only models in. Inputs `input_ids` and
//! `attention_mask` [batch, sequence] (int64 or int32, the same type), `position_ids`
//! [batch, sequence] when the graph takes it, and `past_key_values.{i}.key|value`
//! [batch, kv_heads, past, head_dim] float32 for layers 0..n; outputs `logits`
//! [batch, sequence, vocab] and `present.{i}.key|value` for every past. Grouped-query and
//! multi-query attention show as kv_heads below the attention heads, which the graph
//! alone knows; the cache is what the page must hold.

use std::collections::BTreeSet;

use webaccel_onnx::{Dim, ModelProto, TensorInfo};

use crate::page::protocol::DecoderLayout;

/// Why a graph is not a decoder webaccel can generate with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error(
        "the graph has no input '{0}' (a decoder takes input_ids, attention_mask, position_ids and past_key_values.{{i}}.key|value)"
    )]
    MissingInput(&'static str),
    #[error("the graph has no output 'logits'")]
    NoLogits,
    #[error(
        "the graph takes no past_key_values.{{i}}.key|value inputs: it has no KV cache to feed back"
    )]
    NoCache,
    #[error("the cache inputs skip layer {0}: layers must be numbered 0..n")]
    LayerGap(u32),
    #[error("layer {0} lacks its {1} cache input")]
    HalfLayer(u32, &'static str),
    #[error("cache input '{0}' has no matching output '{1}'")]
    NoPresent(String, String),
    #[error("input '{name}' is {datatype}; {wanted}")]
    Type {
        name: String,
        datatype: String,
        wanted: &'static str,
    },
    #[error("'{name}' has shape {shape}; {wanted}")]
    Shape {
        name: String,
        shape: String,
        wanted: &'static str,
    },
    #[error(
        "cache input '{name}' is [batch, {kv_heads}, past, {head_dim}] but layer 0's key is [batch, {first_heads}, past, {first_dim}]: every cache tensor must have one shape"
    )]
    Mismatch {
        name: String,
        kv_heads: i64,
        head_dim: i64,
        first_heads: i64,
        first_dim: i64,
    },
    #[error(
        "unexpected input '{0}': webaccel feeds a decoder only input_ids, attention_mask, position_ids and past_key_values.*"
    )]
    UnknownInput(String),
    #[error("{0}")]
    Read(String),
}

fn shape_text(t: &TensorInfo) -> String {
    t.to_string()
        .split_once(':')
        .map_or_else(String::new, |(_, s)| s.trim().to_owned())
}

fn fixed(d: &Dim) -> Option<i64> {
    match d {
        Dim::Fixed(v) if *v > 0 => Some(*v),
        _ => None,
    }
}

/// The decoder layout of `model`, or why it does not follow the convention.
pub fn decoder_layout(model: &ModelProto) -> Result<DecoderLayout, GraphError> {
    let (inputs, outputs) =
        webaccel_onnx::boundary(model).map_err(|e| GraphError::Read(e.to_string()))?;
    let input = |name: &'static str| inputs.iter().find(|t| t.name == name);
    let ids = input("input_ids").ok_or(GraphError::MissingInput("input_ids"))?;
    let mask = input("attention_mask").ok_or(GraphError::MissingInput("attention_mask"))?;
    let positions = input("position_ids");
    let ids_type = ids.datatype.clone();
    for t in [Some(ids), Some(mask), positions].into_iter().flatten() {
        if t.datatype != "int64" && t.datatype != "int32" {
            return Err(GraphError::Type {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                wanted: "token inputs must be int64 or int32",
            });
        }
        if t.datatype != ids_type {
            return Err(GraphError::Type {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                wanted: "input_ids, attention_mask and position_ids must have one type",
            });
        }
        if t.shape.as_ref().is_some_and(|s| s.len() != 2) {
            return Err(GraphError::Shape {
                name: t.name.clone(),
                shape: shape_text(t),
                wanted: "token inputs are [batch, sequence]",
            });
        }
    }
    // The cache: layers numbered from 0, a key and a value each, one shape for all.
    let mut layers: BTreeSet<u32> = BTreeSet::new();
    for t in &inputs {
        let Some(rest) = t.name.strip_prefix("past_key_values.") else {
            if !["input_ids", "attention_mask", "position_ids"].contains(&t.name.as_str()) {
                return Err(GraphError::UnknownInput(t.name.clone()));
            }
            continue;
        };
        let layer = rest
            .split_once('.')
            .and_then(|(i, kind)| (kind == "key" || kind == "value").then_some(i))
            .and_then(|i| i.parse::<u32>().ok())
            .ok_or_else(|| GraphError::UnknownInput(t.name.clone()))?;
        layers.insert(layer);
    }
    if layers.is_empty() {
        return Err(GraphError::NoCache);
    }
    let count = u32::try_from(layers.len()).unwrap_or(u32::MAX);
    if let Some(gap) = (0..count).find(|i| !layers.contains(i)) {
        return Err(GraphError::LayerGap(gap));
    }
    let mut first: Option<(i64, i64)> = None;
    for layer in 0..count {
        for kind in ["key", "value"] {
            let name = format!("past_key_values.{layer}.{kind}");
            let t = inputs
                .iter()
                .find(|t| t.name == name)
                .ok_or(GraphError::HalfLayer(layer, kind))?;
            if t.datatype != "float" {
                return Err(GraphError::Type {
                    name,
                    datatype: t.datatype.clone(),
                    wanted: "the page keeps a float32 cache (fp16 cache graphs are not supported yet)",
                });
            }
            let dims = t.shape.as_deref().unwrap_or_default();
            let (Some(heads), Some(dim)) =
                (dims.get(1).and_then(fixed), dims.get(3).and_then(fixed))
            else {
                return Err(GraphError::Shape {
                    name,
                    shape: shape_text(t),
                    wanted: "cache inputs are [batch, kv_heads, past, head_dim] with kv_heads and head_dim fixed",
                });
            };
            if dims.len() != 4 {
                return Err(GraphError::Shape {
                    name,
                    shape: shape_text(t),
                    wanted: "cache inputs are [batch, kv_heads, past, head_dim]",
                });
            }
            match first {
                None => first = Some((heads, dim)),
                Some((h, d)) if (h, d) != (heads, dim) => {
                    return Err(GraphError::Mismatch {
                        name,
                        kv_heads: heads,
                        head_dim: dim,
                        first_heads: h,
                        first_dim: d,
                    });
                }
                Some(_) => {}
            }
            let present = format!("present.{layer}.{kind}");
            if !outputs.iter().any(|o| o.name == present) {
                return Err(GraphError::NoPresent(
                    format!("past_key_values.{layer}.{kind}"),
                    present,
                ));
            }
        }
    }
    let logits = outputs
        .iter()
        .find(|o| o.name == "logits")
        .ok_or(GraphError::NoLogits)?;
    let vocab = logits
        .shape
        .as_deref()
        .filter(|s| s.len() == 3)
        .and_then(|s| fixed(&s[2]))
        .ok_or_else(|| GraphError::Shape {
            name: "logits".into(),
            shape: shape_text(logits),
            wanted: "logits are [batch, sequence, vocab] with vocab fixed",
        })?;
    if logits.datatype != "float" {
        return Err(GraphError::Type {
            name: "logits".into(),
            datatype: logits.datatype.clone(),
            wanted: "logits must be float32",
        });
    }
    let (kv_heads, head_dim) = first.unwrap_or_default();
    let narrow = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(DecoderLayout {
        layers: count,
        kv_heads: narrow(kv_heads),
        head_dim: narrow(head_dim),
        vocab: narrow(vocab),
        ids_type,
        position_ids: positions.is_some(),
    })
}

#[cfg(test)]
mod tests;
