//! CPU time and memory of processes, from /proc (Linux): wsload's own CPU, and the CPU and RSS
//! of whole server process trees (a PID and all its descendants, e.g. nginx's master and
//! workers, or websockify and the process it forks per connection).

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second of the utime/stime fields (USER_HZ, 100 on every Linux ABI we run on).
pub const TICKS_PER_SEC: f64 = 100.0;
/// Bytes per page for /proc/PID/statm.
const PAGE_BYTES: u64 = 4096;

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TreeSample {
    /// utime + stime of all live processes of the tree, plus cutime + cstime (children that
    /// exited and were reaped), in seconds.
    pub cpu_s: f64,
    /// Sum of the resident set sizes, KiB (pages shared between processes count once per
    /// process).
    pub rss_kib: u64,
    /// Sum of the proportional set sizes, KiB (a shared page is divided among its sharers): the
    /// fairer measure for servers that fork (websockify) or share pages among workers (nginx).
    pub pss_kib: u64,
    /// Number of processes in the tree.
    pub procs: usize,
}

/// (ppid, utime + stime ticks, cutime + cstime ticks) from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields after the name, numbered as in proc(5) minus 3: state=0, ppid=1, utime=11, stime=12.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // CPU of children that exited and were waited for (websockify's per-connection processes).
    let cutime: u64 = f.get(13)?.parse().ok()?;
    let cstime: u64 = f.get(14)?.parse().ok()?;
    Some((ppid, utime + stime, cutime + cstime))
}

fn pss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * PAGE_BYTES / 1024)
}

/// CPU seconds (user + system) used by this process so far.
pub fn self_cpu_s() -> f64 {
    stat(std::process::id()).map_or(0.0, |(_, t, _)| t as f64 / TICKS_PER_SEC)
}

/// CPU seconds the whole machine has spent busy (all CPUs, everything but idle and iowait),
/// from /proc/stat: compared with the client's and servers' CPU, it shows how much of a run's
/// CPU went to processes outside the benchmark.
pub fn machine_busy_s() -> Option<f64> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle) as f64 / TICKS_PER_SEC)
}

/// Sample the trees rooted at `roots` (their union, each process counted once). None when no
/// root is alive.
pub fn sample_trees(roots: &[u32]) -> Option<TreeSample> {
    if roots.is_empty() {
        return None;
    }
    let mut procs: HashMap<u32, (u32, u64, u64)> = HashMap::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(st) = stat(pid) {
            procs.insert(pid, st);
        }
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &(ppid, _, _)) in &procs {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen = std::collections::HashSet::new();
    let mut tree: Vec<u32> = Vec::new();
    for &root in roots {
        if procs.contains_key(&root) && seen.insert(root) {
            tree.push(root);
        }
    }
    if tree.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < tree.len() {
        for &child in children
            .get(&tree[i])
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if seen.insert(child) {
                tree.push(child);
            }
        }
        i += 1;
    }
    let mut sample = TreeSample::default();
    for pid in tree {
        let Some(&(_, ticks, child_ticks)) = procs.get(&pid) else {
            continue;
        };
        let Some(rss) = rss_kib(pid) else { continue };
        sample.cpu_s += (ticks + child_ticks) as f64 / TICKS_PER_SEC;
        sample.rss_kib += rss;
        sample.pss_kib += pss_kib(pid).unwrap_or(rss);
        sample.procs += 1;
    }
    Some(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample_trees(&[std::process::id()]).unwrap();
        assert!(s.procs >= 1 && s.rss_kib > 0);
        assert!(self_cpu_s() >= 0.0);
        assert!(sample_trees(&[]).is_none());
    }
}
