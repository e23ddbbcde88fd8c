//! `webaccel-gateway-bench`: what the gateway adds, measured side by side in one run.
//! Real agents (the `webaccel-agent` beside this binary, each with its own Chromium)
//! serve the mlp fixture; the same requests go straight to an agent and through the
//! gateway (in this process, static discovery), over HTTP with JSON tensors, HTTP with
//! binary tensors, and gRPC, at several concurrencies. Then throughput with one and two
//! agents, and a failover run (a browser killed, then an agent killed, under load).
//! Then text generation (the fixture decoder) straight and through the gateway (see
//! `generate.rs`). Prints a table and writes JSON; nothing is asserted.

mod generate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use webaccel_api::oip;
use webaccel_api::wire::InferRequest;
use webaccel_api::{DataType, Tensor};
use webaccel_bench::{pct, start_gateway};
use webaccel_gateway::discovery::static_list::AgentRef;
use webaccel_kserve::grpc::proto;
use webaccel_kserve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use webaccel_testkit::{AgentProcess, Launch, TOKEN, free_port};

#[derive(Debug, Parser)]
#[command(
    name = "webaccel-gateway-bench",
    about = "What the gateway adds, beside direct-to-agent requests"
)]
struct Args {
    /// The agent binary (default: `webaccel-agent` beside this one).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Requests per configuration.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    #[arg(long, default_value = "webaccel-gateway-bench.json")]
    json: PathBuf,
}

/// A benchmark agent: the test kit's agent process, with a gRPC listener too.
struct AgentProc {
    agent: AgentProcess,
    url: String,
    grpc: String,
}

async fn start_agent(bin: &std::path::Path, model: &std::path::Path) -> anyhow::Result<AgentProc> {
    let grpc = format!("127.0.0.1:{}", free_port());
    let decoder = model.with_file_name("decoder");
    let mut launch = Launch::new(&[
        format!("mlp=file://{},backend=wasm", model.display()),
        format!(
            "llm=file://{},tokenizer=file://{},backend=wasm",
            decoder.join("model.onnx").display(),
            decoder.join("tokenizer.json").display()
        ),
    ])
    .binary(bin)
    .args(&["--grpc-listen", &grpc]);
    "error".clone_into(&mut launch.rust_log);
    let agent = AgentProcess::launch(launch, Duration::from_secs(90)).await;
    agent.wait_standby(Duration::from_secs(90)).await;
    Ok(AgentProc {
        url: agent.base.clone(),
        grpc,
        agent,
    })
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Json,
    Binary,
    Grpc,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Json => "http-json",
            Self::Binary => "http-binary",
            Self::Grpc => "grpc",
        }
    }
}

/// Where requests go: HTTP base URL and gRPC address, with or without a token.
#[derive(Debug, Clone)]
struct Target {
    http: String,
    grpc: String,
    token: Option<&'static str>,
}

fn mlp_request(models: &std::path::Path) -> anyhow::Result<InferRequest> {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(models.join("mlp.json"))?)?;
    let input = &fixture["inputs"][0];
    let tensor = Tensor::from_json(
        "x",
        DataType::Fp32,
        serde_json::from_value(input["shape"].clone())?,
        &input["data"],
    )?;
    Ok(InferRequest {
        model: "mlp".into(),
        inputs: vec![tensor],
        ..Default::default()
    })
}

fn grpc_request(req: &InferRequest) -> proto::ModelInferRequest {
    proto::ModelInferRequest {
        model_name: req.model.clone(),
        inputs: req
            .inputs
            .iter()
            .map(|t| proto::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype.as_str().into(),
                shape: t.shape.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: req.inputs.iter().map(|t| t.data.clone()).collect(),
        ..Default::default()
    }
}

/// `n` requests at `concurrency`: latencies in ms (sorted) and errors.
async fn measure(
    target: &Target,
    transport: Transport,
    req: &InferRequest,
    concurrency: usize,
    n: usize,
) -> anyhow::Result<(Vec<f64>, usize, Duration)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let json_body = Bytes::from(oip::encode_request(req, false, &[], Map::new()).body);
    let binary = oip::encode_request(
        req,
        true,
        &[],
        Map::from_iter([("binary_data_output".to_owned(), Value::Bool(true))]),
    );
    let binary_len = binary.header_length.unwrap_or(0);
    let binary_body = Bytes::from(binary.body);
    let grpc_req = grpc_request(req);
    let mut channel = None;
    if matches!(transport, Transport::Grpc) {
        channel = Some(
            tonic::transport::Endpoint::from_shared(format!("http://{}", target.grpc))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let samples = Arc::new(Mutex::new((Vec::with_capacity(n), 0usize)));
    let url = format!("{}/v2/models/mlp/infer", target.http);
    let run = |count: usize, record: bool| {
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let share = count / concurrency + usize::from(w < count % concurrency);
            let (http, url, samples) = (http.clone(), url.clone(), samples.clone());
            let (json_body, binary_body, grpc_req) =
                (json_body.clone(), binary_body.clone(), grpc_req.clone());
            let token = target.token;
            let mut client = channel.clone().map(GrpcInferenceServiceClient::new);
            tasks.push(tokio::spawn(async move {
                for _ in 0..share {
                    let t = Instant::now();
                    let ok = match transport {
                        Transport::Json | Transport::Binary => {
                            let mut call = http.post(&url);
                            if let Some(tok) = token {
                                call = call.bearer_auth(tok);
                            }
                            call = match transport {
                                Transport::Json => call
                                    .header("content-type", "application/json")
                                    .body(json_body.clone()),
                                _ => call
                                    .header(oip::HEADER_LENGTH, binary_len)
                                    .body(binary_body.clone()),
                            };
                            match call.send().await {
                                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                                _ => false,
                            }
                        }
                        Transport::Grpc => {
                            let mut request = tonic::Request::new(grpc_req.clone());
                            if let Some(tok) = token
                                && let Ok(v) = format!("Bearer {tok}").parse()
                            {
                                request.metadata_mut().insert("authorization", v);
                            }
                            match client.as_mut() {
                                Some(c) => c.model_infer(request).await.is_ok(),
                                None => false,
                            }
                        }
                    };
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let mut s = samples.lock().await;
                    if !ok {
                        s.1 += 1;
                    } else if record {
                        s.0.push(ms);
                    }
                }
            }));
        }
        async move {
            for t in tasks {
                let _ = t.await;
            }
        }
    };
    run((n / 10).max(concurrency), false).await;
    *samples.lock().await = (Vec::with_capacity(n), 0);
    let started = Instant::now();
    run(n, true).await;
    let wall = started.elapsed();
    let (mut lat, errors) = std::mem::take(&mut *samples.lock().await);
    lat.sort_by(f64::total_cmp);
    Ok((lat, errors, wall))
}
fn agent_ref(a: &AgentProc) -> AgentRef {
    AgentRef {
        url: a.url.clone(),
        token: Some(TOKEN.into()),
        pool: Some("bench".into()),
    }
}

/// Load through the gateway while `fault` runs; failed requests and the p99 of the
/// second around the fault.
async fn failover(
    gateway: &Target,
    req: &InferRequest,
    fault: impl Future<Output = ()>,
) -> anyhow::Result<Value> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = format!("{}/v2/models/mlp/infer", gateway.http);
    let body = Bytes::from(oip::encode_request(req, false, &[], Map::new()).body);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, url, body) = (stop.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut out = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let ok = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                out.push((t, t.elapsed(), ok));
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault_at = Instant::now();
    fault.await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let failed = all.iter().filter(|o| !o.2).count();
    let mut around: Vec<f64> = all
        .iter()
        .filter(|(t, _, _)| {
            *t + Duration::from_secs(1) >= fault_at && *t <= fault_at + Duration::from_secs(3)
        })
        .map(|(_, d, _)| d.as_secs_f64() * 1e3)
        .collect();
    around.sort_by(f64::total_cmp);
    Ok(
        json!({"requests": all.len(), "failed": failed, "p99_during_fault_ms": pct(&around, 0.99), "max_during_fault_ms": around.last()}),
    )
}

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.agent {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("webaccel-agent"),
    };
    let models = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../node-agent/tests/fixtures/models"
    ));
    let req = mlp_request(&models)?;
    let (a, b) = (
        start_agent(&bin, &models.join("mlp.onnx")).await?,
        start_agent(&bin, &models.join("mlp.onnx")).await?,
    );
    let stop = CancellationToken::new();

    // 1. Added latency: the same requests to agent A directly and through a gateway
    // that has only agent A.
    let gw1 = start_gateway(vec![agent_ref(&a)], &stop, "mlp").await?;
    let direct = Target {
        http: a.url.clone(),
        grpc: a.grpc.clone(),
        token: Some(TOKEN),
    };
    let through = Target {
        http: format!("http://{}", gw1.http),
        grpc: gw1.grpc.to_string(),
        token: None,
    };
    let mut rows = Vec::new();
    println!(
        "{:<12} {:>4} {:>11} {:>11} {:>11} {:>11} {:>10} {:>10}",
        "transport",
        "conc",
        "direct p50",
        "direct p99",
        "gw p50",
        "gw p99",
        "added p50",
        "added p99"
    );
    for &c in &args.concurrency {
        for t in [Transport::Json, Transport::Binary, Transport::Grpc] {
            let (d, de, _) = measure(&direct, t, &req, c, args.requests).await?;
            let (g, ge, _) = measure(&through, t, &req, c, args.requests).await?;
            let row = json!({
                "transport": t.name(), "concurrency": c,
                "direct_p50_ms": pct(&d, 0.5), "direct_p99_ms": pct(&d, 0.99),
                "gateway_p50_ms": pct(&g, 0.5), "gateway_p99_ms": pct(&g, 0.99),
                "added_p50_ms": pct(&g, 0.5) - pct(&d, 0.5), "added_p99_ms": pct(&g, 0.99) - pct(&d, 0.99),
                "errors": de + ge,
            });
            println!(
                "{:<12} {:>4} {:>11.3} {:>11.3} {:>11.3} {:>11.3} {:>10.3} {:>10.3}",
                t.name(),
                c,
                pct(&d, 0.5),
                pct(&d, 0.99),
                pct(&g, 0.5),
                pct(&g, 0.99),
                pct(&g, 0.5) - pct(&d, 0.5),
                pct(&g, 0.99) - pct(&d, 0.99)
            );
            rows.push(row);
        }
    }
    // 2. Throughput through the gateway with one and with two agents.
    let gw2 = start_gateway(vec![agent_ref(&a), agent_ref(&b)], &stop, "mlp").await?;
    let through2 = Target {
        http: format!("http://{}", gw2.http),
        grpc: gw2.grpc.to_string(),
        token: None,
    };
    let mut throughput = Vec::new();
    for (agents, target) in [(1, &through), (2, &through2)] {
        let (lat, errors, wall) =
            measure(target, Transport::Binary, &req, 32, args.requests * 2).await?;
        #[allow(clippy::cast_precision_loss)]
        let rps = lat.len() as f64 / wall.as_secs_f64();
        println!(
            "throughput through the gateway, {agents} agent(s), http-binary at concurrency 32: {rps:.0} req/s (p50 {:.2} ms, errors {errors})",
            pct(&lat, 0.5)
        );
        throughput.push(
            json!({"agents": agents, "rps": rps, "p50_ms": pct(&lat, 0.5), "errors": errors}),
        );
    }
    // Text generation, straight to agent A and through the gateway that has only it.
    let generation = generate::compare((&a.url, Some(TOKEN)), &through.http, &[1, 8]).await;
    gw1.shutdown().await;
    // 3. Failover: a browser of agent A killed (all its processes), then agent A killed.
    let a_stats: Value = reqwest::Client::new()
        .get(format!("{}/v1/stats", a.url))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let browser = a_stats["browser"]["pid"].as_i64().context("browser pid")?;
    let browser_kill = failover(&through2, &req, async move {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(i32::try_from(browser).unwrap_or(0)),
            nix::sys::signal::Signal::SIGKILL,
        );
    })
    .await?;
    let agent_pid = a.agent.pid();
    let agent_kill = failover(&through2, &req, async move {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    })
    .await?;
    println!(
        "failover at concurrency 8 (HTTP JSON, two agents): browser kill {browser_kill}; agent kill {agent_kill}"
    );
    gw2.shutdown().await;
    stop.cancel();
    let report = json!({"added_latency": rows, "throughput": throughput, "generation": generation, "failover": {"browser_kill": browser_kill, "agent_kill": agent_kill}});
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("JSON written to {}", args.json.display());
    drop((a, b));
    Ok(())
}
