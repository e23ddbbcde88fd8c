//! Child processes and their exits. The agent makes itself a child subreaper (in a
//! container it is usually PID 1 anyway), so every Chromium process orphaned by a crash
//! (zygotes, renderers, the GPU process, whose parent died first) becomes its child.
//! Nobody else would collect them: without this they stay `<defunct>` for the pod's
//! life, one set per browser restart. The reaper collects every child on SIGCHLD (and
//! once a second, in case signals coalesce) and tells whoever spawned a process when
//! it exits, so a dead browser is noticed from its exit, not only from closed sockets.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How a process ended, as the reaper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exit code {c}"),
            Self::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Resolves when a spawned process has exited and been reaped.
#[derive(Debug, Clone)]
pub struct ExitWatch(watch::Receiver<Option<Exit>>);

impl ExitWatch {
    /// Waits for the exit.
    pub async fn exited(&mut self) -> Option<Exit> {
        match self.0.wait_for(Option::is_some).await {
            Ok(exit) => *exit,
            // The reaper is gone (the agent is stopping): treat the process as gone too.
            Err(_) => None,
        }
    }

    /// The exit, if it has happened.
    pub fn get(&self) -> Option<Exit> {
        *self.0.borrow()
    }
}

/// Collects every child of the agent; see the module documentation.
#[derive(Debug, Default)]
pub struct Reaper {
    /// Processes spawned through [`Reaper::spawn`] that someone waits on.
    watched: Mutex<HashMap<i32, watch::Sender<Option<Exit>>>>,
    /// Kills the browsers' process groups if the agent dies (see [`crate::keeper`]).
    keeper: Option<crate::keeper::Keeper>,
}

impl Reaper {
    /// Becomes a subreaper and starts collecting children on the current runtime.
    pub fn start() -> Arc<Self> {
        Self::start_with(None)
    }

    /// [`Self::start`], and a keeper (the agent's own `binary`) that kills the process
    /// groups given to [`Self::keep`] if the agent dies.
    pub fn start_keeping(binary: std::path::PathBuf) -> Arc<Self> {
        let keeper = crate::keeper::Keeper::start(binary)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the browser keeper: browsers would outlive a killed agent");
            })
            .ok();
        Self::start_with(keeper)
    }

    fn start_with(keeper: Option<crate::keeper::Keeper>) -> Arc<Self> {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphaned browser processes are left to init");
        }
        let reaper = Arc::new(Self {
            keeper,
            ..Self::default()
        });
        let weak = Arc::downgrade(&reaper);
        tokio::spawn(async move {
            let mut sigchld =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                match sigchld.as_mut() {
                    Some(s) => {
                        tokio::select! {
                            _ = s.recv() => {},
                            _ = tick.tick() => {},
                        }
                    }
                    None => {
                        tick.tick().await;
                    }
                }
                let Some(reaper) = weak.upgrade() else { return };
                reaper.reap_all();
            }
        });
        reaper
    }

    /// Spawns `cmd` and starts watching for its exit. The lock is held across the spawn
    /// so the reaper cannot collect the process before it is registered.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Pid, ExitWatch)> {
        let mut watched = self.lock();
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
        // Dropping a std `Child` neither kills nor waits: the reaper collects it.
        drop(child);
        let (tx, rx) = watch::channel(None);
        watched.insert(pid, tx);
        Ok((Pid::from_raw(pid), ExitWatch(rx)))
    }

    /// The process group `pgid` dies with the agent.
    pub fn keep(&self, pgid: Pid) {
        if let Some(k) = &self.keeper {
            k.keep(pgid.as_raw());
        }
    }

    /// The process group `pgid` is gone.
    pub fn release(&self, pgid: Pid) {
        if let Some(k) = &self.keeper {
            k.release(pgid.as_raw());
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, watch::Sender<Option<Exit>>>> {
        self.watched.lock()
    }

    /// Collects every child that has exited.
    pub fn reap_all(&self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
                Ok(status) => status,
            };
            let (pid, exit) = match status {
                WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, Exit::Signal(sig as i32)),
                // Stopped or continued children are still alive.
                _ => continue,
            };
            if let Some(tx) = self.lock().remove(&pid.as_raw()) {
                tx.send_replace(Some(exit));
            }
        }
    }
}
