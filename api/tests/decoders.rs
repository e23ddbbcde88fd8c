//! Property tests of every decoder that reads untrusted bytes: the bridge's wire frames,
//! the KServe v2 JSON and binary request bodies, and the tensor conversions. Each runs on
//! 100,000 generated inputs (valid, truncated, oversized, mutated; shapes whose element
//! count overflows; size mismatches; NaN and infinities; bytes that are not UTF-8) and
//! must answer every one with a value or an error, never a panic. What an accepted input
//! decodes to is checked to be consistent (each tensor's bytes match its shape).

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};
use webaccel_api::generate::{GenerateInput, GenerateParams, GenerateRequest};
use webaccel_api::oip::{self, OutputEncoding};
use webaccel_api::wire::{self, ErrorFrame, InferRequest, InferResponse, Message};
use webaccel_api::{DataType, ErrorCategory, Tensor};

const CASES: u32 = 100_000;
const LIMIT: usize = 1 << 20;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn datatype() -> impl Strategy<Value = DataType> {
    proptest::sample::select(DataType::ALL.to_vec())
}

/// A tensor whose bytes match its shape (any bit pattern: NaN, infinities, denormals).
fn tensor() -> impl Strategy<Value = Tensor> {
    (
        datatype(),
        proptest::collection::vec(0i64..4, 0..4),
        "[a-z]{1,8}",
    )
        .prop_flat_map(|(dt, shape, name)| {
            let n = shape.iter().product::<i64>() as usize * dt.size();
            proptest::collection::vec(any::<u8>(), n).prop_map(move |data| {
                Tensor::from_bytes(name.clone(), dt, shape.clone(), Bytes::from(data)).unwrap()
            })
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            proptest::collection::vec(tensor(), 0..4),
            proptest::collection::vec("[a-z]{1,4}", 0..2),
            proptest::option::of(any::<u64>()),
            proptest::option::of("[a-z0-9-]{0,12}"),
        )
            .prop_map(|(inputs, outputs, timeout_ms, request_id)| {
                Message::Request(InferRequest {
                    model: "m".into(),
                    inputs,
                    outputs,
                    timeout_ms,
                    request_id,
                })
            }),
        (proptest::collection::vec(tensor(), 0..4), any::<f64>()).prop_map(|(outputs, ms)| {
            Message::Response(InferResponse {
                model: "m".into(),
                backend: "wasm".into(),
                compute_ms: if ms.is_finite() { ms } else { 0.0 },
                page_ms: None,
                stages: Default::default(),
                outputs,
            })
        }),
        ".{0,40}".prop_map(|m| Message::Error(ErrorFrame::new(ErrorCategory::Internal, m))),
        Just(Message::Cancel),
        ".{0,40}".prop_map(|text| Message::Generate(GenerateRequest {
            model: "m".into(),
            input: GenerateInput::Text { text },
            params: GenerateParams::default(),
            timeout_ms: None,
            request_id: None,
        })),
    ]
}

/// Every tensor a decoder hands out must hold exactly the bytes its shape says.
fn consistent(ts: &[Tensor]) -> bool {
    ts.iter()
        .all(|t| Tensor::byte_len_for(&t.name, t.datatype, &t.shape).ok() == Some(t.data.len()))
}

fn check_decoded(frame: Vec<u8>) {
    match wire::decode(Bytes::from(frame)) {
        Ok((_, Message::Request(r))) => assert!(consistent(&r.inputs)),
        Ok((_, Message::Response(r))) => assert!(consistent(&r.outputs)),
        Ok((
            _,
            Message::Error(_) | Message::Cancel | Message::Generate(_) | Message::Generation(_),
        )) => {}
        Err(e) => assert!(!e.reason.is_empty()),
    }
}

/// How a valid frame gets damaged.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    HeaderLength(u32),
    Append(Vec<u8>),
    Kind(u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
        any::<u32>().prop_map(Damage::HeaderLength),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
        any::<u8>().prop_map(Damage::Kind),
    ]
}

fn apply(mut frame: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::Truncate(n) => frame.truncate(n % (frame.len() + 1)),
        Damage::Flip(i, b) => {
            let i = i % frame.len();
            frame[i] ^= b | 1;
        }
        Damage::HeaderLength(n) => frame[16..20].copy_from_slice(&n.to_le_bytes()),
        Damage::Append(extra) => frame.extend_from_slice(extra),
        Damage::Kind(k) => frame[4] = *k,
    }
    frame
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wire_frames_roundtrip(id in any::<u64>(), msg in message()) {
        let frame = wire::encode(id, &msg);
        let (got_id, back) = wire::decode(Bytes::from(frame)).unwrap();
        prop_assert_eq!(got_id, id);
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn random_bytes_never_panic_the_frame_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(wire::MAGIC);
        }
        check_decoded(bytes);
    }

    #[test]
    fn damaged_frames_are_refused_or_consistent(id in any::<u64>(), msg in message(), d in damage()) {
        check_decoded(apply(wire::encode(id, &msg), &d));
    }
}

/// A KServe input whose every part may be wrong.
fn input_json() -> impl Strategy<Value = (Value, Vec<u8>)> {
    let shape = prop_oneof![
        proptest::collection::vec(0i64..5, 0..4).prop_map(|s| json!(s)),
        proptest::collection::vec(any::<i64>(), 0..4).prop_map(|s| json!(s)),
        Just(json!([i64::MAX, i64::MAX])),
        Just(json!([4_611_686_018_427_387_904i64, 4])),
        Just(json!("x")),
    ];
    let datatype = prop_oneof![
        datatype().prop_map(|d| d.as_str().to_owned()),
        Just("BYTES".to_owned()),
        Just("FLOAT".to_owned()),
        Just(String::new()),
    ];
    let data = prop_oneof![
        proptest::collection::vec(any::<f64>(), 0..12).prop_map(|v| json!(
            v.into_iter()
                .map(|x| if x.is_finite() {
                    json!(x)
                } else {
                    json!(x.to_string())
                })
                .collect::<Vec<_>>()
        )),
        proptest::collection::vec(any::<i64>(), 0..12).prop_map(|v| json!(v)),
        proptest::collection::vec(any::<bool>(), 0..12).prop_map(|v| json!(v)),
        proptest::collection::vec(proptest::collection::vec(any::<i8>(), 0..4), 0..4)
            .prop_map(|v| json!(v)),
        Just(json!(["NaN", "Infinity", null])),
        Just(json!(["1e309", 1.7976931348623157e308, -0.0])),
        Just(Value::Null),
    ];
    let binary = prop_oneof![
        Just(None),
        (0u64..64).prop_map(Some),
        any::<u64>().prop_map(Some),
    ];
    (
        shape,
        datatype,
        data,
        binary,
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(shape, datatype, data, binary, bytes)| {
            let mut input = json!({"name": "x", "shape": shape, "datatype": datatype});
            match binary {
                Some(size) => input["parameters"] = json!({"binary_data_size": size}),
                None => input["data"] = data,
            }
            (input, bytes)
        })
}

fn check_parsed(body: &Bytes, header: Option<&str>) {
    match oip::parse_request("m", body, header, LIMIT) {
        Ok(p) => {
            assert!(consistent(&p.request.inputs));
            assert!(p.request.inputs.iter().all(|t| t.data.len() <= LIMIT));
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn kserve_bodies_of_any_shape_get_a_value_or_an_error(
        inputs in proptest::collection::vec(input_json(), 0..4),
        binary_output in any::<bool>(),
        header_mode in 0u8..4,
        cut in any::<usize>(),
    ) {
        let request = json!({"inputs": inputs.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(),
                             "parameters": {"binary_data_output": binary_output}});
        let mut body = serde_json::to_vec(&request).unwrap();
        let json_len = body.len();
        for (_, tail) in &inputs {
            body.extend_from_slice(tail);
        }
        let header = match header_mode {
            0 => None,
            1 => Some(json_len.to_string()),
            2 => Some((cut % (body.len() + 2)).to_string()),
            _ => Some("-1".to_owned()),
        };
        if header_mode == 2 {
            body.truncate(cut % (body.len() + 1));
        }
        check_parsed(&Bytes::from(body), header.as_deref());
    }

    #[test]
    fn raw_bytes_and_broken_utf8_get_an_error_not_a_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        header in proptest::option::of(0usize..400),
    ) {
        let header = header.map(|h| h.to_string());
        check_parsed(&Bytes::from(bytes), header.as_deref());
    }

    #[test]
    fn responses_roundtrip_through_the_binary_extension(outputs in proptest::collection::vec(tensor(), 0..4), default_binary in any::<bool>()) {
        // Names must be unique to be told apart.
        let outputs: Vec<Tensor> = outputs.into_iter().enumerate().map(|(k, mut t)| { t.name = format!("o{k}"); t }).collect();
        let resp = InferResponse { model: "m".into(), backend: "wasm".into(), compute_ms: 0.0, page_ms: None, stages: Default::default(), outputs };
        let encoding = OutputEncoding { default_binary, per_output: Default::default() };
        let enc = oip::encode_response("1", None, &resp, &encoding, Default::default());
        let header = enc.header_length.map(|n| n.to_string());
        let parsed = oip::parse_response(&Bytes::from(enc.body), header.as_deref(), LIMIT);
        if default_binary {
            // Binary keeps every bit, NaN payloads included.
            prop_assert_eq!(parsed.unwrap().1, resp.outputs);
        } else if let Err(e) = parsed {
            // JSON has no NaN or infinity: those become null and are refused on the way
            // back, with the reason.
            prop_assert!(e.message.contains("(null) is not a valid"), "{}", e.message);
        }
    }

    #[test]
    fn tensor_json_conversions_never_panic(dt in datatype(), shape in proptest::collection::vec(any::<i64>(), 0..4), data in input_json()) {
        let json_data = data.0.get("data").cloned().unwrap_or(Value::Null);
        if let Ok(t) = Tensor::from_json("x", dt, shape.clone(), &json_data) {
            prop_assert!(consistent(std::slice::from_ref(&t)));
            let again = Tensor::from_json("x", dt, shape.clone(), &t.to_json_data());
            // Finite values survive a JSON round trip exactly (FP16/FP32 are widened).
            if let Ok(again) = again {
                prop_assert_eq!(again.data.len(), t.data.len());
            }
        }
        let _ = Tensor::byte_len_for("x", dt, &shape);
    }

    #[test]
    fn any_bit_pattern_converts_to_json(t in tensor()) {
        let v = t.to_json_data();
        let n = v.as_array().unwrap().len();
        prop_assert_eq!(n, t.len());
    }
}
