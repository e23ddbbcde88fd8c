//! One browser of local mode: a `webaccel-agent` child process on a free loopback port,
//! with its own token, in its own process group, told to exit with its parent. The same
//! command line as a pod's (the engine builds both).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use webaccel_agent_client::Endpoint;
use webaccel_api::agent::{AgentStats, Capabilities};
use webaccel_crds::agent::{self as command, AgentSite};
use webaccel_crds::v1alpha1::BrowserPoolSpec;
use webaccel_engine::pool::browser::BrowserView;
use webaccel_engine::pool::decide::Removal;

use super::status::Process;

/// How a local browser is started.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub agent_binary: PathBuf,
    /// Where each browser gets a folder (token, log).
    pub run_dir: PathBuf,
    pub clickhouse_url: Option<String>,
    /// The database of `webaccel up --clickhouse-database`, for pools that name none.
    pub clickhouse_database: String,
    /// `webaccel up`'s own log format, for the agents' logs (their colour follows their
    /// log file: none).
    pub log_format: webaccel_logs::LogFormat,
    /// Where a stopped agent's unwritten rows go, for `up` to write (see
    /// [`super::orphans`]).
    pub orphans: PathBuf,
}

#[derive(Debug)]
pub struct LocalBrowser {
    pub name: String,
    pub template_hash: String,
    pub endpoint: Endpoint,
    pub log: PathBuf,
    child: Child,
    pid: i32,
    pub created: Timestamp,
    pub draining_since: Option<Timestamp>,
    /// Why it drains, for the log line when it goes.
    pub drained_for: Option<Removal>,
    /// Chosen for scale-down while it holds the only loaded replica of some model: it
    /// serves on and takes no new replica until that model is loaded elsewhere.
    pub cordoned_since: Option<Timestamp>,
    /// Set once the process has exited.
    pub exited: Option<String>,
    pub stats: Option<AgentStats>,
    pub capabilities: Option<Capabilities>,
    pub ready_since: Option<Timestamp>,
    /// Its browsers' process groups, as it last reported them: killed if the agent dies
    /// without stopping them (SIGKILL), so no Chromium outlives its agent.
    browser_groups: Vec<i32>,
    /// The agent's own cache folder (models, spooled rows, the browsers' HTTP cache).
    cache_dir: PathBuf,
    /// Where its unwritten rows go once it has stopped: `None` for a pool that sends its
    /// rows to a ClickHouse of its own (`spec.metrics`), which `up` does not write to.
    orphans: Option<PathBuf>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Launcher {
    /// Starts a browser of pool `pool` built from `spec` (whose hash is `hash`).
    pub fn start(
        &self,
        pool: &str,
        spec: &BrowserPoolSpec,
        hash: &str,
    ) -> anyhow::Result<LocalBrowser> {
        let name = format!("{pool}-{}", random_suffix());
        let dir = self.run_dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let token_file = dir.join("token");
        std::fs::write(&token_file, &token)?;
        let port = free_port()?;
        let site = AgentSite {
            listen: format!("127.0.0.1:{port}"),
            token_file: token_file.display().to_string(),
            pool: pool.to_owned(),
            pod_name: name.clone(),
            // A cache folder of its own: its browsers' command lines name it, so they can
            // be found and killed whatever the agent last reported (see `kill_browsers`).
            cache_dir: dir.join("cache").display().to_string(),
            browser_binary: spec.browser.default_binary().to_owned(),
        };
        let mut args = command::agent_args(spec, &site);
        if spec.metrics.is_none()
            && let Some(url) = &self.clickhouse_url
        {
            args.push(format!("--clickhouse-url={url}"));
            args.push(format!(
                "--clickhouse-database={}",
                self.clickhouse_database
            ));
        }
        args.push("--exit-with-parent".into());
        let log = dir.join("agent.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&self.agent_binary)
            .args(&args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("RUST_LOG", "info,chromiumoxide=off")
            .env("WEBACCEL_LOG_FORMAT", self.log_format.as_str())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", self.agent_binary.display()))?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        Ok(LocalBrowser {
            endpoint: Endpoint {
                pod: name.clone(),
                base_url: format!("http://127.0.0.1:{port}"),
                token: Some(token),
            },
            name,
            template_hash: hash.to_owned(),
            log,
            child,
            pid,
            created: Timestamp::now(),
            draining_since: None,
            drained_for: None,
            cordoned_since: None,
            exited: None,
            stats: None,
            capabilities: None,
            ready_since: None,
            browser_groups: Vec::new(),
            cache_dir: dir.join("cache"),
            orphans: spec.metrics.is_none().then(|| self.orphans.clone()),
        })
    }
}

impl LocalBrowser {
    /// Notes whether the process has exited (without waiting).
    pub fn poll_exit(&mut self) {
        if self.exited.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exited = Some(status.to_string());
            self.stats = None;
            // The agent died without stopping its browsers (a SIGKILL): stop them.
            self.kill_browsers();
        }
    }

    /// Records what its agent said.
    pub fn observed(&mut self, stats: Option<AgentStats>) {
        if let Some(s) = &stats {
            self.browser_groups = [s.browser.pid, s.browser.standby_pid]
                .into_iter()
                .flatten()
                .filter_map(|p| i32::try_from(p).ok())
                .collect();
            if s.ready && self.ready_since.is_none() {
                self.ready_since = Some(Timestamp::now());
            }
            if !s.ready {
                self.ready_since = None;
            }
        }
        self.stats = stats;
    }

    pub fn is_ready(&self) -> bool {
        self.exited.is_none() && self.stats.as_ref().is_some_and(|s| s.ready)
    }

    /// The browser as the pool engine sees it.
    pub fn view(&self) -> BrowserView {
        let ready = self.is_ready();
        BrowserView {
            name: self.name.clone(),
            ip: Some("127.0.0.1".into()),
            phase: if self.exited.is_some() {
                "Failed".into()
            } else {
                "Running".into()
            },
            ready,
            terminating: false,
            draining_since: self.draining_since,
            drained_for: self.drained_for.clone(),
            cordoned_since: self.cordoned_since,
            // Counted by the pool's round from the deployments.
            sole_copies: 0,
            template_hash: Some(self.template_hash.clone()),
            created: Some(self.created),
            unready_since: if ready { None } else { Some(self.created) },
            ready_since: if ready { self.ready_since } else { None },
            // No scheduler: a process starts or fails.
            unschedulable: None,
            restarts: 0,
            crash_looping: false,
            stats: self.stats.clone(),
            capabilities: self.capabilities.clone(),
        }
    }

    /// Asks the agent to drain and exit (SIGTERM): it finishes what it holds and stops
    /// its browsers.
    pub fn terminate(&self) {
        if self.exited.is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        }
    }

    /// Kills the agent's whole group and its browsers' groups at once.
    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        self.kill_browsers();
    }

    /// SIGKILLs its browsers' process groups: those its agent last reported, and any
    /// process whose command line names its cache folder (a browser started after the
    /// last report).
    fn kill_browsers(&self) {
        for g in &self.browser_groups {
            let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
        }
        let needle = self.cache_dir.display().to_string();
        let own_group = nix::unistd::getpgrp();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if pid != self.pid && String::from_utf8_lossy(&cmd).contains(&needle) {
                let pid = Pid::from_raw(pid);
                if let Ok(group) = nix::unistd::getpgid(Some(pid))
                    && group != own_group
                {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }

    /// Stops it: SIGTERM, then SIGKILL (of its browsers too) after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        self.terminate();
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(browser = %self.name, "did not stop within {grace:?}; killing it");
        }
        self.kill();
        let _ = self.child.wait().await;
        if let Some(orphans) = &self.orphans {
            super::orphans::hand_over(&self.cache_dir.join("metrics-spool"), orphans, &self.name);
        }
        // Its model copies, HTTP cache and browser profiles (those of a killed agent
        // included) go with it: a replacement has a folder of its own. Its log stays.
        if let Err(e) = std::fs::remove_dir_all(&self.cache_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(browser = %self.name, error = %e, "removing a stopped agent's cache failed");
        }
    }

    /// The process as `webaccel status` lists it.
    pub fn process(&self, pool: &str) -> Process {
        let state = if self.exited.is_some() {
            "exited"
        } else if self.draining_since.is_some() {
            "draining"
        } else if self.cordoned_since.is_some() {
            "cordoned"
        } else if self.is_ready() {
            "ready"
        } else {
            "starting"
        };
        Process {
            name: self.name.clone(),
            pool: pool.to_owned(),
            state: state.to_owned(),
            url: self.endpoint.base_url.clone(),
            pid: self.pid,
            log: self.log.display().to_string(),
        }
    }
}

/// The `webaccel-agent` binary: `--agent-binary`, else beside this program, else on PATH.
pub fn find_agent_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        anyhow::ensure!(p.is_file(), "--agent-binary {} does not exist", p.display());
        return Ok(p.to_owned());
    }
    if let Ok(exe) = std::env::current_exe() {
        let beside = exe.with_file_name("webaccel-agent");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("webaccel-agent"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "webaccel-agent not found beside webaccel or on PATH (build it: cargo build -p webaccel-node-agent; or give --agent-binary)"
            )
        })
}
