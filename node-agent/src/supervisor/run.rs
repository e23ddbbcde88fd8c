//! The supervisor's loop: one active browser, an optional standby to switch to, and
//! restarts with backoff when browsers keep failing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use webaccel_api::ErrorCategory;

use super::{Browser, BrowserState, Exit};
use crate::agent::Agent;
use crate::error::AgentError;

/// A browser that dies sooner than this after starting counts as a quick failure.
const QUICK_FAILURE: Duration = Duration::from_secs(10);

/// How long a standby page may take to answer a ping before it is trusted with traffic.
const STANDBY_CHECK: Duration = Duration::from_millis(500);

/// Pause before a cold start after `quick_failures` quick failures in a row: none for a
/// one-off crash (recovery speed matters), then doubling from 0.5 s up to 30 s so a
/// crash loop does not spin.
fn restart_backoff(quick_failures: u32) -> Duration {
    match quick_failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(250u64 << (n - 1).min(7)).min(Duration::from_secs(30)),
    }
}

/// Pause before the next attempt after `failed` launches in a row failed.
fn launch_backoff(failed: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(failed.min(7))).min(Duration::from_secs(30))
}

type StandbyTask = JoinHandle<Result<Browser, String>>;

fn spawn_standby(agent: &Arc<Agent>, base_url: &str) -> StandbyTask {
    let (agent, base_url) = (agent.clone(), base_url.to_owned());
    tokio::spawn(async move {
        let started = agent.browser.start(&base_url).await;
        match &started {
            Ok(b) => {
                agent.models.preload(&agent, &b.link).await;
                agent.browser.lock_info().standby_pid = b.process.pid;
            }
            Err(e) => tracing::warn!(error = %e, "standby browser failed to start"),
        }
        started
    })
}

/// The standby browser, once it is up and still answering; `None` if there is none.
async fn take_standby(agent: &Agent, standby: &mut Option<StandbyTask>) -> Option<Browser> {
    let browser = standby.take()?.await.ok()?.ok()?;
    agent.browser.lock_info().standby_pid = None;
    if browser.link.responsive(STANDBY_CHECK).await {
        Some(browser)
    } else {
        tracing::warn!("standby browser does not answer; starting a fresh one");
        agent.browser.stop(browser).await;
        None
    }
}

/// Loads the models into `browser` and watches it until it fails or the agent stops.
async fn serve(
    agent: &Agent,
    browser: &mut Browser,
    shutdown: &CancellationToken,
    down_since: &mut Option<Instant>,
) -> Exit {
    let sup = &agent.browser;
    let link = browser.link.clone();
    let mut reload = std::pin::pin!(agent.models.reload_all(agent, &link));
    let mut reloaded = false;
    let mut watch = std::pin::pin!(sup.watch(&mut browser.process, &link, shutdown));
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
            exit = &mut watch => return exit,
        }
    }
}

/// The supervisor's loop; runs until `shutdown` is cancelled.
pub async fn supervise(agent: Arc<Agent>, base_url: String, shutdown: CancellationToken) {
    let sup = &agent.browser;
    let mut failed_in_a_row: u32 = 0;
    let mut quick_failures: u32 = 0;
    let mut down_since: Option<Instant> = None;
    let mut restart_delay = Duration::ZERO;
    let mut standby: Option<StandbyTask> = None;
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
        // Switching to a ready standby costs nothing, so it happens at once; only a cold
        // start waits out the crash-loop backoff.
        let standby_browser = take_standby(&agent, &mut standby).await;
        if standby_browser.is_none() && !restart_delay.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(restart_delay) => {},
            }
        }
        let mut browser = match standby_browser {
            Some(b) => b,
            None => match sup.start(&base_url).await {
                Ok(b) => b,
                Err(e) => {
                    failed_in_a_row += 1;
                    restart_delay = launch_backoff(failed_in_a_row);
                    tracing::error!(error = %e, backoff = ?restart_delay, "browser launch failed");
                    let mut info = sup.lock_info();
                    info.failed_launches = failed_in_a_row;
                    info.last_launch_error = Some(e);
                    continue;
                }
            },
        };
        failed_in_a_row = 0;
        {
            let mut info = sup.lock_info();
            info.state = BrowserState::LoadingModels;
            info.pid = browser.process.pid;
            info.version = browser.process.version.clone();
            info.capabilities = browser.capabilities.clone();
            info.failed_launches = 0;
            info.cold_start_ms.get_or_insert(browser.start_ms);
        }
        tracing::info!(generation, pid = ?browser.process.pid, version = %browser.process.version, "browser serving");
        agent
            .recorder
            .set_browser(&browser.process.version, &browser.capabilities);
        agent
            .recorder
            .browser_event("started", "", browser.start_ms, &browser.capabilities);
        let capabilities = browser.capabilities.clone();
        sup.link.send_replace(Some(browser.link.clone()));
        if sup.timing.standby && standby.is_none() {
            standby = Some(spawn_standby(&agent, &base_url));
        }
        let up_since = Instant::now();

        let exit = serve(&agent, &mut browser, &shutdown, &mut down_since).await;
        sup.link.send_replace(None);
        let detected = Instant::now();
        browser.link.fail_all(match exit {
            Exit::Crashed => AgentError::browser(
                ErrorCategory::BrowserCrashed,
                "the browser crashed while the request was in flight",
            ),
            Exit::Hung => AgentError::browser(
                ErrorCategory::BrowserHung,
                format!(
                    "the page stopped answering heartbeats for {:?}; the browser is being replaced",
                    sup.timing.hang_timeout
                ),
            ),
            Exit::Shutdown => AgentError::ShuttingDown,
        });
        sup.stop(browser).await;
        let event = match exit {
            Exit::Crashed => "crashed",
            Exit::Hung => "hung",
            Exit::Shutdown => "stopped",
        };
        agent.recorder.browser_event(event, "", 0.0, &capabilities);
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
        restart_delay = restart_backoff(quick_failures);
        let reason = if exit == Exit::Hung {
            "hung"
        } else {
            "crashed"
        };
        tracing::warn!(generation, reason, "browser lost; replacing it");
        agent.stats.browser_restarted(reason);
        let mut info = sup.lock_info();
        info.restarts += 1;
        info.last_restart_reason = Some(reason.to_owned());
        info.pid = None;
    }
    if let Some(task) = standby
        && let Ok(Ok(b)) = task.await
    {
        sup.stop(b).await;
    }
    let mut info = sup.lock_info();
    info.state = BrowserState::Stopped;
    info.standby_pid = None;
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

    #[test]
    fn failed_launches_back_off_up_to_30_s() {
        assert_eq!(launch_backoff(1), Duration::from_millis(500));
        assert_eq!(launch_backoff(3), Duration::from_secs(2));
        assert_eq!(launch_backoff(100), Duration::from_secs(30));
    }
}
