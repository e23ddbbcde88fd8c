//! Keeps one browser serving: launches it, waits for the page to connect back, loads
//! the models, pings the page, and on a crash or a hang fails what was in flight (with
//! a retryable category), kills the process and switches to a fresh one.
//!
//! A standby browser (launched, runtime started, no models) is kept ready by default,
//! so a replacement only has to load the models: recovery takes well under a second
//! instead of a cold start of several. `run` holds the loop; this file the state.

mod run;

pub use run::supervise;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocket;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::browser::{BrowserProcess, LaunchConfig};
use crate::page::PageLink;

/// Where the browser is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrowserState {
    Starting,
    LoadingModels,
    Ready,
    Restarting,
    Stopped,
}

/// What the supervisor knows about the current browser, as reported by `/v1/stats` and
/// `/v1/capabilities`.
#[derive(Debug, Clone, Serialize)]
pub struct BrowserInfo {
    pub state: BrowserState,
    pub generation: u64,
    pub pid: Option<u32>,
    pub version: String,
    /// Served by `/v1/capabilities`; left out of `/v1/stats`, which is polled often.
    #[serde(skip)]
    pub capabilities: Value,
    pub restarts: u64,
    pub last_restart_reason: Option<String>,
    /// From detecting a failure to serving again, for the last restart.
    pub last_recovery_ms: Option<f64>,
    /// From launching the first browser to its page connecting back.
    pub cold_start_ms: Option<f64>,
    /// Launch attempts that failed in a row (0 when the browser is up).
    pub failed_launches: u32,
    pub last_launch_error: Option<String>,
    /// The standby browser's process, when one is ready.
    pub standby_pid: Option<u32>,
}

/// A started browser whose page has connected back.
#[derive(Debug)]
struct Browser {
    process: BrowserProcess,
    link: Arc<PageLink>,
    capabilities: Value,
    /// From launch to the page's hello.
    start_ms: f64,
}

/// Why the supervisor stopped watching a browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Crashed,
    Hung,
    Shutdown,
}

/// How the supervisor paces its checks.
#[derive(Debug, Clone)]
pub struct SupervisorTiming {
    pub heartbeat_interval: Duration,
    /// Silence after which a serving page counts as hung.
    pub hang_timeout: Duration,
    /// Silence tolerated while the page compiles a model.
    pub load_hang_timeout: Duration,
    pub wasm_threads: u32,
    /// Keep a second browser started and idle, to switch to when the first fails.
    pub standby: bool,
}

#[derive(Debug)]
pub struct BrowserSupervisor {
    launch: LaunchConfig,
    timing: SupervisorTiming,
    link: watch::Sender<Option<Arc<PageLink>>>,
    /// Secrets of live pages, and for pages still starting, where to hand their socket.
    pages: Mutex<HashMap<String, Option<oneshot::Sender<WebSocket>>>>,
    info: Mutex<BrowserInfo>,
    hang_request: Notify,
}

impl BrowserSupervisor {
    pub fn new(launch: LaunchConfig, timing: SupervisorTiming) -> Self {
        Self {
            launch,
            timing,
            link: watch::channel(None).0,
            pages: Mutex::new(HashMap::new()),
            info: Mutex::new(BrowserInfo {
                state: BrowserState::Starting,
                generation: 0,
                pid: None,
                version: String::new(),
                capabilities: Value::Null,
                restarts: 0,
                last_restart_reason: None,
                last_recovery_ms: None,
                cold_start_ms: None,
                failed_launches: 0,
                last_launch_error: None,
                standby_pid: None,
            }),
            hang_request: Notify::new(),
        }
    }

    /// The live page link, if the browser is up.
    pub fn link(&self) -> Option<Arc<PageLink>> {
        self.link.borrow().clone().filter(|l| !l.is_closed())
    }

    /// Waits until a page link is up (or the wait is cancelled by the caller dropping it).
    pub async fn wait_for_link(&self) -> Arc<PageLink> {
        let mut rx = self.link.subscribe();
        loop {
            if let Some(link) = rx.borrow_and_update().clone().filter(|l| !l.is_closed()) {
                return link;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn info(&self) -> BrowserInfo {
        self.lock_info().clone()
    }

    fn lock_info(&self) -> std::sync::MutexGuard<'_, BrowserInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pages(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Option<oneshot::Sender<WebSocket>>>> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `s` belongs to a live (or starting) page.
    pub fn secret_matches(&self, s: &str) -> bool {
        self.lock_pages().contains_key(s)
    }

    /// Called by the page socket route once a page with a known secret connects.
    pub fn page_connected(&self, secret: String, socket: WebSocket) {
        if let Some(tx) = self.lock_pages().get_mut(&secret).and_then(Option::take) {
            let _ = tx.send(socket);
        }
    }

    fn forget_page(&self, secret: &str) {
        self.lock_pages().remove(secret);
    }

    /// Asks the watch loop to start a busy loop in the page (fault injection).
    pub fn request_hang(&self) {
        self.hang_request.notify_one();
    }

    /// Launches a browser and waits for its page to say hello (its runtime started).
    async fn start(&self, base_url: &str) -> Result<Browser, String> {
        let started = Instant::now();
        let secret = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        self.lock_pages().insert(secret.clone(), Some(tx));
        let url = format!(
            "{base_url}/page/index.html?s={secret}&threads={}",
            self.timing.wasm_threads
        );
        let result = async {
            let process = BrowserProcess::launch(&self.launch, &url).await?;
            let socket = match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(socket)) => socket,
                _ => {
                    process.kill().await;
                    return Err("the runtime page did not connect back within 30 s".to_owned());
                }
            };
            match PageLink::accept(socket, secret.clone(), Duration::from_secs(30)).await {
                Ok((link, capabilities)) => Ok(Browser {
                    process,
                    link,
                    capabilities,
                    start_ms: started.elapsed().as_secs_f64() * 1e3,
                }),
                Err(e) => {
                    process.kill().await;
                    Err(e)
                }
            }
        }
        .await;
        if result.is_err() {
            self.forget_page(&secret);
        }
        result
    }

    /// Kills a browser and forgets its page.
    async fn stop(&self, browser: Browser) {
        self.forget_page(browser.link.secret());
        browser.process.kill().await;
    }

    /// Pings the page until it dies, hangs, or the agent shuts down.
    async fn watch(
        &self,
        process: &mut BrowserProcess,
        link: &PageLink,
        shutdown: &CancellationToken,
    ) -> Exit {
        let mut tick = tokio::time::interval(self.timing.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Split the borrows: the handler task tells of exit, the page takes injections.
        let (page, mut exited) = (&process.page, &mut process.handler);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Exit::Shutdown,
                () = link.closed() => return Exit::Crashed,
                _ = &mut exited => return Exit::Crashed,
                () = self.hang_request.notified() => {
                    tracing::warn!("injecting a busy loop into the page (debug endpoint)");
                    if let Err(e) = crate::browser::inject_hang(page).await {
                        tracing::error!(error = %e, "hang injection failed");
                    }
                }
                _ = tick.tick() => {
                    let limit = if link.control_in_progress() {
                        self.timing.load_hang_timeout
                    } else {
                        self.timing.hang_timeout
                    };
                    if link.since_pong() > limit {
                        return Exit::Hung;
                    }
                    link.ping();
                }
            }
        }
    }
}
