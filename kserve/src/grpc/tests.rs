//! The service on a loopback port, called through a tonic client generated from the
//! same proto, over a fake [`InferenceApi`] that echoes its inputs.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tonic::Code;
use tonic::transport::Channel;
use webaccel_api::oip::{ModelMetadata, ModelReady, TensorMetadata};
use webaccel_api::wire::{InferRequest, InferResponse};
use webaccel_api::{DataType, Tensor};

use super::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::proto::*;
use super::*;
use crate::api::{CallOptions, Inferred};

const TOKEN: &str = "sesame";

/// Answers every request with its inputs as outputs (only the requested ones when
/// outputs are named), or with the error it was built with.
struct Echo {
    fail: Option<ApiError>,
    seen: Mutex<Vec<CallOptions>>,
    refused: Mutex<Vec<ErrorCategory>>,
}

impl InferenceApi for Echo {
    fn server_name(&self) -> &str {
        "echo"
    }
    fn server_version(&self) -> &str {
        "0.1"
    }
    fn ready(&self) -> bool {
        true
    }
    fn max_tensor_bytes(&self) -> usize {
        1024
    }
    async fn model_metadata(&self, name: &str) -> Result<ModelMetadata, ApiError> {
        if name != "m" {
            return Err(ApiError::new(
                ErrorCategory::ModelNotFound,
                format!("unknown model '{name}'"),
            ));
        }
        Ok(ModelMetadata {
            name: name.into(),
            versions: vec![VERSION.into()],
            platform: "test".into(),
            inputs: vec![TensorMetadata {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 4],
            }],
            outputs: vec![TensorMetadata {
                name: "y".into(),
                datatype: "INT64".into(),
                shape: vec![-1],
            }],
            parameters: Map::from_iter([("backend".to_owned(), json!("wasm"))]),
        })
    }
    async fn model_ready(&self, name: &str) -> Result<ModelReady, ApiError> {
        Ok(ModelReady {
            name: name.into(),
            ready: name == "m",
            state: None,
        })
    }
    async fn infer(
        &self,
        request: InferRequest,
        options: CallOptions,
    ) -> Result<Inferred, ApiError> {
        self.seen.lock().unwrap().push(options);
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        let outputs = request
            .inputs
            .into_iter()
            .filter(|t| request.outputs.is_empty() || request.outputs.contains(&t.name))
            .collect();
        Ok(Inferred {
            response: InferResponse {
                model: request.model,
                backend: "echo".into(),
                compute_ms: 0.5,
                page_ms: None,
                stages: Default::default(),
                outputs,
            },
            parameters: Map::from_iter([
                ("backend".to_owned(), json!("echo")),
                ("compute_ms".to_owned(), json!(0.5)),
                ("page_ms".to_owned(), Value::Null),
            ]),
        })
    }
    fn refused(&self, error: &ApiError) {
        self.refused.lock().unwrap().push(error.category);
    }
}

struct Running {
    api: Arc<Echo>,
    client: GrpcInferenceServiceClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    async fn stop(mut self) {
        drop(self.client);
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

async fn start(fail: Option<ApiError>, token: Option<&str>) -> Running {
    let api = Arc::new(Echo {
        fail,
        seen: Mutex::default(),
        refused: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = Options {
        tokens: Tokens::new(token.map(str::to_owned)),
        max_message_bytes: None,
    };
    let server = tokio::spawn(serve_with(api.clone(), options, listener, async {
        let _ = stopped.await;
    }));
    let client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Running {
        api,
        client,
        stop: Some(stop),
        server,
    }
}

fn input(name: &str, datatype: DataType, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.as_str().into(),
        shape: shape.to_vec(),
        parameters: Default::default(),
        contents: None,
    }
}

/// Three elements of every datatype webaccel supports, as tensors, with bytes that
/// exercise sign and width (FP values chosen exactly representable).
fn sample_tensors() -> Vec<Tensor> {
    let bytes = |dt: DataType| -> Vec<u8> {
        match dt {
            DataType::Bool => vec![1, 0, 1],
            DataType::Uint8 => vec![0, 128, 255],
            DataType::Int8 => [-128i8, 0, 127]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Uint16 => [0u16, 1, u16::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Int16 => [i16::MIN, -1, i16::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Uint32 => [0u32, 7, u32::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Int32 => [i32::MIN, -7, i32::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Uint64 => [0u64, 9, u64::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Int64 => [i64::MIN, -9, i64::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Fp16 => [0x3c00u16, 0xc000, 0x7bff]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Fp32 => [1.5f32, -0.25, f32::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DataType::Fp64 => [0.1f64, -1e300, f64::MIN_POSITIVE]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        }
    };
    DataType::ALL
        .into_iter()
        .map(|dt| {
            Tensor::from_bytes(
                dt.as_str().to_lowercase(),
                dt,
                vec![3],
                Bytes::from(bytes(dt)),
            )
            .unwrap()
        })
        .collect()
}

fn authed<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert(AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
    r
}

#[tokio::test]
async fn raw_contents_both_ways_for_every_datatype() {
    let mut s = start(None, None).await;
    let tensors = sample_tensors();
    let req = ModelInferRequest {
        model_name: "m".into(),
        id: "req-1".into(),
        inputs: tensors
            .iter()
            .map(|t| input(&t.name, t.datatype, &t.shape))
            .collect(),
        raw_input_contents: tensors.iter().map(|t| t.data.clone()).collect(),
        ..Default::default()
    };
    let resp = s.client.model_infer(req).await.unwrap();
    let id = resp
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let resp = resp.into_inner();
    assert_eq!(id, "req-1", "the request's id is the request id");
    assert_eq!(
        (resp.model_name.as_str(), resp.model_version.as_str()),
        ("m", "1")
    );
    assert_eq!(resp.id, "req-1");
    assert_eq!(resp.outputs.len(), tensors.len());
    assert_eq!(resp.raw_output_contents.len(), tensors.len());
    for ((out, raw), want) in resp
        .outputs
        .iter()
        .zip(&resp.raw_output_contents)
        .zip(&tensors)
    {
        assert_eq!(out.name, want.name);
        assert_eq!(out.datatype, want.datatype.as_str());
        assert_eq!(out.shape, want.shape);
        assert!(out.contents.is_none(), "{}: raw in, raw out", out.name);
        assert_eq!(raw, &want.data, "{}", out.name);
    }
    assert_eq!(
        resp.parameters["backend"].parameter_choice,
        Some(ParameterChoice::StringParam("echo".into()))
    );
    assert_eq!(
        resp.parameters["compute_ms"].parameter_choice,
        Some(ParameterChoice::DoubleParam(0.5))
    );
    assert!(!resp.parameters.contains_key("page_ms"));
    s.stop().await;
}

#[tokio::test]
async fn typed_contents_both_ways_for_every_typed_datatype() {
    let mut s = start(None, None).await;
    let tensors: Vec<Tensor> = sample_tensors()
        .into_iter()
        .filter(|t| t.datatype != DataType::Fp16)
        .collect();
    let req = ModelInferRequest {
        model_name: "m".into(),
        inputs: tensors
            .iter()
            .map(|t| InferInputTensor {
                contents: convert::typed_contents(t),
                ..input(&t.name, t.datatype, &t.shape)
            })
            .collect(),
        ..Default::default()
    };
    let resp = s.client.model_infer(req).await.unwrap().into_inner();
    assert!(resp.raw_output_contents.is_empty(), "typed in, typed out");
    assert_eq!(resp.outputs.len(), 11);
    let find = |name: &str| {
        resp.outputs
            .iter()
            .find(|o| o.name == name)
            .unwrap()
            .contents
            .clone()
            .unwrap()
    };
    assert_eq!(find("bool").bool_contents, [true, false, true]);
    assert_eq!(find("uint8").uint_contents, [0, 128, 255]);
    assert_eq!(find("int8").int_contents, [-128, 0, 127]);
    assert_eq!(find("uint16").uint_contents, [0, 1, 65535]);
    assert_eq!(find("int16").int_contents, [-32768, -1, 32767]);
    assert_eq!(find("uint32").uint_contents, [0, 7, u32::MAX]);
    assert_eq!(find("int32").int_contents, [i32::MIN, -7, i32::MAX]);
    assert_eq!(find("uint64").uint64_contents, [0, 9, u64::MAX]);
    assert_eq!(find("int64").int64_contents, [i64::MIN, -9, i64::MAX]);
    assert_eq!(find("fp32").fp32_contents, [1.5, -0.25, f32::MAX]);
    assert_eq!(find("fp64").fp64_contents, [0.1, -1e300, f64::MIN_POSITIVE]);

    // Requested outputs reach the API (FP16 travels raw only; the rule that a typed
    // request with an FP16 output is answered raw is unit-tested in `convert`).
    let half = sample_tensors()
        .into_iter()
        .find(|t| t.datatype == DataType::Fp16)
        .unwrap();
    let req = ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![
            input("fp16", DataType::Fp16, &[3]),
            input("fp32", DataType::Fp32, &[3]),
        ],
        outputs: vec![InferRequestedOutputTensor {
            name: "fp16".into(),
            parameters: Default::default(),
        }],
        raw_input_contents: vec![half.data.clone(), tensors[9].data.clone()],
        ..Default::default()
    };
    let resp = s.client.model_infer(req).await.unwrap().into_inner();
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!(resp.raw_output_contents, [half.data]);
    assert_eq!(s.api.seen.lock().unwrap().len(), 2);
    s.stop().await;
}

async fn infer_status(s: &mut Running, req: ModelInferRequest) -> Status {
    s.client.model_infer(req).await.unwrap_err()
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_with_codes_and_metadata() {
    let mut s = start(None, None).await;
    let raw = |inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>| ModelInferRequest {
        model_name: "m".into(),
        inputs,
        raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
        ..Default::default()
    };
    let bytes_input = InferInputTensor {
        name: "s".into(),
        datatype: "BYTES".into(),
        shape: vec![1],
        parameters: Default::default(),
        contents: Some(InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"hello")],
            ..Default::default()
        }),
    };
    let typed_fp16 = InferInputTensor {
        contents: Some(InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        }),
        ..input("h", DataType::Fp16, &[1])
    };
    let cases = [
        (
            ModelInferRequest {
                model_name: "m".into(),
                inputs: vec![bytes_input],
                ..Default::default()
            },
            Code::InvalidArgument,
            "bad_request",
            "datatype BYTES",
        ),
        (
            ModelInferRequest {
                model_name: "m".into(),
                inputs: vec![typed_fp16],
                ..Default::default()
            },
            Code::InvalidArgument,
            "bad_request",
            "send FP16 tensors in raw_input_contents",
        ),
        (
            raw(
                vec![input("x", DataType::Fp32, &[300])],
                vec![vec![0; 1200]],
            ),
            Code::ResourceExhausted,
            "payload_too_large",
            "the limit is 1024",
        ),
        (
            raw(vec![input("x", DataType::Fp32, &[2])], vec![vec![0; 7]]),
            Code::InvalidArgument,
            "bad_request",
            "needs 8 bytes but its raw_input_contents entry has 7",
        ),
        (
            raw(
                vec![
                    input("x", DataType::Fp32, &[1]),
                    input("y", DataType::Fp32, &[1]),
                ],
                vec![vec![0; 4]],
            ),
            Code::InvalidArgument,
            "bad_request",
            "raw_input_contents has 1 entries but the request has 2 inputs",
        ),
        (
            raw(
                vec![input("x", DataType::Int64, &[i64::MAX, 4])],
                vec![vec![]],
            ),
            Code::InvalidArgument,
            "bad_request",
            "is too large",
        ),
        (
            ModelInferRequest {
                model_name: "m".into(),
                model_version: "3".into(),
                ..Default::default()
            },
            Code::NotFound,
            "model_not_found",
            "no version 3",
        ),
    ];
    for (req, code, category, text) in cases {
        let st = infer_status(&mut s, req).await;
        assert_eq!(st.code(), code, "{text}: {st:?}");
        assert!(st.message().contains(text), "{text}: {}", st.message());
        assert_eq!(st.metadata().get(status::CATEGORY).unwrap(), category);
        assert_eq!(st.metadata().get(status::RETRYABLE).unwrap(), "false");
    }
    assert_eq!(s.api.seen.lock().unwrap().len(), 0, "nothing reached infer");
    assert_eq!(
        s.api.refused.lock().unwrap().len(),
        7,
        "refusals are counted"
    );

    // A malformed grpc-timeout is refused rather than ignored.
    let mut req = Request::new(raw(vec![], vec![]));
    req.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let st = s.client.model_infer(req).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("grpc-timeout 'soon'"), "{st:?}");
    s.stop().await;
}

#[tokio::test]
async fn api_errors_map_to_codes_with_category_retryable_and_retry_after() {
    let overloaded = ApiError::new(ErrorCategory::Overloaded, "64 requests already in flight")
        .with_retry_after(Duration::from_millis(1500));
    let mut s = start(Some(overloaded), None).await;
    let req = ModelInferRequest {
        model_name: "m".into(),
        ..Default::default()
    };
    let mut call = Request::new(req);
    call.metadata_mut()
        .insert("x-request-id", "rid-9".parse().unwrap());
    let st = s.client.model_infer(call).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted);
    assert_eq!(st.message(), "64 requests already in flight");
    let md = st.metadata();
    assert_eq!(md.get(status::CATEGORY).unwrap(), "overloaded");
    assert_eq!(md.get(status::RETRYABLE).unwrap(), "true");
    assert_eq!(md.get(status::RETRY_AFTER).unwrap(), "2");
    assert_eq!(md.get(status::REQUEST_ID).unwrap(), "rid-9");
    s.stop().await;

    for (category, code) in [
        (ErrorCategory::BrowserCrashed, Code::Unavailable),
        (ErrorCategory::DeadlineExceeded, Code::DeadlineExceeded),
        (ErrorCategory::ModelLoadFailed, Code::FailedPrecondition),
        (ErrorCategory::InferenceFailed, Code::Internal),
    ] {
        let mut s = start(Some(ApiError::new(category, "boom")), None).await;
        let st = infer_status(
            &mut s,
            ModelInferRequest {
                model_name: "m".into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(st.code(), code, "{category}");
        assert_eq!(
            st.metadata().get(status::CATEGORY).unwrap(),
            category.as_str()
        );
        assert_eq!(
            st.metadata().get(status::RETRYABLE).unwrap(),
            if category.is_retryable() {
                "true"
            } else {
                "false"
            }
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn grpc_timeout_and_the_timeout_parameter_reach_call_options() {
    let mut s = start(None, None).await;
    let req = |param_us: Option<i64>| {
        let mut r = ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        };
        if let Some(us) = param_us {
            r.parameters.insert(
                "timeout".into(),
                InferParameter {
                    parameter_choice: Some(ParameterChoice::Int64Param(us)),
                },
            );
        }
        r
    };
    // The client's deadline, sent by tonic as grpc-timeout, shorter than the parameter.
    let mut call = Request::new(req(Some(3_000_000)));
    call.set_timeout(Duration::from_millis(1500));
    s.client.model_infer(call).await.unwrap();
    // The parameter shorter than the deadline.
    let mut call = Request::new(req(Some(250_000)));
    call.set_timeout(Duration::from_secs(5));
    s.client.model_infer(call).await.unwrap();
    // Neither.
    s.client.model_infer(req(None)).await.unwrap();
    let seen = s.api.seen.lock().unwrap().clone();
    assert_eq!(seen[0].timeout, Some(Duration::from_millis(1500)));
    assert_eq!(seen[1].timeout, Some(Duration::from_millis(250)));
    assert_eq!(seen[2].timeout, None);
    assert_eq!(seen[2].request_id.len(), 16, "generated when none is given");
    assert_ne!(seen[1].request_id, seen[2].request_id);
    s.stop().await;
}

#[tokio::test]
async fn health_metadata_and_readiness() {
    let mut s = start(None, None).await;
    let c = &mut s.client;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((meta.name.as_str(), meta.version.as_str()), ("echo", "0.1"));
    let ready = |name: &str, version: &str| ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("m", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("m", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("other", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let st = c.model_ready(ready("m", "2")).await.unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    let st = c.model_ready(ready("", "")).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);

    let meta = c
        .model_metadata(ModelMetadataRequest {
            name: "m".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "m");
    assert_eq!(meta.versions, ["1"]);
    assert_eq!(meta.platform, "test");
    assert_eq!(meta.inputs[0].name, "x");
    assert_eq!(meta.inputs[0].datatype, "FP32");
    assert_eq!(meta.inputs[0].shape, [-1, 4]);
    assert_eq!(meta.outputs[0].datatype, "INT64");
    let st = c
        .model_metadata(ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(st.message(), "unknown model 'nope'");
    assert_eq!(
        st.metadata().get(status::CATEGORY).unwrap(),
        "model_not_found"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_bearer_token_guards_everything_but_the_probes() {
    let mut s = start(None, Some(TOKEN)).await;
    let c = &mut s.client;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    let st = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    assert!(st.message().contains("missing bearer token"), "{st:?}");
    assert_eq!(st.metadata().get(status::CATEGORY).unwrap(), "unauthorized");

    let mut wrong = Request::new(ModelReadyRequest {
        name: "m".into(),
        version: String::new(),
    });
    wrong
        .metadata_mut()
        .insert(AUTHORIZATION, "Bearer sesamE".parse().unwrap());
    let st = c.model_ready(wrong).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    assert_eq!(st.message(), "invalid bearer token");

    let st = c
        .model_infer(ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    assert_eq!(s.api.seen.lock().unwrap().len(), 0);

    assert!(
        c.server_metadata(authed(ServerMetadataRequest {}))
            .await
            .is_ok()
    );
    assert!(
        c.model_metadata(authed(ModelMetadataRequest {
            name: "m".into(),
            version: String::new(),
        }))
        .await
        .is_ok()
    );
    let resp = c
        .model_infer(authed(ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(resp.into_inner().model_name, "m");
    assert_eq!(
        s.api.refused.lock().unwrap().len(),
        3,
        "refusals are counted"
    );
    s.stop().await;
}
