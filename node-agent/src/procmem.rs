//! The memory of the agent's browsers, as the kernel counts it: the proportional set size
//! (PSS, shared pages split between their sharers) summed over every process below the
//! agent: the browsers it launched (active and standby) with their renderer, GPU and
//! utility processes. A model's memory is the growth of that sum across its load
//! ([`crate::models::Loader`]); the browser's total is in `/v1/stats`. Placement packs
//! models into a browser's memory budget by these figures.
//!
//! Linux only (`/proc`); elsewhere every figure is `None`, and placement then spreads
//! models as if memory were unlimited.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A total read within this long is reused: `/v1/stats` is polled every second or so and
/// reading every process's `smaps_rollup` costs a walk of its page tables.
const FRESH: Duration = Duration::from_secs(2);

static LAST: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// PSS of every process below this one, in bytes; a recent reading if there is one.
pub fn browsers_bytes() -> Option<u64> {
    let recent = *LAST.lock();
    match recent {
        Some((at, bytes)) if at.elapsed() < FRESH => Some(bytes),
        _ => browsers_bytes_now(),
    }
}

/// PSS of every process below this one, read now (across a model's load).
pub fn browsers_bytes_now() -> Option<u64> {
    let below = descendants(std::process::id())?;
    // The browser keeper (see `crate::keeper`) is below the agent too, but is no browser.
    let keeper = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(crate::keeper::ARG.as_bytes()))
    };
    let bytes = below
        .iter()
        .filter(|&&pid| !keeper(pid))
        .filter_map(|&pid| pss_bytes(pid))
        .sum();
    *LAST.lock() = Some((Instant::now(), bytes));
    Some(bytes)
}

/// Every process whose chain of parents reaches `root` (not `root` itself).
fn descendants(root: u32) -> Option<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            todo.push(c);
        }
    }
    Some(out)
}

/// The parent of `pid`, from `/proc/<pid>/stat` (the field after the command, which may
/// itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// `pid`'s PSS (`smaps_rollup`), else its RSS (`status`), in bytes.
fn pss_bytes(pid: u32) -> Option<u64> {
    let field = |file: &str, key: &str| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    field("smaps_rollup", "Pss:").or_else(|| field("status", "VmRSS:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_process_is_found_and_its_memory_counted() {
        let Ok(mut child) = std::process::Command::new("sleep").arg("5").spawn() else {
            return; // no `sleep` here: nothing to check
        };
        let below = descendants(std::process::id()).unwrap_or_default();
        let found = below.contains(&child.id());
        let bytes = browsers_bytes_now();
        // Within the freshness window the reading is reused (and taking it twice must
        // not deadlock).
        let again = browsers_bytes();
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "{below:?}");
        assert!(bytes.is_some_and(|b| b > 0), "{bytes:?}");
        assert_eq!(again, bytes);
    }
}
