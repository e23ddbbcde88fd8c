//! A browser's memory as the kernel accounts it: the proportional set size (shared pages
//! split among their sharers, so browsers that share libraries are not each charged in
//! full) summed over the browser's processes, read from `/proc/<pid>/smaps_rollup`.
//! The processes are the browser's main process, every process in the group it leads
//! and their descendants (zygotes, renderers, the GPU and utility processes).

/// `(pid, parent pid, process group)` of every live process.
fn processes() -> Vec<(i32, i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces or parentheses: fields start after the
            // last ')'.
            let rest = stat.get(stat.rfind(')')? + 2..)?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() == Some(&"Z") {
                return None;
            }
            Some((
                pid,
                fields.get(1)?.parse().ok()?,
                fields.get(2)?.parse().ok()?,
            ))
        })
        .collect()
}

/// The PIDs of the browser whose main process is `main`.
pub fn browser_pids(main: i32) -> Vec<i32> {
    let all = processes();
    let mut members = vec![main];
    let mut grew = true;
    while grew {
        grew = false;
        for &(pid, ppid, pgid) in &all {
            if !members.contains(&pid) && (pgid == main || members.contains(&ppid)) {
                members.push(pid);
                grew = true;
            }
        }
    }
    members.retain(|m| all.iter().any(|p| p.0 == *m));
    members
}

/// The proportional set size of the browser whose main process is `main`, in KiB.
pub fn browser_pss_kib(main: i32) -> u64 {
    browser_pids(main)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}
