//! The processes of an agent's browsers, read from `/proc`, for fault injection: which
//! belong to which browser and what each one is (renderer, GPU process, ...).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub state: char,
    /// The command name (at most 15 characters, as the kernel keeps it).
    pub comm: String,
    /// Chromium's `--type=` (`renderer`, `gpu-process`, `zygote`, `utility`), empty
    /// for the main (browser) process.
    pub kind: String,
}

/// One browser's processes: those in the process group its main process leads, and
/// every descendant of the main process (an agent that does not give each browser a
/// group of its own still has them as a tree).
pub fn browser(main: i32) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<Proc> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read)
        .collect();
    let mut members: Vec<i32> = vec![main];
    let mut grew = true;
    while grew {
        grew = false;
        for p in &all {
            if !members.contains(&p.pid) && (p.pgid == main || members.contains(&p.ppid)) {
                members.push(p.pid);
                grew = true;
            }
        }
    }
    all.into_iter()
        .filter(|p| members.contains(&p.pid))
        .collect()
}

fn read(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces or parentheses: fields start after the last ')'.
    let close = stat.rfind(')')?;
    let comm = stat[stat.find('(')? + 1..close].to_owned();
    let rest = &stat[close + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let pgid = fields.get(2)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // Chromium rewrites its child processes' titles into one space-separated string.
    let kind = cmdline
        .split(|&b| b == 0 || b == b' ')
        .filter_map(|a| std::str::from_utf8(a).ok())
        .find_map(|a| a.strip_prefix("--type="))
        .unwrap_or_default()
        .to_owned();
    Some(Proc {
        pid,
        ppid,
        pgid,
        state,
        comm,
        kind,
    })
}

/// The live processes of one browser of the given kind.
pub fn of_kind(main: i32, kind: &str) -> Vec<i32> {
    browser(main)
        .into_iter()
        .filter(|p| p.kind == kind && p.state != 'Z')
        .map(|p| p.pid)
        .collect()
}

pub fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Every live or zombie process descended from `root` (children re-parented to it after
/// their parent died included), `root` itself left out.
pub fn descendants(root: i32) -> Vec<Proc> {
    let mut found = browser(root);
    found.retain(|p| p.pid != root);
    found
}

/// Proportional set size of one browser's processes (shared pages split among their
/// sharers, so the sum over processes is the browser's real share of memory), in KiB.
pub fn browser_pss_kib(main: i32) -> u64 {
    browser(main)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}
