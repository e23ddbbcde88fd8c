use super::*;
use serde_json::json;

fn fp32(name: &str, vals: &[f32]) -> Tensor {
    let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_bytes(
        name,
        DataType::Fp32,
        vec![vals.len() as i64],
        Bytes::from(data),
    )
    .unwrap()
}

fn body_with_binary(header: &Value, tail: &[u8]) -> (Bytes, String) {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = body.len();
    body.extend_from_slice(tail);
    (Bytes::from(body), len.to_string())
}

#[test]
fn json_only_request_parses() {
    let body = Bytes::from_static(br#"{"id": "r1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}], "outputs": [{"name": "y"}]}"#);
    let p = parse_request("m", &body, None, 1 << 20).unwrap();
    assert_eq!(p.id.as_deref(), Some("r1"));
    assert_eq!(p.request.outputs, ["y"]);
    assert_eq!(p.request.inputs[0].to_f64_vec(), [1.0, 2.0]);
    assert!(!p.encoding.is_binary("y"));
}

#[test]
fn binary_and_json_inputs_mix_in_input_order() {
    let a: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let c: Vec<u8> = [7i64].iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "b", "shape": [1], "datatype": "INT32", "data": [3]},
            {"name": "c", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}},
        ],
        "parameters": {"binary_data_output": true, "timeout": 2500000},
        "outputs": [{"name": "y", "parameters": {"binary_data": false}}, {"name": "z"}],
    });
    let (body, len) = body_with_binary(&header, &[a, c].concat());
    let p = parse_request("m", &body, Some(&len), 1 << 20).unwrap();
    let got: Vec<Vec<f64>> = p.request.inputs.iter().map(Tensor::to_f64_vec).collect();
    assert_eq!(got, [vec![1.5, -2.0], vec![3.0], vec![7.0]]);
    assert!(!p.encoding.is_binary("y"), "explicit false wins");
    assert!(
        p.encoding.is_binary("z"),
        "binary_data_output is the default"
    );
    assert_eq!(p.timeout, Some(Duration::from_millis(2500)));
}

#[test]
fn malformed_binary_requests_are_refused_with_reasons() {
    let input = |size: Value| json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
    let cases: Vec<(Value, Vec<u8>, Option<&str>, &str)> = vec![
        (input(json!(8)), vec![0; 4], None, "runs past the end"),
        (
            input(json!(4)),
            vec![0; 4],
            None,
            "needs 8 bytes but binary_data_size is 4",
        ),
        (input(json!(-1)), vec![], None, "non-negative integer"),
        (
            input(json!(8)),
            vec![0; 12],
            None,
            "4 of the 12 bytes after the JSON header belong to no input",
        ),
        (
            input(json!(8)),
            vec![0; 8],
            Some("99999"),
            "but the body has only",
        ),
        (
            input(json!(8)),
            vec![0; 8],
            Some("x"),
            "must be a byte count",
        ),
        (
            json!({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}),
            vec![],
            None,
            "BYTES (string tensors) is not supported",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}}]}),
            vec![],
            None,
            "shared-memory extension",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}),
            vec![],
            None,
            "neither 'data' nor binary_data_size",
        ),
        (
            json!({"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}),
            vec![],
            None,
            "must be a boolean",
        ),
        (
            json!({"inputs": [], "parameters": {"timeout": -5}}),
            vec![],
            None,
            "microseconds",
        ),
    ];
    for (header, tail, length, want) in cases {
        let (body, len) = body_with_binary(&header, &tail);
        let err = parse_request("m", &body, Some(length.unwrap_or(&len)), 1 << 20).unwrap_err();
        assert_eq!(err.category, ErrorCategory::BadRequest, "{err}");
        assert!(err.message.contains(want), "{header}: {err}");
    }
}

#[test]
fn binary_size_without_the_header_is_refused() {
    let body = Bytes::from(serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]})).unwrap());
    let err = parse_request("m", &body, None, 1 << 20).unwrap_err();
    assert!(
        err.message
            .contains("no inference-header-content-length header"),
        "{err}"
    );
}

#[test]
fn oversized_shapes_are_413_before_reading_data() {
    let body = Bytes::from_static(br#"{"inputs": [{"name": "x", "shape": [1000000000, 1000000], "datatype": "FP32", "data": []}]}"#);
    let err = parse_request("m", &body, None, 1 << 20).unwrap_err();
    assert_eq!(err.category, ErrorCategory::PayloadTooLarge, "{err}");
    let body = Bytes::from_static(br#"{"inputs": [{"name": "x", "shape": [4611686018427387904, 4], "datatype": "FP32", "data": []}]}"#);
    let err = parse_request("m", &body, None, 1 << 20).unwrap_err();
    assert!(err.message.contains("too large"), "{err}");
}

#[test]
fn responses_mix_binary_and_json_outputs() {
    let resp = InferResponse {
        model: "m".into(),
        backend: "wasm".into(),
        compute_ms: 0.1,
        page_ms: None,
        stages: Default::default(),
        outputs: vec![fp32("y", &[1.0, 2.0]), fp32("z", &[3.0])],
    };
    let encoding = OutputEncoding {
        default_binary: true,
        per_output: BTreeMap::from([("y".to_owned(), false)]),
    };
    let enc = encode_response("1", Some("r".into()), &resp, &encoding, Map::new());
    let len = enc.header_length.unwrap();
    assert_eq!(enc.content_type(), "application/octet-stream");
    assert_eq!(&enc.body[len..], 3.0f32.to_le_bytes());
    let header: Value = serde_json::from_slice(&enc.body[..len]).unwrap();
    assert_eq!(header["outputs"][0]["data"], json!([1.0, 2.0]));
    assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 4);
    assert_eq!(header["id"], "r");
    let (_, tensors) =
        parse_response(&Bytes::from(enc.body), Some(&len.to_string()), 1 << 20).unwrap();
    assert_eq!(tensors, resp.outputs);
}

#[test]
fn a_client_encoded_request_parses_back() {
    let req = InferRequest {
        model: "m".into(),
        inputs: vec![fp32("a", &[1.0, f32::MAX]), fp32("b", &[])],
        outputs: vec!["y".into()],
        ..Default::default()
    };
    for binary in [false, true] {
        let enc = encode_request(&req, binary, &[("y".into(), Some(true))], Map::new());
        let len = enc.header_length.map(|n| n.to_string());
        let p = parse_request("m", &Bytes::from(enc.body), len.as_deref(), 1 << 20).unwrap();
        assert_eq!(p.request, req);
        assert!(p.encoding.is_binary("y"));
    }
}
