//! Starts and stops a real agent for the benchmark, and reads its figures.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub struct AgentProcess {
    child: Child,
    pub base: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl AgentProcess {
    pub async fn start(
        bin: &std::path::Path,
        models: &[String],
        extra: &[&str],
    ) -> anyhow::Result<(Self, Duration)> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cache-dir")
            .arg(dir.path())
            .arg("--enable-debug-endpoints")
            .env("RUST_LOG", "warn,chromiumoxide=off")
            .stdout(Stdio::null());
        for m in models {
            cmd.arg("--model").arg(m);
        }
        cmd.args(extra);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let agent = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            _dir: dir,
        };
        agent.wait_ready(Duration::from_secs(120)).await?;
        Ok((agent, started.elapsed()))
    }

    /// The agent's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("agent not ready within {limit:?}")
    }

    /// Waits until the standby browser is up (with models), so it neither competes for
    /// the CPU during a measurement nor is missing when a crash is measured.
    pub async fn wait_standby(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if !self.get("/v1/stats").await?["browser"]["standby_pid"].is_null() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no standby browser within 60 s")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Loads a model (`POST /v1/models` with `spec`); fails unless it loaded. Returns
    /// the agent's description of it.
    pub async fn load(&self, spec: &Value) -> anyhow::Result<Value> {
        let r: Value = self
            .http
            .post(format!("{}/v1/models", self.base))
            .json(spec)
            .send()
            .await?
            .json()
            .await?;
        if r["status"]["state"] != "loaded" {
            bail!("{} did not load: {r}", spec["name"]);
        }
        Ok(r)
    }

    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}
