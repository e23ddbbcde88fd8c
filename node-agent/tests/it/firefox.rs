//! The agent with `--browser firefox`: Firefox ESR driven over WebDriver BiDi for its
//! lifecycle, tensors over the page's own socket. The fixture models on wasm give
//! onnxruntime's answers, capabilities say what Firefox really has, and a SIGKILLed
//! Firefox main process is replaced while no request hangs.
//!
//! Needs `firefox-esr` (installed by `scripts/setup.sh`), or `WEBACCEL_FIREFOX` naming
//! a Firefox binary.

use std::time::{Duration, Instant};

use crate::common::{
    Agent, assert_outputs_match, model_uri, reference_tensors, signal, tensors_json,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use webaccel_api::wire::Message;

// wasm runs the same kernels as onnxruntime's CPU provider up to operation order.
const WASM_ABS: f64 = 1e-5;
const WASM_REL: f64 = 1e-4;

async fn start_firefox_agent(models: &[String]) -> Agent {
    let binary = crate::common::firefox();
    Agent::start(models, &["--browser", "firefox", "--firefox", &binary]).await
}

fn wasm_model(name: &str, fixture: &str) -> String {
    format!(
        "{name}={},backend=wasm",
        model_uri(&format!("{fixture}.onnx"))
    )
}

/// The processes still in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state, ppid, pgrp.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields[2].parse::<i32>() == Ok(pgid) && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

#[tokio::test]
async fn firefox_serves_onnxruntime_answers_and_reports_its_capabilities() {
    let _machine = webaccel_testkit::alone().await;
    let started = Instant::now();
    let agent = start_firefox_agent(&[wasm_model("mlp", "mlp"), wasm_model("cnn", "cnn")]).await;
    let ready_after = started.elapsed();

    for m in ["mlp", "cnn"] {
        let t = Instant::now();
        let (status, body) = agent.infer_reference(m, m).await;
        let took = t.elapsed();
        assert_eq!(status, 200, "{m}: {body}");
        assert_eq!(body["parameters"]["backend"], "wasm");
        assert_outputs_match(m, body["outputs"].as_array().unwrap(), WASM_ABS, WASM_REL);
        println!("{m}: first inference over HTTP took {took:?}");
    }
    // Steady-state latency of one mlp inference over HTTP.
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(agent.infer_reference("mlp", "mlp").await.0, 200);
        latencies.push(t.elapsed());
    }
    latencies.sort();

    // The same through the binary bridge.
    let mut bridge = agent.bridge().await;
    bridge
        .send_request(7, "cnn", reference_tensors("cnn"))
        .await;
    let (id, msg) = bridge.recv().await;
    assert_eq!(id, 7);
    let Message::Response(resp) = msg else {
        panic!("cnn over the bridge: {msg:?}")
    };
    assert_eq!(resp.backend, "wasm");
    assert_outputs_match("cnn", &tensors_json(&resp.outputs), WASM_ABS, WASM_REL);

    // Capabilities are Firefox's own.
    let (code, caps) = agent.get("/v1/capabilities").await;
    assert_eq!(code, 200, "{caps}");
    let version = caps["browser"]["version"].as_str().unwrap();
    assert!(version.starts_with("Firefox/"), "{caps}");
    assert!(
        caps["user_agent"].as_str().unwrap().contains("Firefox/"),
        "{caps}"
    );
    assert_eq!(caps["browser"]["state"], "ready", "{caps}");
    assert_eq!(caps["wasm"]["simd"], true, "{caps}");
    assert_eq!(
        caps["wasm"]["cross_origin_isolated"], true,
        "page must be cross-origin isolated: {caps}"
    );
    assert_eq!(caps["wasm"]["threads"], true, "{caps}");
    // Firefox has no WebNN: every device is refused with a reason.
    for device in ["cpu", "gpu", "npu"] {
        let nn = &caps["webnn"][device];
        assert_eq!(nn["available"], false, "{caps}");
        assert!(
            nn["reason"].as_str().unwrap().contains("navigator.ml"),
            "{caps}"
        );
    }
    // WebGPU: either a reason, or an adapter that says whether it is software.
    let gpu = &caps["webgpu"];
    if gpu["available"] == true {
        let adapter = &gpu["adapter"];
        if adapter["is_fallback_adapter"] == true {
            assert_eq!(adapter["kind"], "software", "{adapter}");
        }
    } else {
        assert!(gpu["reason"].as_str().unwrap().len() > 10, "{gpu}");
    }
    let stats = agent.stats().await;
    let pid = stats.browser.pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("firefox"),
        "the browser pid {pid} is not Firefox"
    );
    println!(
        "firefox {version}: agent ready after {ready_after:?} (browser cold start {:.0} ms), \
         mlp over HTTP median {:?} (p90 {:?}); webgpu available: {} ({})",
        stats.browser.cold_start_ms.unwrap(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 9 / 10],
        gpu["available"],
        gpu["adapter"]["kind"].as_str().unwrap_or("-"),
    );
}

const RETRYABLE: [&str; 4] = [
    "browser_crashed",
    "browser_unavailable",
    "model_not_ready",
    "browser_hung",
];

#[tokio::test]
async fn killed_firefox_main_process_is_replaced_and_no_request_hangs() {
    let _machine = webaccel_testkit::alone().await;
    let agent = start_firefox_agent(&[wasm_model("mlp", "mlp"), wasm_model("cnn", "cnn")]).await;
    // The agent's default: a standby Firefox (started once the first one serves, models
    // preloaded) is what a crash switches to.
    let waiting = Instant::now();
    let before = loop {
        let browser = agent.stats().await.browser;
        if browser.standby_pid.is_some() {
            break browser;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "no standby Firefox within 60 s: {browser:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = i32::try_from(before.pid.unwrap()).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("firefox"),
        "the browser pid {pid} is not Firefox"
    );

    // Two clients send requests back to back across the kill.
    let stop = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for (model, fixture) in [("mlp", "mlp"), ("cnn", "cnn")] {
        let http = agent.http.clone();
        let url = format!("{}/v2/models/{model}/infer", agent.base);
        let body = json!({"inputs": crate::common::reference(fixture)["inputs"]});
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let outcome = match http.post(&url).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        Ok((status, body))
                    }
                    Err(e) => Err(e.to_string()),
                };
                let failed = !matches!(outcome, Ok((200, _)));
                outcomes.push((outcome, t.elapsed()));
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // SIGKILL the main process only, as the OOM killer would: the agent must notice,
    // switch to a started browser, and kill what is left of the old one.
    let killed = Instant::now();
    signal(pid, Signal::SIGKILL);
    let recovered = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "not serving again within 30 s of the kill: {:?}",
            agent.stats().await.browser
        );
        let (status, body) = agent.infer_reference("mlp", "mlp").await;
        if status == 200 {
            let browser = agent.stats().await.browser;
            if browser.restarts >= 1 {
                assert_outputs_match(
                    "mlp",
                    body["outputs"].as_array().unwrap(),
                    WASM_ABS,
                    WASM_REL,
                );
                break killed.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let (mut successes, mut failures) = (0, 0);
    for c in clients {
        for (outcome, took) in c.await.unwrap() {
            assert!(
                took < Duration::from_secs(10),
                "a request hung for {took:?}"
            );
            match outcome {
                Ok((200, _)) => successes += 1,
                Ok((status, body)) => {
                    assert_eq!(status, 503, "{body}");
                    let category = body["category"].as_str().unwrap_or("");
                    assert!(RETRYABLE.contains(&category), "{body}");
                    failures += 1;
                }
                Err(e) => panic!("a request failed without an answer: {e}"),
            }
        }
    }
    assert!(successes > 0);

    let after = agent.stats().await.browser;
    assert_eq!(
        after.last_restart_reason.as_deref(),
        Some("crashed"),
        "{after:?}"
    );
    assert_ne!(after.pid.map(i64::from), Some(i64::from(pid)), "{after:?}");
    assert_eq!(
        after.pid, before.standby_pid,
        "the standby took over: {after:?}"
    );
    assert_eq!(after.version, before.version);
    // Nothing of the killed Firefox is left running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !group_members(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes of the killed Firefox left running: {:?}",
            group_members(pid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in ["mlp", "cnn"] {
        let (status, body) = agent.infer_reference(m, m).await;
        assert_eq!(status, 200, "{m} after the restart: {body}");
        assert_outputs_match(m, body["outputs"].as_array().unwrap(), WASM_ABS, WASM_REL);
    }
    println!(
        "firefox killed: serving again {recovered:?} after the SIGKILL (agent's own \
         recovery figure {:?} ms); {successes} requests succeeded and {failures} failed \
         retryably during the scenario",
        after.last_recovery_ms
    );
}
