//! One Chromium process, launched and killed through chromiumoxide. The DevTools
//! connection is used for lifecycle only (launch, navigate, version, fault injection);
//! tensors never travel over it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use futures::StreamExt;
use tokio::task::JoinHandle;

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

/// Switches every launch gets (chromiumoxide adds the leading `--`).
const BASE_ARGS: &[&str] = &[
    // WebGPU is behind this switch on Linux.
    "enable-unsafe-webgpu",
    // The machine may have no network: keep Chromium from trying to phone home.
    "disable-background-networking",
    "disable-component-update",
    "disable-sync",
    "disable-default-apps",
    "no-first-run",
    "no-default-browser-check",
    "disable-quic",
    // A hidden page must keep running at full speed.
    "disable-background-timer-throttling",
    "disable-renderer-backgrounding",
    "disable-backgrounding-occluded-windows",
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

/// A running Chromium with the runtime page open.
#[derive(Debug)]
pub struct BrowserProcess {
    browser: Browser,
    pub(crate) page: chromiumoxide::Page,
    /// Ends when the DevTools connection does: the browser died or was killed.
    pub(crate) handler: JoinHandle<()>,
    pub pid: Option<u32>,
    pub version: String,
    /// A fresh profile per launch, removed when the process is dropped.
    _profile: tempfile::TempDir,
}

impl BrowserProcess {
    /// Launches Chromium with a fresh profile and opens `url`.
    pub async fn launch(cfg: &LaunchConfig, url: &str) -> Result<Self, String> {
        let profile = tempfile::Builder::new()
            .prefix("webaccel-chromium-")
            .tempdir()
            .map_err(|e| format!("cannot create a profile directory: {e}"))?;
        let mut builder = BrowserConfig::builder()
            .chrome_executable(&cfg.executable)
            .new_headless_mode()
            .user_data_dir(profile.path())
            .launch_timeout(Duration::from_secs(20))
            .request_timeout(Duration::from_secs(10))
            .args(BASE_ARGS.iter().copied())
            .arg(format!("disk-cache-dir={}", cfg.disk_cache_dir.display()))
            .args(cfg.extra_args.iter().map(String::as_str));
        if !cfg.sandbox {
            builder = builder.no_sandbox();
        }
        let config = builder.build()?;
        let (mut browser, mut handler) = Browser::launch(config)
            .await
            .map_err(|e| format!("launching {} failed: {e}", cfg.executable.display()))?;
        // The handler drives the DevTools connection; it must be polled on its own task.
        // It ends when the connection does, which is how a dead browser shows up here.
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        let pid = browser.get_mut_child().and_then(|c| c.as_mut_inner().id());
        // chromiumoxide reads stderr for the DevTools address and then closes the pipe,
        // so Chromium's later log lines go nowhere rather than filling a pipe.
        let version = match browser.version().await {
            Ok(v) => v.product,
            Err(e) => {
                let _ = browser.kill().await;
                return Err(format!("Chromium did not report its version: {e}"));
            }
        };
        let page = match browser.new_page(url).await {
            Ok(page) => page,
            Err(e) => {
                let _ = browser.kill().await;
                return Err(format!("Chromium could not open the runtime page: {e}"));
            }
        };
        Ok(Self {
            browser,
            page,
            handler,
            pid,
            version,
            _profile: profile,
        })
    }

    /// Kills the process and waits for it, so no zombie stays behind.
    pub async fn kill(mut self) {
        let _ = self.browser.kill().await;
        self.handler.abort();
    }
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
