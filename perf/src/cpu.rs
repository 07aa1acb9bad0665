//! CPU accounting from procfs: the switch process (utime+stime of /proc/PID/stat, all its
//! threads) and the whole machine (/proc/stat), as deltas over one test.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clk_tck() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&v: &u64| v > 0)
            .unwrap_or(100)
    })
}

pub fn ncpu() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// utime+stime (ticks) of a process, all threads included.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_ticks(&s)
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    // Fields after "pid (comm) ": state is field 3, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total, steal) ticks of the machine, from the first line of /proc/stat.
fn machine_ticks() -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(s.lines().next()?)
}

fn parse_machine_ticks(line: &str) -> Option<(u64, u64, u64)> {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some((busy, busy + v[3] + v[4], v[7]))
}

/// A point-in-time CPU snapshot.
pub struct Snap {
    at: Instant,
    switch_ticks: Option<u64>,
    machine: Option<(u64, u64, u64)>,
}

/// Snapshot of the machine and of the switch processes `pids` (summed; None when empty or one
/// is gone).
pub fn snap(pids: &[u32]) -> Snap {
    let switch_ticks = if pids.is_empty() {
        None
    } else {
        pids.iter().map(|p| process_ticks(*p)).sum()
    };
    Snap {
        at: Instant::now(),
        switch_ticks,
        machine: machine_ticks(),
    }
}

/// Resident set (KiB) of the processes `pids`, summed (None when empty or one is gone).
pub fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            parse_status_kib(&s, "VmRSS:")
        })
        .sum()
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The 1-minute load average.
pub fn loadavg1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU used between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub wall_secs: f64,
    /// CPU seconds of the switch processes (None for kernel paths).
    pub switch_cpu_secs: Option<f64>,
    /// Switch CPU seconds / wall seconds.
    pub switch_cores: Option<f64>,
    /// Busy cores on the whole machine (out of `ncpu`), including the traffic generators.
    pub machine_busy_cores: Option<f64>,
    /// Hypervisor steal, in cores.
    pub steal_cores: Option<f64>,
}

pub fn delta(a: &Snap, b: &Snap) -> CpuUse {
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-6);
    let hz = clk_tck() as f64;
    let switch = match (a.switch_ticks, b.switch_ticks) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / hz),
        _ => None,
    };
    let (busy, steal) = match (a.machine, b.machine) {
        (Some((b0, t0, s0)), Some((b1, t1, s1))) if t1 > t0 => {
            let dt = (t1 - t0) as f64;
            let n = ncpu() as f64;
            (
                Some(b1.saturating_sub(b0) as f64 / dt * n),
                Some(s1.saturating_sub(s0) as f64 / dt * n),
            )
        }
        _ => (None, None),
    };
    CpuUse {
        wall_secs: wall,
        switch_cpu_secs: switch,
        switch_cores: switch.map(|s| s / wall),
        machine_busy_cores: busy,
        steal_cores: steal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_process_stat_with_spaces_in_comm() {
        let s = "1234 (vs witch) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_process_ticks(s), Some(325));
    }

    #[test]
    fn parses_vmrss() {
        let s = "Name:\tvswitchd\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(s, "VmRSS:"), Some(12345));
        assert_eq!(parse_status_kib(s, "VmHWM:"), None);
    }

    #[test]
    fn parses_proc_stat_cpu_line() {
        let l = "cpu  100 5 50 1000 10 1 4 7 0 0";
        assert_eq!(parse_machine_ticks(l), Some((167, 1177, 7)));
    }
}
