//! The gateway over real agents (each with its own Chromium): stock clients through one
//! endpoint, failover under load, shedding, deadlines, and scale from zero.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use webaccel_testkit::fixtures::{matches_reference, python_client, python_client_with};
use webaccel_testkit::{AgentProcess, TOKEN, procs};

use crate::support::{
    self, READY, agent_ref, gateway, mlp_body, mlp_expected, settings, spawn_agent, wait_model,
};

#[tokio::test]
async fn stock_clients_through_the_gateway_get_onnxruntime_answers() {
    let _machine = webaccel_testkit::alone().await;
    let models = ["mlp", "cnn", "transformer", "types"];
    let (a, b) = (spawn_agent(&models, &[]), spawn_agent(&models, &[]));
    a.wait_standby(READY).await;
    b.wait_standby(READY).await;
    let gw = gateway(vec![agent_ref(&a), agent_ref(&b)], settings(|_| {})).await;
    for m in models {
        wait_model(&gw, m).await;
    }
    // HTTP: JSON, binary (tritonclient's default) and both mixed; BYTES refused.
    let out = python_client("triton_http.py", &gw.http()).await;
    assert!(out.contains("ok types mixed"), "{out}");
    // gRPC: raw and typed contents; an unknown model is NOT_FOUND at once.
    let out = python_client("triton_grpc.py", &gw.grpc()).await;
    assert!(
        out.contains("ok unknown model: StatusCode.NOT_FOUND"),
        "{out}"
    );
    assert!(out.contains("ok types defaults"), "{out}");
    // Both browsers served (p2c spreads the load).
    let served = |s: Value| s["models"]["mlp"]["requests"].as_u64().unwrap_or(0);
    let (na, nb) = (
        served(a.get("/v1/stats").await.1),
        served(b.get("/v1/stats").await.1),
    );
    assert!(na > 0 && nb > 0, "requests per agent: {na} and {nb}");
    // Asked for, the stages come back whole; the gateway keeps the slowest 1% of them
    // (`/v1/stats` on its admin port) and a histogram per stage.
    let out = python_client_with("triton_stages.py", &gw.http(), &["mlp", "20"]).await;
    assert_eq!(out.lines().count(), 20, "{out}");
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for stage in [
            "receive",
            "route",
            "bridge",
            "page_link",
            "run",
            "gateway_reply",
        ] {
            let ms = v["parameters"][format!("stage_{stage}_ms")].as_f64();
            assert!(ms >= Some(0.0), "{stage} in {v}");
        }
    }
    let admin = format!("http://{}", gw.running.admin.unwrap());
    // A report is worked out at most once a second.
    let started = Instant::now();
    let stats = loop {
        let stats: Value = reqwest::get(format!("{admin}/v1/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["tail"]["requests"].as_u64() >= Some(20) || started.elapsed().as_secs() > 5 {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tail = &stats["tail"];
    assert!(tail["requests"].as_u64() >= Some(20), "{stats}");
    let stages: Vec<&str> = tail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages.first(), Some(&"receive"), "{stats}");
    assert!(
        stages.contains(&"bridge") && stages.contains(&"run"),
        "{stats}"
    );
    assert_eq!(stages.last(), Some(&"send"), "{stats}");
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"webaccel_gateway_request_stage_seconds_count{model="mlp",stage="bridge"}"#
        ),
        "{text}"
    );
    gw.shutdown().await;
}

/// Clients sending back to back; every outcome kept.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u16, String, Duration)>>>,
}

fn load(url: &str, clients: usize, extra_header: Option<(&'static str, &'static str)>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let body = mlp_body();
    let want = mlp_expected();
    let tasks = (0..clients)
        .map(|_| {
            let (stop, body, want, url) =
                (stop.clone(), body.clone(), want.clone(), url.to_owned());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut req = http.post(&url).json(&body).timeout(Duration::from_secs(30));
                    if let Some((k, v)) = extra_header {
                        req = req.header(k, v);
                    }
                    let (status, what) = match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            let ok = status == 200 && matches_reference(&v["outputs"], &want);
                            let what = if status == 200 && !ok {
                                "wrong answer".to_owned()
                            } else {
                                format!("{} {}", v["category"].as_str().unwrap_or(""), v["error"])
                            };
                            (if ok { 200 } else { status.max(1) }, what)
                        }
                        Err(e) => (0, e.to_string()),
                    };
                    out.push((status, what, t.elapsed()));
                }
                out
            })
        })
        .collect();
    Load { stop, tasks }
}

impl Load {
    async fn finish(self) -> Vec<(u16, String, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

fn failures(outcomes: &[(u16, String, Duration)]) -> Vec<&(u16, String, Duration)> {
    outcomes.iter().filter(|o| o.0 != 200).collect()
}

async fn two_agents_and_a_gateway() -> (AgentProcess, AgentProcess, support::TestGateway) {
    let (a, b) = (spawn_agent(&["mlp"], &[]), spawn_agent(&["mlp"], &[]));
    a.wait_standby(READY).await;
    b.wait_standby(READY).await;
    let gw = gateway(vec![agent_ref(&a), agent_ref(&b)], settings(|_| {})).await;
    wait_model(&gw, "mlp").await;
    (a, b, gw)
}

#[tokio::test]
async fn a_killed_browser_or_agent_costs_no_client_request() {
    let _machine = webaccel_testkit::alone().await;
    let (a, b, gw) = two_agents_and_a_gateway().await;
    let url = format!("{}/v2/models/mlp/infer", gw.http());

    // (a) Every process of one agent's browser SIGKILLed at concurrency 8.
    let run = load(&url, 8, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    procs::signal_group(a.browser_pid().await, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outcomes = run.finish().await;
    assert!(outcomes.len() > 100, "{} requests", outcomes.len());
    assert!(
        failures(&outcomes).is_empty(),
        "browser kill: {:?}",
        failures(&outcomes)
    );

    // (b) One agent process SIGKILLed.
    a.wait_standby(READY).await;
    let run = load(&url, 8, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(a.pid()), Signal::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = run.finish().await;
    assert!(outcomes.len() > 100, "{} requests", outcomes.len());
    assert!(
        failures(&outcomes).is_empty(),
        "agent kill: {:?}",
        failures(&outcomes)
    );
    let stats = b.get("/v1/stats").await.1;
    assert!(stats["models"]["mlp"]["requests"].as_u64().unwrap() > 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_frozen_browser_opens_its_breaker_and_traffic_moves() {
    let _machine = webaccel_testkit::alone().await;
    let (a, b, gw) = two_agents_and_a_gateway().await;
    let url = format!("{}/v2/models/mlp/infer", gw.http());
    let admin = format!("http://{}", gw.running.admin.unwrap());
    let breaker_of = |endpoints: &Value, url: &str| {
        endpoints
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == url)
            .map(|e| e["breaker"].as_str().unwrap().to_owned())
    };
    let run = load(&url, 8, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every process of the browser frozen: no socket closes, nothing answers.
    let frozen = a.browser_pid().await;
    procs::signal_group(frozen, Signal::SIGSTOP);
    let stopped_at = Instant::now();
    let mut opened = None;
    let mut closed_again = None;
    while stopped_at.elapsed() < Duration::from_secs(20) {
        let eps: Value = reqwest::get(format!("{admin}/v1/endpoints"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match (breaker_of(&eps, &a.base).as_deref(), opened) {
            (Some("open" | "half_open"), None) => opened = Some(stopped_at.elapsed()),
            (Some("closed"), Some(_)) => {
                closed_again = Some(stopped_at.elapsed());
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcomes = run.finish().await;
    // The agent killed the frozen browser itself; nothing of it may stay stopped.
    procs::signal_group(frozen, Signal::SIGCONT);
    println!("breaker opened after {opened:?}, closed again after {closed_again:?}");
    assert!(opened.is_some(), "the breaker never opened");
    assert!(
        closed_again.is_some(),
        "the breaker never closed after recovery"
    );
    let failed = failures(&outcomes);
    assert!(failed.is_empty(), "{failed:?}");
    let stats = b.get("/v1/stats").await.1;
    assert!(stats["models"]["mlp"]["requests"].as_u64().unwrap() > 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_is_429_a_deadline_is_504_and_a_gone_client_frees_its_place() {
    let _machine = webaccel_testkit::alone().await;
    let a = spawn_agent(
        &["mlp"],
        &["--enable-debug-endpoints", "--hang-timeout", "20s"],
    );
    a.wait_standby(READY).await;
    let gw = gateway(
        vec![agent_ref(&a)],
        settings(|s| {
            s.queue_size = 2;
            s.backends.max_outstanding = 1;
            s.backends.slow_start = Duration::ZERO;
        }),
    )
    .await;
    wait_model(&gw, "mlp").await;
    let url = format!("{}/v2/models/mlp/infer", gw.http());
    let http = reqwest::Client::new();
    // Freeze the page so nothing completes: one request holds the browser's only slot.
    reqwest::Client::new()
        .post(format!("{}/v1/debug/hang", a.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let send = |timeout: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .post(url)
                .header("webaccel-timeout", timeout)
                .json(&mlp_body())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            (status, body, retry_after, t.elapsed())
        })
    };
    let _running = send("10s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _waiting_1 = send("10s");
    let _waiting_2 = send("10s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The queue (2) is full: the next one is shed at once.
    let (status, body, retry_after, took) = send("10s").await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["category"], "overloaded");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(took < Duration::from_secs(1), "{took:?}");

    // A client that goes away frees its place: abort the two waiting ones.
    _waiting_1.abort();
    _waiting_2.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now a request with a short deadline waits (there is room) and gets 504 on time.
    let (status, body, _, took) = send("500ms").await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["category"], "deadline_exceeded");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    gw.shutdown().await;
}

/// A gateway over a static fleet with no agent yet, where `mlp` is deployed: its requests
/// wait for a browser (a model at zero replicas).
struct Deployed {
    agents_tx: tokio::sync::watch::Sender<Vec<webaccel_gateway::discovery::static_list::AgentRef>>,
    published: Arc<support::Published>,
    running: webaccel_gateway::Running,
    stop: tokio_util::sync::CancellationToken,
    /// Kept for the gateway's life: its list of deployed models.
    _deployed: tokio::sync::watch::Sender<Arc<std::collections::BTreeSet<String>>>,
}

async fn deployed_mlp(settings: webaccel_gateway::Settings) -> Deployed {
    let stop = tokio_util::sync::CancellationToken::new();
    let (agents_tx, agents_rx) = tokio::sync::watch::channel(Vec::new());
    let deployed: std::collections::BTreeSet<String> = ["mlp".to_owned()].into();
    let (deployed_tx, deployed_rx) = tokio::sync::watch::channel(Arc::new(deployed));
    let fleet = webaccel_gateway::discovery::static_list::start(
        agents_rx,
        Duration::from_millis(200),
        stop.clone(),
    )
    .with_deployed(deployed_rx);
    let published = Arc::new(support::Published::default());
    let running = webaccel_gateway::start(
        settings,
        fleet,
        published.clone(),
        webaccel_gateway::record::Recorder::disabled(),
        Default::default(),
    )
    .await
    .unwrap();
    Deployed {
        agents_tx,
        published,
        running,
        stop,
        _deployed: deployed_tx,
    }
}

#[tokio::test]
async fn a_model_with_no_browser_waits_is_published_and_is_served_when_one_appears() {
    let _machine = webaccel_testkit::alone().await;
    let Deployed {
        agents_tx,
        published,
        running,
        stop,
        _deployed,
    } = deployed_mlp(settings(|_| {})).await;
    let url = format!("http://{}/v2/models/mlp/infer", running.http);
    let started = Instant::now();
    let request = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&mlp_body())
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap(),
            started.elapsed(),
        )
    });
    // The waiting count reaches the sink.
    published
        .until("1 waiting for mlp", |all| {
            all.iter().any(|w| w.get("mlp") == Some(&1))
        })
        .await;
    // A browser with the model appears (as the operator would start one).
    let a = spawn_agent(&["mlp"], &[]);
    a.wait_standby(READY).await;
    agents_tx.send(vec![agent_ref(&a)]).unwrap();
    let (status, body, took) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        matches_reference(&body["outputs"], &mlp_expected()),
        "{body}"
    );
    println!("served after waiting {took:?}");
    // Once served, the count goes back to none waiting.
    published
        .until("none waiting", |all| {
            all.last().is_some_and(|w| w.is_empty())
        })
        .await;
    running.shutdown().await;
    stop.cancel();
}

/// A model at zero replicas: its requests wait for a browser within the queue's bound
/// (429 past it, at once) and their deadline (504), and each says it is retryable.
#[tokio::test]
async fn a_model_at_zero_sheds_past_its_queue_and_answers_504_at_the_deadline() {
    let Deployed {
        published,
        running,
        stop,
        _deployed,
        ..
    } = deployed_mlp(settings(|s| s.queue_size = 2)).await;
    let url = format!("http://{}/v2/models/mlp/infer", running.http);
    let send = |timeout: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = reqwest::Client::new()
                .post(url)
                .header("webaccel-timeout", timeout)
                .json(&mlp_body())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body, t.elapsed())
        })
    };
    let waiting = [send("20s"), send("20s")];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body, took) = send("20s").await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        (body["category"].as_str(), body["retryable"].as_bool()),
        (Some("overloaded"), Some(true))
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The two held are what the autoscaler hears.
    published
        .until("2 waiting for mlp", |all| {
            all.iter().any(|w| w.get("mlp") == Some(&2))
        })
        .await;
    for w in waiting {
        w.abort();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body, took) = send("500ms").await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["category"], "deadline_exceeded");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no ready browser holds model 'mlp'"),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    running.shutdown().await;
    stop.cancel();
}
