//! A trial's processes, found by walking down from its root through
//! `/proc/<pid>/task/<tid>/children`: the supervisor's sweep and the memory
//! sampler read only the trial's own processes, never every process on the
//! machine (listing all of `/proc` every 25 ms cost 5.85% of a core with 73
//! processes).

use std::collections::HashSet;
use std::sync::OnceLock;

/// Whether this kernel has `/proc/<pid>/task/<tid>/children`
/// (`CONFIG_PROC_CHILDREN`, on in every mainstream distribution kernel).
fn children_files() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| std::path::Path::new("/proc/thread-self/children").exists())
}

/// The children of `pid`, over all its threads: a child is listed under
/// the thread that forked it.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.filter_map(Result::ok) {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(parse_pids(&text));
        }
    }
    found
}

/// Pids separated by white space, as `children` and `cgroup.procs` list them.
pub(super) fn parse_pids(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.split_ascii_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
}

/// Every live (or not yet reaped) descendant of `root`, without `root`.
pub(super) fn descendants(root: u32) -> Vec<u32> {
    if !children_files() {
        return descendants_by_scan(root);
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for child in children(pid) {
            if child != root && seen.insert(child) {
                found.push(child);
                queue.push(child);
            }
        }
    }
    found
}

/// The parent pid (field 4) of a `/proc/<pid>/stat` line; the name (field
/// 2) may hold spaces and parentheses.
fn parent_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The slow way, for kernels without `children` files: one pass over
/// `/proc` for everyone's parent.
fn descendants_by_scan(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_of(&stat)?))
        })
        .collect();
    let mut found = Vec::new();
    let mut seen: HashSet<u32> = HashSet::from([root]);
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for &(pid, _) in parents.iter().filter(|(_, p)| *p == parent) {
            if seen.insert(pid) {
                found.push(pid);
                queue.push(pid);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_parent_is_read_past_a_name_with_spaces_and_parentheses() {
        assert_eq!(parent_of("42 (a) b (c)) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn the_walk_finds_grandchildren_and_escaped_ones_but_not_the_root() {
        // sh starts a grandchild in a session of its own (it left the
        // process group) and a plain one, then waits.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = child.id();
        let started = Instant::now();
        let mut found = Vec::new();
        while started.elapsed() < Duration::from_secs(5) {
            found = descendants(root);
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let by_scan = descendants_by_scan(root);
        for pid in &found {
            // SAFETY: our own grandchildren, still unreaped by sh.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(!found.contains(&root));
        let mut by_scan = by_scan;
        found.sort_unstable();
        by_scan.sort_unstable();
        assert_eq!(found, by_scan, "both walks see the same tree");
    }
}
