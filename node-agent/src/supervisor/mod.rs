//! Keeps one browser serving: gets a started browser from [`spare`], loads the models,
//! pings the page, and on a crash or a hang fails what was in flight (with a retryable
//! category), kills the browser's whole process group and switches to the next one.
//!
//! A standby browser (launched, runtime started, serving models preloaded) is kept ready
//! by default and watched like the active one, so a replacement only has to be switched
//! to: recovery takes well under a second instead of a cold start of several.
//!
//! Every step is bounded, and each of the two loops (this one and the spare's) stamps
//! its [`Progress`] with the bound of the step it is in. If a loop is ever stuck past
//! its bound, `/healthz` fails with the stage, so the kubelet restarts the container as
//! the last resort instead of leaving a live-looking agent that never serves again.

mod progress;
mod run;
mod spare;

pub use progress::Stall;
pub use run::supervise;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocket;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Fuse, FusedFuture as _};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use webaccel_api::agent::{BrowserStatus, Capabilities};

use crate::browser::{BrowserProcess, LaunchConfig, LaunchError, LaunchTimeouts};
use crate::models::Loader;
use crate::page::{HelloError, PageLink};
use crate::reaper::Reaper;
use crate::recorder::Recorder;
use crate::stats::Stats;
use progress::Progress;
pub use webaccel_api::agent::BrowserState;

/// What the supervisor's loops need from the rest of the agent: the models to load
/// into every browser that takes over (and to preload into the standby), and where a
/// browser's start, loss and restart are reported.
#[derive(Debug, Clone)]
pub struct Host {
    pub loader: Loader,
    pub recorder: Arc<Recorder>,
    pub stats: Arc<Stats>,
}

/// Why a browser could not be started and serving: it failed to launch, or its page
/// did not connect back and say hello.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("the page's socket was dropped")]
    SocketDropped,
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error("the runtime page did not say hello within {0:?}")]
    NoHello(Duration),
    #[error("{browser} exited before its page said hello ({status})")]
    ExitedBeforeHello {
        browser: &'static str,
        status: String,
    },
}

/// What the supervisor knows about the current browser, as reported by `/v1/stats`
/// (`status`) and `/v1/capabilities`.
#[derive(Debug, Clone, Default)]
pub struct BrowserInfo {
    pub status: BrowserStatus,
    /// Served by `/v1/capabilities`; `None` until a page has reported them.
    pub capabilities: Option<Capabilities>,
}

/// A started browser whose page has connected back.
#[derive(Debug)]
struct Browser {
    process: BrowserProcess,
    link: Arc<PageLink>,
    capabilities: Capabilities,
    /// From launch to the page's hello.
    start_ms: f64,
}

/// Why the supervisor stopped watching a browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Crashed,
    /// Silent for this long (past the limit then in force).
    Hung(Duration),
    GpuLost,
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
    /// Silence tolerated from a freshly started page before it says hello.
    pub hello_timeout: Duration,
    pub launch: LaunchTimeouts,
    /// How far past a step's bound the supervisor may be before `/healthz` fails.
    pub stall_grace: Duration,
    /// WebAssembly threads of each onnxruntime-web instance in the page.
    pub wasm_threads: u32,
    /// onnxruntime-web instances (Web Workers) in the page; 1: the page's own thread.
    pub page_workers: u32,
    /// The onnxruntime-web build wasm sessions run on (see `--wasm-build`).
    pub wasm_build: crate::config::WasmBuild,
    /// Keep a second browser started and idle, to switch to when the first fails.
    pub standby: bool,
}

#[derive(Debug)]
pub struct BrowserSupervisor {
    launch: LaunchConfig,
    timing: SupervisorTiming,
    reaper: Arc<Reaper>,
    link: watch::Sender<Option<Arc<PageLink>>>,
    state: watch::Sender<BrowserState>,
    /// Secrets of live pages, and for pages still starting, where to hand their socket.
    pages: Mutex<HashMap<String, Option<oneshot::Sender<WebSocket>>>>,
    info: Mutex<BrowserInfo>,
    hang_request: Notify,
    /// The active loop's and the spare loop's progress, for the watchdog.
    active_progress: Progress,
    spare_progress: Progress,
}

impl BrowserSupervisor {
    pub fn new(launch: LaunchConfig, timing: SupervisorTiming, reaper: Arc<Reaper>) -> Self {
        Self {
            launch,
            timing,
            reaper,
            link: watch::channel(None).0,
            state: watch::channel(BrowserState::Starting).0,
            pages: Mutex::new(HashMap::new()),
            info: Mutex::new(BrowserInfo::default()),
            hang_request: Notify::new(),
            active_progress: Progress::new("starting"),
            spare_progress: Progress::new("starting"),
        }
    }

    /// The live page link, if the browser is up.
    pub fn link(&self) -> Option<Arc<PageLink>> {
        self.link.borrow().clone().filter(|l| !l.is_closed())
    }

    /// Follows the serving page's link (for work that outlives one request: a model's
    /// batch runner).
    pub fn link_watch(&self) -> watch::Receiver<Option<Arc<PageLink>>> {
        self.link.subscribe()
    }

    pub fn info(&self) -> BrowserInfo {
        self.lock_info().clone()
    }

    /// The capabilities the page reported, once a browser has started; `None` before.
    pub fn capabilities(&self) -> Option<Capabilities> {
        self.lock_info().capabilities.clone()
    }

    /// A supervisor loop stuck past the bound of its current step, if any.
    pub fn stalled(&self) -> Option<Stall> {
        let grace = self.timing.stall_grace;
        self.active_progress
            .stalled(grace, "browser supervisor")
            .or_else(|| self.spare_progress.stalled(grace, "standby browser loop"))
    }

    fn set_state(&self, state: BrowserState) {
        self.lock_info().status.state = state;
        self.state.send_replace(state);
    }

    fn lock_info(&self) -> MutexGuard<'_, BrowserInfo> {
        self.info.lock()
    }

    fn lock_pages(&self) -> MutexGuard<'_, HashMap<String, Option<oneshot::Sender<WebSocket>>>> {
        self.pages.lock()
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
    /// Every step is bounded; on failure nothing of the browser is left running.
    async fn start(&self, base_url: &str, progress: &Progress) -> Result<Browser, StartError> {
        let started = Instant::now();
        let secret = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        self.lock_pages().insert(secret.clone(), Some(tx));
        let url = format!(
            "{base_url}/page/index.html?s={secret}&threads={}&build={}&workers={}&hang_ms={}&load_hang_ms={}",
            self.timing.wasm_threads,
            self.timing.wasm_build.as_str(),
            self.timing.page_workers,
            self.timing.hang_timeout.as_millis(),
            self.timing.load_hang_timeout.as_millis(),
        );
        let launch = &self.timing.launch;
        let result = async {
            progress.enter("launching a browser", launch.endpoint + 3 * launch.command);
            let process = BrowserProcess::launch(&self.launch, &url, &self.reaper, *launch).await?;
            progress.enter("waiting for the page", self.timing.hello_timeout);
            let hello = async {
                let socket = rx.await.map_err(|_| StartError::SocketDropped)?;
                Ok(PageLink::accept(socket, secret.clone()).await?)
            };
            let outcome = tokio::select! {
                r = tokio::time::timeout(self.timing.hello_timeout, hello) => match r {
                    Ok(r) => r,
                    Err(_) => Err(StartError::NoHello(self.timing.hello_timeout)),
                },
                e = process.exited() => Err(StartError::ExitedBeforeHello {
                    browser: self.launch.kind.display_name(),
                    status: e.map_or_else(|| "unknown status".to_owned(), |e| e.to_string()),
                }),
            };
            match outcome {
                Ok((link, capabilities)) => Ok(Browser {
                    process,
                    link,
                    capabilities,
                    start_ms: started.elapsed().as_secs_f64() * 1e3,
                }),
                Err(e) => {
                    progress.enter("killing a browser that failed to start", kill_bound());
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
    async fn stop(&self, browser: Browser, progress: &Progress) {
        progress.enter("killing a browser", kill_bound());
        self.forget_page(browser.link.secret());
        browser.process.kill().await;
    }

    /// Watches a browser until it dies, hangs, loses its GPU, or the agent shuts down:
    /// the page answers pings (its renderer and network process are alive) and the
    /// browser process answers its control protocol, DevTools or WebDriver BiDi (its
    /// main process is not frozen). The active
    /// browser also stamps the watchdog and takes fault injections; a standby is watched
    /// the same way, so a frozen standby is replaced before anyone needs it.
    async fn watch(&self, browser: &mut Browser, role: Role, shutdown: &CancellationToken) -> Exit {
        let mut tick = tokio::time::interval(self.timing.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let link = browser.link.clone();
        let process = &browser.process;
        let watching_since = Instant::now();
        let mut control_answered = watching_since;
        // One control-protocol probe at a time; a frozen browser leaves it pending.
        let mut probe: Fuse<BoxFuture<'_, bool>> = Fuse::terminated();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Exit::Shutdown,
                () = link.closed() => return Exit::Crashed,
                () = process.control_closed() => return Exit::Crashed,
                _ = process.exited() => return Exit::Crashed,
                () = link.gpu_lost() => return Exit::GpuLost,
                ok = &mut probe, if !probe.is_terminated() => {
                    if ok {
                        control_answered = Instant::now();
                    }
                }
                () = self.hang_request.notified(), if role == Role::Active => {
                    tracing::warn!("injecting a busy loop into the page (debug endpoint)");
                    let injected =
                        tokio::time::timeout(Duration::from_secs(5), process.inject_hang()).await;
                    if !matches!(injected, Ok(Ok(()))) {
                        tracing::error!(?injected, "hang injection failed");
                    }
                }
                _ = tick.tick() => {
                    // One run of a model blocks the page's thread for as long as it takes:
                    // a model whose runs take longer than the hang timeout (a speech
                    // encoder over 30 s of audio on wasm) is given five times its slowest
                    // measured run before its page counts as hung (a run under load, its
                    // CPUs shared with the requests around it, took 2-3 times its
                    // warm-up).
                    let limit = if link.control_in_progress() {
                        self.timing.load_hang_timeout
                    } else {
                        self.timing.hang_timeout.max(link.slowest_run() * 5)
                    };
                    if role == Role::Active {
                        self.active_progress.enter("serving", limit + self.timing.heartbeat_interval);
                    }
                    // Silence counts from when this watch began: nobody pinged before.
                    let silent = link.since_pong().min(watching_since.elapsed());
                    if silent > limit {
                        tracing::warn!(?role, ?silent, ?limit, "the page stopped answering heartbeats");
                        return Exit::Hung(silent);
                    }
                    if control_answered.elapsed() > self.timing.hang_timeout {
                        tracing::warn!(?role, silent = ?control_answered.elapsed(), "the browser's main process stopped answering its control protocol");
                        return Exit::Hung(control_answered.elapsed());
                    }
                    link.ping();
                    if probe.is_terminated() {
                        probe = process.control_ping().boxed().fuse();
                    }
                }
            }
        }
    }
}

/// Which browser a watch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Active,
    Standby,
}

/// The longest a kill can take: the group signal, then waiting for the reaper.
fn kill_bound() -> Duration {
    Duration::from_secs(6)
}
