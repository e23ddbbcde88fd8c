//! Browser faults under load: a fresh agent serves two models (mlp on wasm, cnn on
//! webgpu) to four clients sending back to back over HTTP; a fault is injected into its
//! browser processes; every request's outcome and timing is recorded, and the time from
//! the fault until each model is served again.
//!
//! What counts: a request either succeeds with the right answer (checked against the
//! onnxruntime reference) or fails with a retryable 503; none may take longer than the
//! agent's deadline (that would be a hang). The figures are for reading; the
//! `faults` integration test asserts the outcomes, never the timings.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::{Value, json};

use crate::agent_process::{self, AgentProcess};
use webaccel_testkit::procs;

/// The agent's request deadline in these runs; a request taking longer has hung.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long after the (last) fault the clients keep going at most.
const OBSERVE: Duration = Duration::from_secs(30);
/// After service resumed, how much longer the clients keep going.
const AFTER_RESUME: Duration = Duration::from_secs(2);
const CLIENTS: usize = 4;
const MODELS: [(&str, &str); 2] = [("mlp", "wasm"), ("cnn", "webgpu")];

/// The fault classes.
pub const SCENARIOS: [(&str, &str); 7] = [
    (
        "active-kill",
        "active browser's main process SIGKILLed (standby alive)",
    ),
    (
        "all-kill",
        "every browser process SIGKILLed at once (active and standby)",
    ),
    (
        "renderer-kill",
        "the active page's renderer processes SIGKILLed",
    ),
    (
        "active-stop",
        "active browser's main process SIGSTOPped (frozen)",
    ),
    ("gpu-kill", "active browser's GPU process SIGKILLed"),
    ("standby-kill", "standby browser alone SIGKILLed"),
    ("kill-loop", "active browser SIGKILLed every 2 s for 30 s"),
];

#[derive(Debug, Clone)]
struct Outcome {
    model: &'static str,
    start: Instant,
    end: Instant,
    status: u16,
    category: String,
    correct: bool,
}

type Outcomes = Arc<std::sync::Mutex<Vec<Outcome>>>;

fn lock(o: &Outcomes) -> std::sync::MutexGuard<'_, Vec<Outcome>> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds from `origin` to `t` (negative before it).
fn rel_ms(t: Instant, origin: Instant) -> f64 {
    if t >= origin {
        (t - origin).as_secs_f64() * 1e3
    } else {
        -((origin - t).as_secs_f64() * 1e3)
    }
}

/// One scenario's figures.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub about: String,
    pub requests: usize,
    pub succeeded: usize,
    pub failed_retryable: usize,
    /// Failures that were not a retryable 503: must be 0.
    pub failed_other: usize,
    /// Requests that took longer than the deadline or never answered: must be 0.
    pub hung: usize,
    /// Successful answers whose outputs differ from the reference: must be 0.
    pub wrong: usize,
    pub max_latency_ms: f64,
    /// From the (last) fault to the first failed request's answer: detection as clients
    /// see it (empty when nothing failed).
    pub first_failure_ms: Option<f64>,
    /// From the (last) fault until every model answered a request sent after it.
    pub serving_again_ms: Option<f64>,
    /// From the (last) fault until the agent served from a different browser (for a
    /// frozen browser: detection, kill and switch).
    pub active_replaced_ms: Option<f64>,
    /// Standby scenario: from the fault until a new standby was ready.
    pub standby_replaced_ms: Option<f64>,
    /// Zombie children of the agent at the end (orphans it failed to reap): must be 0.
    pub zombies: usize,
    /// Processes of the agent left over from killed browsers at the end: must be empty.
    pub leaked: Vec<String>,
    pub restarts: u64,
    pub last_restart_reason: Value,
    pub failure_categories: Vec<String>,
}

fn expected_outputs(models: &Path, model: &str) -> anyhow::Result<(Value, Value)> {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(
        models.join(format!("{model}.json")),
    )?)?;
    Ok((fixture["inputs"].clone(), fixture["outputs"].clone()))
}

fn outputs_match(got: &Value, want: &Value) -> bool {
    let (Some(got), Some(want)) = (got.as_array(), want.as_array()) else {
        return false;
    };
    want.iter().all(|w| {
        let Some(g) = got.iter().find(|g| g["name"] == w["name"]) else {
            return false;
        };
        let (Some(gd), Some(wd)) = (g["data"].as_array(), w["data"].as_array()) else {
            return false;
        };
        gd.len() == wd.len()
            && gd
                .iter()
                .zip(wd)
                .all(|(a, b)| match (a.as_f64(), b.as_f64()) {
                    (Some(a), Some(b)) => (a - b).abs() <= 1e-3 + 1e-2 * b.abs(),
                    _ => a == b,
                })
    })
}

async fn client(
    http: reqwest::Client,
    url: String,
    model: &'static str,
    body: Value,
    want: Value,
    outcomes: Outcomes,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let sent = http
            .post(&url)
            .json(&body)
            .timeout(DEADLINE + Duration::from_secs(5))
            .send()
            .await;
        let (status, category, correct) = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                let correct = status == 200 && outputs_match(&v["outputs"], &want);
                let category = v["category"].as_str().unwrap_or_default().to_owned();
                (status, category, correct)
            }
            Err(e) => (0, format!("client: {e}"), false),
        };
        lock(&outcomes).push(Outcome {
            model,
            start,
            end: Instant::now(),
            status,
            category,
            correct,
        });
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Whether every model answered, successfully, a request sent after `since`.
fn all_served_after(outcomes: &Outcomes, since: Instant) -> bool {
    let o = lock(outcomes);
    MODELS.iter().all(|(m, _)| {
        o.iter()
            .any(|x| x.model == *m && x.status == 200 && x.start >= since)
    })
}

/// The active browser's and the standby's main pids.
async fn browsers(agent: &AgentProcess) -> anyhow::Result<(i32, Option<i32>)> {
    let stats = agent.get("/v1/stats").await.1;
    let active = stats["browser"]["pid"]
        .as_i64()
        .context("no active browser")?;
    let standby = stats["browser"]["standby_pid"].as_i64();
    Ok((
        i32::try_from(active)?,
        standby.map(i32::try_from).transpose()?,
    ))
}

/// Injects one fault.
async fn inject(agent: &AgentProcess, scenario: &str) -> anyhow::Result<()> {
    let (active, standby) = browsers(agent).await?;
    match scenario {
        "active-kill" | "kill-loop" => procs::signal(active, Signal::SIGKILL),
        "all-kill" => {
            // Every process of both browsers, collected first and then killed at once.
            let mut all = procs::browser(active);
            if let Some(s) = standby {
                all.extend(procs::browser(s));
            }
            for p in all {
                procs::signal(p.pid, Signal::SIGKILL);
            }
        }
        "renderer-kill" => {
            let renderers = procs::of_kind(active, "renderer");
            if renderers.is_empty() {
                bail!("the active browser has no renderer process");
            }
            for pid in renderers {
                procs::signal(pid, Signal::SIGKILL);
            }
        }
        "active-stop" => procs::signal(active, Signal::SIGSTOP),
        "gpu-kill" => {
            let gpu = procs::of_kind(active, "gpu-process");
            if gpu.is_empty() {
                bail!("the active browser has no GPU process");
            }
            for pid in gpu {
                procs::signal(pid, Signal::SIGKILL);
            }
        }
        "standby-kill" => {
            let s = standby.context("no standby browser to kill")?;
            procs::signal(s, Signal::SIGKILL);
        }
        other => bail!("unknown scenario '{other}'"),
    }
    Ok(())
}

/// Runs one scenario against a fresh agent.
pub async fn run(bin: &Path, models: &Path, scenario: &str) -> anyhow::Result<Report> {
    let about = SCENARIOS
        .iter()
        .find(|(n, _)| *n == scenario)
        .map(|(_, a)| (*a).to_owned())
        .with_context(|| format!("unknown scenario '{scenario}'"))?;
    let specs: Vec<String> = MODELS
        .iter()
        .map(|(m, b)| {
            format!(
                "{m}=file://{},backend={b}",
                models.join(format!("{m}.onnx")).display()
            )
        })
        .collect();
    let deadline = format!("{}s", DEADLINE.as_secs());
    let (agent, _) = agent_process::start(bin, &specs, &["--request-timeout", &deadline]).await?;
    agent.wait_standby(Duration::from_secs(60)).await;

    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let model = MODELS[k % MODELS.len()].0;
        let (inputs, want) = expected_outputs(models, model)?;
        tasks.push(tokio::spawn(client(
            agent.http.clone(),
            format!("{}/v2/models/{model}/infer", agent.base),
            model,
            json!({"inputs": inputs}),
            want,
            outcomes.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut active_before, standby_before) = browsers(&agent).await?;
    let faults = if scenario == "kill-loop" { 15 } else { 1 };
    let mut last_fault = Instant::now();
    for k in 0..faults {
        if k > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // Times are measured from the last fault: recovery after a storm is what counts.
        last_fault = Instant::now();
        active_before = browsers(&agent).await.map_or(active_before, |b| b.0);
        if let Err(e) = inject(&agent, scenario).await {
            if scenario == "kill-loop" {
                // Between kills the agent may have no browser up yet: nothing to kill.
                continue;
            }
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    }
    let mut standby_replaced_ms = None;
    let mut active_replaced_ms = None;
    let active_changes = scenario != "standby-kill";
    // Watch until every model has served a request sent after the fault (and the
    // standby is back, for that scenario), then a little longer.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if scenario == "standby-kill" && standby_replaced_ms.is_none() {
            let now = browsers(&agent).await.map(|b| b.1).unwrap_or(None);
            if now.is_some() && now != standby_before {
                standby_replaced_ms = Some(last_fault.elapsed().as_secs_f64() * 1e3);
            }
        }
        if active_changes && active_replaced_ms.is_none() {
            let now = browsers(&agent).await.map(|b| b.0).unwrap_or(active_before);
            if now != active_before {
                active_replaced_ms = Some(last_fault.elapsed().as_secs_f64() * 1e3);
            }
        }
        let standby_ok = scenario != "standby-kill" || standby_replaced_ms.is_some();
        let active_ok = !active_changes || active_replaced_ms.is_some();
        if (all_served_after(&outcomes, last_fault) && standby_ok && active_ok)
            || last_fault.elapsed() > OBSERVE
        {
            break;
        }
    }
    tokio::time::sleep(AFTER_RESUME).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let stats = agent.get("/v1/stats").await.1;
    // A standby still starting is not a leftover: wait for it first.
    agent.wait_standby(Duration::from_secs(60)).await;
    let leftovers = leftovers(&agent).await?;
    drop(agent);
    let outcomes = lock(&outcomes).clone();
    Ok(summarize(
        scenario,
        about,
        &outcomes,
        last_fault,
        &stats,
        (active_replaced_ms, standby_replaced_ms),
        leftovers,
    ))
}

/// The agent's zombie children, and its live processes that belong to neither the
/// active nor the standby browser (what a killed browser left behind). Chromium's
/// crash handler daemonizes and exits on its own once its browser is gone: not counted;
/// nor is the agent's browser keeper (`--browser-keeper`), which is no browser's.
async fn leftovers(agent: &AgentProcess) -> anyhow::Result<(usize, Vec<String>)> {
    let (active, standby) = browsers(agent).await?;
    let mut keep: Vec<i32> = procs::browser(active).iter().map(|p| p.pid).collect();
    if let Some(s) = standby {
        keep.extend(procs::browser(s).iter().map(|p| p.pid));
    }
    let all = procs::descendants(agent.pid());
    let zombies = all.iter().filter(|p| p.state == 'Z').count();
    let leaked = all
        .iter()
        .filter(|p| p.state != 'Z' && !keep.contains(&p.pid) && !p.comm.contains("crashpad"))
        .filter(|p| !procs::cmdline(p.pid).contains("--browser-keeper"))
        .map(|p| {
            format!(
                "{} ({})",
                p.pid,
                if p.kind.is_empty() {
                    "browser"
                } else {
                    &p.kind
                }
            )
        })
        .collect();
    Ok((zombies, leaked))
}

fn summarize(
    scenario: &str,
    about: String,
    outcomes: &[Outcome],
    fault: Instant,
    stats: &Value,
    (active_replaced_ms, standby_replaced_ms): (Option<f64>, Option<f64>),
    (zombies, leaked): (usize, Vec<String>),
) -> Report {
    let hung_ms = DEADLINE.as_secs_f64() * 1e3 + 1000.0;
    let mut categories: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status != 200)
        .map(|o| format!("{} {}", o.status, o.category))
        .collect();
    categories.sort();
    categories.dedup();
    let served_again = |model: &str| {
        outcomes
            .iter()
            .filter(|o| o.model == model && o.status == 200 && o.start >= fault)
            .map(|o| rel_ms(o.end, fault))
            .min_by(f64::total_cmp)
    };
    let serving_again_ms = MODELS
        .iter()
        .map(|(m, _)| served_again(m))
        .collect::<Option<Vec<f64>>>()
        .and_then(|v| v.into_iter().max_by(f64::total_cmp));
    let retryable = |o: &&Outcome| {
        o.status == 503
            && [
                "browser_crashed",
                "browser_hung",
                "browser_unavailable",
                "model_not_ready",
            ]
            .contains(&o.category.as_str())
    };
    Report {
        scenario: scenario.to_owned(),
        about,
        requests: outcomes.len(),
        succeeded: outcomes.iter().filter(|o| o.status == 200).count(),
        failed_retryable: outcomes.iter().filter(retryable).count(),
        failed_other: outcomes
            .iter()
            .filter(|o| o.status != 200 && !retryable(o))
            .count(),
        hung: outcomes
            .iter()
            .filter(|o| o.status == 0 || latency_ms(o) > hung_ms)
            .count(),
        wrong: outcomes
            .iter()
            .filter(|o| o.status == 200 && !o.correct)
            .count(),
        max_latency_ms: outcomes.iter().map(latency_ms).fold(0.0, f64::max),
        first_failure_ms: outcomes
            .iter()
            .filter(|o| o.status != 200 && o.end >= fault)
            .map(|o| rel_ms(o.end, fault))
            .min_by(f64::total_cmp),
        serving_again_ms,
        active_replaced_ms,
        standby_replaced_ms,
        zombies,
        leaked,
        restarts: stats["browser"]["restarts"].as_u64().unwrap_or(0),
        last_restart_reason: stats["browser"]["last_restart_reason"].clone(),
        failure_categories: categories,
    }
}

fn latency_ms(o: &Outcome) -> f64 {
    (o.end - o.start).as_secs_f64() * 1e3
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.0}"))
}

/// Prints the table of reports.
#[allow(clippy::print_stdout)]
pub fn print(reports: &[Report]) {
    println!(
        "{:<14} {:>6} {:>6} {:>6} {:>6} {:>5} {:>6} {:>9} {:>10} {:>9} {:>10} {:>9}",
        "fault",
        "reqs",
        "ok",
        "retry",
        "other",
        "hung",
        "wrong",
        "max ms",
        "detect ms",
        "replaced",
        "serving ms",
        "standby"
    );
    for r in reports {
        println!(
            "{:<14} {:>6} {:>6} {:>6} {:>6} {:>5} {:>6} {:>9.0} {:>10} {:>9} {:>10} {:>9}",
            r.scenario,
            r.requests,
            r.succeeded,
            r.failed_retryable,
            r.failed_other,
            r.hung,
            r.wrong,
            r.max_latency_ms,
            ms(r.first_failure_ms),
            ms(r.active_replaced_ms),
            ms(r.serving_again_ms),
            ms(r.standby_replaced_ms),
        );
    }
    println!(
        "(ms from the fault, or the last fault of kill-loop: detect = first failed answer, replaced = the agent serves from another browser, serving = every model answered a request sent after the fault, standby = a new standby is ready; retry = retryable 503s; other, hung and wrong must be 0)"
    );
}
