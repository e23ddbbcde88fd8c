//! Test fixtures: start a real `webaccel-agent` (with a real Chromium) on a free port,
//! talk to it over HTTP and the bridge, and compare outputs with the onnxruntime
//! reference outputs stored by `fixtures/make_models.py`.

#![allow(dead_code, clippy::unwrap_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webaccel_api::wire::{self, InferRequest, Message};
use webaccel_api::{DataType, Tensor};

pub const TOKEN: &str = "test-token-123";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

pub fn model_uri(file: &str) -> String {
    format!("file://{}", fixture(file).display())
}

/// The stored inputs and onnxruntime outputs of a fixture model.
pub fn reference(model: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{model}.json"))).unwrap())
        .unwrap()
}

/// Reference inputs as tensors (for the bridge).
pub fn reference_tensors(model: &str) -> Vec<Tensor> {
    reference(model)["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let shape = i["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            Tensor::from_json(
                i["name"].as_str().unwrap(),
                DataType::parse(i["datatype"].as_str().unwrap()).unwrap(),
                shape,
                &i["data"],
            )
            .unwrap()
        })
        .collect()
}

/// Asserts every output matches the reference within `abs + rel * |expected|`.
pub fn assert_outputs_match(model: &str, outputs: &[Value], abs: f64, rel: f64) {
    let expected = reference(model);
    let expected = expected["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), expected.len(), "{model}: output count");
    for want in expected {
        let name = want["name"].as_str().unwrap();
        let got = outputs
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{model}: output {name} missing"));
        assert_eq!(
            got["datatype"], want["datatype"],
            "{model}/{name}: datatype"
        );
        assert_eq!(got["shape"], want["shape"], "{model}/{name}: shape");
        let (g, w) = (
            got["data"].as_array().unwrap(),
            want["data"].as_array().unwrap(),
        );
        assert_eq!(g.len(), w.len(), "{model}/{name}: element count");
        let mut worst = 0.0f64;
        for (k, (a, b)) in g.iter().zip(w).enumerate() {
            if b.is_boolean() || b.is_i64() || b.is_u64() {
                assert_eq!(a, b, "{model}/{name}[{k}]");
                continue;
            }
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            let err = (a - b).abs();
            assert!(
                err <= abs + rel * b.abs(),
                "{model}/{name}[{k}]: got {a}, expected {b} (error {err})"
            );
            worst = worst.max(err);
        }
        println!(
            "{model}/{name}: {} values, max abs error {worst:e}",
            g.len()
        );
    }
}

/// A running agent; killed (with its browser) on drop.
pub struct Agent {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Agent {
    /// Starts an agent with a bearer token and waits until it is ready.
    pub async fn start(models: &[String], extra: &[&str]) -> Self {
        let agent = Self::spawn(models, extra);
        agent.wait_ready(Duration::from_secs(90)).await;
        agent
    }

    pub fn spawn(models: &[String], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_webaccel-agent"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(&token)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .env("RUST_LOG", "info,chromiumoxide=off")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for m in models {
            cmd.arg("--model").arg(m);
        }
        cmd.args(extra);
        let child = cmd.spawn().unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(start.elapsed() < limit, "agent not ready within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

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

    /// KServe v2 inference with the reference inputs of `fixture_model`.
    pub async fn infer_reference(&self, name: &str, fixture_model: &str) -> (u16, Value) {
        let inputs = reference(fixture_model)["inputs"].clone();
        self.post(
            &format!("/v2/models/{name}/infer"),
            &json!({"inputs": inputs}),
        )
        .await
    }

    pub async fn stats(&self) -> Value {
        self.get("/v1/stats").await.1
    }

    pub async fn browser_pid(&self) -> i32 {
        self.stats().await["browser"]["pid"]
            .as_i64()
            .expect("browser pid") as i32
    }

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

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        signal(self.child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none()
            && self.terminate(Duration::from_secs(15)).is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

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

/// Output tensors as protocol JSON, for [`assert_outputs_match`].
pub fn tensors_json(ts: &[Tensor]) -> Vec<Value> {
    ts.iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.to_json_data()}))
        .collect()
}

/// onnxruntime's outputs (CPU provider, each request on its own) for requests made up at
/// run time: one list of output tensors (protocol JSON) per request. Runs
/// `fixtures/reference.py` with the system's python3.
pub fn onnxruntime_outputs(model_file: &str, requests: &[Vec<Value>]) -> Vec<Vec<Value>> {
    use std::io::Write as _;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    let job = json!({"model": fixture(model_file), "requests": requests});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reference.py failed: {:?}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts `got` (protocol JSON tensors) matches `want` within `abs + rel * |expected|`:
/// same names, datatypes, shapes; exact for integers and booleans.
pub fn assert_tensors_close(label: &str, got: &[Value], want: &[Value], abs: f64, rel: f64) {
    assert_eq!(got.len(), want.len(), "{label}: output count");
    for w in want {
        let name = w["name"].as_str().unwrap();
        let g = got
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{label}: output {name} missing"));
        assert_eq!(g["datatype"], w["datatype"], "{label}/{name}: datatype");
        assert_eq!(g["shape"], w["shape"], "{label}/{name}: shape");
        let (gd, wd) = (g["data"].as_array().unwrap(), w["data"].as_array().unwrap());
        assert_eq!(gd.len(), wd.len(), "{label}/{name}: element count");
        for (k, (a, b)) in gd.iter().zip(wd).enumerate() {
            if b.is_boolean() || b.is_i64() || b.is_u64() {
                assert_eq!(a, b, "{label}/{name}[{k}]");
                continue;
            }
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= abs + rel * b.abs(),
                "{label}/{name}[{k}]: got {a}, expected {b}"
            );
        }
    }
}

/// The Firefox binary: `WEBACCEL_FIREFOX`, else `firefox-esr` on PATH. Fails the test
/// with what to install when there is none.
pub fn firefox() -> String {
    if let Some(path) = std::env::var_os("WEBACCEL_FIREFOX") {
        return path.into_string().unwrap();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("firefox-esr"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "firefox-esr is not installed: these tests run the agent with --browser firefox. \
                 Install it (`apt-get install firefox-esr`, as scripts/setup.sh does) or set \
                 WEBACCEL_FIREFOX to a Firefox binary."
            )
        })
        .display()
        .to_string()
}
