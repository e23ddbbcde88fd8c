//! Browsers die with their agent, however the agent dies. An agent stopped in order
//! kills its browsers' process groups itself; one killed with SIGKILL (or by the OOM
//! killer) runs no code, and its browsers used to outlive it: under systemd, podman
//! without an init, on a laptop or in `webaccel up`, hundreds of MB per browser.
//!
//! So the agent starts a keeper: its own binary again, with [`ARG`], in a process group
//! of its own (a terminal's Ctrl-C does not reach it). The agent tells it over a pipe
//! which browser process groups exist (`+pgid`, `-pgid` lines); the kernel closes the
//! pipe when the agent dies, however it dies, and the keeper then SIGKILLs every group it
//! was told of and exits. A parent-death signal would do for the main browser process,
//! but its children (Firefox's content processes, its crash helper) take seconds to
//! notice; a whole group goes at once. The pipe also works where `prctl` does not.
//!
//! If the keeper itself is killed, the next write fails and the agent starts another,
//! telling it every group again.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{ChildStdin, Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;

/// The first argument that makes the agent's binary a keeper.
pub const ARG: &str = "--browser-keeper";

/// The keeper process's whole life: read the groups until the pipe closes, then kill
/// them all.
pub fn run() -> std::process::ExitCode {
    let mut groups = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (sign, number) = line.split_at(line.len().min(1));
        match (sign, number.trim().parse::<i32>()) {
            ("+", Ok(g)) if g > 1 => {
                groups.insert(g);
            }
            ("-", Ok(g)) => {
                groups.remove(&g);
            }
            _ => {}
        }
    }
    for g in groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    std::process::ExitCode::SUCCESS
}

/// The agent's side: the pipe to its keeper and the groups it was told of.
#[derive(Debug)]
pub struct Keeper {
    binary: std::path::PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pipe: Option<ChildStdin>,
    groups: BTreeSet<i32>,
}

impl Keeper {
    /// Starts a keeper from `binary` (the agent's own executable).
    pub fn start(binary: std::path::PathBuf) -> std::io::Result<Self> {
        let keeper = Self {
            binary,
            state: Mutex::new(State::default()),
        };
        let pipe = keeper.spawn()?;
        keeper.state.lock().pipe = Some(pipe);
        Ok(keeper)
    }

    fn spawn(&self) -> std::io::Result<ChildStdin> {
        // The agent's reaper collects it when it exits; the `Child` is not waited on.
        let mut child = Command::new(&self.binary)
            .arg(ARG)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the keeper's stdin was not piped"))
    }

    /// The keeper kills `pgid` if the agent dies.
    pub fn keep(&self, pgid: i32) {
        let mut state = self.state.lock();
        state.groups.insert(pgid);
        self.tell(&mut state, &format!("+{pgid}\n"));
    }

    /// `pgid` is gone (killed or exited): the keeper forgets it, so a later process that
    /// gets the same number is not killed.
    pub fn release(&self, pgid: i32) {
        let mut state = self.state.lock();
        state.groups.remove(&pgid);
        self.tell(&mut state, &format!("-{pgid}\n"));
    }

    /// Writes `line`; if the keeper is gone, starts another and tells it every group.
    fn tell(&self, state: &mut State, line: &str) {
        let written = state
            .pipe
            .as_mut()
            .is_some_and(|p| p.write_all(line.as_bytes()).is_ok());
        if written {
            return;
        }
        match self.spawn() {
            Ok(mut pipe) => {
                let all: String = state.groups.iter().map(|g| format!("+{g}\n")).collect();
                if let Err(e) = pipe.write_all(all.as_bytes()) {
                    tracing::warn!(error = %e, "the new browser keeper does not listen");
                }
                tracing::warn!("the browser keeper was gone; started another");
                state.pipe = Some(pipe);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a browser keeper: browsers would outlive a killed agent");
                state.pipe = None;
            }
        }
    }
}
