//! Processes read from `/proc`, for tests and benches that kill, freeze or measure
//! browsers: one browser's processes and what each is (renderer, GPU process, ...), the
//! members of a process group, the processes whose command line names a folder, and
//! memory (RSS, PSS).

use nix::sys::signal::{Signal, kill, killpg};
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

impl Proc {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// The pids in `/proc`.
fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process, as far as it could be read.
pub fn all() -> Vec<Proc> {
    pids().into_iter().filter_map(read).collect()
}

/// One process, if it (still) exists.
pub fn read(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces or parentheses: fields start after the last ')'.
    let close = stat.rfind(')')?;
    let comm = stat[stat.find('(')? + 1..close].to_owned();
    let rest = &stat[close + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let pgid = fields.get(2)?.parse().ok()?;
    // Chromium rewrites its child processes' titles into one space-separated string.
    let kind = cmdline(pid)
        .split(' ')
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

/// The command line of `pid`, its arguments joined by spaces (empty once it is gone).
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// One browser's processes: those in the process group its main process leads, and
/// every descendant of the main process (an agent that does not give each browser a
/// group of its own still has them as a tree).
pub fn browser(main: i32) -> Vec<Proc> {
    let all = all();
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

/// The live processes of one browser of the given kind.
pub fn of_kind(main: i32, kind: &str) -> Vec<i32> {
    browser(main)
        .into_iter()
        .filter(|p| p.kind == kind && !p.is_zombie())
        .map(|p| p.pid)
        .collect()
}

/// Every live or zombie process descended from `root` (children re-parented to it after
/// their parent died included), `root` itself left out.
pub fn descendants(root: i32) -> Vec<Proc> {
    let mut found = browser(root);
    found.retain(|p| p.pid != root);
    found
}

/// CPU time (user and system) `pid` has used, in milliseconds; 0 once it is gone.
pub fn cpu_ms(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    // After the command name: state is field 0, utime 11 and stime 12 (in clock ticks).
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ: 100 on every Linux architecture (the kernel's ABI fixes it).
    (ticks(11) + ticks(12)) * 10.0
}

/// CPU milliseconds used by `root` and every live process descended from it.
pub fn tree_cpu_ms(root: i32) -> f64 {
    cpu_ms(root) + descendants(root).iter().map(|p| cpu_ms(p.pid)).sum::<f64>()
}

/// The live processes of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all()
        .into_iter()
        .filter(|p| p.pgid == pgid && !p.is_zombie())
        .map(|p| p.pid)
        .collect()
}

/// Live processes whose command line mentions `needle` (the agents and their browsers
/// name their cache folder).
pub fn mentioning(needle: &str) -> Vec<i32> {
    all()
        .into_iter()
        .filter(|p| !p.is_zombie() && cmdline(p.pid).contains(needle))
        .map(|p| p.pid)
        .collect()
}

/// SIGKILLs the process group of every live process whose command line mentions
/// `needle`, and the process itself: a SIGKILLed agent cannot stop its browsers, which
/// live in process groups of their own and would outlive the test.
pub fn kill_groups_mentioning(needle: &str) {
    let own_group = nix::unistd::getpgrp();
    for pid in mentioning(needle) {
        let pid = Pid::from_raw(pid);
        if let Ok(group) = nix::unistd::getpgid(Some(pid))
            && group != own_group
        {
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
}

pub fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Signals every process of a browser (its process group: the agent gives each browser
/// one).
pub fn signal_group(main: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(main), sig);
}

/// Proportional set size of one process (shared pages split among their sharers), in KiB.
pub fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Proportional set size of one browser's processes (the sum over processes is the
/// browser's real share of memory), in KiB.
pub fn browser_pss_kib(main: i32) -> u64 {
    browser(main).iter().map(|p| pss_kib(p.pid)).sum()
}

/// (VmRSS, VmHWM) of one process, in KiB.
pub fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The TCP ports process `pid` listens on (IPv4 and IPv6): its sockets found in
/// `/proc/net/tcp{,6}` in the LISTEN state.
pub fn listening_ports(pid: i32) -> Vec<u16> {
    // socket inode → port, for every listening socket of the machine's network namespace.
    let mut listening = std::collections::HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is field 9.
            if f.len() > 9 && f[3] == "0A" {
                let port = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                if let Some(port) = port {
                    listening.insert(f[9].to_owned(), port);
                }
            }
        }
    }
    let mut ports: Vec<u16> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            let inode = t.strip_prefix("socket:[")?.strip_suffix(']')?;
            listening.get(inode).copied()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
