//! Test fixtures: real agents (the `webaccel-agent` binary, each with its own Chromium)
//! on free ports, and a gateway (the library, in process) over them with static
//! discovery whose agent list the test controls.

#![allow(dead_code, clippy::unwrap_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webaccel_gateway::backend::BackendConfig;
use webaccel_gateway::breaker::BreakerConfig;
use webaccel_gateway::discovery::static_list::{self, AgentRef};
use webaccel_gateway::record::Recorder;
use webaccel_gateway::service::{Policy, Preferences};
use webaccel_gateway::waiting::{WaitingByModel, WaitingSink};
use webaccel_gateway::{Running, Settings};
use webaccel_kserve::auth::Tokens;

pub const TOKEN: &str = "agent-token-1";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn models_dir() -> PathBuf {
    repo().join("node-agent/tests/fixtures/models")
}

/// The agent binary of this build (`cargo test --workspace` builds it).
pub fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WEBACCEL_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("webaccel-agent");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build -p webaccel-node-agent), or set WEBACCEL_AGENT_BIN",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running agent; killed (with its browsers) on drop.
pub struct AgentProc {
    pub child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl AgentProc {
    pub fn spawn(models: &[&str], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let port = free_port();
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(&token)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .arg("--pod-name")
            .arg(format!("agent-{port}"))
            .env("RUST_LOG", "warn,chromiumoxide=off")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for m in models {
            cmd.arg("--model").arg(format!(
                "{m}=file://{},backend=wasm",
                models_dir().join(format!("{m}.onnx")).display()
            ));
        }
        cmd.args(extra);
        Self {
            child: cmd.spawn().unwrap(),
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    pub fn agent_ref(&self) -> AgentRef {
        AgentRef {
            url: self.url.clone(),
            token: Some(TOKEN.into()),
            pool: Some("test".into()),
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// Waits until ready with its standby browser up.
    pub async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let stats = reqwest::Client::new()
                .get(format!("{}/v1/stats", self.url))
                .bearer_auth(TOKEN)
                .send()
                .await;
            if let Ok(r) = stats
                && let Ok(v) = r.json::<Value>().await
                && v["ready"] == true
                && !v["browser"]["standby_pid"].is_null()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "agent {} not ready",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub async fn browser_pid(&self) -> i32 {
        let v = self.get("/v1/stats").await;
        i32::try_from(v["browser"]["pid"].as_i64().unwrap()).unwrap()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        // A SIGKILLed agent cannot stop its browsers, which live in process groups of
        // their own: left alone they outlive the test (a hung page spinning for hours).
        // Their command lines name the agent's cache folder, inside `dir`.
        kill_groups_mentioning(&self.dir.path().display().to_string());
    }
}

/// SIGKILLs the process group of every live process whose command line mentions
/// `needle`.
pub fn kill_groups_mentioning(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let own_group = nix::unistd::getpgrp();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            let pid = nix::unistd::Pid::from_raw(pid);
            if let Ok(group) = nix::unistd::getpgid(Some(pid))
                && group != own_group
            {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Signals every process of a browser (its process group: the agent gives each browser
/// one).
pub fn signal_browser(main_pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(main_pid), sig);
}

/// Records every waiting count the gateway publishes.
#[derive(Debug, Default)]
pub struct Published(pub Mutex<Vec<WaitingByModel>>);

impl WaitingSink for Published {
    fn publish(&self, waiting: &WaitingByModel) {
        self.0.lock().unwrap().push(waiting.clone());
    }
}

pub struct TestGateway {
    pub running: Running,
    pub agents: watch::Sender<Vec<AgentRef>>,
    pub published: Arc<Published>,
    pub stop: CancellationToken,
}

impl TestGateway {
    pub fn http(&self) -> String {
        format!("http://{}", self.running.http)
    }

    pub fn grpc(&self) -> String {
        self.running.grpc.to_string()
    }
}

pub fn settings(f: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = Settings {
        http: "127.0.0.1:0".parse().unwrap(),
        grpc: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        policy: Policy {
            request_timeout: Duration::from_secs(20),
            max_attempts: 3,
            max_tensor_bytes: 16 << 20,
            backoff_base: Duration::from_millis(25),
            backoff_cap: Duration::from_secs(1),
        },
        backends: BackendConfig {
            max_outstanding: 8,
            slow_start: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
            stall_after: Duration::from_secs(1),
        },
        queue_size: 64,
        retry_budget_ratio: 0.2,
        retry_min_per_second: 10,
        tokens: Tokens::default(),
    };
    f(&mut s);
    s
}

pub async fn gateway(agents: Vec<AgentRef>, settings: Settings) -> TestGateway {
    let stop = CancellationToken::new();
    let (tx, rx) = watch::channel(agents);
    let fleet = static_list::start(rx, Duration::from_millis(200), stop.clone());
    let published = Arc::new(Published::default());
    let running = webaccel_gateway::start(
        settings,
        fleet,
        published.clone(),
        Recorder::disabled(),
        Preferences::default(),
    )
    .await
    .unwrap();
    TestGateway {
        running,
        agents: tx,
        published,
        stop,
    }
}

/// Waits until the gateway routes `model` (a ready browser holds it).
pub async fn wait_model(gw: &TestGateway, model: &str) {
    let started = Instant::now();
    loop {
        let r = reqwest::get(format!("{}/v2/models/{model}/ready", gw.http())).await;
        if r.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{model} never ready at the gateway"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The mlp fixture's request body (KServe v2 JSON).
pub fn mlp_body() -> Value {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("mlp.json")).unwrap())
            .unwrap();
    serde_json::json!({"inputs": fixture["inputs"]})
}

pub fn mlp_expected() -> Value {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("mlp.json")).unwrap())
            .unwrap();
    fixture["outputs"].clone()
}

/// Whether a response's outputs equal the onnxruntime reference.
pub fn matches_reference(got: &Value, want: &Value) -> bool {
    let (Some(got), Some(want)) = (got.as_array(), want.as_array()) else {
        return false;
    };
    want.iter().all(|w| {
        got.iter()
            .find(|g| g["name"] == w["name"])
            .is_some_and(|g| {
                let (gd, wd) = (g["data"].as_array().unwrap(), w["data"].as_array().unwrap());
                gd.len() == wd.len()
                    && gd.iter().zip(wd).all(|(a, b)| {
                        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs()
                            <= 1e-5 + 1e-4 * b.as_f64().unwrap().abs()
                    })
            })
    })
}

/// Runs one of the node-agent's stock-client scripts against `target`.
pub async fn python_client(script: &str, target: &str) -> String {
    let out = tokio::process::Command::new("python3")
        .arg(repo().join("node-agent/tests/clients").join(script))
        .arg(target)
        .arg(models_dir())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{script}: {stdout}\n{stderr}");
    stdout
}
