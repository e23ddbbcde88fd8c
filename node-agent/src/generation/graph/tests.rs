//! The convention check on the fixture decoder and on graphs that break it one way each.

use webaccel_onnx::proto::tensor_proto::DataType;
use webaccel_onnx::proto::tensor_shape_proto::{Dimension, dimension::Value as DimValue};
use webaccel_onnx::proto::{GraphProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto};

use super::*;

/// A dimension: a number, or a symbolic name for negative ones.
fn dim(d: i64) -> Dimension {
    Dimension {
        value: Some(if d < 0 {
            DimValue::DimParam(format!("d{}", -d))
        } else {
            DimValue::DimValue(d)
        }),
        denotation: None,
    }
}

fn info(name: &str, elem: DataType, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto {
                    dim: dims.iter().copied().map(dim).collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// A decoder's boundary: `layers` layers of [batch, kv_heads, past, head_dim] caches.
fn decoder(layers: u32, kv_heads: i64, head_dim: i64, vocab: i64) -> ModelProto {
    let mut input = vec![
        info("input_ids", DataType::Int64, &[-1, -2]),
        info("attention_mask", DataType::Int64, &[-1, -3]),
        info("position_ids", DataType::Int64, &[-1, -2]),
    ];
    let mut output = vec![info("logits", DataType::Float, &[-1, -2, vocab])];
    for i in 0..layers {
        for kind in ["key", "value"] {
            let dims = [-1, kv_heads, -4, head_dim];
            input.push(info(
                &format!("past_key_values.{i}.{kind}"),
                DataType::Float,
                &dims,
            ));
            output.push(info(&format!("present.{i}.{kind}"), DataType::Float, &dims));
        }
    }
    ModelProto {
        graph: Some(GraphProto {
            input,
            output,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn inputs(model: &mut ModelProto) -> &mut Vec<ValueInfoProto> {
    &mut model.graph.as_mut().expect("graph").input
}

#[test]
fn the_fixture_decoder_follows_the_convention() {
    for file in ["decoder/model.onnx", "decoder_external/model.onnx"] {
        let path = format!(
            "{}/tests/fixtures/models/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).expect("run tests/fixtures/make_decoder.py");
        let model = webaccel_onnx::parse_with_external_data(&bytes).expect("parse");
        let layout = decoder_layout(&model).expect("a decoder");
        assert_eq!(
            layout,
            DecoderLayout {
                layers: 2,
                kv_heads: 2,
                head_dim: 16,
                vocab: 384,
                ids_type: "int64".into(),
                position_ids: true,
                cross_attention: false,
            },
            "{file}"
        );
    }
}

fn fixture_model(file: &str) -> ModelProto {
    let path = format!(
        "{}/tests/fixtures/models/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).expect("run the fixture scripts");
    webaccel_onnx::parse_with_external_data(&bytes).expect("parse")
}

#[test]
fn an_encoder_decoder_is_read_with_its_cross_attention_and_its_encoder() {
    let layout = decoder_layout(&fixture_model("whisper/model.onnx")).expect("a decoder");
    assert_eq!(
        (
            layout.layers,
            layout.kv_heads,
            layout.head_dim,
            layout.vocab
        ),
        (2, 4, 16, 320)
    );
    assert!(layout.cross_attention);
    let encoder = encoder_layout(&fixture_model("whisper/encoder_model.onnx")).expect("an encoder");
    assert_eq!(
        encoder,
        EncoderLayout {
            mels: 80,
            frames: Some(200),
            layers: 2
        }
    );
    // A decoder is no encoder, and a decoder-only graph has no cross-attention.
    let err = encoder_layout(&fixture_model("decoder/model.onnx")).unwrap_err();
    assert!(
        err.to_string().contains("no input 'input_features'"),
        "{err}"
    );
    assert!(
        !decoder_layout(&fixture_model("decoder/model.onnx"))
            .unwrap()
            .cross_attention
    );
    // An encoder-decoder missing a layer's cross input, and a graph mixing both namings.
    let mut m = fixture_model("whisper/model.onnx");
    inputs(&mut m).retain(|i| i.name() != "past_key_values.1.encoder.value");
    assert_eq!(
        decoder_layout(&m).unwrap_err(),
        GraphError::NoCross(1, "value")
    );
    let mut m = fixture_model("whisper/model.onnx");
    inputs(&mut m).push(info(
        "past_key_values.0.key",
        DataType::Float,
        &[-1, 4, -4, 16],
    ));
    assert_eq!(decoder_layout(&m).unwrap_err(), GraphError::MixedCache);
}

#[test]
fn grouped_query_attention_and_no_position_ids_are_fine() {
    let mut model = decoder(3, 1, 64, 32_000);
    inputs(&mut model).retain(|i| i.name() != "position_ids");
    let layout = decoder_layout(&model).expect("a decoder");
    assert_eq!(
        (layout.layers, layout.kv_heads, layout.head_dim),
        (3, 1, 64)
    );
    assert!(!layout.position_ids);
}

#[test]
fn each_break_of_the_convention_is_refused_with_its_reason() {
    let refused = |model: ModelProto| decoder_layout(&model).unwrap_err().to_string();

    let mut m = decoder(2, 2, 16, 384);
    inputs(&mut m).retain(|i| i.name() != "attention_mask");
    assert!(refused(m).contains("no input 'attention_mask'"));

    let mut m = decoder(2, 2, 16, 384);
    inputs(&mut m).retain(|i| !i.name().starts_with("past_key_values."));
    assert!(refused(m).contains("no KV cache"));

    let mut m = decoder(3, 2, 16, 384);
    inputs(&mut m).retain(|i| !i.name().starts_with("past_key_values.1."));
    assert!(refused(m).contains("skip layer 1"));

    let mut m = decoder(2, 2, 16, 384);
    inputs(&mut m).retain(|i| i.name() != "past_key_values.1.value");
    assert!(refused(m).contains("layer 1 lacks its value"));

    let mut m = decoder(2, 2, 16, 384);
    m.graph
        .as_mut()
        .expect("graph")
        .output
        .retain(|o| o.name() != "present.0.key");
    assert!(refused(m).contains("no matching output 'present.0.key'"));

    let mut m = decoder(2, 2, 16, 384);
    inputs(&mut m)[0] = info("input_ids", DataType::Float, &[-1, -2]);
    assert!(refused(m).contains("input 'input_ids' is float"));

    let mut m = decoder(2, 2, 16, 384);
    inputs(&mut m)[1] = info("attention_mask", DataType::Int32, &[-1, -3]);
    assert!(refused(m).contains("must have one type"));

    let mut m = decoder(2, 2, 16, 384);
    let last = inputs(&mut m).len() - 1;
    inputs(&mut m)[last] = info("past_key_values.1.value", DataType::Float, &[-1, 4, -4, 16]);
    assert!(refused(m).contains("every cache tensor must have one shape"));

    let mut m = decoder(2, 2, 16, 384);
    let last = inputs(&mut m).len() - 1;
    inputs(&mut m)[last] = info(
        "past_key_values.1.value",
        DataType::Float16,
        &[-1, 2, -4, 16],
    );
    assert!(refused(m).contains("fp16 cache graphs are not supported"));

    let mut m = decoder(2, -5, 16, 384);
    assert!(refused(m.clone()).contains("kv_heads and head_dim fixed"));
    m = decoder(2, 2, 16, -5);
    assert!(refused(m).contains("vocab fixed"));

    let mut m = decoder(2, 2, 16, 384);
    inputs(&mut m).push(info("token_type_ids", DataType::Int64, &[-1, -2]));
    assert!(refused(m).contains("unexpected input 'token_type_ids'"));

    let mut m = decoder(2, 2, 16, 384);
    m.graph
        .as_mut()
        .expect("graph")
        .output
        .retain(|o| o.name() != "logits");
    assert!(refused(m).contains("no output 'logits'"));
}
