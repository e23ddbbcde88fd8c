//! Two real browsers, one model: a Chromium agent and a Firefox agent serve the same
//! fixture model on wasm, record every request into a local ClickHouse, and
//! `webaccel recommend` must pick the one that measured faster, with a confidence that
//! fits the gap.
//!
//! Needs the debug `webaccel-agent` beside `webaccel` (`cargo build -p
//! webaccel-node-agent`), Debian's `chromium`, `firefox-esr` (or `WEBACCEL_FIREFOX`
//! naming a Firefox binary) and `clickhouse-server`, all installed by `scripts/setup.sh`.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use webaccel_analytics::local::LocalClickHouse;
use webaccel_testkit::fixtures::{firefox, fixture};
use webaccel_testkit::{AgentProcess, Launch, procs};

const DATABASE: &str = "browsers_test";
const POOL: &str = "browsers";
/// The fixture model both browsers serve (inputs and onnxruntime's outputs in
/// `<MODEL>.json`): the small CNN, on which the two browsers' wasm latencies differ
/// (on the transformer they are within a few percent).
const MODEL: &str = "cnn";
/// Requests per browser, sent alternately to the two agents so that whatever else the
/// machine does slows both alike.
const REQUESTS: usize = 200;
// wasm runs the same kernels as onnxruntime's CPU provider up to operation order.
const WASM_ABS: f64 = 1e-5;
const WASM_REL: f64 = 1e-4;

fn reference() -> Value {
    webaccel_testkit::fixtures::reference(MODEL)
}

/// One running agent; stopped (SIGTERM, so it writes its last rows, then SIGKILL) on
/// drop.
struct Agent {
    browser: &'static str,
    process: AgentProcess,
    ready_after: Duration,
}

impl Agent {
    async fn start(browser: &'static str, binary: &str, clickhouse: &str) -> Self {
        let model = format!(
            "{MODEL}=file://{},backend=wasm",
            fixture(&format!("{MODEL}.onnx")).display()
        );
        let mut launch = Launch::new(&[model]).args(&[
            format!("--browser={browser}"),
            format!("--browser-binary={binary}"),
            // One browser each: a standby would compete for the two machines' cores
            // while the other browser is being measured.
            "--standby-browser=false".to_owned(),
            format!("--clickhouse-url={clickhouse}"),
            format!("--clickhouse-database={DATABASE}"),
            format!("--pool={POOL}"),
            format!("--pod-name={browser}-0"),
        ]);
        "warn,chromiumoxide=off".clone_into(&mut launch.rust_log);
        let started = Instant::now();
        let process = AgentProcess::launch(launch, Duration::from_secs(120)).await;
        Self {
            browser,
            process,
            ready_after: started.elapsed(),
        }
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.process.get(path).await;
        assert_eq!(status, 200, "{} GET {path}", self.browser);
        body
    }

    /// One KServe v2 inference with the reference inputs; the outputs, checked against
    /// onnxruntime's, and the client-side latency.
    async fn infer(&self, body: &Value) -> Duration {
        let t = Instant::now();
        let (status, answer) = self
            .process
            .post(&format!("/v2/models/{MODEL}/infer"), body)
            .await;
        let took = t.elapsed();
        assert_eq!(status, 200, "{}: {answer}", self.browser);
        assert_eq!(answer["parameters"]["backend"], "wasm", "{answer}");
        check_outputs(self.browser, &answer["outputs"]);
        took
    }

    /// Proportional set size of the agent and its browser's processes (the browser's
    /// process group), in MiB.
    fn pss_mib(&self, browser_pid: i32) -> f64 {
        let mut kib = procs::pss_kib(self.process.pid());
        for pid in procs::group_members(browser_pid) {
            kib += procs::pss_kib(pid);
        }
        kib as f64 / 1024.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Its last rows go to ClickHouse on SIGTERM; the test kit kills what is left.
        self.process.terminate(Duration::from_secs(15));
    }
}

/// Every output equals onnxruntime's within `WASM_ABS + WASM_REL * |expected|`.
fn check_outputs(browser: &str, outputs: &Value) {
    let expected = reference();
    let expected = expected["outputs"].as_array().unwrap();
    let outputs = outputs
        .as_array()
        .unwrap_or_else(|| panic!("{browser}: no outputs"));
    assert_eq!(outputs.len(), expected.len(), "{browser}: output count");
    for want in expected {
        let name = want["name"].as_str().unwrap();
        let got = outputs
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{browser}: output {name} missing"));
        assert_eq!(got["datatype"], want["datatype"], "{browser}/{name}");
        assert_eq!(got["shape"], want["shape"], "{browser}/{name}");
        let (g, w) = (
            got["data"].as_array().unwrap(),
            want["data"].as_array().unwrap(),
        );
        assert_eq!(g.len(), w.len(), "{browser}/{name}: element count");
        for (k, (a, b)) in g.iter().zip(w).enumerate() {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= WASM_ABS + WASM_REL * b.abs(),
                "{browser}/{name}[{k}]: got {a}, onnxruntime says {b}"
            );
        }
    }
}
/// The p50 of `xs` as ClickHouse's `quantileExact(0.5)` defines it: the value at index
/// n/2 of the sorted values (the upper of the two middle ones for an even count). Sorts
/// `xs`.
fn p50(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn stddev(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

fn webaccel(ch: &LocalClickHouse, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_webaccel"))
        .args([
            "--clickhouse-url",
            &ch.url(),
            "--clickhouse-database",
            DATABASE,
        ])
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "webaccel {args:?}: {stdout}{stderr}");
    stdout
}

/// What the table at the end shows of one browser.
struct Figures {
    version: String,
    ready_after: Duration,
    cold_start_ms: f64,
    init_ms: f64,
    pss_mib: f64,
    client_p50_ms: f64,
    recorded_p50_ms: f64,
    /// Spread of the recorded latencies: standard deviation, interquartile range, p99.
    stddev_ms: f64,
    iqr_ms: f64,
    p99_ms: f64,
}

#[tokio::test]
async fn recommend_picks_the_faster_of_chromium_and_firefox_on_the_same_model() {
    let _machine = webaccel_testkit::alone().await;
    let firefox = firefox();
    let _ = webaccel_testkit::agent::agent_binary();
    let ch = LocalClickHouse::start().await.unwrap();
    // Started one after the other: two browser launches at once would slow both.
    let chromium = Agent::start("chromium", "chromium", &ch.url()).await;
    let firefox = Agent::start("firefox", &firefox, &ch.url()).await;
    let agents = [&chromium, &firefox];

    let body = json!({"inputs": reference()["inputs"]});
    let mut client_ms = [Vec::new(), Vec::new()];
    for _ in 0..REQUESTS {
        for (k, agent) in agents.iter().enumerate() {
            client_ms[k].push(agent.infer(&body).await.as_secs_f64() * 1000.0);
        }
    }

    // Every request becomes a row; the agents write them in batches.
    let count_sql = format!(
        "SELECT count() FROM {DATABASE}.inference_performance \
         WHERE pool = '{POOL}' AND model = '{MODEL}' AND outcome = 'ok'"
    );
    let waiting = Instant::now();
    loop {
        let n: usize = ch
            .query(&count_sql)
            .await
            .unwrap_or_default()
            .parse()
            .unwrap_or(0);
        if n >= 2 * REQUESTS {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "only {n} of {} rows in ClickHouse after 60 s",
            2 * REQUESTS
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The p50 each browser recorded, computed here from the raw rows.
    let mut figures = Vec::new();
    for (k, agent) in agents.iter().enumerate() {
        let rows = ch
            .query(&format!(
                "SELECT browser, backend, latency_ms FROM {DATABASE}.inference_performance \
                 WHERE pod = '{}-0' AND model = '{MODEL}' AND outcome = 'ok' FORMAT TSV",
                agent.browser
            ))
            .await
            .unwrap();
        let mut latencies: Vec<f64> = rows
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!((f[0], f[1]), (agent.browser, "wasm"), "{l}");
                f[2].parse().unwrap()
            })
            .collect();
        assert_eq!(latencies.len(), REQUESTS, "{} rows", agent.browser);
        let stats = agent.get("/v1/stats").await;
        let browser = &stats["browser"];
        assert_eq!(browser["restarts"], 0, "{}: {browser}", agent.browser);
        let models = agent.get("/v1/repository/models").await;
        let status = &models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == MODEL)
            .unwrap()["status"];
        assert_eq!(status["state"], "loaded", "{models}");
        figures.push(Figures {
            version: browser["version"].as_str().unwrap_or("?").to_owned(),
            ready_after: agent.ready_after,
            cold_start_ms: browser["cold_start_ms"].as_f64().unwrap(),
            init_ms: status["create_ms"].as_f64().unwrap()
                + status["warmup_ms"].as_f64().unwrap_or(0.0),
            pss_mib: agent.pss_mib(browser["pid"].as_i64().unwrap() as i32),
            client_p50_ms: p50(&mut client_ms[k]),
            recorded_p50_ms: p50(&mut latencies),
            stddev_ms: stddev(&latencies),
            iqr_ms: latencies[REQUESTS * 3 / 4] - latencies[REQUESTS / 4],
            p99_ms: latencies[REQUESTS * 99 / 100],
        });
    }

    let out = webaccel(&ch, &["recommend", "--json", "--window", "1h"]);
    let recs: Value = serde_json::from_str(&out).unwrap();
    let rec = recs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == MODEL)
        .unwrap_or_else(|| panic!("no recommendation for {MODEL}: {out}"));
    let (fast, slow) = if figures[0].recorded_p50_ms <= figures[1].recorded_p50_ms {
        (0, 1)
    } else {
        (1, 0)
    };
    let gap = figures[slow].recorded_p50_ms / figures[fast].recorded_p50_ms - 1.0;
    let confidence = rec["confidence"].as_f64().unwrap();

    println!(
        "\n{MODEL} on wasm, {REQUESTS} sequential KServe HTTP requests per browser \
         (alternating), one browser per agent:\n\
         {:<9} {:<22} {:>7} {:>10} {:>8} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "browser",
        "version",
        "ready s",
        "cold start",
        "init ms",
        "PSS MiB",
        "p50 agent",
        "p50 client",
        "sd",
        "IQR",
        "p99"
    );
    for (agent, f) in agents.iter().zip(&figures) {
        println!(
            "{:<9} {:<22} {:>7.1} {:>7.0} ms {:>8.1} {:>7.0} {:>7.3} ms {:>7.3} ms {:>8.3} {:>8.3} {:>8.3}",
            agent.browser,
            f.version,
            f.ready_after.as_secs_f64(),
            f.cold_start_ms,
            f.init_ms,
            f.pss_mib,
            f.recorded_p50_ms,
            f.client_p50_ms,
            f.stddev_ms,
            f.iqr_ms,
            f.p99_ms,
        );
    }
    println!(
        "recommend: {}/{} p50 {:.3} ms, runner-up {}, confidence {confidence:.4} \
         (p50 gap {:.0} %)\n",
        rec["browser"].as_str().unwrap(),
        rec["backend"].as_str().unwrap(),
        rec["p50_ms"].as_f64().unwrap(),
        rec["runner_up"],
        gap * 100.0
    );

    // The pick is the browser that measured faster, the other one the runner-up (on a
    // tie, either).
    let tie = figures[0]
        .recorded_p50_ms
        .total_cmp(&figures[1].recorded_p50_ms)
        .is_eq();
    let (fast, slow) = if tie && rec["browser"] == agents[slow].browser {
        (slow, fast)
    } else {
        (fast, slow)
    };
    assert_eq!(rec["browser"], agents[fast].browser, "{out}");
    assert_eq!(rec["backend"], "wasm", "{out}");
    assert_eq!(rec["samples"], REQUESTS as u64, "{out}");
    assert_eq!(rec["runner_up"][0], agents[slow].browser, "{out}");
    assert_eq!(rec["runner_up"][1], "wasm", "{out}");
    // Its p50s are the ones computed here from the rows.
    for (k, at) in [(fast, &rec["p50_ms"]), (slow, &rec["runner_up"][2])] {
        let p50 = at.as_f64().unwrap();
        assert!(
            (p50 - figures[k].recorded_p50_ms).abs() < 1e-6,
            "{}: recommend's p50 {p50} is not the p50 of the rows ({}): {out}",
            agents[k].browser,
            figures[k].recorded_p50_ms
        );
    }
    assert!((0.5..=1.0).contains(&confidence), "{out}");
    if gap > 0.2 {
        assert!(
            confidence > 0.9,
            "the p50s differ by {:.0} % over {REQUESTS} requests each, yet confidence is \
             only {confidence}. The spreads: standard deviation {:.3} / {:.3} ms, \
             interquartile range {:.3} / {:.3} ms, p99 {:.3} / {:.3} ms (a standard error \
             of the median taken from the standard deviation grows with the tail): {out}",
            gap * 100.0,
            figures[fast].stddev_ms,
            figures[slow].stddev_ms,
            figures[fast].iqr_ms,
            figures[slow].iqr_ms,
            figures[fast].p99_ms,
            figures[slow].p99_ms,
        );
    }
    // The table says the same.
    let table = webaccel(&ch, &["recommend", "--window", "1h"]);
    let line = table
        .lines()
        .find(|l| l.starts_with(MODEL))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains(agents[fast].browser) && line.contains(&format!("{confidence:.3}")),
        "{table}"
    );
}
