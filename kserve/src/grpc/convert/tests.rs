#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents: None,
    }
}

fn typed(
    name: &str,
    datatype: &str,
    shape: &[i64],
    fill: impl FnOnce(&mut InferTensorContents),
) -> InferInputTensor {
    let mut c = InferTensorContents::default();
    fill(&mut c);
    InferInputTensor {
        contents: Some(c),
        ..input(name, datatype, shape)
    }
}

fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "m".into(),
        inputs,
        raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
        ..Default::default()
    }
}

fn convert(req: ModelInferRequest) -> Result<Converted, ApiError> {
    request_from_proto(req, 1024)
}

fn refusal(req: ModelInferRequest) -> (ErrorCategory, String) {
    let e = convert(req).unwrap_err();
    (e.category, e.message)
}

#[test]
fn typed_inputs_become_little_endian_tensors() {
    let req = request(
        vec![
            typed("b", "BOOL", &[2], |c| c.bool_contents = vec![true, false]),
            typed("i8", "INT8", &[2], |c| c.int_contents = vec![-128, 127]),
            typed("i16", "INT16", &[1], |c| c.int_contents = vec![-300]),
            typed("i32", "INT32", &[1], |c| c.int_contents = vec![i32::MIN]),
            typed("i64", "INT64", &[1], |c| c.int64_contents = vec![i64::MIN]),
            typed("u8", "UINT8", &[1], |c| c.uint_contents = vec![255]),
            typed("u16", "UINT16", &[1], |c| c.uint_contents = vec![65535]),
            typed("u32", "UINT32", &[1], |c| c.uint_contents = vec![u32::MAX]),
            typed("u64", "UINT64", &[1], |c| {
                c.uint64_contents = vec![u64::MAX]
            }),
            typed("f32", "FP32", &[1, 2], |c| {
                c.fp32_contents = vec![1.5, -2.0]
            }),
            typed("f64", "FP64", &[1], |c| c.fp64_contents = vec![0.1]),
        ],
        vec![],
    );
    let c = convert(req).unwrap();
    assert!(!c.raw);
    let data: Vec<&[u8]> = c.request.inputs.iter().map(|t| &t.data[..]).collect();
    assert_eq!(data[0], [1, 0]);
    assert_eq!(data[1], [0x80, 0x7f]);
    assert_eq!(data[2], (-300i16).to_le_bytes());
    assert_eq!(data[3], i32::MIN.to_le_bytes());
    assert_eq!(data[4], i64::MIN.to_le_bytes());
    assert_eq!(data[5], [255]);
    assert_eq!(data[6], [255, 255]);
    assert_eq!(data[7], u32::MAX.to_le_bytes());
    assert_eq!(data[8], u64::MAX.to_le_bytes());
    assert_eq!(
        data[9],
        [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
    );
    assert_eq!(data[10], 0.1f64.to_le_bytes());
    assert_eq!(c.request.inputs[9].shape, [1, 2]);
    assert_eq!(c.request.inputs[9].datatype, DataType::Fp32);
}

#[test]
fn raw_inputs_are_taken_in_input_order_with_fp16() {
    let half = [0x00, 0x3c, 0x00, 0xc0]; // 1.0, -2.0
    let mut req = request(
        vec![input("h", "FP16", &[2]), input("x", "INT32", &[1])],
        vec![half.to_vec(), 7i32.to_le_bytes().to_vec()],
    );
    req.outputs = vec![
        super::super::proto::model_infer_request::InferRequestedOutputTensor {
            name: "y".into(),
            parameters: HashMap::new(),
        },
    ];
    req.id = "abc".into();
    let c = convert(req).unwrap();
    assert!(c.raw);
    assert_eq!(c.id, "abc");
    assert_eq!(&c.request.inputs[0].data[..], half);
    assert_eq!(c.request.inputs[0].datatype, DataType::Fp16);
    assert_eq!(&c.request.inputs[1].data[..], 7i32.to_le_bytes());
    assert_eq!(c.request.outputs, ["y"]);
}

#[test]
fn every_length_is_checked() {
    // Raw: entry count and each entry's length.
    let (cat, msg) = refusal(request(
        vec![input("a", "FP32", &[1]), input("b", "FP32", &[1])],
        vec![vec![0; 4]],
    ));
    assert_eq!(cat, ErrorCategory::BadRequest);
    assert!(
        msg.contains("raw_input_contents has 1 entries but the request has 2 inputs"),
        "{msg}"
    );
    let (_, msg) = refusal(request(
        vec![input("a", "FP32", &[2, 3])],
        vec![vec![0; 20]],
    ));
    assert!(
        msg.contains("needs 24 bytes but its raw_input_contents entry has 20"),
        "{msg}"
    );
    // Typed: element count.
    let (_, msg) = refusal(request(
        vec![typed("a", "FP32", &[2, 3], |c| {
            c.fp32_contents = vec![1.0, 2.0]
        })],
        vec![],
    ));
    assert_eq!(
        msg,
        "tensor 'a': shape [2, 3] needs 6 elements of FP32 but data has 2"
    );
    // Shapes: negative and overflowing.
    let (_, msg) = refusal(request(vec![input("n", "FP32", &[-1])], vec![vec![]]));
    assert!(msg.contains("negative dimension"), "{msg}");
    let (_, msg) = refusal(request(
        vec![input("o", "FP64", &[i64::MAX, i64::MAX])],
        vec![vec![]],
    ));
    assert!(msg.contains("too large"), "{msg}");
    // The tensor limit, before the data is looked at.
    let (cat, msg) = refusal(request(vec![input("big", "FP32", &[257])], vec![vec![]]));
    assert_eq!(cat, ErrorCategory::PayloadTooLarge);
    assert_eq!(msg, "input 'big' is 1028 bytes; the limit is 1024");
    // Elements out of their datatype's range.
    let (_, msg) = refusal(request(
        vec![typed("s", "INT8", &[2], |c| c.int_contents = vec![1, 200])],
        vec![],
    ));
    assert!(msg.contains("element 1 (200) is not a valid INT8"), "{msg}");
    let (_, msg) = refusal(request(
        vec![typed("s", "UINT16", &[1], |c| {
            c.uint_contents = vec![70000]
        })],
        vec![],
    ));
    assert!(
        msg.contains("element 0 (70000) is not a valid UINT16"),
        "{msg}"
    );
}

#[test]
fn mixed_missing_and_misplaced_contents_are_refused() {
    let (_, msg) = refusal(request(
        vec![typed("a", "FP32", &[1], |c| c.fp32_contents = vec![1.0])],
        vec![vec![0; 4]],
    ));
    assert!(
        msg.contains("has typed contents but the request uses raw_input_contents"),
        "{msg}"
    );
    let (_, msg) = refusal(request(vec![input("a", "FP32", &[1])], vec![]));
    assert!(msg.contains("has no contents"), "{msg}");
    let (_, msg) = refusal(request(
        vec![typed("a", "FP32", &[1], |c| c.fp64_contents = vec![1.0])],
        vec![],
    ));
    assert_eq!(
        msg,
        "input 'a': FP32 elements belong in fp32_contents, but fp64_contents holds data"
    );
    // An empty tensor needs no contents.
    let c = convert(request(vec![input("e", "FP32", &[0, 4])], vec![])).unwrap();
    assert!(c.request.inputs[0].data.is_empty());
}

#[test]
fn fp16_typed_bytes_and_unknown_datatypes_are_refused_by_name() {
    let (cat, msg) = refusal(request(
        vec![typed("h", "FP16", &[1], |c| c.fp32_contents = vec![1.0])],
        vec![],
    ));
    assert_eq!(cat, ErrorCategory::BadRequest);
    assert!(
        msg.contains("FP16 has no typed contents field; send FP16 tensors in raw_input_contents"),
        "{msg}"
    );
    let (cat, msg) = refusal(request(
        vec![typed("s", "BYTES", &[1], |c| {
            c.bytes_contents = vec![Bytes::from_static(b"hi")]
        })],
        vec![],
    ));
    assert_eq!(cat, ErrorCategory::BadRequest);
    assert!(msg.contains("datatype BYTES"), "{msg}");
    let (_, msg) = refusal(request(vec![input("q", "BF16", &[1])], vec![vec![0, 0]]));
    assert!(msg.contains("unknown datatype 'BF16'"), "{msg}");
}

#[test]
fn request_fields_parameters_and_versions() {
    let mut req = request(vec![], vec![]);
    req.model_name.clear();
    assert!(refusal(req).1.contains("model_name is empty"));

    let mut req = request(vec![], vec![]);
    req.model_version = "2".into();
    let (cat, msg) = refusal(req);
    assert_eq!(cat, ErrorCategory::ModelNotFound);
    assert!(msg.contains("no version 2"), "{msg}");

    let p = |c| InferParameter {
        parameter_choice: Some(c),
    };
    let mut req = request(vec![], vec![]);
    req.model_version = "1".into();
    req.parameters
        .insert("timeout".into(), p(ParameterChoice::Int64Param(2_500_000)));
    req.parameters
        .insert("priority".into(), p(ParameterChoice::Uint64Param(1)));
    assert_eq!(
        convert(req).unwrap().timeout,
        Some(Duration::from_millis(2500))
    );

    let mut req = request(vec![], vec![]);
    req.parameters
        .insert("timeout".into(), p(ParameterChoice::Int64Param(-1)));
    assert!(refusal(req).1.contains("'timeout' must be microseconds"));

    let mut req = request(vec![], vec![]);
    req.parameters
        .insert("sequence_id".into(), p(ParameterChoice::Int64Param(1)));
    assert!(refusal(req).1.contains("the sequence extension"));

    let mut shm = input("a", "FP32", &[1]);
    shm.parameters.insert(
        "shared_memory_region".into(),
        p(ParameterChoice::StringParam("r".into())),
    );
    assert!(
        refusal(request(vec![shm], vec![vec![0; 4]]))
            .1
            .contains("the shared-memory extension")
    );
}

fn tensor(name: &str, datatype: DataType, shape: Vec<i64>, data: Vec<u8>) -> Tensor {
    Tensor::from_bytes(name, datatype, shape, Bytes::from(data)).unwrap()
}

fn inferred(outputs: Vec<Tensor>) -> Inferred {
    Inferred {
        response: InferResponse {
            model: "m".into(),
            backend: "wasm".into(),
            compute_ms: 1.0,
            page_ms: None,
            stages: Default::default(),
            outputs,
        },
        parameters: Map::from_iter([
            ("backend".to_owned(), json!("wasm")),
            ("compute_ms".to_owned(), json!(0.25)),
            ("attempts".to_owned(), json!(2)),
            ("big".to_owned(), json!(u64::MAX)),
            ("cached".to_owned(), json!(true)),
            ("page_ms".to_owned(), Value::Null),
            ("path".to_owned(), json!(["a", "b"])),
        ]),
    }
}

#[test]
fn responses_are_typed_unless_raw_was_used_or_an_output_is_fp16() {
    let outputs = vec![
        tensor(
            "y",
            DataType::Fp32,
            vec![2],
            [0.5f32.to_le_bytes(), 1.5f32.to_le_bytes()].concat(),
        ),
        tensor("k", DataType::Int8, vec![1], vec![0xff]),
        tensor(
            "u",
            DataType::Uint16,
            vec![1],
            40000u16.to_le_bytes().to_vec(),
        ),
        tensor("b", DataType::Bool, vec![2], vec![1, 0]),
    ];
    let r = response_to_proto(VERSION, "id7".into(), inferred(outputs.clone()), false);
    assert_eq!(
        (
            r.model_name.as_str(),
            r.model_version.as_str(),
            r.id.as_str()
        ),
        ("m", "1", "id7")
    );
    assert!(r.raw_output_contents.is_empty());
    let c = |i: usize| r.outputs[i].contents.clone().unwrap();
    assert_eq!(c(0).fp32_contents, [0.5, 1.5]);
    assert_eq!(c(1).int_contents, [-1]);
    assert_eq!(c(2).uint_contents, [40000]);
    assert_eq!(c(3).bool_contents, [true, false]);
    assert_eq!(r.outputs[0].datatype, "FP32");
    assert_eq!(r.outputs[0].shape, [2]);

    let r = response_to_proto(VERSION, String::new(), inferred(outputs.clone()), true);
    assert!(r.outputs.iter().all(|o| o.contents.is_none()));
    let raw: Vec<&[u8]> = r.raw_output_contents.iter().map(|b| &b[..]).collect();
    let want: Vec<&[u8]> = outputs.iter().map(|t| &t.data[..]).collect();
    assert_eq!(raw, want);

    // FP16 has no typed field: the whole response goes raw.
    let mut with_half = outputs;
    with_half.push(tensor("h", DataType::Fp16, vec![1], vec![0x00, 0x3c]));
    let r = response_to_proto(VERSION, String::new(), inferred(with_half), false);
    assert_eq!(r.raw_output_contents.len(), 5);
    assert!(r.outputs.iter().all(|o| o.contents.is_none()));
}

#[test]
fn response_parameters_keep_their_kinds() {
    let r = response_to_proto(VERSION, String::new(), inferred(vec![]), false);
    let get = |k: &str| r.parameters.get(k).and_then(|p| p.parameter_choice.clone());
    assert_eq!(
        get("backend"),
        Some(ParameterChoice::StringParam("wasm".into()))
    );
    assert_eq!(get("compute_ms"), Some(ParameterChoice::DoubleParam(0.25)));
    assert_eq!(get("attempts"), Some(ParameterChoice::Int64Param(2)));
    assert_eq!(get("big"), Some(ParameterChoice::Uint64Param(u64::MAX)));
    assert_eq!(get("cached"), Some(ParameterChoice::BoolParam(true)));
    assert_eq!(
        get("path"),
        Some(ParameterChoice::StringParam(r#"["a","b"]"#.into()))
    );
    assert_eq!(get("page_ms"), None, "unmeasured values are left out");
}

#[test]
fn typed_contents_roundtrip_every_typed_datatype() {
    for dt in DataType::ALL {
        let data: Vec<u8> = (0..dt.size() * 3)
            .map(|i| {
                if dt == DataType::Bool {
                    (i % 2) as u8
                } else {
                    (i * 37 + 5) as u8
                }
            })
            .collect();
        let t = tensor("t", dt, vec![3], data);
        let Some(contents) = typed_contents(&t) else {
            assert_eq!(dt, DataType::Fp16);
            continue;
        };
        let back = typed_bytes("t", dt, &[3], 3, &contents).unwrap();
        // FP32/FP64 bit patterns here are ordinary numbers (no NaN payloads).
        assert_eq!(back, t.data, "{dt}");
    }
}
