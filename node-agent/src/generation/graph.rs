//! The decoder graph convention, checked at load: the layout Optimum, transformers.js
//! and onnxruntime-genai export decoder-only models in. Inputs `input_ids` and
//! `attention_mask` [batch, sequence] (int64 or int32, the same type), `position_ids`
//! [batch, sequence] when the graph takes it, and `past_key_values.{i}.key|value`
//! [batch, kv_heads, past, head_dim] float32 for layers 0..n; outputs `logits`
//! [batch, sequence, vocab] and `present.{i}.key|value` for every past. Grouped-query and
//! multi-query attention show as kv_heads below the attention heads, which the graph
//! alone knows; the cache is what the page must hold.
//!
//! An encoder-decoder (Whisper's layout, as Optimum exports it) names its own cache
//! `past_key_values.{i}.decoder.key|value` (outputs `present.{i}.decoder.*`) and takes
//! the encoder's keys and values as `past_key_values.{i}.encoder.key|value`; its encoder
//! ([`encoder_layout`]) takes `input_features` [batch, mels, frames] and gives
//! `present.{i}.encoder.key|value` for every decoder layer, computed once per sequence.

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
    #[error(
        "the graph mixes past_key_values.{{i}}.key|value with past_key_values.{{i}}.decoder|encoder.*: a decoder-only graph takes the first, an encoder-decoder the second"
    )]
    MixedCache,
    #[error(
        "layer {0} lacks its cross-attention input past_key_values.{0}.encoder.{1} (an encoder-decoder feeds every layer the encoder's keys and values)"
    )]
    NoCross(u32, &'static str),
    #[error("the encoder: {0}")]
    Encoder(String),
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
    let (mut plain, mut split) = (false, false);
    for t in &inputs {
        let Some(rest) = t.name.strip_prefix("past_key_values.") else {
            if !["input_ids", "attention_mask", "position_ids"].contains(&t.name.as_str()) {
                return Err(GraphError::UnknownInput(t.name.clone()));
            }
            continue;
        };
        let kind = |k: &str| k == "key" || k == "value";
        let parts: Vec<&str> = rest.split('.').collect();
        let (layer, part) = match parts.as_slice() {
            [i, k] if kind(k) => (i.parse::<u32>().ok(), None),
            [i, p @ ("decoder" | "encoder"), k] if kind(k) => (i.parse::<u32>().ok(), Some(*p)),
            _ => (None, None),
        };
        let layer = layer.ok_or_else(|| GraphError::UnknownInput(t.name.clone()))?;
        match part {
            None => plain = true,
            Some(p) => split |= p == "decoder" || p == "encoder",
        }
        if part != Some("encoder") {
            layers.insert(layer);
        }
    }
    if plain && split {
        return Err(GraphError::MixedCache);
    }
    let infix = if split { ".decoder" } else { "" };
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
            let name = format!("past_key_values.{layer}{infix}.{kind}");
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
            let present = format!("present.{layer}{infix}.{kind}");
            if !outputs.iter().any(|o| o.name == present) {
                return Err(GraphError::NoPresent(
                    format!("past_key_values.{layer}{infix}.{kind}"),
                    present,
                ));
            }
            if split {
                check_cross(&inputs, layer, kind)?;
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
        cross_attention: split,
    })
}

/// An encoder-decoder's cross-attention input of `layer`: float32 [batch, heads,
/// encoder_seq, head_dim] with heads and head_dim fixed.
fn check_cross(inputs: &[TensorInfo], layer: u32, kind: &'static str) -> Result<(), GraphError> {
    let name = format!("past_key_values.{layer}.encoder.{kind}");
    let t = inputs
        .iter()
        .find(|t| t.name == name)
        .ok_or(GraphError::NoCross(layer, kind))?;
    if t.datatype != "float" {
        return Err(GraphError::Type {
            name,
            datatype: t.datatype.clone(),
            wanted: "cross-attention inputs must be float32",
        });
    }
    let dims = t.shape.as_deref().unwrap_or_default();
    if dims.len() != 4
        || dims.get(1).and_then(fixed).is_none()
        || dims.get(3).and_then(fixed).is_none()
    {
        return Err(GraphError::Shape {
            name,
            shape: shape_text(t),
            wanted: "cross-attention inputs are [batch, heads, encoder_seq, head_dim] with heads and head_dim fixed",
        });
    }
    Ok(())
}

/// What an encoder-decoder's encoder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderLayout {
    /// Mel bands of `input_features` (its second dimension).
    pub mels: u32,
    /// Frames (its third), when the graph fixes them.
    pub frames: Option<u32>,
    /// Decoder layers it makes a cross-attention cache for.
    pub layers: u32,
}

/// The layout of `model` as an encoder: input `input_features` float32 [batch, mels,
/// frames] with mels fixed; outputs `present.{i}.encoder.key|value` for layers 0..n.
pub fn encoder_layout(model: &ModelProto) -> Result<EncoderLayout, GraphError> {
    let (inputs, outputs) =
        webaccel_onnx::boundary(model).map_err(|e| GraphError::Read(e.to_string()))?;
    let bad = |m: String| GraphError::Encoder(m);
    let features = inputs
        .iter()
        .find(|t| t.name == "input_features")
        .ok_or_else(|| bad("it has no input 'input_features'".into()))?;
    if let Some(other) = inputs.iter().find(|t| t.name != "input_features") {
        return Err(bad(format!(
            "unexpected input '{}': an encoder takes only input_features",
            other.name
        )));
    }
    let dims = features.shape.as_deref().unwrap_or_default();
    let mels = dims.get(1).and_then(fixed);
    if features.datatype != "float" || dims.len() != 3 || mels.is_none() {
        return Err(bad(format!(
            "input_features is {}; it must be float32 [batch, mels, frames] with mels fixed",
            features
        )));
    }
    let has = |name: String| outputs.iter().any(|o| o.name == name);
    let layers = (0u32..)
        .take_while(|i| has(format!("present.{i}.encoder.key")))
        .count();
    if layers == 0 {
        return Err(bad(
            "it has no present.{i}.encoder.key|value outputs (the decoder's cross-attention cache)"
                .into(),
        ));
    }
    if let Some(i) = (0..layers).find(|i| !has(format!("present.{i}.encoder.value"))) {
        return Err(bad(format!("it has no output 'present.{i}.encoder.value'")));
    }
    let narrow = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(EncoderLayout {
        mels: mels.map_or(0, narrow),
        frames: dims.get(2).and_then(fixed).map(narrow),
        layers: u32::try_from(layers).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests;
