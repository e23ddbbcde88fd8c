//! No decoder allocates memory sized by a length or shape it read from untrusted input:
//! what a decode allocates is bounded by the bytes it was given. Measured with a counting
//! global allocator, so this binary holds one test (other threads would be counted too).

#![allow(clippy::unwrap_used)]

use std::alloc::System;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use webaccel_api::{DataType, Tensor, oip, wire};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocation allowed for decoding `n` input bytes: a JSON value tree costs tens of bytes
/// per input byte at worst; anything sized by a claimed length would be far above.
fn budget(n: usize) -> usize {
    64 * n + (64 << 10)
}

fn allocated_by(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    region.change().bytes_allocated
}

fn check(what: &str, input_len: usize, f: impl FnOnce()) {
    let bytes = allocated_by(f);
    assert!(
        bytes <= budget(input_len),
        "{what}: {bytes} bytes allocated for {input_len} bytes of input"
    );
}

#[test]
fn decoders_allocate_in_proportion_to_their_input() {
    // Claimed sizes far beyond what was sent.
    let huge_shape = br#"{"inputs": [{"name": "x", "shape": [1099511627776], "datatype": "FP64", "data": [1, 2]}]}"#;
    check("huge shape, JSON data", huge_shape.len(), || {
        let _ = oip::parse_request("m", &Bytes::from_static(huge_shape), None, usize::MAX);
    });
    let huge_binary = br#"{"inputs": [{"name": "x", "shape": [536870912], "datatype": "FP32", "parameters": {"binary_data_size": 2147483648}}]}"#;
    check("huge binary_data_size", huge_binary.len(), || {
        let _ = oip::parse_request(
            "m",
            &Bytes::from_static(huge_binary),
            Some("110"),
            usize::MAX,
        );
    });
    check("Tensor::from_json with a huge shape", 16, || {
        let _ = Tensor::from_json("x", DataType::Fp64, vec![1 << 40], &json!([1, 2]));
    });
    let mut frame = wire::encode(
        1,
        &wire::Message::Request(wire::InferRequest {
            model: "m".into(),
            inputs: vec![],
            outputs: vec![],
            ..Default::default()
        }),
    );
    frame[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let len = frame.len();
    check("frame header length u32::MAX", len, || {
        let _ = wire::decode(Bytes::from(frame));
    });
    let lying_frame = {
        let header =
            br#"{"model":"m","inputs":[{"name":"x","datatype":"FP64","shape":[1099511627776]}]}"#;
        let mut f = Vec::from(&wire::MAGIC[..]);
        f.extend_from_slice(&[1, 0, 0, 0]);
        f.extend_from_slice(&7u64.to_le_bytes());
        f.extend_from_slice(&(header.len() as u32).to_le_bytes());
        f.extend_from_slice(header);
        f
    };
    let len = lying_frame.len();
    check("frame tensor shape beyond the frame", len, || {
        assert!(wire::decode(Bytes::from(lying_frame)).is_err());
    });

    // And random bodies of every kind, one after another on this thread.
    let mut runner = TestRunner::new(Config {
        cases: 20_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(proptest::collection::vec(any::<i64>(), 0..4), 0usize..3, proptest::collection::vec(any::<u8>(), 0..128)),
            |(shape, mode, tail)| {
                let mut body = serde_json::to_vec(&json!({"inputs": [{
                    "name": "x", "shape": shape, "datatype": "FP32",
                    "parameters": if mode == 0 { json!({}) } else { json!({"binary_data_size": tail.len()}) },
                    "data": if mode == 0 { json!([1.0, 2.0, [3.0]]) } else { serde_json::Value::Null },
                }]}))
                .unwrap();
                let header = body.len().to_string();
                body.extend_from_slice(&tail);
                let n = body.len();
                let body = Bytes::from(body);
                let bytes = allocated_by(|| {
                    let _ = oip::parse_request("m", &body, (mode > 0).then_some(header.as_str()), usize::MAX);
                    let _ = wire::decode(body.clone());
                });
                prop_assert!(bytes <= budget(n), "{} bytes for {} input bytes", bytes, n);
                Ok(())
            },
        )
        .unwrap();
}
