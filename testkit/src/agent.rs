//! One real `webaccel-agent` process (with its real browser) on a free loopback port, for
//! every test and bench that needs one: started with a bearer token and a cache folder of
//! its own, asked over HTTP (typed `/v1/stats`) and over the bridge, and stopped with
//! every browser it started, whatever state it is left in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webaccel_api::Tensor;
use webaccel_api::agent::AgentStats;
use webaccel_api::wire::{self, InferRequest, Message};

use crate::fixtures::reference;
use crate::procs;

/// The bearer token of every test agent.
pub const TOKEN: &str = "test-token-123";

/// A free loopback port (free when asked; another process may take it before use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agent binary of this build: `WEBACCEL_AGENT_BIN`, else `webaccel-agent` in the
/// target directory of the running test (`cargo test --workspace` builds it).
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WEBACCEL_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> or target/debug/<bench>: the binary sits in target/debug.
    let bin = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("webaccel-agent"))
        .find(|p| p.is_file());
    bin.unwrap_or_else(|| {
        panic!(
            "webaccel-agent is missing beside {}: build it first (cargo build -p \
             webaccel-node-agent), or set WEBACCEL_AGENT_BIN",
            exe.display()
        )
    })
}

/// How an agent is started.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    /// `--model` arguments.
    pub models: Vec<String>,
    /// Further arguments.
    pub args: Vec<String>,
    pub rust_log: String,
    /// Whether its log goes to the test's stderr (else nowhere).
    pub log: bool,
    /// Whether it asks for [`TOKEN`] (the clients here send it); without, it asks for none.
    pub token: bool,
}

impl Launch {
    /// This build's agent with `models`, logging to stderr.
    pub fn new(models: &[String]) -> Self {
        Self {
            binary: agent_binary(),
            models: models.to_vec(),
            args: Vec::new(),
            rust_log: "info,chromiumoxide=off".into(),
            log: true,
            token: true,
        }
    }

    /// An agent that asks for no token (benchmarks that measure the bare paths).
    pub fn without_token(mut self) -> Self {
        self.token = false;
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn binary(mut self, binary: &Path) -> Self {
        binary.clone_into(&mut self.binary);
        self
    }

    pub fn quiet(mut self) -> Self {
        self.log = false;
        "warn,chromiumoxide=off".clone_into(&mut self.rust_log);
        self
    }
}

/// A running agent. Dropped, it is killed with every process of its browsers.
pub struct AgentProcess {
    pub child: Child,
    pub base: String,
    /// A client that sends the token.
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts an agent with `models` and `extra` arguments and waits until it is ready.
    pub async fn start(models: &[String], extra: &[&str]) -> Self {
        Self::launch(Launch::new(models).args(extra), Duration::from_secs(90)).await
    }

    /// Starts an agent as `launch` says and waits until it is ready (up to `limit`).
    pub async fn launch(launch: Launch, limit: Duration) -> Self {
        let agent = Self::spawn_with(launch);
        agent.wait_ready(limit).await;
        agent
    }

    /// Starts an agent with `models` and `extra` arguments; does not wait.
    pub fn spawn(models: &[String], extra: &[&str]) -> Self {
        Self::spawn_with(Launch::new(models).args(extra))
    }

    /// Starts an agent as `launch` says; does not wait.
    pub fn spawn_with(launch: Launch) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(&launch.binary);
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        if launch.token {
            let token = dir.path().join("token");
            std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
            cmd.arg("--token-file").arg(&token);
        }
        cmd.arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .env("RUST_LOG", &launch.rust_log)
            .stdout(Stdio::null())
            .stderr(if launch.log {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        for m in &launch.models {
            cmd.arg("--model").arg(m);
        }
        cmd.args(&launch.args);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", launch.binary.display()));
        let mut headers = reqwest::header::HeaderMap::new();
        if launch.token {
            headers.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        }
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            dir,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Waits until `/readyz` answers 200; fails the test after `limit`, or at once if
    /// the agent exits.
    pub async fn wait_ready(&self, limit: Duration) {
        self.wait_until(limit, "ready", |_| true).await;
    }

    /// Waits until ready with its standby browser up (so it neither competes for the CPU
    /// during a measurement nor is missing when a crash is measured).
    pub async fn wait_standby(&self, limit: Duration) {
        self.wait_until(limit, "ready with a standby browser", |s| {
            s.browser.standby_pid.is_some()
        })
        .await;
    }

    async fn wait_until(&self, limit: Duration, what: &str, also: impl Fn(&AgentStats) -> bool) {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
                && let Some(stats) = self.try_stats().await
                && also(&stats)
            {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "agent {} not {what} within {limit:?}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET path`: the status and the JSON body (`null` when there is none).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST path` with a JSON body: the status and the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus exposition (`GET /metrics`), as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// KServe v2 inference with the reference inputs of `fixture_model`.
    pub async fn infer_reference(&self, name: &str, fixture_model: &str) -> (u16, Value) {
        let inputs = reference(fixture_model)["inputs"].clone();
        self.post(
            &format!("/v2/models/{name}/infer"),
            &json!({"inputs": inputs}),
        )
        .await
    }

    async fn try_stats(&self) -> Option<AgentStats> {
        let r = self
            .http
            .get(format!("{}/v1/stats", self.base))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// `/v1/stats`, as the agent's contract types it.
    pub async fn stats(&self) -> AgentStats {
        self.try_stats()
            .await
            .unwrap_or_else(|| panic!("agent {} gave no stats", self.base))
    }

    /// The main process of its current browser.
    pub async fn browser_pid(&self) -> i32 {
        let pid = self.stats().await.browser.pid.expect("a browser pid");
        i32::try_from(pid).unwrap()
    }

    /// A WebSocket bridge connection, with the token.
    pub async fn bridge(&self) -> Bridge {
        let url = format!("{}/v1/bridge", self.base.replace("http://", "ws://"));
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Bridge { ws }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        procs::signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Its resident memory now and at its peak, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        procs::rss_kib(self.pid())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A SIGKILLed agent cannot stop its browsers, which live in process groups of
        // their own: left alone they outlive the test (a hung page spinning for hours).
        // Their command lines name the agent's cache folder, inside `dir`.
        procs::kill_groups_mentioning(&self.dir.path().display().to_string());
    }
}

/// A bridge (`/v1/bridge`) connection: binary wire frames both ways.
pub struct Bridge {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Bridge {
    pub async fn send_request(&mut self, id: u64, model: &str, inputs: Vec<Tensor>) {
        let frame = wire::encode(
            id,
            &Message::Request(InferRequest {
                model: model.into(),
                inputs,
                outputs: vec![],
                ..Default::default()
            }),
        );
        self.ws.send(WsMessage::Binary(frame.into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, msg: WsMessage) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next frame, decoded.
    pub async fn recv(&mut self) -> (u64, Message) {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("bridge reply within 30 s")
                .expect("bridge open")
                .unwrap();
            if let WsMessage::Binary(b) = msg {
                return wire::decode(Bytes::from(b.to_vec())).unwrap();
            }
        }
    }
}
