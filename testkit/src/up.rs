//! Drives a `webaccel up` child process from outside, as a user would: manifests in a
//! folder, `/v1/status` on its admin address (the objects with their statuses, and the
//! browser processes), `webaccel apply`, and clients sending through its gateway. Shared
//! by the local-mode tests and `webaccel-up-bench`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::free_port;

pub fn pool_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: BrowserPool\nmetadata:\n  name: {name}\nspec:\n  browser: chromium\n  image: local\n  backends: [wasm, webgpu]\n{spec}"
    )
}

/// A ModelDeployment of the model file at `path` on the wasm backend.
pub fn model_yaml(name: &str, pool: &str, path: &Path, replicas: i32) -> String {
    format!(
        "apiVersion: webaccel.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {name}\nspec:\n  poolRef: {{name: {pool}}}\n  model:\n    uri: file://{}\n    format: onnx\n    task: vision\n  backends: [wasm]\n  replicas: {replicas}\n",
        path.display()
    )
}

/// A running `webaccel up` on free ports, with its manifests and data in a temporary
/// folder; stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Up {
    pub binary: PathBuf,
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub http: String,
    pub grpc: String,
    pub admin: String,
    pub started: Instant,
}

impl Up {
    /// Starts `binary up` over `manifests` (file name, text), with `extra` arguments.
    pub fn start(binary: &Path, manifests: &[(&str, String)], extra: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("manifests");
        std::fs::create_dir_all(&m).unwrap();
        for (file, text) in manifests {
            std::fs::write(m.join(file), text).unwrap();
        }
        let (http, grpc, admin) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(binary);
        cmd.args(["up", "-f"])
            .arg(&m)
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--grpc", &format!("127.0.0.1:{grpc}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--drain-timeout", "10s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let started = Instant::now();
        Self {
            binary: binary.to_owned(),
            child: cmd.spawn().unwrap(),
            dir,
            http: format!("http://127.0.0.1:{http}"),
            grpc: format!("127.0.0.1:{grpc}"),
            admin: format!("http://127.0.0.1:{admin}"),
            started,
        }
    }

    pub async fn status(&self) -> Value {
        match reqwest::get(format!("{}/v1/status", self.admin)).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Waits until `check` holds on the status; panics with the status after `limit`.
    pub async fn until(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let s = self.status().await;
            if check(&s) {
                return s;
            }
            assert!(
                started.elapsed() < limit,
                "{what} not reached within {limit:?}: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `webaccel ARGS --up <this up>`: (success, stdout, stderr).
    /// Waits (up to `limit`) until the gateway answers that `models` are ready: the
    /// status may say a model is loaded a moment before the gateway's discovery has seen
    /// its browser ready, and a client checks readiness first.
    pub async fn until_gateway_ready(&self, models: &[&str], limit: Duration) {
        let started = Instant::now();
        for m in models {
            let url = format!("{}/v2/models/{m}/ready", self.http);
            while reqwest::get(&url).await.map_or(true, |r| r.status() != 200) {
                assert!(
                    started.elapsed() < limit,
                    "the gateway never said {m} is ready"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub fn webaccel(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.binary)
            .args(args)
            .args(["--up", &self.admin])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// The bearer token of the browser (agent) named `browser`: local mode writes each
    /// agent's token into its run folder.
    pub fn agent_token(&self, browser: &str) -> String {
        let path = self
            .dir
            .path()
            .join("data/run")
            .join(self.child.id().to_string())
            .join(browser)
            .join("token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// `GET PATH` on the agent of `browser` (as the status lists it), with its token.
    pub async fn agent_get<T: serde::de::DeserializeOwned>(
        &self,
        status: &Value,
        browser: &str,
        path: &str,
    ) -> T {
        let url = status["browsers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["name"] == browser)
            .and_then(|b| b["url"].as_str())
            .unwrap_or_else(|| panic!("no browser {browser} in {status}"))
            .to_owned();
        reqwest::Client::new()
            .get(format!("{url}{path}"))
            .bearer_auth(self.agent_token(browser))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(40) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `BrowserPool` named `name`, with its status, as `webaccel status --json` shows it.
pub fn pool<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["metadata"]["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The `ModelDeployment` named `name`, with its status.
pub fn model<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["models"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["metadata"]["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The URL of the ClickHouse server `up` writes to, as its status names it (the status
/// adds where it came from after the URL).
pub fn clickhouse_url(s: &Value) -> String {
    s["clickhouse"]
        .as_str()
        .and_then(|c| c.split_whitespace().next())
        .unwrap_or_else(|| panic!("no ClickHouse in up's status: {s}"))
        .to_owned()
}

/// A query on the ClickHouse server at `url`: its answer, trimmed, or `None` when the
/// server could not be reached or refused it.
pub async fn clickhouse_query(url: &str, sql: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .post(url)
        .body(sql.to_owned())
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    Some(r.text().await.ok()?.trim().to_owned())
}

/// Whether deployment `name` reports `n` loaded replicas.
pub fn loaded(s: &Value, name: &str, n: i64) -> bool {
    model(s, name)["status"]["loadedReplicas"].as_i64() == Some(n)
}

/// Whether an object's `Degraded` condition holds.
pub fn degraded(object: &Value) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Degraded" && c["status"] == "True")
}

/// A pool's browser processes (name, state, url, pid, log).
pub fn browsers(s: &Value, pool_name: &str) -> Vec<Value> {
    s["browsers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["pool"] == pool_name)
        .cloned()
        .collect()
}

/// The names of a pool's browsers.
pub fn browser_names(s: &Value, pool_name: &str) -> Vec<String> {
    browsers(s, pool_name)
        .iter()
        .filter_map(|b| b["name"].as_str().map(str::to_owned))
        .collect()
}

/// Clients sending `body` to `model` back to back through the gateway until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    pub fn start(http: &str, model: &str, body: &Value, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{http}/v2/models/{model}/infer");
        let tasks = (0..clients)
            .map(|_| {
                let (stop, url, body) = (stop.clone(), url.clone(), body.clone());
                tokio::spawn(async move {
                    let c = reqwest::Client::new();
                    let (mut ok, mut failed) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match c
                            .post(&url)
                            .json(&body)
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == 200 => ok += 1,
                            Ok(r) => failed.push(format!(
                                "{} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            )),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients and asserts that some requests were served and none failed
    /// (`during` says when, for the message); returns how many were served.
    pub async fn finish_clean(self, during: &str) -> usize {
        let (served, failed) = self.finish().await;
        assert!(served > 0, "nothing served {during}");
        assert!(
            failed.is_empty(),
            "{} of {} failed {during}: {:?}",
            failed.len(),
            served + failed.len(),
            &failed[..failed.len().min(5)]
        );
        served
    }

    /// Stops the clients: (requests served, failures).
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for t in self.tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}
