//! The protocol's types against the golden messages in `web/test/golden/`, which the
//! page's own tests (`web/test/*.test.js`, `node --test`) read too: control messages in
//! `control/` (one JSON message per file, as sent), and wire frames in `frames/` with
//! `frames.json` listing what each one holds. Commands and frames the agent writes must
//! come out byte for byte; events and frames the page writes must decode to the values
//! the page's tests made them from.
//!
//! `WEBACCEL_UPDATE_GOLDEN=1 cargo test -p webaccel-node-agent --lib golden` writes the
//! files afresh (then review the diff: both sides' tests must pass on them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use serde_json::{Value, json};
use webaccel_api::agent::{
    Adapter, BackendCandidate, Capabilities, EnsembleStep, IoMeta, PageWorker, PageWorkers,
    RuntimeStart, WasmSupport, WebGpuSupport, WebNnSupport,
};
use webaccel_api::generate::FinishReason;
use webaccel_api::timing::StageTimes;
use webaccel_api::wire::{self, ErrorFrame, InferRequest, InferResponse, Message};
use webaccel_api::{Backend, DataType, ErrorCategory, Precision, Tensor, WebNnDevice};

use super::*;

fn golden() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web/test/golden"))
}

fn updating() -> bool {
    std::env::var_os("WEBACCEL_UPDATE_GOLDEN").is_some()
}

/// The golden file `rel`, or with `WEBACCEL_UPDATE_GOLDEN` set, `made` written there.
fn read_or_write(rel: &str, made: &[u8]) -> Vec<u8> {
    let path = golden().join(rel);
    if updating() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, made).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn commands() -> Vec<(&'static str, PageCommand)> {
    let step = |model: &str, input: (&str, &str), output: (&str, &str)| EnsembleStep {
        model: model.into(),
        input_map: BTreeMap::from([(input.0.into(), input.1.into())]),
        output_map: BTreeMap::from([(output.0.into(), output.1.into())]),
    };
    vec![
        ("ping", PageCommand::Ping),
        (
            "load",
            Load {
                name: "mlp".into(),
                url: format!("/page/models/{}?s=5ec2e7", "ab".repeat(32)),
                backend: Backend::Auto,
                webnn_device: WebNnDevice::Cpu,
                warmup: true,
                avoid: BTreeMap::from([(
                    "webgpu".into(),
                    "fp16 weights need the shader-f16 feature".into(),
                )]),
                external_data: Vec::new(),
                generation: None,
            }
            .command(7),
        ),
        (
            "load_decoder",
            Load {
                name: "llm".into(),
                url: format!("/page/models/{}?s=5ec2e7", "cd".repeat(32)),
                backend: Backend::Wasm,
                webnn_device: WebNnDevice::Cpu,
                warmup: true,
                avoid: BTreeMap::new(),
                external_data: vec![ExternalDataFile {
                    path: "model.onnx.data".into(),
                    url: format!("/page/models/{}?s=5ec2e7", "ef".repeat(32)),
                }],
                generation: Some(PageGeneration {
                    layout: DecoderLayout {
                        layers: 2,
                        kv_heads: 2,
                        head_dim: 16,
                        vocab: 384,
                        ids_type: "int64".into(),
                        position_ids: true,
                        cross_attention: true,
                    },
                    kv_cache: Precision::Int8,
                    continuous_batching: true,
                    max_batch: 16,
                    context_length: 256,
                    pad_token_id: 4,
                    prefill_chunk: Some(32),
                    encoder_model: Some("llm#encoder".into()),
                }),
            }
            .command(12),
        ),
        (
            "generate",
            Generate {
                model: "llm".into(),
                prompt: vec![0, 72, 101],
                max_new_tokens: 8,
                sampling: Sampling {
                    temperature: 0.5,
                    top_k: 40,
                    top_p: 0.875,
                    seed: 1234,
                    repetition_penalty: 1.25,
                },
                stop_token_ids: vec![1, 4],
                logprobs: Some(2),
                logits: false,
                prompt_logprobs: true,
                features: Some(InputFeatures {
                    dims: vec![1, 2, 2],
                    data: vec![0.5, -1.25, 0.0, 2.0],
                }),
            }
            .command(13),
        ),
        ("cancel", Cancel { generation: 13 }.command(14)),
        ("unload", Unload { name: "mlp".into() }.command(8)),
        (
            "retain",
            Retain {
                names: vec!["mlp".into(), "cnn".into()],
            }
            .command(9),
        ),
        (
            "ensemble",
            RegisterEnsemble {
                name: "pipe".into(),
                steps: vec![
                    step("a", ("x", "in"), ("y", "mid")),
                    step("b", ("x", "mid"), ("y", "out")),
                ],
                outputs: vec!["out".into()],
                backend: "wasm".into(),
            }
            .command(10),
        ),
        ("hang_worker", HangWorker { index: 1 }.command(11)),
    ]
}

fn io(name: &str, shape: Vec<i64>) -> IoMeta {
    IoMeta {
        name: name.into(),
        datatype: Some(DataType::Fp32),
        ort_type: "float32".into(),
        shape,
    }
}

fn result(req: u64, value: Value) -> PageEvent {
    PageEvent::Result(CallResult {
        req,
        ok: true,
        value: Some(value),
        error: None,
    })
}

fn load_reply() -> LoadReply {
    LoadReply {
        backend: "wasm".into(),
        inputs: vec![io("x", vec![-1, 4])],
        outputs: vec![io("y", vec![-1, 2])],
        fetch_ms: 2.5,
        create_ms: 12.5,
        warmup_ms: Some(3.25),
        steady_ms: Some(0.5),
        candidates: Some(vec![
            BackendCandidate {
                backend: "webgpu".into(),
                ok: false,
                create_ms: None,
                warmup_ms: None,
                steady_ms: None,
                error: Some("fp16 weights need the shader-f16 feature".into()),
            },
            BackendCandidate {
                backend: "wasm".into(),
                ok: true,
                create_ms: Some(12.5),
                warmup_ms: Some(3.25),
                steady_ms: Some(0.5),
                error: None,
            },
        ]),
    }
}

fn capabilities() -> Capabilities {
    let no_webnn = || WebNnSupport {
        available: false,
        reason: Some("navigator.ml is not exposed".into()),
    };
    Capabilities {
        user_agent: "Mozilla/5.0 HeadlessChrome/140.0".into(),
        webgpu: WebGpuSupport {
            available: true,
            reason: None,
            adapter: Some(Adapter {
                vendor: "google".into(),
                architecture: "swiftshader".into(),
                device: String::new(),
                description: "SwiftShader".into(),
                is_fallback_adapter: false,
                kind: "software".into(),
                features: vec!["shader-f16".into()],
                max_buffer_size: Some(268_435_456.0),
                max_storage_buffer_binding_size: Some(134_217_728.0),
            }),
        },
        webnn: ["cpu", "gpu", "npu"]
            .into_iter()
            .map(|d| (d.to_owned(), no_webnn()))
            .collect(),
        wasm: WasmSupport {
            simd: true,
            threads: true,
            cross_origin_isolated: true,
            hardware_concurrency: 2,
        },
        ort_version: Some("1.30.0".into()),
        runtime: Some(RuntimeStart {
            start_ms: Some(41.5),
            error: None,
        }),
        page_workers: Some(PageWorkers {
            workers: 2,
            threads_per_worker: 1,
        }),
        browser: None,
    }
}

fn events() -> Vec<(&'static str, PageEvent)> {
    let worker = |runs, busy| PageWorker {
        runs,
        restarts: 0,
        busy,
        ready: true,
        sequences: u32::from(busy),
    };
    vec![
        (
            "hello",
            PageEvent::Hello {
                capabilities: Box::new(capabilities()),
            },
        ),
        (
            "pong",
            PageEvent::Pong {
                workers: vec![worker(3, true), worker(2, false)],
            },
        ),
        (
            "load_result",
            result(7, serde_json::to_value(load_reply()).unwrap()),
        ),
        ("unload_result", result(8, json!({"unloaded": true}))),
        ("retain_result", result(9, json!({"released": ["old"]}))),
        ("ensemble_result", result(10, json!({"registered": "pipe"}))),
        (
            "hang_worker_result",
            PageEvent::Result(CallResult {
                req: 11,
                ok: false,
                value: None,
                error: Some("no page worker 1 (the page runs no workers)".into()),
            }),
        ),
        (
            "load_decoder_result",
            result(12, serde_json::to_value(load_reply()).unwrap()),
        ),
        (
            "tokens",
            PageEvent::Tokens(TokensEvent {
                model: "llm".into(),
                t: 1_765_000_000_123.5,
                step_ms: 2.5,
                run_ms: 2.25,
                batch: 2,
                prefill: false,
                tokens: vec![
                    StepToken {
                        req: 13,
                        id: 104,
                        logprob: Some(-0.5),
                        top: Some(vec![(104, -0.5), (9, -1.25)]),
                        logits: None,
                        finish: None,
                        prompt: Some(vec![
                            PromptLogprob {
                                logprob: -2.5,
                                top: Some(vec![(101, -0.75), (72, -2.5)]),
                            },
                            PromptLogprob {
                                logprob: -0.125,
                                top: None,
                            },
                        ]),
                    },
                    StepToken {
                        req: 15,
                        id: 4,
                        logprob: None,
                        top: None,
                        logits: None,
                        finish: Some(FinishReason::Stop),
                        prompt: None,
                    },
                ],
            }),
        ),
        (
            "generate_result",
            result(
                13,
                serde_json::to_value(GenerateReply {
                    finish_reason: FinishReason::Length,
                    prompt_tokens: 3,
                    completion_tokens: 8,
                    queue_ms: 0.5,
                    prefill_ms: 3.5,
                    decode_ms: 17.25,
                    max_batch: 2,
                    kv_bytes: 1392.0,
                    kv_bytes_per_token: 130.0,
                    backend: "wasm".into(),
                })
                .unwrap(),
            ),
        ),
        ("cancel_result", result(14, json!({"cancelled": true}))),
        (
            "gpu_lost",
            PageEvent::GpuLost {
                message: "destroyed: the WebGPU device was lost".into(),
            },
        ),
        (
            "log",
            PageEvent::Log {
                message: "page worker 1 did not answer a 'infer' call for 10012 ms: replaced"
                    .into(),
            },
        ),
    ]
}

#[test]
fn golden_commands_are_what_the_agent_sends() {
    for (name, command) in commands() {
        let text = serde_json::to_string(&command).unwrap();
        let file = read_or_write(
            &format!("control/{name}.json"),
            format!("{text}\n").as_bytes(),
        );
        let file = String::from_utf8(file).unwrap();
        assert_eq!(file.trim_end(), text, "control/{name}.json");
        assert_eq!(serde_json::from_str::<PageCommand>(&file).unwrap(), command);
    }
}

#[test]
fn golden_events_read_as_the_page_sends_them() {
    for (name, event) in events() {
        let made = serde_json::to_string(&event).unwrap();
        let file = read_or_write(
            &format!("control/{name}.json"),
            format!("{made}\n").as_bytes(),
        );
        let read: PageEvent = serde_json::from_slice(&file).unwrap();
        assert_eq!(read, event, "control/{name}.json");
    }
}

#[test]
fn each_reply_reads_as_its_calls_reply_type() {
    let reply = |name: &str| match serde_json::from_slice::<PageEvent>(
        &std::fs::read(golden().join(format!("control/{name}.json"))).unwrap(),
    )
    .unwrap()
    {
        PageEvent::Result(r) => r,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(reply("load_result").reply::<Load>().unwrap(), load_reply());
    assert!(reply("unload_result").reply::<Unload>().unwrap().unloaded);
    assert_eq!(
        reply("retain_result").reply::<Retain>().unwrap().released,
        ["old"]
    );
    assert_eq!(
        reply("ensemble_result")
            .reply::<RegisterEnsemble>()
            .unwrap()
            .registered,
        "pipe"
    );
    assert_eq!(
        reply("generate_result")
            .reply::<Generate>()
            .unwrap()
            .completion_tokens,
        8
    );
    assert!(reply("cancel_result").reply::<Cancel>().unwrap().cancelled);
    assert!(matches!(
        reply("hang_worker_result").reply::<HangWorker>(),
        Err(CallError::Refused(r)) if r == "no page worker 1 (the page runs no workers)"
    ));
    // A reply of another call's shape is the page's bug, not a refusal.
    assert!(matches!(
        reply("unload_result").reply::<Load>(),
        Err(CallError::Failed(_))
    ));
}

#[test]
fn ping_is_the_command_serialised() {
    assert_eq!(serde_json::to_string(&PageCommand::Ping).unwrap(), PING);
}

fn tensor(name: &str, datatype: DataType, shape: Vec<i64>, bytes: Vec<u8>) -> Tensor {
    Tensor::from_bytes(name, datatype, shape, Bytes::from(bytes)).unwrap()
}

fn le<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

/// The frames: a request as the agent sends it, a response and errors as the page
/// sends them. Tensors of odd byte lengths put padding between them.
fn frames() -> Vec<(&'static str, u64, Message)> {
    let request = InferRequest {
        model: "mlp".into(),
        inputs: vec![
            tensor("mask", DataType::Bool, vec![3], vec![1, 0, 1]),
            tensor(
                "x",
                DataType::Fp32,
                vec![2, 3],
                le(&[1.5f32, -2.25, 0.0, 3.0, 0.5, -0.125], f32::to_le_bytes),
            ),
            tensor(
                "ids",
                DataType::Int64,
                vec![2],
                le(&[-5i64, 9_007_199_254_740_993], i64::to_le_bytes),
            ),
            // 1.0, -2.0 and 0.5 as IEEE half bits.
            tensor(
                "h",
                DataType::Fp16,
                vec![3],
                le(&[0x3c00u16, 0xc000, 0x3800], u16::to_le_bytes),
            ),
        ],
        outputs: vec!["y".into()],
        timeout_ms: Some(1500),
        request_id: Some("req-1".into()),
    };
    let response = InferResponse {
        model: "mlp".into(),
        backend: "wasm".into(),
        compute_ms: 0.25,
        page_ms: Some(1.5),
        // The page's stages, tiling `page_ms`.
        stages: StageTimes {
            page_queue: Some(0.5),
            decode: Some(0.125),
            run: Some(0.25),
            encode: Some(0.625),
            ..StageTimes::default()
        },
        outputs: vec![
            tensor(
                "y",
                DataType::Fp32,
                vec![2, 2],
                le(&[0.5f32, 1.0, -1.5, 2.0], f32::to_le_bytes),
            ),
            tensor("flags", DataType::Uint8, vec![3], vec![0, 255, 7]),
            tensor(
                "d",
                DataType::Fp64,
                vec![2],
                le(&[0.1f64, -3.5], f64::to_le_bytes),
            ),
            tensor(
                "n",
                DataType::Int32,
                vec![1],
                le(&[-7i32], i32::to_le_bytes),
            ),
        ],
    };
    let error = |c, m: &str| Message::Error(ErrorFrame::new(c, m));
    vec![
        ("request", 42, Message::Request(request)),
        ("response", 42, Message::Response(response)),
        (
            "error_model_not_ready",
            43,
            error(
                ErrorCategory::ModelNotReady,
                "model 'cnn' is not loaded in this page",
            ),
        ),
        (
            "error_inference_failed",
            44,
            error(
                ErrorCategory::InferenceFailed,
                "input 'x' has the wrong shape",
            ),
        ),
        (
            "error_browser_crashed",
            45,
            error(
                ErrorCategory::BrowserCrashed,
                "page worker 0 failed while running the request: gone",
            ),
        ),
    ]
}

/// A tensor's elements as the page's typed arrays hold them: numbers, with 64-bit
/// integers as decimal strings (JSON numbers cannot hold them all) and FP16 as its bits.
fn values(t: &Tensor) -> Vec<Value> {
    let chunks = |n: usize| t.data.chunks_exact(n).map(|c| c.to_vec());
    match t.datatype {
        DataType::Bool | DataType::Uint8 => t.data.iter().map(|&b| json!(b)).collect(),
        DataType::Int8 => t.data.iter().map(|&b| json!(b as i8)).collect(),
        DataType::Uint16 | DataType::Fp16 => chunks(2)
            .map(|c| json!(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DataType::Int16 => chunks(2)
            .map(|c| json!(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DataType::Uint32 => chunks(4)
            .map(|c| json!(u32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        DataType::Int32 => chunks(4)
            .map(|c| json!(i32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        DataType::Fp32 => chunks(4)
            .map(|c| json!(f64::from(f32::from_le_bytes(c.try_into().unwrap()))))
            .collect(),
        DataType::Fp64 => chunks(8)
            .map(|c| json!(f64::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        DataType::Int64 => chunks(8)
            .map(|c| json!(i64::from_le_bytes(c.try_into().unwrap()).to_string()))
            .collect(),
        DataType::Uint64 => chunks(8)
            .map(|c| json!(u64::from_le_bytes(c.try_into().unwrap()).to_string()))
            .collect(),
    }
}

/// What `frames.json` says of one frame: its kind, id, JSON header and each tensor's
/// elements.
fn describe(file: &str, id: u64, frame: &[u8], message: &Message) -> Value {
    let header_len = u32::from_le_bytes(frame[16..20].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&frame[20..20 + header_len]).unwrap();
    let tensors = match message {
        Message::Request(r) => &r.inputs[..],
        Message::Response(r) => &r.outputs[..],
        _ => &[],
    };
    json!({
        "file": format!("frames/{file}.bin"),
        "kind": frame[4],
        "id": id,
        "header": header,
        "tensors": tensors.iter().map(|t| json!({
            "name": t.name,
            "datatype": t.datatype,
            "shape": t.shape,
            "values": values(t),
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn golden_frames_encode_and_decode_byte_for_byte() {
    let mut manifest = Vec::new();
    for (name, id, message) in frames() {
        let encoded = wire::encode(id, &message);
        let file = read_or_write(&format!("frames/{name}.bin"), &encoded);
        assert_eq!(file, encoded, "frames/{name}.bin");
        let (read_id, read) = wire::decode(Bytes::from(file.clone())).unwrap();
        assert_eq!((read_id, &read), (id, &message), "frames/{name}.bin");
        manifest.push(describe(name, id, &file, &read));
    }
    // One frame a line: the tensors' values stay readable.
    let lines: Vec<String> = manifest.iter().map(Value::to_string).collect();
    let text = format!("[\n{}\n]\n", lines.join(",\n"));
    let file = read_or_write("frames.json", text.as_bytes());
    let listed: Value = serde_json::from_slice(&file).unwrap();
    assert_eq!(listed, Value::Array(manifest), "frames.json");
}
