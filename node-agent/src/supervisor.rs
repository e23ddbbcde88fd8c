//! Keeps one browser alive: launches it, waits for the page to connect back, reloads the
//! models, pings the page, and on a crash or a hang fails what was in flight (with a
//! retryable category), kills the process and starts over with backoff.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocket;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use webaccel_api::ErrorCategory;

use crate::agent::Agent;
use crate::browser::{BrowserProcess, LaunchConfig};
use crate::error::AgentError;
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
}

#[derive(Debug)]
pub struct BrowserSupervisor {
    launch: LaunchConfig,
    timing: SupervisorTiming,
    link: watch::Sender<Option<Arc<PageLink>>>,
    secret: Mutex<String>,
    expected: Mutex<Option<oneshot::Sender<WebSocket>>>,
    info: Mutex<BrowserInfo>,
    hang_request: Notify,
}

impl BrowserSupervisor {
    pub fn new(launch: LaunchConfig, timing: SupervisorTiming) -> Self {
        Self {
            launch,
            timing,
            link: watch::channel(None).0,
            secret: Mutex::new(String::new()),
            expected: Mutex::new(None),
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

    pub fn secret_matches(&self, s: &str) -> bool {
        let secret = self.secret.lock().unwrap_or_else(|p| p.into_inner());
        !secret.is_empty() && *secret == s
    }

    /// The current secret, for URLs the page fetches.
    pub fn secret(&self) -> String {
        self.secret
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Called by the page socket route once a page with the right secret connects.
    pub fn page_connected(&self, secret: String, socket: WebSocket) {
        if !self.secret_matches(&secret) {
            return;
        }
        if let Some(tx) = self
            .expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(socket);
        }
    }

    /// Asks the watch loop to start a busy loop in the page (fault injection).
    pub fn request_hang(&self) {
        self.hang_request.notify_one();
    }

    /// Launches a browser and waits for its page to say hello.
    async fn start(
        &self,
        base_url: &str,
    ) -> Result<(BrowserProcess, Arc<PageLink>, Value), String> {
        let secret = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        *self.secret.lock().unwrap_or_else(|p| p.into_inner()) = secret.clone();
        *self.expected.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let url = format!(
            "{base_url}/page/index.html?s={secret}&threads={}",
            self.timing.wasm_threads
        );
        let process = BrowserProcess::launch(&self.launch, &url).await?;
        let socket = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(socket)) => socket,
            _ => {
                process.kill().await;
                return Err("the runtime page did not connect back within 30 s".into());
            }
        };
        match PageLink::accept(socket, Duration::from_secs(30)).await {
            Ok((link, caps)) => Ok((process, link, caps)),
            Err(e) => {
                process.kill().await;
                Err(e)
            }
        }
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

/// A browser that dies sooner than this after starting counts as a quick failure.
const QUICK_FAILURE: Duration = Duration::from_secs(10);

/// Pause before restarting after `quick_failures` quick failures in a row: none for a
/// one-off crash (recovery speed matters), then doubling from 0.5 s up to 30 s so a
/// crash loop does not spin.
fn restart_backoff(quick_failures: u32) -> Duration {
    match quick_failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(250u64 << (n - 1).min(7)).min(Duration::from_secs(30)),
    }
}

/// The supervisor's loop; runs until `shutdown` is cancelled.
pub async fn supervise(agent: Arc<Agent>, base_url: String, shutdown: CancellationToken) {
    let sup = &agent.browser;
    let mut failed_in_a_row: u32 = 0;
    let mut quick_failures: u32 = 0;
    let mut down_since: Option<Instant> = None;
    let first_launch = Instant::now();
    while !shutdown.is_cancelled() {
        let generation = {
            let mut info = sup.lock_info();
            info.generation += 1;
            info.state = if info.generation == 1 {
                BrowserState::Starting
            } else {
                BrowserState::Restarting
            };
            info.generation
        };
        let (mut process, link, caps) = match sup.start(&base_url).await {
            Ok(started) => started,
            Err(e) => {
                failed_in_a_row += 1;
                let backoff = Duration::from_millis(250 * 2u64.pow(failed_in_a_row.min(7)))
                    .min(Duration::from_secs(30));
                tracing::error!(error = %e, ?backoff, "browser launch failed");
                {
                    let mut info = sup.lock_info();
                    info.failed_launches = failed_in_a_row;
                    info.last_launch_error = Some(e);
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        failed_in_a_row = 0;
        {
            let mut info = sup.lock_info();
            info.state = BrowserState::LoadingModels;
            info.pid = process.pid;
            info.version = process.version.clone();
            info.capabilities = caps;
            info.failed_launches = 0;
            info.cold_start_ms
                .get_or_insert(first_launch.elapsed().as_secs_f64() * 1e3);
        }
        tracing::info!(generation, pid = ?process.pid, version = %process.version, "browser up");
        sup.link.send_replace(Some(link.clone()));
        let up_since = Instant::now();

        let exit = {
            let mut reload = std::pin::pin!(agent.models.reload_all(&agent, &link));
            let mut reloaded = false;
            let mut watch = std::pin::pin!(sup.watch(&mut process, &link, &shutdown));
            loop {
                tokio::select! {
                    () = &mut reload, if !reloaded => {
                        reloaded = true;
                        let mut info = sup.lock_info();
                        info.state = BrowserState::Ready;
                        if let Some(t) = down_since.take() {
                            info.last_recovery_ms = Some(t.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    exit = &mut watch => break exit,
                }
            }
        };
        sup.link.send_replace(None);
        let detected = Instant::now();
        let err = match exit {
            Exit::Crashed => AgentError::browser(
                ErrorCategory::BrowserCrashed,
                "the browser crashed while the request was in flight",
            ),
            Exit::Hung => AgentError::browser(
                ErrorCategory::BrowserHung,
                format!(
                    "the page stopped answering heartbeats for {:?}; the browser is being restarted",
                    sup.timing.hang_timeout
                ),
            ),
            Exit::Shutdown => AgentError::ShuttingDown,
        };
        link.fail_all(err);
        process.kill().await;
        agent.models.mark_for_reload();
        if exit == Exit::Shutdown {
            break;
        }
        down_since = Some(detected);
        quick_failures = if up_since.elapsed() < QUICK_FAILURE {
            quick_failures + 1
        } else {
            0
        };
        let backoff = restart_backoff(quick_failures);
        let reason = if exit == Exit::Hung {
            "hung"
        } else {
            "crashed"
        };
        tracing::warn!(generation, reason, ?backoff, "browser lost; restarting");
        agent.stats.browser_restarted(reason);
        {
            let mut info = sup.lock_info();
            info.restarts += 1;
            info.last_restart_reason = Some(reason.to_owned());
            info.pid = None;
        }
        if !backoff.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {},
            }
        }
    }
    sup.lock_info().state = BrowserState::Stopped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_crash_restarts_at_once_and_a_crash_loop_backs_off() {
        assert_eq!(restart_backoff(0), Duration::ZERO);
        assert_eq!(restart_backoff(1), Duration::ZERO);
        assert_eq!(restart_backoff(2), Duration::from_millis(500));
        assert_eq!(restart_backoff(3), Duration::from_millis(1000));
        assert_eq!(restart_backoff(50), Duration::from_secs(30));
    }
}
