//! Suite `chaos`: a fleet under closed-loop load through the gateway (HTTP and gRPC)
//! while faults drawn from a seed hit it, then the accounting. `webaccel up` runs two
//! pools (two Chromium, two Firefox browsers) and five deployments: a batched MLP, a CNN,
//! an ensemble of two models chained in the page, and the MLP again on Firefox. Faults:
//! SIGKILL of a browser, a renderer, a GPU process or an agent; a browser frozen
//! (SIGSTOP, SIGCONT 5 s later); ClickHouse SIGKILLed; a pool rolled; a model re-applied;
//! the gateway restarted as a rollout would (clients retry refused connections only).
//!
//! The accounting, Jepsen-style: every request a client saw answered 200 has exactly one
//! `ok` gateway row and one `ok` agent row in ClickHouse (joined by `x-request-id`);
//! failed requests are counted by cause; RSS and open files of the long-lived processes
//! are sampled every 10 s (slope after warm-up); and after `up` stops, no process it
//! started is left.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use webaccel_kserve::grpc::proto;
use webaccel_kserve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use webaccel_testkit::fixtures::fixture;
use webaccel_testkit::procs;
use webaccel_testkit::up::{Up, clickhouse_query, clickhouse_url, loaded};

#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub seed: u64,
    pub http_clients: usize,
    pub grpc_clients: usize,
    pub fault_every: Duration,
}

/// The deployments the clients call, in turn.
const MODELS: [&str; 4] = ["mlp", "cnn", "pipe", "mlp-fox"];

fn pool(name: &str, browser: &str, backends: &str) -> String {
    format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: BrowserPool\nmetadata:\n  name: {name}\nspec:\n  browser: {browser}\n  image: local\n  backends: {backends}\n  replicas: 2\n  maxInFlightPerBrowser: 64\n  rollout: {{minReadySeconds: 5}}\n"
    )
}

fn model(name: &str, pool: &str, file: &Path, extra: &str) -> String {
    format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {name}\nspec:\n  poolRef: {{name: {pool}}}\n  model:\n    uri: file://{}\n    task: vision\n  backends: [wasm]\n  replicas: 2\n{extra}",
        file.display()
    )
}

fn batched_mlp(delay_us: u32) -> String {
    model(
        "mlp",
        "chrome",
        &fixture("mlp.onnx"),
        &format!("  batching: {{maxBatchSize: 8, maxQueueDelayMicroseconds: {delay_us}}}\n"),
    )
}

fn manifests(work: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("chrome.yaml", pool("chrome", "chromium", "[wasm, webgpu]")),
        ("fox.yaml", pool("fox", "firefox", "[wasm]")),
        ("mlp.yaml", batched_mlp(500)),
        ("cnn.yaml", model("cnn", "chrome", &fixture("cnn.onnx"), "")),
        ("first.yaml", model("first", "chrome", &work.join("first.onnx"), "")),
        ("second.yaml", model("second", "chrome", &work.join("second.onnx"), "")),
        (
            "pipe.yaml",
            "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: pipe\nspec:\n  poolRef: {name: chrome}\n  backends: [wasm]\n  replicas: 2\n  ensemble:\n    task: vision\n    outputs: [OUTPUT]\n    steps:\n    - model: first\n      inputMap: {x: INPUT}\n      outputMap: {hidden: hidden}\n    - model: second\n      inputMap: {hidden: hidden}\n      outputMap: {y: OUTPUT}\n".to_owned(),
        ),
        ("mlp-fox.yaml", model("mlp-fox", "fox", &fixture("mlp.onnx"), "")),
    ]
}

/// Each model's request: the KServe v2 JSON body and the same as a gRPC request.
fn bodies() -> Vec<(String, Value, proto::ModelInferRequest)> {
    let inputs_of = |file: &str| -> Value {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(file)).unwrap()).unwrap();
        v["inputs"].clone()
    };
    MODELS
        .iter()
        .map(|&m| {
            let inputs = match m {
                "cnn" => inputs_of("cnn.json"),
                "pipe" => {
                    json!([{"name": "INPUT", "datatype": "FP32", "shape": [1, 16], "data": vec![0.25_f32; 16]}])
                }
                _ => inputs_of("mlp.json"),
            };
            let body = json!({ "inputs": inputs });
            let grpc = proto::ModelInferRequest {
                model_name: m.to_owned(),
                inputs: inputs
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| proto::model_infer_request::InferInputTensor {
                        name: t["name"].as_str().unwrap().to_owned(),
                        datatype: "FP32".into(),
                        shape: serde_json::from_value(t["shape"].clone()).unwrap(),
                        contents: Some(proto::InferTensorContents {
                            fp32_contents: serde_json::from_value(t["data"].clone()).unwrap(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            (m.to_owned(), body, grpc)
        })
        .collect()
}

/// One request as its client saw it.
#[derive(Debug, Clone)]
struct Answer {
    id: String,
    model: String,
    /// Empty when answered; else why not.
    failure: String,
    /// When it was answered (or failed), from the start of the load.
    t: f64,
}

type Answers = Arc<Mutex<Vec<Answer>>>;

/// How long a client keeps retrying a request whose connection failed (the only failure
/// a client retries; the gateway retries the rest itself).
const CONNECT_RETRY: Duration = Duration::from_secs(30);

async fn http_client(
    epoch: Instant,
    k: usize,
    url: String,
    bodies: Arc<Vec<(String, Value, proto::ModelInferRequest)>>,
    stop: Arc<AtomicBool>,
    answers: Answers,
) {
    let client = reqwest::Client::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (model, body, _) = &bodies[(k + n) % bodies.len()];
        let id = format!("h{k}-{n}");
        n += 1;
        let started = Instant::now();
        let failure = loop {
            let sent = client
                .post(format!("{url}/v2/models/{model}/infer"))
                .header("x-request-id", &id)
                .json(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                    Ok(v) if v["outputs"].is_array() => break String::new(),
                    Ok(v) => break format!("200 without outputs: {v}"),
                    Err(e) => break format!("body: {e}"),
                },
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    break format!("http {status} {}", v["category"].as_str().unwrap_or("?"));
                }
                Err(e) if e.is_connect() && started.elapsed() < CONNECT_RETRY => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => break format!("http transport: {e}"),
            }
        };
        answers.lock().push(Answer {
            id,
            model: model.clone(),
            failure,
            t: epoch.elapsed().as_secs_f64(),
        });
    }
}

async fn grpc_client(
    epoch: Instant,
    k: usize,
    addr: String,
    bodies: Arc<Vec<(String, Value, proto::ModelInferRequest)>>,
    stop: Arc<AtomicBool>,
    answers: Answers,
) {
    let mut client = loop {
        match GrpcInferenceServiceClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(_) if !stop.load(Ordering::Relaxed) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return,
        }
    };
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (model, _, request) = &bodies[(k + n) % bodies.len()];
        let id = format!("g{k}-{n}");
        n += 1;
        let started = Instant::now();
        let failure = loop {
            let mut req = request.clone();
            req.id.clone_from(&id);
            match client.model_infer(req).await {
                Ok(_) => break String::new(),
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && s.message().contains("connect")
                        && started.elapsed() < CONNECT_RETRY =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => break format!("grpc {:?}: {}", s.code(), s.message()),
            }
        };
        answers.lock().push(Answer {
            id,
            model: model.clone(),
            failure,
            t: epoch.elapsed().as_secs_f64(),
        });
    }
}

/// The agents `up` runs now: (browser name, pid).
fn agents(s: &Value) -> Vec<(String, i32)> {
    s["browsers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["state"] == "ready")
        .filter_map(|b| {
            Some((
                b["name"].as_str()?.to_owned(),
                i32::try_from(b["pid"].as_i64()?).ok()?,
            ))
        })
        .collect()
}

/// The browser main processes below an agent (its active and standby browsers).
fn browser_mains(agent: i32) -> Vec<i32> {
    procs::all()
        .into_iter()
        .filter(|p| p.ppid == agent && !p.is_zombie() && p.kind.is_empty())
        .filter(|p| p.comm.contains("chrom") || p.comm.contains("firefox"))
        .map(|p| p.pid)
        .collect()
}

/// Draws and carries out one fault; what it did, or why it did nothing.
async fn fault(rng: &mut StdRng, up: &Up, round: usize) -> String {
    let s = up.status().await;
    let agents = agents(&s);
    if agents.is_empty() {
        return "no ready agent: skipped".into();
    }
    let (name, agent) = agents[rng.random_range(0..agents.len())].clone();
    let mains = browser_mains(agent);
    let main = mains.first().copied();
    match rng.random_range(0..10) {
        0 | 1 => match main {
            Some(pid) => {
                procs::signal(pid, nix::sys::signal::Signal::SIGKILL);
                format!("SIGKILL browser {pid} of {name}")
            }
            None => format!("{name} has no browser process: skipped"),
        },
        2 => match main.and_then(|m| procs::of_kind(m, "renderer").first().copied()) {
            Some(pid) => {
                procs::signal(pid, nix::sys::signal::Signal::SIGKILL);
                format!("SIGKILL renderer {pid} of {name}")
            }
            None => format!("{name} has no renderer (Firefox): skipped"),
        },
        3 => match main.and_then(|m| procs::of_kind(m, "gpu-process").first().copied()) {
            Some(pid) => {
                procs::signal(pid, nix::sys::signal::Signal::SIGKILL);
                format!("SIGKILL GPU process {pid} of {name}")
            }
            None => format!("{name} has no GPU process (Firefox): skipped"),
        },
        4 => match main {
            Some(pid) => {
                procs::signal(pid, nix::sys::signal::Signal::SIGSTOP);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    procs::signal(pid, nix::sys::signal::Signal::SIGCONT);
                });
                format!("SIGSTOP browser {pid} of {name} for 5 s")
            }
            None => format!("{name} has no browser process: skipped"),
        },
        5 => {
            procs::signal(agent, nix::sys::signal::Signal::SIGKILL);
            format!("SIGKILL agent {agent} ({name})")
        }
        6 => match s["clickhouse_server"]["pid"].as_i64() {
            Some(pid) => {
                procs::signal(
                    i32::try_from(pid).unwrap(),
                    nix::sys::signal::Signal::SIGKILL,
                );
                format!("SIGKILL ClickHouse {pid}")
            }
            None => "ClickHouse not running: skipped".into(),
        },
        7 => {
            // A changed pool rolls every browser.
            let text = pool("chrome", "chromium", "[wasm, webgpu]").replace(
                "maxInFlightPerBrowser: 64",
                &format!("maxInFlightPerBrowser: {}", 60 + round % 4),
            );
            apply(up, "chrome.yaml", &text);
            "rolled pool chrome".into()
        }
        9 => {
            // As a rollout of the gateway: drained, its ports closed, started again.
            let r = reqwest::Client::new()
                .post(format!("{}/v1/gateway/restart", up.admin))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => GATEWAY_RESTARTED.into(),
                Ok(r) => format!("gateway restart refused: {}", r.status()),
                Err(e) => format!("gateway restart not asked: {e}"),
            }
        }
        _ => {
            apply(
                up,
                "mlp.yaml",
                &batched_mlp(400 + u32::try_from(round % 3).unwrap() * 50),
            );
            "re-applied mlp with another batching delay".into()
        }
    }
}

/// What the fault menu says when it restarted the gateway.
const GATEWAY_RESTARTED: &str = "restarted the gateway";
/// How long after a gateway restart a transport failure counts as in flight at it: the
/// drain (1 s), the requests in flight finishing, the new gateway binding.
const RESTART_WINDOW_S: f64 = 5.0;

/// Failures by cause and model: how many, and when the first and the last came.
fn by_cause(failures: &[&Answer]) -> BTreeMap<String, Value> {
    let mut by: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
    for a in failures {
        let key = format!(
            "{}: {}",
            a.model,
            a.failure.chars().take(120).collect::<String>()
        );
        let e = by.entry(key).or_insert((0, a.t, a.t));
        e.0 += 1;
        e.1 = e.1.min(a.t);
        e.2 = e.2.max(a.t);
    }
    by.into_iter()
        .map(|(k, (n, first, last))| (k, json!({"count": n, "first_t_s": first, "last_t_s": last})))
        .collect()
}

fn apply(up: &Up, file: &str, text: &str) {
    let path = up.manifests().join(file);
    std::fs::write(&path, text).unwrap();
    let (ok, out, err) = up.webaccel(&["apply", "-f", path.to_str().unwrap()]);
    assert!(ok, "apply {file}: {out}{err}");
}

/// A process's figures at one moment.
#[derive(Debug, Clone, Default)]
struct Sample {
    t: f64,
    up_rss_kib: u64,
    up_fds: usize,
    clickhouse_rss_kib: u64,
    agents_rss_kib: u64,
    browser_processes: usize,
    /// Zombies below `up` that were zombies at the sample before too (one caught between
    /// its exit and its parent's wait is no leak).
    lingering_zombies: usize,
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The least-squares slope of `ys` over `xs` (minutes), per minute.
#[allow(clippy::cast_precision_loss)]
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

/// `request_id → ok rows` (distinct row ids) of `table`.
async fn ok_rows(url: &str, table: &str) -> Option<HashMap<String, u64>> {
    let text = clickhouse_query(
        url,
        &format!(
            "SELECT request_id, uniqExactIf(row_id, outcome = 'ok') FROM chaos.{table} \
             WHERE request_id != '' GROUP BY request_id FORMAT TabSeparated"
        ),
    )
    .await?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (id, n) = l.split_once('\t')?;
                Some((id.to_owned(), n.parse().ok()?))
            })
            .collect(),
    )
}

/// Runs the soak; its figures.
#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
pub async fn run(binary: &Path, repo: &Path, work: &Path, settings: &Settings) -> Value {
    let made = std::process::Command::new("python3")
        .arg(repo.join("node-agent/tests/fixtures/make_ensemble.py"))
        .arg(work)
        .status()
        .unwrap();
    assert!(made.success(), "make_ensemble.py");
    let mut up = Up::start(
        binary,
        &manifests(work),
        &["--clickhouse-database".to_owned(), "chaos".to_owned()],
    );
    let s = up
        .until("every model loaded", Duration::from_secs(240), |s| {
            ["mlp", "cnn", "first", "second", "pipe", "mlp-fox"]
                .iter()
                .all(|m| loaded(s, m, 2))
                && s["clickhouse_server"]["state"] == "running"
        })
        .await;
    let url = clickhouse_url(&s);
    let up_pid = i32::try_from(up.child.id()).unwrap();
    println!(
        "chaos: fleet ready after {:.0} s; load and faults for {:?} (seed {})",
        up.started.elapsed().as_secs_f64(),
        settings.duration,
        settings.seed
    );

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Answers = Arc::default();
    let started = Instant::now();
    let bodies = Arc::new(bodies());
    let mut clients = Vec::new();
    for k in 0..settings.http_clients {
        clients.push(tokio::spawn(http_client(
            started,
            k,
            up.http.clone(),
            bodies.clone(),
            stop.clone(),
            answers.clone(),
        )));
    }
    for k in 0..settings.grpc_clients {
        clients.push(tokio::spawn(grpc_client(
            started,
            k,
            up.grpc.clone(),
            bodies.clone(),
            stop.clone(),
            answers.clone(),
        )));
    }

    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut faults = Vec::new();
    // When the gateway was restarted: a transport failure right after one is a request
    // that was in flight on a connection it closed, which the accounting allows.
    let mut restarts: Vec<f64> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    // Every process seen below `up`, to check none outlives it.
    let mut seen: BTreeMap<i32, String> = BTreeMap::new();
    let mut next_fault = settings.fault_every;
    let mut next_sample = Duration::ZERO;
    let mut zombies_before: Vec<i32> = Vec::new();
    let mut round = 0;
    while started.elapsed() < settings.duration {
        if started.elapsed() >= next_sample {
            let below = procs::descendants(up_pid);
            for p in &below {
                seen.entry(p.pid).or_insert_with(|| p.comm.clone());
            }
            let s = up.status().await;
            let agents_rss = agents(&s)
                .iter()
                .map(|(_, pid)| procs::rss_kib(*pid).0)
                .sum();
            let ch = s["clickhouse_server"]["pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok());
            let zombies: Vec<i32> = below
                .iter()
                .filter(|p| p.is_zombie())
                .map(|p| p.pid)
                .collect();
            let lingering = zombies
                .iter()
                .filter(|z| zombies_before.contains(z))
                .count();
            zombies_before = zombies;
            samples.push(Sample {
                t: started.elapsed().as_secs_f64(),
                up_rss_kib: procs::rss_kib(up_pid).0,
                up_fds: fds(up_pid),
                clickhouse_rss_kib: ch.map_or(0, |p| procs::rss_kib(p).0),
                agents_rss_kib: agents_rss,
                browser_processes: below.iter().filter(|p| !p.is_zombie()).count(),
                lingering_zombies: lingering,
            });
            next_sample += Duration::from_secs(10);
        }
        if started.elapsed() >= next_fault {
            round += 1;
            let what = fault(&mut rng, &up, round).await;
            println!("  {:>6.1} s  {what}", started.elapsed().as_secs_f64());
            if what == GATEWAY_RESTARTED {
                restarts.push(started.elapsed().as_secs_f64());
            }
            faults.push(json!({"t_s": started.elapsed().as_secs_f64(), "fault": what}));
            next_fault += settings.fault_every;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let answers = answers.lock().clone();
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.failure.is_empty()).collect();
    let at_restart = |a: &Answer| {
        let transport = a.failure.starts_with("http transport")
            || a.failure.starts_with("grpc Unavailable")
            || a.failure.starts_with("grpc Unknown")
            // hyper's "operation was canceled": the connection closed under the call.
            || a.failure.starts_with("grpc Cancelled");
        transport
            && restarts
                .iter()
                .any(|r| (*r..=r + RESTART_WINDOW_S).contains(&a.t))
    };
    let failures: Vec<&Answer> = answers.iter().filter(|a| !a.failure.is_empty()).collect();
    let (in_flight, failed): (Vec<&Answer>, Vec<&Answer>) =
        failures.into_iter().partition(|a| at_restart(a));
    let failed = by_cause(&failed);
    let in_flight = by_cause(&in_flight);

    // The rows: written within seconds, spooled ones once ClickHouse is back. Wait until
    // two looks a few seconds apart agree (or a minute passes).
    let mut last = (0, 0);
    let flush = Instant::now();
    let (gateway, agent) = loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let g = ok_rows(&url, "gateway_requests").await.unwrap_or_default();
        let a = ok_rows(&url, "inference_performance")
            .await
            .unwrap_or_default();
        let now = (g.len(), a.len());
        if (now == last && now.0 >= ok.len()) || flush.elapsed() > Duration::from_secs(60) {
            break (g, a);
        }
        last = now;
    };
    let account = |rows: &HashMap<String, u64>| {
        let mut missing: BTreeMap<&str, usize> = BTreeMap::new();
        let mut duplicated: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &ok {
            match rows.get(&a.id).copied().unwrap_or(0) {
                0 => *missing.entry(a.model.as_str()).or_default() += 1,
                1 => {}
                _ => *duplicated.entry(a.model.as_str()).or_default() += 1,
            }
        }
        json!({"missing": missing, "duplicated": duplicated})
    };
    let gateway_account = account(&gateway);
    let agent_account = account(&agent);

    // Stop `up`; then nothing it started may be left.
    up.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let survivors: Vec<String> = seen
        .iter()
        .filter(|(pid, comm)| {
            procs::read(**pid).is_some_and(|p| !p.is_zombie() && &p.comm == *comm)
        })
        .map(|(pid, comm)| format!("{pid} {comm}"))
        .collect();
    let zombies = procs::all()
        .iter()
        .filter(|p| p.is_zombie() && p.ppid == i32::try_from(std::process::id()).unwrap())
        .count();

    let warm = samples.len() / 5;
    let series = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().skip(warm).map(|s| (s.t, f(s))).collect()
    };
    let up_rss = series(&|s| s.up_rss_kib as f64);
    let up_fds = series(&|s| s.up_fds as f64);
    let ch_rss = series(&|s| s.clickhouse_rss_kib as f64);
    let first_last = |v: &[(f64, f64)]| json!([v.first().map(|p| p.1), v.last().map(|p| p.1)]);
    json!({
        "seed": settings.seed,
        "duration_s": settings.duration.as_secs(),
        "clients": {"http": settings.http_clients, "grpc": settings.grpc_clients},
        "requests": answers.len(),
        "answered": ok.len(),
        "failed": failed,
        "failed_in_flight_at_gateway_restart": in_flight,
        "gateway_rows": gateway_account,
        "agent_rows": agent_account,
        "faults": faults,
        "up_rss_kib": {"first_last": first_last(&up_rss), "slope_per_min": slope(&up_rss)},
        "up_fds": {"first_last": first_last(&up_fds), "slope_per_min": slope(&up_fds)},
        "clickhouse_rss_kib": {"first_last": first_last(&ch_rss), "slope_per_min": slope(&ch_rss)},
        "agents_rss_kib": samples.iter().map(|s| s.agents_rss_kib).collect::<Vec<_>>(),
        "processes_below_up": samples.iter().map(|s| s.browser_processes).collect::<Vec<_>>(),
        "lingering_zombies_below_up": samples.iter().map(|s| s.lingering_zombies).max().unwrap_or(0),
        "survivors_after_stop": survivors,
        "zombies_after_stop": zombies,
    })
}
