//! One Chromium process tree: launched by the agent in a process group of its own,
//! driven over the DevTools protocol (chromiumoxide) for lifecycle only (open the page,
//! version, fault injection), and killed as a whole. Tensors never travel over DevTools.
//!
//! Every step is bounded by a timeout and every failure ends in SIGKILL of the whole
//! group: a browser that is dead, frozen (SIGSTOP) or half-started can never make the
//! agent wait. Exits are collected by the [`Reaper`].

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromiumoxide::browser::Browser;
use chromiumoxide::handler::HandlerConfig;
use futures::StreamExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::reaper::{Exit, ExitWatch, Reaper};

/// How to launch Chromium.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub executable: PathBuf,
    pub extra_args: Vec<String>,
    pub sandbox: bool,
    /// Chromium's HTTP cache, kept for the agent's lifetime while each launch gets a
    /// fresh profile: onnxruntime-web's wasm and its compiled code survive a restart.
    pub disk_cache_dir: PathBuf,
}

/// Bounds on each launch step. A step that takes longer fails the launch (and kills the
/// browser), so the supervisor always moves on.
#[derive(Debug, Clone, Copy)]
pub struct LaunchTimeouts {
    /// From spawning the process to its DevTools endpoint being announced.
    pub devtools: Duration,
    /// Connecting to DevTools and each DevTools command (version, open the page).
    pub command: Duration,
}

impl Default for LaunchTimeouts {
    fn default() -> Self {
        Self {
            devtools: Duration::from_secs(15),
            command: Duration::from_secs(10),
        }
    }
}

/// How long a killed browser's main process may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Switches every launch gets.
const BASE_ARGS: &[&str] = &[
    "--headless=new",
    // WebGPU is behind this switch on Linux.
    "--enable-unsafe-webgpu",
    // The machine may have no network: keep Chromium from trying to phone home.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-client-side-phishing-detection",
    "--disable-features=TranslateUI",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--hide-scrollbars",
    // Chromium's own hang monitor would kill a renderer compiling a model; the agent's
    // heartbeat judges hangs instead.
    "--disable-hang-monitor",
    "--disable-breakpad",
    // Many small WebSocket messages must not be throttled as an IPC flood.
    "--disable-ipc-flooding-protection",
    // A hidden page must keep running at full speed.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    // Any free port; the chosen one is read from DevToolsActivePort in the profile.
    "--remote-debugging-port=0",
];

/// Finds an executable by name on PATH, or checks a path.
pub fn resolve_executable(name: &str) -> Result<PathBuf, String> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("Chromium binary '{name}' does not exist"))
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("Chromium binary '{name}' is not on PATH (set --chromium or WEBACCEL_CHROMIUM)")
        })
}

/// Kills a process group when dropped, unless disarmed: a launch that fails or is
/// cancelled half-way leaves nothing running.
#[derive(Debug)]
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// A running Chromium with the runtime page open.
#[derive(Debug)]
pub struct BrowserProcess {
    /// The main process; also its process group (every Chromium process inherits it).
    pid: Pid,
    exit: ExitWatch,
    group: GroupGuard,
    browser: Browser,
    pub(crate) page: chromiumoxide::Page,
    /// Drives the DevTools connection; aborted when the browser is killed.
    handler: JoinHandle<()>,
    /// Cancelled when the DevTools connection ends (the browser died or closed it).
    devtools_gone: CancellationToken,
    pub version: String,
    /// A fresh profile per launch, removed when the process is dropped.
    profile: tempfile::TempDir,
}

impl BrowserProcess {
    /// Launches Chromium with a fresh profile and opens `url`.
    pub async fn launch(
        cfg: &LaunchConfig,
        url: &str,
        reaper: &Arc<Reaper>,
        timeouts: LaunchTimeouts,
    ) -> Result<Self, String> {
        let profile = tempfile::Builder::new()
            .prefix("webaccel-chromium-")
            .tempdir()
            .map_err(|e| format!("cannot create a profile directory: {e}"))?;
        let log_path = profile.path().join("chromium.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&cfg.executable);
        cmd.args(BASE_ARGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--disk-cache-dir={}", cfg.disk_cache_dir.display()))
            .args(cfg.extra_args.iter().map(|a| format!("--{a}")))
            .arg("about:blank")
            // Its own group, so one signal reaches every process of this browser and
            // none of another (the standby) or the agent's.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| format!("cannot share the log file: {e}"))?,
            )
            .stderr(log);
        if !cfg.sandbox {
            cmd.args(["--no-sandbox", "--disable-setuid-sandbox"]);
        }
        let (pid, mut exit) = reaper
            .spawn(&mut cmd)
            .map_err(|e| format!("launching {} failed: {e}", cfg.executable.display()))?;
        let group = GroupGuard(Some(pid));
        let fail = |what: String| format!("{what}{}", log_tail(&log_path));

        let ws_url = tokio::select! {
            url = devtools_url(profile.path(), timeouts.devtools) => url.map_err(fail)?,
            e = exit.exited() => {
                return Err(fail(format!("Chromium exited during start ({})", describe(e))));
            }
        };
        let config = HandlerConfig {
            request_timeout: timeouts.command,
            ..HandlerConfig::default()
        };
        let (browser, mut handler) = bounded(
            timeouts.command,
            "connecting to DevTools",
            Browser::connect_with_config(ws_url, config),
        )
        .await
        .map_err(fail)?;
        // The handler drives the DevTools connection; it must be polled on its own task.
        let devtools_gone = CancellationToken::new();
        let gone = devtools_gone.clone();
        let handler = tokio::spawn(async move {
            while handler.next().await.is_some() {}
            gone.cancel();
        });
        let aborter = AbortOnDrop(Some(handler.abort_handle()));
        let version = bounded(timeouts.command, "asking its version", browser.version())
            .await
            .map_err(fail)?
            .product;
        let page = bounded(
            timeouts.command,
            "opening the runtime page",
            browser.new_page(url),
        )
        .await
        .map_err(fail)?;
        aborter.disarm();
        Ok(Self {
            pid,
            exit,
            group,
            browser,
            page,
            handler,
            devtools_gone,
            version,
            profile,
        })
    }

    /// The main process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Resolves when the DevTools connection has ended (the browser died or closed it).
    pub async fn devtools_closed(&self) {
        self.devtools_gone.cancelled().await;
    }

    /// Asks the browser process for its version over DevTools: an answer proves the
    /// main process is not frozen, which the page's heartbeat alone cannot (the page's
    /// socket runs through the network service, a process of its own).
    pub async fn devtools_ping(&self) -> bool {
        self.browser.version().await.is_ok()
    }

    /// Resolves when the main process has exited.
    pub async fn exited(&self) -> Option<Exit> {
        self.exit.clone().exited().await
    }

    /// SIGKILLs the whole process group and waits (bounded) until the main process is
    /// reaped. Chromium's other processes die with it and are reaped by the [`Reaper`].
    pub async fn kill(mut self) {
        let started = Instant::now();
        if let Some(pgid) = self.group.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        self.handler.abort();
        if tokio::time::timeout(KILL_WAIT, self.exit.exited())
            .await
            .is_err()
        {
            tracing::error!(
                pid = self.pid.as_raw(),
                "a killed browser was not reaped within {KILL_WAIT:?}"
            );
        }
        tracing::debug!(elapsed = ?started.elapsed(), profile = %self.profile.path().display(), "browser killed");
    }
}

/// Aborts a task when dropped, unless disarmed.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("Chromium failed {what}: {e}")),
        Err(_) => Err(format!("Chromium did not finish {what} within {limit:?}")),
    }
}

fn describe(exit: Option<Exit>) -> String {
    exit.map_or_else(|| "unknown status".to_owned(), |e| e.to_string())
}

/// Waits for Chromium to write the DevTools endpoint into the profile's
/// `DevToolsActivePort` (port on the first line, browser path on the second).
async fn devtools_url(profile: &Path, limit: Duration) -> Result<String, String> {
    let file = profile.join("DevToolsActivePort");
    let started = Instant::now();
    loop {
        if let Ok(text) = tokio::fs::read_to_string(&file).await {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next())
                && port.trim().parse::<u16>().is_ok()
                && path.starts_with('/')
            {
                return Ok(format!("ws://127.0.0.1:{}{}", port.trim(), path.trim()));
            }
        }
        if started.elapsed() > limit {
            return Err(format!(
                "Chromium announced no DevTools endpoint within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last lines Chromium logged, to explain a failed launch.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    format!("; Chromium's last output:\n{tail}")
}

/// Starts a busy loop in the page, for fault-injection tests. The expression returns at
/// once; the loop starts on the next task and never yields.
pub async fn inject_hang(page: &chromiumoxide::Page) -> Result<(), String> {
    page.evaluate_expression("setTimeout(() => { for (;;) {} }, 0); true")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Where the runtime's files are, checked up front so a bad install fails loudly.
pub fn check_web_root(root: &Path) -> Result<(), String> {
    let needed = [
        "src/runtime.js",
        "node_modules/onnxruntime-web/dist/ort.all.min.mjs",
    ];
    for file in needed {
        if !root.join(file).is_file() {
            return Err(format!(
                "{} is missing: run `npm ci` in {} (or point --web-root at a built runtime)",
                root.join(file).display(),
                root.display()
            ));
        }
    }
    Ok(())
}
