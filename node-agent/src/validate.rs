//! Checks an inference request against the loaded model before it reaches the page, so
//! a bad request gets a 400 that names the problem instead of a runtime error.

use std::collections::HashSet;

use webaccel_api::agent::LoadedModel;
use webaccel_api::wire::InferRequest;

use crate::error::AgentError;

/// Validates names, datatypes, shapes and sizes of `req` against `model`.
pub fn check_request(
    model_name: &str,
    model: &LoadedModel,
    req: &InferRequest,
    max_tensor_bytes: usize,
) -> Result<(), AgentError> {
    let bad = |msg: String| Err(AgentError::BadRequest(msg));
    let mut seen = HashSet::new();
    for t in &req.inputs {
        if t.data.len() > max_tensor_bytes {
            return Err(AgentError::PayloadTooLarge(format!(
                "input '{}' is {} bytes; the limit is {max_tensor_bytes}",
                t.name,
                t.data.len()
            )));
        }
        if !seen.insert(t.name.as_str()) {
            return bad(format!("input '{}' is given twice", t.name));
        }
        let Some(meta) = model.inputs.iter().find(|m| m.name == t.name) else {
            return bad(format!(
                "model '{model_name}' has no input '{}'; its inputs are {:?}",
                t.name,
                model
                    .inputs
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
            ));
        };
        if meta.datatype != Some(t.datatype) {
            return bad(format!(
                "input '{}' must be {}, got {}",
                t.name,
                meta.datatype
                    .map_or_else(|| meta.ort_type.clone(), |d| d.to_string()),
                t.datatype
            ));
        }
        let shape_ok = meta.shape.len() == t.shape.len()
            && meta
                .shape
                .iter()
                .zip(&t.shape)
                .all(|(&want, &got)| want < 0 || want == got);
        if !shape_ok {
            return bad(format!(
                "input '{}' must have shape {:?} (-1: any size), got {:?}",
                t.name, meta.shape, t.shape
            ));
        }
    }
    if let Some(missing) = model
        .inputs
        .iter()
        .find(|m| !seen.contains(m.name.as_str()))
    {
        return bad(format!(
            "input '{}' of model '{model_name}' is missing",
            missing.name
        ));
    }
    if let Some(unknown) = req
        .outputs
        .iter()
        .find(|o| !model.outputs.iter().any(|m| &m.name == *o))
    {
        return bad(format!(
            "model '{model_name}' has no output '{unknown}'; its outputs are {:?}",
            model
                .outputs
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use webaccel_api::{DataType, Tensor};

    use super::*;
    use webaccel_api::agent::IoMeta;

    fn model() -> LoadedModel {
        let io = |name: &str, shape: Vec<i64>| IoMeta {
            name: name.into(),
            datatype: Some(DataType::Fp32),
            ort_type: "float32".into(),
            shape,
        };
        LoadedModel {
            sha256: String::new(),
            bytes: 0,
            backend: "wasm".into(),
            precision: None,
            precision_reason: None,
            inputs: vec![io("x", vec![-1, 4])],
            outputs: vec![io("y", vec![-1, 2])],
            fetch_ms: 0.0,
            page_fetch_ms: 0.0,
            create_ms: 0.0,
            warmup_ms: None,
            steady_ms: None,
            path_warmup: None,
            candidates: None,
            batching: None,
            memory_bytes: None,
            kv_reserve_bytes: None,
        }
    }

    fn req(name: &str, dt: DataType, shape: Vec<i64>) -> InferRequest {
        let len = Tensor::byte_len_for(name, dt, &shape).unwrap();
        InferRequest {
            model: "m".into(),
            inputs: vec![Tensor::from_bytes(name, dt, shape, Bytes::from(vec![0u8; len])).unwrap()],
            outputs: vec![],
            ..Default::default()
        }
    }

    fn err(r: &InferRequest, limit: usize) -> String {
        check_request("m", &model(), r, limit)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn accepts_a_matching_request_with_any_batch() {
        assert!(
            check_request(
                "m",
                &model(),
                &req("x", DataType::Fp32, vec![3, 4]),
                1 << 20
            )
            .is_ok()
        );
    }

    #[test]
    fn names_what_is_wrong() {
        assert!(
            err(&req("z", DataType::Fp32, vec![1, 4]), 1 << 20)
                .contains("has no input 'z'; its inputs are [\"x\"]")
        );
        assert_eq!(
            err(&req("x", DataType::Int64, vec![1, 4]), 1 << 20),
            "input 'x' must be FP32, got INT64"
        );
        assert!(
            err(&req("x", DataType::Fp32, vec![1, 5]), 1 << 20).contains("must have shape [-1, 4]")
        );
        assert!(err(&req("x", DataType::Fp32, vec![4]), 1 << 20).contains("got [4]"));
        let mut r = req("x", DataType::Fp32, vec![1, 4]);
        r.outputs = vec!["nope".into()];
        assert!(err(&r, 1 << 20).contains("has no output 'nope'"));
        r.inputs.clear();
        r.outputs.clear();
        assert_eq!(err(&r, 1 << 20), "input 'x' of model 'm' is missing");
    }

    #[test]
    fn oversized_tensor_is_payload_too_large() {
        let e = check_request("m", &model(), &req("x", DataType::Fp32, vec![100, 4]), 1000)
            .unwrap_err();
        assert!(matches!(e, AgentError::PayloadTooLarge(_)), "{e}");
    }
}
