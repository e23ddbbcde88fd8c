//! Supervision and lifecycle in a real Chromium: a SIGKILLed browser fails what was in
//! flight with retryable errors and comes back with its models; SIGTERM drains; many
//! concurrent requests on several models all get the right answers.

use std::time::{Duration, Instant};

use crate::common::{
    Agent, assert_outputs_match, model_uri, reference_tensors, signal, tensors_json,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use webaccel_api::wire::Message;

const RETRYABLE: [&str; 4] = [
    "browser_crashed",
    "browser_unavailable",
    "model_not_ready",
    "browser_hung",
];

#[tokio::test]
async fn killed_browser_fails_in_flight_retryably_and_recovers() {
    let _machine = webaccel_testkit::alone().await;
    let agent = Agent::start(
        &[
            format!("mlp={},backend=wasm", model_uri("mlp.onnx")),
            format!("cnn={},backend=webgpu", model_uri("cnn.onnx")),
        ],
        &[],
    )
    .await;
    // A model added at run time and one removed must survive the switch correctly.
    let (code, body) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "extra", "uri": model_uri("transformer.onnx"), "backend": "wasm"}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, _) = agent
        .post(
            "/v1/repository/models",
            &json!({"name": "gone", "uri": model_uri("types.onnx"), "backend": "wasm"}),
        )
        .await;
    assert_eq!(code, 201);
    let r = agent
        .http
        .delete(format!("{}/v1/repository/models/gone", agent.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let pid = agent.browser_pid().await;

    // Four clients send requests back to back for the whole scenario.
    let stop = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for k in 0..4 {
        let http = agent.http.clone();
        let (model, fixture) = if k % 2 == 0 {
            ("mlp", "mlp")
        } else {
            ("cnn", "cnn")
        };
        let url = format!("{}/v2/models/{model}/infer", agent.base);
        let body = json!({"inputs": crate::common::reference(fixture)["inputs"]});
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let r = http.post(&url).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                outcomes.push((
                    status,
                    format!(
                        "{} {}",
                        body["category"].as_str().unwrap_or(""),
                        body["error"]
                    ),
                    t.elapsed(),
                ));
                if status != 200 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(pid, Signal::SIGKILL);

    let mut failures = 0;
    let mut successes = 0;
    for c in clients {
        for (status, category, took) in c.await.unwrap() {
            assert!(took < Duration::from_secs(5), "a request hung for {took:?}");
            if status == 200 {
                successes += 1;
            } else {
                assert_eq!(status, 503, "{category}");
                assert!(
                    RETRYABLE.iter().any(|r| category.starts_with(r)),
                    "{category}"
                );
                failures += 1;
            }
        }
    }
    assert!(
        failures > 0,
        "requests during the restart must fail retryably"
    );
    assert!(successes > 0);

    agent.wait_ready(Duration::from_secs(30)).await;
    let stats = agent.stats().await;
    assert_eq!(stats.browser.restarts, 1, "{stats:?}");
    assert_eq!(
        stats.browser.last_restart_reason.as_deref(),
        Some("crashed")
    );
    assert_ne!(stats.browser.pid.map(i64::from), Some(i64::from(pid)));
    let (_, models) = agent.get("/v1/repository/models").await;
    let names: Vec<_> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cnn", "extra", "mlp"]);
    for m in models["models"].as_array().unwrap() {
        assert_eq!(m["status"]["state"], "loaded", "{m}");
    }
    let (code, body) = agent.infer_reference("extra", "transformer").await;
    assert_eq!(code, 200, "{body}");
    assert_outputs_match(
        "transformer",
        body["outputs"].as_array().unwrap(),
        1e-5,
        1e-4,
    );
    assert_eq!(agent.infer_reference("gone", "types").await.0, 404);
    let (code, body) = agent.infer_reference("cnn", "cnn").await;
    assert_eq!(code, 200, "{body}");
    assert_outputs_match("cnn", body["outputs"].as_array().unwrap(), 1e-4, 1e-3);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_then_exits() {
    let _machine = webaccel_testkit::alone().await;
    let mut agent = Agent::start(
        &[format!("cnn={},backend=webgpu", model_uri("cnn.onnx"))],
        &["--bridge-window", "64"],
    )
    .await;
    let mut bridge = agent.bridge().await;
    for id in 1..=24u64 {
        bridge
            .send_request(id, "cnn", reference_tensors("cnn"))
            .await;
    }
    // Let the agent read and admit them, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let outstanding = agent.stats().await.outstanding;
    signal(agent.child.id() as i32, Signal::SIGTERM);

    let mut answered = 0;
    let mut ok = 0;
    while answered < 24 {
        let (_, msg) = bridge.recv().await;
        answered += 1;
        match msg {
            Message::Response(resp) => {
                ok += 1;
                assert_outputs_match("cnn", &tensors_json(&resp.outputs), 1e-4, 1e-3);
            }
            Message::Error(e) => assert_eq!(e.category.as_str(), "shutting_down", "{e:?}"),
            other => panic!("the agent sent {other:?}"),
        }
    }
    assert!(
        ok as u64 >= outstanding,
        "every request admitted before SIGTERM ({outstanding}) must succeed, {ok} did"
    );
    assert!(ok > 0);
    let status = agent
        .terminate(Duration::from_secs(20))
        .expect("agent exits after draining");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn concurrent_requests_on_several_models_all_get_their_answers() {
    let _machine = webaccel_testkit::alone().await;
    let agent = Agent::start(
        &[
            format!("mlp={},backend=wasm", model_uri("mlp.onnx")),
            format!("cnn={},backend=wasm", model_uri("cnn.onnx")),
            format!("transformer={},backend=wasm", model_uri("transformer.onnx")),
            format!("types={},backend=wasm", model_uri("types.onnx")),
        ],
        &[],
    )
    .await;
    let models = ["mlp", "cnn", "transformer", "types"];
    let mut tasks = Vec::new();
    for k in 0..32 {
        let m = models[k % 4];
        let http = agent.http.clone();
        let url = format!("{}/v2/models/{m}/infer", agent.base);
        let body =
            json!({"inputs": crate::common::reference(m)["inputs"], "id": format!("req-{k}")});
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (m, k, r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut bridge = agent.bridge().await;
    for id in 0..16u64 {
        bridge
            .send_request(
                id,
                models[id as usize % 4],
                reference_tensors(models[id as usize % 4]),
            )
            .await;
    }
    for t in tasks {
        let (m, k, status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{m}: {body}");
        assert_eq!(body["id"], format!("req-{k}"));
        assert_outputs_match(m, body["outputs"].as_array().unwrap(), 1e-5, 1e-4);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let (id, msg) = bridge.recv().await;
        let Message::Response(resp) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(resp.model, models[id as usize % 4]);
        assert_outputs_match(&resp.model, &tensors_json(&resp.outputs), 1e-5, 1e-4);
        seen.insert(id);
    }
    assert_eq!(seen.len(), 16);
    let stats = agent.stats().await;
    for m in models {
        assert_eq!(stats.models[m].requests, 12, "{m}: {stats:?}");
    }
}

/// Starts an agent with `browser_args`, busies its browser, SIGKILLs the agent and
/// returns the processes below it that were still alive 1 s later (with what they were);
/// checks that the next agent over its cache removes the profiles it left.
async fn survivors_of_a_sigkilled_agent(browser_args: &[&str]) -> (usize, Vec<String>) {
    use webaccel_testkit::procs;
    let agent = Agent::start(
        &[format!("cnn={},backend=wasm", model_uri("cnn.onnx"))],
        &[&["--bridge-window", "64"], browser_args].concat(),
    )
    .await;
    let mut bridge = agent.bridge().await;
    for id in 1..=16u64 {
        bridge
            .send_request(id, "cnn", reference_tensors("cnn"))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = agent.child.id() as i32;
    let below: Vec<procs::Proc> = procs::descendants(pid);
    signal(pid, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive = below
        .iter()
        .filter(|p| procs::read(p.pid).is_some_and(|now| !now.is_zombie()))
        .map(|p| format!("{} {} {}", p.pid, p.comm, p.kind))
        .collect();

    // Its browsers' profiles could not be removed by it: they are in its own folder
    // under its cache, not the system's temporary folder, and the next agent over that
    // cache removes them (megabytes each; killed agents used to fill the disk).
    let root = agent.dir.path().join("cache").join("profiles");
    let left = root.join(pid.to_string());
    let profiles = std::fs::read_dir(&left).map_or(0, |d| d.count());
    assert!(
        profiles >= 1,
        "no profile of the killed agent in {}",
        left.display()
    );
    let next = webaccel_agent::browser::profiles::Profiles::open(&root).unwrap();
    assert!(
        !left.exists(),
        "the killed agent's profiles are still there"
    );
    drop(next);
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    (below.len(), alive)
}

/// Browsers die with their agent however it dies: SIGKILLed with its browser busy (the
/// active and the standby one), nothing below it is left 1 s later. It used to leave 24
/// Chromium processes, and Firefox main processes, running for good.
#[tokio::test]
async fn a_sigkilled_agent_leaves_no_browser_process() {
    let _machine = webaccel_testkit::alone().await;
    let (before, alive) = survivors_of_a_sigkilled_agent(&[]).await;
    assert!(before >= 4, "{before} processes below the agent");
    assert!(alive.is_empty(), "Chromium outlived its agent: {alive:?}");
    let firefox = webaccel_testkit::fixtures::firefox();
    let (before, alive) =
        survivors_of_a_sigkilled_agent(&["--browser", "firefox", "--firefox", &firefox]).await;
    assert!(before >= 2, "{before} processes below the agent");
    assert!(alive.is_empty(), "Firefox outlived its agent: {alive:?}");
}
