//! Where the supervisor gets its browsers: a loop that starts them (with backoff when
//! launches fail or browsers die young), keeps one standby ready when asked to, watches
//! that standby like the active browser and replaces it in the background when it dies,
//! and hands a browser over on request.
//!
//! One loop starts every browser, so a crash of the active browser and of the standby
//! at once (an OOM kill of the whole pod's processes) leads to one cold start, not two
//! competing for the CPU. A new standby starts only once the active browser serves, so
//! it does not slow the active's model loads either.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use webaccel_api::Backoff;

use super::{Browser, BrowserState, BrowserSupervisor, Exit, Role};
use crate::models::Loader;

/// A standby page must answer a ping this fast to be trusted with traffic.
const STANDBY_CHECK: Duration = Duration::from_millis(500);

/// A browser that dies sooner than this after starting counts as a quick failure.
pub(super) const QUICK_FAILURE: Duration = Duration::from_secs(10);

/// Pause before a cold start after `quick_failures` quick failures in a row: none for a
/// one-off crash (recovery speed matters), then doubling from 0.25 s to 0.5 s, so a
/// crash loop does not spin while service still resumes within seconds once it ends
/// (a cold start with its model loads takes about 4 s on two cores).
pub(super) fn restart_backoff(quick_failures: u32) -> Duration {
    const RESTART: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_millis(500));
    match quick_failures {
        0 | 1 => Duration::ZERO,
        n => RESTART.delay(n - 2),
    }
}

/// Pause before the next attempt after `failed` launches in a row failed (a missing or
/// broken browser): doubling from 0.5 s up to 30 s.
fn launch_backoff(failed: u32) -> Duration {
    const LAUNCH: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    match failed {
        0 => Duration::ZERO,
        n => LAUNCH.delay(n - 1),
    }
}

/// A request for a started browser.
struct Request {
    reply: oneshot::Sender<Browser>,
    /// Crash-loop backoff to apply if a browser must be cold-started for this request.
    cold_delay: Duration,
}

/// The handle the supervisor holds.
pub(super) struct Spares {
    requests: mpsc::Sender<Request>,
    task: JoinHandle<()>,
}

impl Spares {
    pub(super) fn start(
        sup: Arc<BrowserSupervisor>,
        loader: Loader,
        base_url: String,
        shutdown: CancellationToken,
    ) -> Self {
        let (requests, rx) = mpsc::channel(1);
        let task = tokio::spawn(run(sup, loader, base_url, rx, shutdown));
        Self { requests, task }
    }

    /// A started browser: the standby if one is ready, else the next one started.
    /// `None` once the agent is shutting down.
    pub(super) async fn take(&self, cold_delay: Duration) -> Option<Browser> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request { reply, cold_delay })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Waits (bounded) for the loop to stop its standby and end.
    pub(super) async fn stop(self) {
        drop(self.requests);
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            tracing::error!("the standby browser loop did not stop within 10 s");
        }
    }
}

/// Waits for `fut` while taking in a request (if none is waiting yet); `None` when the
/// agent shuts down or the supervisor is gone.
async fn while_taking_requests<T>(
    fut: impl Future<Output = T>,
    requests: &mut mpsc::Receiver<Request>,
    waiting: &mut Option<Request>,
    shutdown: &CancellationToken,
) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            r = requests.recv(), if waiting.is_none() => match r {
                Some(r) => *waiting = Some(r),
                None => return None,
            },
            () = shutdown.cancelled() => return None,
        }
    }
}

async fn run(
    sup: Arc<BrowserSupervisor>,
    loader: Loader,
    base_url: String,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let progress = &sup.spare_progress;
    let keep_standby = sup.timing.standby;
    let mut waiting: Option<Request> = None;
    let mut failed_launches = 0u32;
    let mut quick_deaths = 0u32;
    'outer: loop {
        if waiting.is_none() {
            // Without a standby, browsers start only on request; with one, the next
            // standby starts once the active browser is serving.
            progress.idle("waiting until a browser is needed");
            let mut state = sup.state.subscribe();
            let standby_wanted = async {
                if keep_standby {
                    let _ = state.wait_for(|s| *s == BrowserState::Ready).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = standby_wanted => {},
                r = requests.recv() => match r {
                    Some(r) => waiting = Some(r),
                    None => break,
                },
                () = shutdown.cancelled() => break,
            }
        }
        let delay = launch_backoff(failed_launches)
            .max(restart_backoff(quick_deaths))
            .max(waiting.as_ref().map_or(Duration::ZERO, |w| w.cold_delay));
        if !delay.is_zero() {
            progress.enter(
                "backing off before a launch",
                delay + Duration::from_secs(1),
            );
            let pause = tokio::time::sleep(delay);
            if while_taking_requests(pause, &mut requests, &mut waiting, &shutdown)
                .await
                .is_none()
            {
                break;
            }
        }
        let started = Box::pin(sup.start(&base_url, progress));
        let Some(result) =
            while_taking_requests(started, &mut requests, &mut waiting, &shutdown).await
        else {
            break;
        };
        let mut browser = match result {
            Ok(b) => {
                failed_launches = 0;
                sup.lock_info().status.failed_launches = 0;
                b
            }
            Err(e) => {
                failed_launches += 1;
                tracing::error!(error = %e, failed_launches, "browser launch failed");
                let mut info = sup.lock_info();
                info.status.failed_launches = failed_launches;
                info.status.last_launch_error = Some(e.to_string());
                continue;
            }
        };
        if waiting.is_none() {
            // A standby: compile the serving models now, so switching to it is instant.
            progress.enter("preloading models into the standby", loader.timeout * 2);
            let preload = loader.preload(&browser.link);
            if while_taking_requests(preload, &mut requests, &mut waiting, &shutdown)
                .await
                .is_none()
            {
                sup.stop(browser, progress).await;
                break;
            }
        }
        let up_since = Instant::now();
        loop {
            if let Some(request) = waiting.take() {
                sup.lock_info().status.standby_pid = None;
                match request.reply.send(browser) {
                    Ok(()) => continue 'outer,
                    // The supervisor stopped waiting (shutdown): keep it as a standby.
                    Err(b) => browser = b,
                }
            }
            if !keep_standby {
                sup.stop(browser, progress).await;
                continue 'outer;
            }
            sup.lock_info().status.standby_pid = Some(browser.process.pid());
            progress.idle("standby ready");
            tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => {
                        waiting = Some(r);
                        // A standby that stopped answering (frozen) is of no use.
                        progress.enter("checking the standby", STANDBY_CHECK * 2);
                        if !browser.link.responsive(STANDBY_CHECK).await {
                            tracing::warn!("the standby browser does not answer; starting a fresh one");
                            sup.lock_info().status.standby_pid = None;
                            sup.stop(browser, progress).await;
                            continue 'outer;
                        }
                    }
                    None => {
                        sup.stop(browser, progress).await;
                        break 'outer;
                    }
                },
                exit = sup.watch(&mut browser, Role::Standby, &shutdown) => {
                    if exit == Exit::Shutdown {
                        sup.stop(browser, progress).await;
                        break 'outer;
                    }
                    tracing::warn!(?exit, "the standby browser was lost; replacing it");
                    {
                        let mut info = sup.lock_info();
                        info.status.standby_pid = None;
                        info.status.standby_replacements += 1;
                    }
                    sup.stop(browser, progress).await;
                    quick_deaths = if up_since.elapsed() < QUICK_FAILURE { quick_deaths + 1 } else { 0 };
                    continue 'outer;
                }
            }
        }
    }
    sup.lock_info().status.standby_pid = None;
    progress.idle("stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_crash_restarts_at_once_and_a_crash_loop_backs_off_up_to_half_a_second() {
        assert_eq!(restart_backoff(0), Duration::ZERO);
        assert_eq!(restart_backoff(1), Duration::ZERO);
        assert_eq!(restart_backoff(2), Duration::from_millis(250));
        assert_eq!(restart_backoff(3), Duration::from_millis(500));
        assert_eq!(restart_backoff(50), Duration::from_millis(500));
    }

    #[test]
    fn failed_launches_back_off_up_to_30_s() {
        assert_eq!(launch_backoff(0), Duration::ZERO);
        assert_eq!(launch_backoff(1), Duration::from_millis(500));
        assert_eq!(launch_backoff(3), Duration::from_secs(2));
        assert_eq!(launch_backoff(100), Duration::from_secs(30));
    }
}
