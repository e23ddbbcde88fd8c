//! Warming a model's request path, not only its session. The page's own warm-up runs
//! the session a few times; the first requests after that still paid for everything
//! around it: V8 compiling the page's frame decoding and encoding and promoting it
//! through its tiers (which takes hundreds of calls), the agent's and the browser's
//! socket paths on their first frames, onnxruntime's first runs with real input
//! buffers. Measured by `webaccel-agent-bench tail`, the first block of requests after a
//! start had a p99 several times the steady one. So after a load the agent sends the
//! model `--warmup-requests` zero-filled requests through the page link, as a client's
//! would go, and only then counts it loaded (and itself ready).

use std::time::{Duration, Instant};

use bytes::Bytes;
use webaccel_api::agent::{IoMeta, PathWarmup};
use webaccel_api::timing::ms;
use webaccel_api::wire::InferRequest;
use webaccel_api::{DataType, Tensor};

use crate::page::PageLink;

/// A zero-filled request for `model` shaped like `inputs` (dynamic dimensions as 1);
/// `None` when an input's type cannot be carried on the wire.
pub fn zero_request(model: &str, inputs: &[IoMeta]) -> Option<InferRequest> {
    let tensors = inputs
        .iter()
        .map(|m| {
            let datatype: DataType = m.datatype?;
            let shape: Vec<i64> = m.shape.iter().map(|&d| d.max(1)).collect();
            let len = Tensor::byte_len_for(&m.name, datatype, &shape).ok()?;
            Tensor::from_bytes(m.name.clone(), datatype, shape, Bytes::from(vec![0u8; len])).ok()
        })
        .collect::<Option<Vec<_>>>()?;
    Some(InferRequest {
        model: model.to_owned(),
        inputs: tensors,
        ..InferRequest::default()
    })
}

/// The longest a path warm-up goes on: a model whose run takes a second gets a few
/// requests, not hundreds (its session was warmed by the page; the path's share of its
/// latency is small).
pub const WARMUP_BUDGET: Duration = Duration::from_secs(2);

/// Sends up to `requests` zero-filled requests for `model` through `link`, one after
/// another, for at most [`WARMUP_BUDGET`]. Stops at the first failure (a model may
/// refuse zeros: its own warm-up already ran the session) and says how far it got.
pub async fn warm_path(
    link: &PageLink,
    model: &str,
    inputs: &[IoMeta],
    requests: usize,
) -> Result<PathWarmup, String> {
    let began = Instant::now();
    let Some(request) = zero_request(model, inputs) else {
        return Err("an input's type cannot be sent on the wire".into());
    };
    let mut warmed = PathWarmup {
        requests: 0,
        first_ms: 0.0,
        last_ms: 0.0,
    };
    for _ in 0..requests {
        if began.elapsed() > WARMUP_BUDGET {
            break;
        }
        let started = Instant::now();
        link.infer(request.clone())
            .await
            .map_err(|e| format!("after {} requests: {e}", warmed.requests))?;
        let took = ms(started.elapsed());
        if warmed.requests == 0 {
            warmed.first_ms = took;
        }
        warmed.last_ms = took;
        warmed.requests += 1;
    }
    Ok(warmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, datatype: Option<DataType>, shape: &[i64]) -> IoMeta {
        IoMeta {
            name: name.into(),
            datatype,
            ort_type: String::new(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn dynamic_dimensions_become_one_and_untyped_inputs_give_none() {
        let r = zero_request(
            "m",
            &[
                meta("x", Some(DataType::Fp32), &[-1, 3]),
                meta("ids", Some(DataType::Int64), &[2, -1]),
            ],
        )
        .unwrap();
        assert_eq!(r.inputs[0].shape, [1, 3]);
        assert_eq!(r.inputs[0].data.len(), 12);
        assert_eq!(r.inputs[1].shape, [2, 1]);
        assert!(r.inputs[1].data.iter().all(|&b| b == 0));
        assert!(zero_request("m", &[meta("s", None, &[1])]).is_none());
    }
}
