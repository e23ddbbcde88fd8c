//! The measurements: latency over the bridge and HTTP, model init, crash recovery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webaccel_api::wire::{self, InferRequest, Message};
use webaccel_api::{DataType, Tensor};

use crate::agent_process::AgentProcess;
use crate::samples::{Samples, pct};

pub fn mlp_inputs(models: &std::path::Path) -> anyhow::Result<(Value, Vec<Tensor>)> {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(models.join("mlp.json"))?)?;
    let inputs = fixture["inputs"].clone();
    let tensors = inputs
        .as_array()
        .context("inputs")?
        .iter()
        .map(|i| {
            let shape = serde_json::from_value(i["shape"].clone())?;
            let dt =
                DataType::parse(i["datatype"].as_str().unwrap_or_default()).context("datatype")?;
            Ok(Tensor::from_json(
                i["name"].as_str().unwrap_or_default(),
                dt,
                shape,
                &i["data"],
            )?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((inputs, tensors))
}

pub async fn bench_http(
    agent: &AgentProcess,
    inputs: &Value,
    concurrency: usize,
    n: usize,
) -> Value {
    let url = format!("{}/v2/models/mlp/infer", agent.base);
    let body = Arc::new(serde_json::to_vec(&json!({"inputs": inputs})).unwrap_or_default());
    let samples = Arc::new(Mutex::new(Samples::default()));
    let run = |count: usize, record: bool| {
        let (url, body, samples, http) = (
            url.clone(),
            body.clone(),
            samples.clone(),
            agent.http.clone(),
        );
        async move {
            let mut tasks = Vec::new();
            for w in 0..concurrency {
                let (url, body, samples, http) =
                    (url.clone(), body.clone(), samples.clone(), http.clone());
                let share = count / concurrency + usize::from(w < count % concurrency);
                tasks.push(tokio::spawn(async move {
                    for _ in 0..share {
                        let t = Instant::now();
                        let resp = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.as_ref().clone())
                            .send()
                            .await;
                        let value = match resp {
                            Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                            _ => None,
                        };
                        let e2e = t.elapsed().as_secs_f64() * 1e3;
                        let mut s = samples.lock().await;
                        let params = value.map(|v| v["parameters"].clone()).unwrap_or_default();
                        match params["compute_ms"].as_f64() {
                            Some(c) if record => s.push(e2e, c, params["page_ms"].as_f64()),
                            Some(_) => {}
                            None => s.errors += 1,
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    };
    run(n / 10, false).await;
    let start = Instant::now();
    run(n, true).await;
    let wall = start.elapsed();
    let s = std::mem::take(&mut *samples.lock().await);
    s.summary("http", concurrency, wall)
}

/// Requests over one bridge connection to `model` (the mlp, or `wire::ECHO_MODEL` for
/// the bridge's floor), `concurrency` outstanding at a time.
pub async fn bench_bridge(
    agent: &AgentProcess,
    model: &str,
    tensors: &[Tensor],
    concurrency: usize,
    n: usize,
) -> anyhow::Result<Value> {
    let url = format!("{}/v1/bridge", agent.base.replace("http://", "ws://"));
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut tx, mut rx) = ws.split();
    let frame = |id: u64| {
        wire::encode(
            id,
            &Message::Request(InferRequest {
                model: model.into(),
                inputs: tensors.to_vec(),
                outputs: vec![],
                ..Default::default()
            }),
        )
    };
    let mut samples = Samples::default();
    let mut wall = Duration::ZERO;
    for (count, record) in [(n / 10, false), (n, true)] {
        let mut sent_at = vec![Instant::now(); count];
        let start = Instant::now();
        let mut next = 0usize;
        let mut done = 0usize;
        while next < count.min(concurrency) {
            sent_at[next] = Instant::now();
            tx.send(WsMessage::Binary(frame(next as u64).into()))
                .await?;
            next += 1;
        }
        while done < count {
            let Some(msg) = rx.next().await else {
                bail!("bridge closed")
            };
            let WsMessage::Binary(buf) = msg? else {
                continue;
            };
            let (id, reply) = wire::decode(bytes::Bytes::from(buf.to_vec()))?;
            let e2e = sent_at[usize::try_from(id)?].elapsed().as_secs_f64() * 1e3;
            done += 1;
            match reply {
                Message::Response(r) if record => samples.push(e2e, r.compute_ms, r.page_ms),
                Message::Response(_) => {}
                _ => samples.errors += 1,
            }
            if next < count {
                sent_at[next] = Instant::now();
                tx.send(WsMessage::Binary(frame(next as u64).into()))
                    .await?;
                next += 1;
            }
        }
        if record {
            wall = start.elapsed();
        }
    }
    let label = if model == wire::ECHO_MODEL {
        "echo"
    } else {
        "bridge"
    };
    Ok(samples.summary(label, concurrency, wall))
}

/// Kills the browser and times how long until an inference succeeds again.
pub async fn crash_recovery(agent: &AgentProcess, inputs: &Value) -> anyhow::Result<(f64, f64)> {
    let pid = agent.get("/v1/stats").await.1["browser"]["pid"]
        .as_i64()
        .context("browser pid")?;
    let body = json!({"inputs": inputs});
    let url = format!("{}/v2/models/mlp/infer", agent.base);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    // Wait for the agent to notice, so a request answered by the dying page does not count.
    while agent.get("/v1/stats").await.1["browser"]["pid"].as_i64() == Some(pid) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    loop {
        let r = agent.http.post(&url).json(&body).send().await?;
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no recovery within 60 s");
        }
    }
    let external = killed.elapsed().as_secs_f64() * 1e3;
    agent.wait_ready(Duration::from_secs(60)).await;
    let internal = agent.get("/v1/stats").await.1["browser"]["last_recovery_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    Ok((external, internal))
}

/// Loads the model afresh, with and without warm-up, three times each, and reports
/// medians: session creation, the warm-up run, and the first request after loading.
pub async fn init_times(
    agent: &AgentProcess,
    models: &std::path::Path,
    inputs: &Value,
) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for warmup in [false, true] {
        let mut figures: [Vec<f64>; 5] = Default::default();
        for rep in 0..3 {
            let name = format!("mlp_warmup_{warmup}_{rep}");
            let spec = json!({"name": name, "uri": format!("file://{}", models.join("mlp.onnx").display()), "backend": "wasm", "warmup": warmup});
            let t = Instant::now();
            let r = agent
                .http
                .post(format!("{}/v1/repository/models", agent.base))
                .json(&spec)
                .send()
                .await?;
            let load_ms = t.elapsed().as_secs_f64() * 1e3;
            let loaded: Value = r.json().await?;
            let t = Instant::now();
            let first: Value = agent
                .http
                .post(format!("{}/v2/models/{name}/infer", agent.base))
                .json(&json!({"inputs": inputs}))
                .send()
                .await?
                .json()
                .await?;
            let first_ms = t.elapsed().as_secs_f64() * 1e3;
            let status = &loaded["status"];
            for (k, v) in [
                load_ms,
                status["create_ms"].as_f64().unwrap_or(f64::NAN),
                status["warmup_ms"].as_f64().unwrap_or(f64::NAN),
                first_ms,
                first["parameters"]["compute_ms"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            ]
            .into_iter()
            .enumerate()
            {
                figures[k].push(v);
            }
            agent
                .http
                .delete(format!("{}/v1/repository/models/{name}", agent.base))
                .send()
                .await?;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            pct(v, 0.5)
        };
        let [load, create, warm, first, compute] = &mut figures;
        out.insert(
            format!("warmup_{warmup}"),
            json!({
                "load_api_ms": median(load),
                "session_create_ms": median(create),
                "warmup_run_ms": if warmup { json!(median(warm)) } else { Value::Null },
                "first_request_e2e_ms": median(first),
                "first_request_compute_ms": median(compute),
            }),
        );
    }
    Ok(Value::Object(out))
}
