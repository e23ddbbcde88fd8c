//! `ensemble`: two chained models (`make_ensemble.py`, with a large intermediate tensor)
//! run as one ensemble request, whose intermediate stays in the page, against the same
//! two models called one after the other over the same bridge connection, whose
//! intermediate crosses the bridge twice; latency p50/p99 and bytes on the wire per
//! request, per backend, in one run.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webaccel_api::wire::{self, InferRequest, InferResponse, Message};
use webaccel_api::{DataType, Tensor};

use crate::agent_process;
use crate::samples::pct;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One request over the bridge; returns the response and the bytes sent and received.
async fn call(
    ws: &mut Socket,
    id: u64,
    model: &str,
    inputs: Vec<Tensor>,
) -> anyhow::Result<(InferResponse, usize)> {
    let frame = wire::encode(
        id,
        &Message::Request(InferRequest {
            model: model.into(),
            inputs,
            ..Default::default()
        }),
    );
    let sent = frame.len();
    ws.send(WsMessage::Binary(frame.into())).await?;
    loop {
        let Some(msg) = ws.next().await else {
            bail!("bridge closed")
        };
        let WsMessage::Binary(buf) = msg? else {
            continue;
        };
        let received = buf.len();
        return match wire::decode(bytes::Bytes::from(buf.to_vec()))? {
            (_, Message::Response(r)) => Ok((r, sent + received)),
            (_, other) => bail!("{model}: {other:?}"),
        };
    }
}

/// The tensor `name` of a response, renamed.
fn output(resp: &InferResponse, name: &str, as_name: &str) -> anyhow::Result<Tensor> {
    let mut t = resp
        .outputs
        .iter()
        .find(|t| t.name == name)
        .cloned()
        .with_context(|| format!("no output {name}"))?;
    t.name = as_name.into();
    Ok(t)
}

pub async fn run(
    bin: &Path,
    fixtures: &Path,
    rows: usize,
    width: usize,
    n: usize,
) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let made = Command::new("python3")
        .arg(fixtures.join("make_ensemble.py"))
        .arg(dir.path())
        .args(["--rows", &rows.to_string(), "--width", &width.to_string()])
        .output()
        .context("running python3")?;
    if !made.status.success() {
        bail!(
            "make_ensemble.py: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ensemble.json"))?)?;
    let x = &reference["inputs"][0];
    let input = Tensor::from_json(
        "x",
        DataType::Fp32,
        serde_json::from_value(x["shape"].clone())?,
        &x["data"],
    )?;
    let (agent, _) =
        agent_process::start(bin, &[], &["--standby-browser=false", "--page-workers=1"]).await?;
    let version = agent.get("/v1/capabilities").await.1["browser"]["version"].clone();
    let mut rows_out = Vec::new();
    for backend in ["wasm", "webgpu"] {
        let (first, second, ens) = (
            format!("first_{backend}"),
            format!("second_{backend}"),
            format!("pipe_{backend}"),
        );
        for (name, file) in [(&first, "first.onnx"), (&second, "second.onnx")] {
            let spec = json!({"name": name, "uri": format!("file://{}", dir.path().join(file).display()), "backend": backend});
            agent_process::load(&agent, &spec).await?;
        }
        let spec = json!({"name": ens, "ensemble": {
            "steps": [
                {"model": first, "input_map": {"x": "x"}, "output_map": {"hidden": "hidden"}},
                {"model": second, "input_map": {"hidden": "hidden"}, "output_map": {"y": "y"}},
            ],
            "outputs": ["y"],
        }});
        agent_process::load(&agent, &spec).await?;
        let url = format!("{}/v1/bridge", agent.base.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut one, mut two) = (Vec::new(), Vec::new());
        let (mut one_bytes, mut two_bytes) = (0, 0);
        let mut id = 0u64;
        for i in 0..n + n / 10 {
            // Alternate the two ways so both see the same machine.
            let t0 = Instant::now();
            let (resp, bytes) = call(&mut ws, id, &ens, vec![input.clone()]).await?;
            let ms_one = t0.elapsed().as_secs_f64() * 1e3;
            output(&resp, "y", "y")?;
            let t0 = Instant::now();
            let (h, b1) = call(&mut ws, id + 1, &first, vec![input.clone()]).await?;
            let (resp, b2) = call(
                &mut ws,
                id + 2,
                &second,
                vec![output(&h, "hidden", "hidden")?],
            )
            .await?;
            let ms_two = t0.elapsed().as_secs_f64() * 1e3;
            output(&resp, "y", "y")?;
            id += 3;
            if i >= n / 10 {
                one.push(ms_one);
                two.push(ms_two);
                one_bytes = bytes;
                two_bytes = b1 + b2;
            }
        }
        one.sort_by(f64::total_cmp);
        two.sort_by(f64::total_cmp);
        let row = json!({
            "backend": backend,
            "ensemble_p50_ms": pct(&one, 0.5),
            "ensemble_p99_ms": pct(&one, 0.99),
            "two_requests_p50_ms": pct(&two, 0.5),
            "two_requests_p99_ms": pct(&two, 0.99),
            "ensemble_bytes": one_bytes,
            "two_requests_bytes": two_bytes,
            "bytes_kept_in_page": two_bytes.saturating_sub(one_bytes),
        });
        eprintln!("{row}");
        rows_out.push(row);
    }
    Ok(json!({
        "browser": version,
        "requests": n,
        "intermediate": {"shape": [rows, width], "datatype": "FP32", "bytes": rows * width * 4},
        "rows": rows_out,
    }))
}

#[allow(clippy::print_stdout)]
pub fn print(report: &Value) {
    println!(
        "ensemble of two models vs two requests, one bridge connection, concurrency 1, {} requests, intermediate {} ({} bytes), {}",
        report["requests"],
        report["intermediate"]["shape"],
        report["intermediate"]["bytes"],
        report["browser"].as_str().unwrap_or_default()
    );
    println!(
        "{:<8} {:>13} {:>13} {:>13} {:>13} {:>14} {:>14}",
        "backend", "ens p50 ms", "ens p99 ms", "two p50 ms", "two p99 ms", "ens bytes", "two bytes"
    );
    for r in report["rows"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:>13.3} {:>13.3} {:>13.3} {:>13.3} {:>14} {:>14}",
            r["backend"].as_str().unwrap_or_default(),
            r["ensemble_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["ensemble_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["two_requests_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["two_requests_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["ensemble_bytes"],
            r["two_requests_bytes"],
        );
    }
}
