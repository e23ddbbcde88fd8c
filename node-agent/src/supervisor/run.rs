//! The supervisor's loop: take a started browser from the spare loop, load the models,
//! watch it until it fails, fail what was in flight, kill it, and go again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use webaccel_api::ErrorCategory;

use super::spare::{QUICK_FAILURE, Spares, restart_backoff};
use super::{Browser, BrowserState, BrowserSupervisor, Exit, Host, Role};
use crate::error::AgentError;

/// Bound on waiting for a browser from the spare loop: a launch (at most 45 s), a page
/// hello (20 s) and the longest launch backoff (30 s), with room to spare.
const BROWSER_WAIT: Duration = Duration::from_secs(120);

/// Loads the models into `browser` and watches it until it fails or the agent stops.
async fn serve(
    sup: &BrowserSupervisor,
    host: &Host,
    browser: &mut Browser,
    shutdown: &CancellationToken,
    down_since: &mut Option<Instant>,
) -> Exit {
    let link = browser.link.clone();
    let mut reload = std::pin::pin!(host.loader.reload_all(&link));
    let mut reloaded = false;
    let mut watch = std::pin::pin!(sup.watch(browser, Role::Active, shutdown));
    loop {
        tokio::select! {
            () = &mut reload, if !reloaded => {
                reloaded = true;
                sup.set_state(BrowserState::Ready);
                if let Some(t) = down_since.take() {
                    sup.lock_info().status.last_recovery_ms = Some(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            exit = &mut watch => return exit,
        }
    }
}

fn in_flight_error(exit: Exit) -> AgentError {
    match exit {
        Exit::Crashed => AgentError::browser(
            ErrorCategory::BrowserCrashed,
            "the browser crashed while the request was in flight",
        ),
        Exit::GpuLost => AgentError::browser(
            ErrorCategory::BrowserCrashed,
            "the browser lost its GPU device while the request was in flight",
        ),
        Exit::Hung(silent) => AgentError::browser(
            ErrorCategory::BrowserHung,
            format!(
                "the page stopped answering heartbeats for {:.1}s; the browser is being replaced",
                silent.as_secs_f64()
            ),
        ),
        Exit::Shutdown => AgentError::ShuttingDown,
    }
}

/// The supervisor's loop; runs until `shutdown` is cancelled.
pub async fn supervise(
    sup: Arc<BrowserSupervisor>,
    host: Host,
    base_url: String,
    shutdown: CancellationToken,
) {
    let progress = &sup.active_progress;
    let spares = Spares::start(sup.clone(), host.loader.clone(), base_url, shutdown.clone());
    let mut quick_failures: u32 = 0;
    let mut down_since: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let generation = {
            let mut info = sup.lock_info();
            info.status.generation += 1;
            info.status.generation
        };
        sup.set_state(if generation == 1 {
            BrowserState::Starting
        } else {
            BrowserState::Restarting
        });
        progress.enter("waiting for a browser", BROWSER_WAIT);
        let Some(mut browser) = spares.take(restart_backoff(quick_failures)).await else {
            break;
        };
        {
            let mut info = sup.lock_info();
            info.status.pid = Some(browser.process.pid());
            info.status.version = browser.process.version().to_owned();
            info.capabilities = Some(browser.capabilities.clone());
            info.status.cold_start_ms.get_or_insert(browser.start_ms);
        }
        sup.set_state(BrowserState::LoadingModels);
        tracing::info!(generation, pid = browser.process.pid(), version = %browser.process.version(), "browser serving");
        host.recorder.set_browser(
            browser.process.kind().as_str(),
            browser.process.version(),
            &browser.capabilities,
        );
        host.recorder
            .browser_event("started", "", browser.start_ms, &browser.capabilities);
        let capabilities = browser.capabilities.clone();
        sup.link.send_replace(Some(browser.link.clone()));
        let up_since = Instant::now();

        let exit = serve(&sup, &host, &mut browser, &shutdown, &mut down_since).await;
        sup.link.send_replace(None);
        let detected = Instant::now();
        browser.link.fail_all(in_flight_error(exit));
        sup.stop(browser, progress).await;
        let event = match exit {
            Exit::Crashed => "crashed",
            Exit::GpuLost => "gpu_lost",
            Exit::Hung(_) => "hung",
            Exit::Shutdown => "stopped",
        };
        host.recorder.browser_event(event, "", 0.0, &capabilities);
        host.loader.models.mark_for_reload();
        if exit == Exit::Shutdown {
            break;
        }
        down_since = Some(detected);
        quick_failures = if up_since.elapsed() < QUICK_FAILURE {
            quick_failures + 1
        } else {
            0
        };
        tracing::warn!(generation, reason = event, "browser lost; replacing it");
        host.stats.browser_restarted(event);
        let mut info = sup.lock_info();
        info.status.restarts += 1;
        info.status.last_restart_reason = Some(event.to_owned());
        info.status.pid = None;
    }
    progress.idle("stopped");
    spares.stop().await;
    sup.set_state(BrowserState::Stopped);
}
