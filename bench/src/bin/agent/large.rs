//! One large tensor (1 MiB: the mlp with a batch of 16,384 rows) over the three ways in:
//! HTTP with JSON tensors, HTTP with the binary tensor extension, and the bridge.

use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webaccel_api::oip;
use webaccel_api::wire::{self, InferRequest, Message};
use webaccel_api::{DataType, Tensor};

use crate::agent_process::AgentProcess;
use crate::samples::pct;

const ROWS: usize = 16_384;
const LIMIT: usize = 64 << 20;

fn input() -> anyhow::Result<Tensor> {
    let data: Vec<u8> = (0..ROWS * 16)
        .flat_map(|k| (((k % 97) as f32) / 97.0 - 0.5).to_le_bytes())
        .collect();
    Ok(Tensor::from_bytes(
        "x",
        DataType::Fp32,
        vec![i64::try_from(ROWS)?, 16],
        Bytes::from(data),
    )?)
}

struct Run {
    e2e_ms: Vec<f64>,
    compute_ms: Vec<f64>,
    request_bytes: usize,
    response_bytes: usize,
    output: Option<Tensor>,
}

impl Run {
    fn new() -> Self {
        Self {
            e2e_ms: Vec::new(),
            compute_ms: Vec::new(),
            request_bytes: 0,
            response_bytes: 0,
            output: None,
        }
    }

    fn summary(mut self, via: &str) -> (Value, Option<Tensor>) {
        self.e2e_ms.sort_by(f64::total_cmp);
        self.compute_ms.sort_by(f64::total_cmp);
        let row = json!({
            "via": via,
            "requests": self.e2e_ms.len(),
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "e2e_p50_ms": pct(&self.e2e_ms, 0.5),
            "e2e_p99_ms": pct(&self.e2e_ms, 0.99),
            "compute_p50_ms": pct(&self.compute_ms, 0.5),
        });
        (row, self.output)
    }
}

async fn over_http(
    agent: &AgentProcess,
    req: &InferRequest,
    binary: bool,
    n: usize,
) -> anyhow::Result<Run> {
    let params = if binary {
        Map::from_iter([("binary_data_output".to_owned(), Value::Bool(true))])
    } else {
        Map::new()
    };
    let enc = oip::encode_request(req, binary, &[], params);
    let url = format!("{}/v2/models/mlp/infer", agent.base);
    let mut run = Run::new();
    run.request_bytes = enc.body.len();
    let body = Bytes::from(enc.body);
    for k in 0..n + 2 {
        let mut call = agent.http.post(&url).body(body.clone());
        if let Some(len) = enc.header_length {
            call = call.header(oip::HEADER_LENGTH, len);
        }
        let t = Instant::now();
        let resp = call.send().await?;
        let status = resp.status();
        let header = resp
            .headers()
            .get(oip::HEADER_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        let (meta, outputs) = oip::parse_response(&bytes, header.as_deref(), LIMIT)?;
        let e2e = t.elapsed().as_secs_f64() * 1e3;
        if k >= 2 {
            run.e2e_ms.push(e2e);
            run.compute_ms.push(
                meta.parameters
                    .get("compute_ms")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN),
            );
        }
        run.response_bytes = bytes.len();
        run.output = outputs.into_iter().next();
    }
    Ok(run)
}

async fn over_bridge(agent: &AgentProcess, req: &InferRequest, n: usize) -> anyhow::Result<Run> {
    let url = format!("{}/v1/bridge", agent.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut run = Run::new();
    for k in 0..n + 2 {
        let frame = wire::encode(k as u64, &Message::Request(req.clone()));
        run.request_bytes = frame.len();
        let t = Instant::now();
        ws.send(WsMessage::Binary(frame.into())).await?;
        let reply = loop {
            match ws.next().await.context("bridge closed")?? {
                WsMessage::Binary(b) => break b,
                _ => continue,
            }
        };
        run.response_bytes = reply.len();
        let (_, msg) = wire::decode(Bytes::from(reply.to_vec()))?;
        let e2e = t.elapsed().as_secs_f64() * 1e3;
        let Message::Response(resp) = msg else {
            bail!("bridge error: {msg:?}")
        };
        if k >= 2 {
            run.e2e_ms.push(e2e);
            run.compute_ms.push(resp.compute_ms);
        }
        run.output = resp.outputs.into_iter().next();
    }
    Ok(run)
}

/// The three transports side by side; the outputs must agree bit for bit.
pub async fn compare(agent: &AgentProcess, n: usize) -> anyhow::Result<Vec<Value>> {
    let req = InferRequest {
        model: "mlp".into(),
        inputs: vec![input()?],
        outputs: vec![],
        ..Default::default()
    };
    let mut rows = Vec::new();
    let mut outputs = Vec::new();
    for (via, run) in [
        ("http-json", over_http(agent, &req, false, n).await?),
        ("http-binary", over_http(agent, &req, true, n).await?),
        ("bridge", over_bridge(agent, &req, n).await?),
    ] {
        let (row, output) = run.summary(via);
        rows.push(row);
        outputs.push(output);
    }
    if outputs.windows(2).any(|w| w[0] != w[1]) {
        bail!("the transports returned different outputs for the same input");
    }
    Ok(rows)
}
