//! The part every browser shares: its main process spawned in a process group of its
//! own (so one signal reaches every process of this browser and none of another, the
//! standby, or the agent's), its output in a log file, its exit watched through the
//! [`Reaper`], and a SIGKILL of the whole group that is bounded in time.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::LaunchError;
use crate::reaper::{Exit, ExitWatch, Reaper};

/// How long a killed browser's main process may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Kills a process group when dropped, unless disarmed: a launch that fails or is
/// cancelled half-way leaves nothing running.
#[derive(Debug)]
struct GroupGuard(Option<Pid>, Arc<Reaper>);

impl GroupGuard {
    /// SIGKILLs the group, once; the keeper forgets it.
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
            self.1.release(pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A browser's main process, leader of its own process group.
#[derive(Debug)]
pub(super) struct Group {
    pid: Pid,
    exit: ExitWatch,
    guard: GroupGuard,
    log: PathBuf,
    /// The browser's name, for messages.
    name: &'static str,
}

impl Group {
    /// Spawns `cmd` as the leader of a new process group, its stdout and stderr going
    /// to `log`.
    pub(super) fn spawn(
        mut cmd: Command,
        log: PathBuf,
        reaper: &Arc<Reaper>,
        name: &'static str,
    ) -> Result<Self, LaunchError> {
        let file = std::fs::File::create(&log).map_err(|source| LaunchError::CreateLog {
            path: log.clone(),
            source,
        })?;
        let out = file.try_clone().map_err(LaunchError::ShareLog)?;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file);
        let (pid, exit) = reaper
            .spawn(&mut cmd)
            .map_err(|source| LaunchError::Spawn {
                program: Path::new(cmd.get_program()).display().to_string(),
                source,
            })?;
        Ok(Self {
            pid,
            exit,
            guard: {
                reaper.keep(pid);
                GroupGuard(Some(pid), reaper.clone())
            },
            log,
            name,
        })
    }

    /// The main process id (also the process group id).
    pub(super) fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Resolves when the main process has exited.
    pub(super) async fn exited(&self) -> Option<Exit> {
        self.exit.clone().exited().await
    }

    /// Whether the main process has exited.
    pub(super) fn has_exited(&self) -> bool {
        self.exit.get().is_some()
    }

    pub(super) fn log(&self) -> &Path {
        &self.log
    }

    /// `error` with the last lines the browser logged, to explain a failed launch.
    pub(super) fn explain(&self, error: LaunchError) -> LaunchError {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return error;
        }
        LaunchError::WithOutput {
            error: Box::new(error),
            browser: self.name,
            tail: lines[lines.len().saturating_sub(5)..].join("\n"),
        }
    }

    /// SIGKILLs the whole process group and waits (bounded) until the main process is
    /// reaped.
    pub(super) async fn kill(&mut self) {
        let started = Instant::now();
        self.guard.kill();
        if tokio::time::timeout(KILL_WAIT, self.exit.exited())
            .await
            .is_err()
        {
            tracing::error!(
                pid = self.pid.as_raw(),
                "a killed browser was not reaped within {KILL_WAIT:?}"
            );
        }
        tracing::debug!(elapsed = ?started.elapsed(), browser = self.name, "browser killed");
    }
}

/// Aborts a task when dropped, unless disarmed.
pub(super) struct AbortOnDrop(pub(super) Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    pub(super) fn disarm(mut self) {
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
