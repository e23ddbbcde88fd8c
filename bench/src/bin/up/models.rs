//! Suite `models`: per-model autoscaling in `webaccel up`, with real agents and Chromium.
//! - Reaction: a load step on an autoscaled model at one replica, to the model's scale
//!   decision and to its second replica serving, with a browser already free (a pool of
//!   two) and with a browser to start (an autoscaled pool at one).
//! - Scale from zero: the first request's answer time for a model at zero replicas, with
//!   its pool's browser running (warm, several times) and with no browser (cold).
//! - A load shift between two models of one pool: failed requests, latency p50/p99 in the
//!   10 s before the shift and the 10 s after it, and the browsers and replicas over time
//!   (sampled into the JSON, and drawn by `webaccel chart --kind fleet` from the
//!   `pool_events` rows `webaccel up` wrote: `<out>.fleet.svg`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use webaccel_testkit::up::{Up, browsers, model, pool_yaml};

use super::{request, secs};

fn autoscaled(name: &str, pool: &str, file: &Path, min: i32, max: i32) -> String {
    format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {name}\nspec:\n  poolRef: {{name: {pool}}}\n  model:\n    uri: file://{}\n    task: vision\n  backends: [wasm]\n  autoscaling:\n    minReplicas: {min}\n    maxReplicas: {max}\n    targetPerReplica: 2\n    stableWindowSeconds: 6\n    panicWindowSeconds: 2\n    scaleToZeroGraceSeconds: 2\n",
        file.display()
    )
}

fn status<'a>(s: &'a Value, m: &str) -> &'a Value {
    &model(s, m)["status"]
}

/// One request through the gateway; its answer time.
async fn one(up: &Up, name: &str, body: &Value) -> Duration {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/{name}/infer", up.http))
        .json(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    started.elapsed()
}

/// One answer a client got.
#[derive(Debug, Clone)]
struct Answer {
    /// Seconds since the load started.
    at_s: f64,
    latency_ms: f64,
    ok: bool,
}

/// Clients sending back to back to the model named in `target`, recording each answer.
struct Timed {
    stop: Arc<AtomicBool>,
    target: Arc<Mutex<String>>,
    samples: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Timed {
    fn start(http: &str, bodies: Vec<(String, Value)>, first: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(Mutex::new(first.to_owned()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, target, samples) = (stop.clone(), target.clone(), samples.clone());
                let (http, bodies) = (http.to_owned(), bodies.clone());
                tokio::spawn(async move {
                    let c = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let name = target.lock().clone();
                        let body = &bodies.iter().find(|(n, _)| *n == name).unwrap().1;
                        let t = Instant::now();
                        let ok = c
                            .post(format!("{http}/v2/models/{name}/infer"))
                            .json(body)
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await
                            .is_ok_and(|r| r.status() == 200);
                        samples.lock().push(Answer {
                            at_s: started.elapsed().as_secs_f64(),
                            latency_ms: t.elapsed().as_secs_f64() * 1e3,
                            ok,
                        });
                    }
                })
            })
            .collect();
        Self {
            stop,
            target,
            samples,
            tasks,
            started,
        }
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.samples.lock().clone()
    }
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    (v[i] * 100.0).round() / 100.0
}

/// A load step on a model at one replica: (decision, second replica serving).
async fn reaction(binary: &Path, model_file: &Path, clients: usize, new_browser: bool) -> Value {
    let pool_spec = if new_browser {
        "  autoscaling:\n    enabled: true\n    minReplicas: 1\n    maxReplicas: 2\n    targetInFlightPerBrowser: 64\n    scaleUpStabilizationSeconds: 0\n    scaleDownStabilizationSeconds: 300\n"
    } else {
        "  replicas: 2\n"
    };
    let up = Up::start(
        binary,
        &[
            ("pool.yaml", pool_yaml("p", pool_spec)),
            ("mlp.yaml", autoscaled("mlp", "p", model_file, 1, 2)),
        ],
        &["--no-clickhouse".to_owned()],
    );
    let expected_browsers = if new_browser { 1 } else { 2 };
    up.until("one replica serving", Duration::from_secs(120), |s| {
        status(s, "mlp")["loadedReplicas"] == 1 && browsers(s, "p").len() == expected_browsers
    })
    .await;
    // Let the stable window see the idle model.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let bodies = vec![("mlp".to_owned(), request())];
    let step = Instant::now();
    let load = Timed::start(&up.http, bodies, "mlp", clients);
    up.until("the decision", Duration::from_secs(60), |s| {
        status(s, "mlp")["desiredReplicas"] == 2
    })
    .await;
    let decided = step.elapsed();
    up.until("two replicas serving", Duration::from_secs(120), |s| {
        status(s, "mlp")["loadedReplicas"] == 2
    })
    .await;
    let serving = step.elapsed();
    let samples = load.finish().await;
    let failed = samples.iter().filter(|s| !s.ok).count();
    let with = if new_browser {
        "a browser to start"
    } else {
        "a browser free"
    };
    println!(
        "load step ({clients} clients) on a model at 1 replica, {with}: decision {:.2} s, second replica serving {:.2} s ({} served, {failed} failed)",
        decided.as_secs_f64(),
        serving.as_secs_f64(),
        samples.len() - failed
    );
    json!({"new_browser": new_browser, "clients": clients, "decision_s": secs(decided), "serving_s": secs(serving), "failed": failed})
}

/// A model at zero replicas: its first request's answer time, with its pool's browser
/// running (`rounds` times: idle to zero, then one request) and without a browser.
async fn from_zero(binary: &Path, model_file: &Path, rounds: usize) -> Value {
    let up = Up::start(
        binary,
        &[
            ("pool.yaml", pool_yaml("warm", "  replicas: 1\n")),
            ("mlp.yaml", autoscaled("mlp", "warm", model_file, 0, 1)),
        ],
        &["--no-clickhouse".to_owned()],
    );
    let mut warm = Vec::new();
    for _ in 0..rounds {
        up.until(
            "the model at zero, its browser up",
            Duration::from_secs(120),
            |s| {
                status(s, "mlp")["desiredReplicas"] == 0
                    && status(s, "mlp")["loadedReplicas"] == 0
                    && browsers(s, "warm").len() == 1
                    && browsers(s, "warm")[0]["state"] == "ready"
            },
        )
        .await;
        warm.push(one(&up, "mlp", &request()).await.as_secs_f64());
    }
    drop(up);
    let spec = "  autoscaling:\n    enabled: true\n    minReplicas: 0\n    maxReplicas: 1\n    scaleUpStabilizationSeconds: 0\n    scaleDownStabilizationSeconds: 10\n";
    let up = Up::start(
        binary,
        &[
            ("pool.yaml", pool_yaml("cold", spec)),
            ("mlp.yaml", autoscaled("mlp", "cold", model_file, 0, 1)),
        ],
        &["--no-clickhouse".to_owned()],
    );
    up.until("no browser", Duration::from_secs(60), |s| {
        status(s, "mlp")["desiredReplicas"] == 0 && browsers(s, "cold").is_empty()
    })
    .await;
    let cold = one(&up, "mlp", &request()).await.as_secs_f64();
    let median = percentile(warm.clone(), 0.5);
    println!(
        "scale from zero, first answer: browser running {:.2} s (median of {rounds}: {warm:.2?}), no browser {cold:.2} s",
        median
    );
    json!({"warm_s": warm, "warm_median_s": median, "cold_s": cold})
}

/// Two models on one pool; the load moves from one to the other.
async fn shift(binary: &Path, repo: &Path, clients: usize, chart: &Path) -> Value {
    let fixtures = repo.join("node-agent/tests/fixtures/models");
    // Its scale decisions go to a ClickHouse of its own, for `webaccel chart --kind fleet`.
    let ch = webaccel_analytics::local::LocalClickHouse::start()
        .await
        .expect("clickhouse-server");
    let pool_spec = "  autoscaling:\n    enabled: true\n    minReplicas: 1\n    maxReplicas: 3\n    targetInFlightPerBrowser: 8\n    scaleUpStabilizationSeconds: 0\n    scaleDownStabilizationSeconds: 20\n";
    let up = Up::start(
        binary,
        &[
            ("pool.yaml", pool_yaml("shared", pool_spec)),
            (
                "mlp.yaml",
                autoscaled("mlp", "shared", &fixtures.join("mlp.onnx"), 1, 3),
            ),
            (
                "cnn.yaml",
                autoscaled("cnn", "shared", &fixtures.join("cnn.onnx"), 0, 3),
            ),
        ],
        &[
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-database",
            "bench",
        ]
        .map(str::to_owned),
    );
    up.until("mlp serving", Duration::from_secs(120), |s| {
        status(s, "mlp")["loadedReplicas"] == 1
    })
    .await;
    let body = |name: &str| -> Value {
        let f: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        json!({"inputs": f["inputs"]})
    };
    let load = Timed::start(
        &up.http,
        vec![("mlp".into(), body("mlp")), ("cnn".into(), body("cnn"))],
        "mlp",
        clients,
    );
    // The fleet over time, sampled twice a second.
    let mut timeline = Vec::new();
    let sample = async |timeline: &mut Vec<Value>| {
        let s = up.status().await;
        timeline.push(json!({
            "t_s": (load.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "browsers": browsers(&s, "shared").len(),
            "mlp": status(&s, "mlp")["loadedReplicas"],
            "cnn": status(&s, "cnn")["loadedReplicas"],
        }));
    };
    let phase = Duration::from_secs(20);
    while load.started.elapsed() < phase {
        sample(&mut timeline).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    *load.target.lock() = "cnn".to_owned();
    let shifted_at = load.started.elapsed().as_secs_f64();
    while load.started.elapsed() < phase * 2 {
        sample(&mut timeline).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let samples = load.finish().await;
    // The decisions' rows are written within a second or two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let drawn = std::process::Command::new(binary)
        .args([
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-database",
            "bench",
        ])
        .args([
            "chart", "--kind", "fleet", "--window", "1h", "--height", "420", "-o",
        ])
        .arg(chart)
        .output()
        .expect("webaccel chart");
    println!(
        "{}{}",
        String::from_utf8_lossy(&drawn.stdout),
        String::from_utf8_lossy(&drawn.stderr)
    );
    let failed: Vec<_> = samples.iter().filter(|s| !s.ok).collect();
    let window = |from: f64, to: f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.ok && s.at_s >= from && s.at_s < to)
            .map(|s| s.latency_ms)
            .collect()
    };
    let before = window(shifted_at - 10.0, shifted_at);
    let during = window(shifted_at, shifted_at + 10.0);
    let figures = json!({
        "clients": clients,
        "served": samples.len() - failed.len(),
        "failed": failed.len(),
        "before_shift_ms": {"p50": percentile(before.clone(), 0.5), "p99": percentile(before, 0.99)},
        "during_shift_ms": {"p50": percentile(during.clone(), 0.5), "p99": percentile(during, 0.99)},
        "timeline": timeline,
    });
    println!(
        "load shift mlp → cnn ({clients} clients): {} served, {} failed; p50/p99 before {}/{} ms, in the 10 s after {}/{} ms",
        figures["served"],
        figures["failed"],
        figures["before_shift_ms"]["p50"],
        figures["before_shift_ms"]["p99"],
        figures["during_shift_ms"]["p50"],
        figures["during_shift_ms"]["p99"]
    );
    println!("  t(s)  browsers  mlp  cnn");
    for p in figures["timeline"].as_array().unwrap().iter().step_by(4) {
        println!(
            "  {:>5}  {:>8}  {:>3}  {:>3}",
            p["t_s"], p["browsers"], p["mlp"], p["cnn"]
        );
    }
    figures
}

/// The whole suite; the shift's fleet chart is written to `chart`.
pub async fn run_suite(
    binary: &Path,
    repo: &Path,
    model_file: &Path,
    clients: usize,
    chart: &Path,
) -> Value {
    json!({
        "reaction_free_browser": reaction(binary, model_file, clients, false).await,
        "reaction_new_browser": reaction(binary, model_file, clients, true).await,
        "from_zero": from_zero(binary, model_file, 3).await,
        "shift": shift(binary, repo, clients, chart).await,
    })
}
