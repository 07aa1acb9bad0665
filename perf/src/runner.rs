//! The traffic scenario for one system in one run: build it, wait for a quiet machine, ping,
//! TCP 1 and 4 streams, 64 B UDP, then the switch's RSS and counters; tear it down.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::measure;
use crate::procs::{self, Interrupted};
use crate::progress::Progress;
use crate::report::Record;
use crate::systems::{self, Pair, Spec};
use crate::{cpu, Settings};

/// Progress steps of one traffic measurement.
pub const STEPS: usize = 5;

/// Runs `f`, keeping an error in the record; Ctrl-C is passed up.
fn attempt<T>(rec: &mut Record, what: &str, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    match f() {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is::<Interrupted>() => Err(e),
        Err(e) => {
            rec.errors.push(format!("{what}: {e:#}"));
            Ok(None)
        }
    }
}

fn raw<T: serde::Serialize>(rec: &mut Record, key: &str, v: &T) {
    if let Ok(j) = serde_json::to_value(v) {
        rec.raw.insert(key.into(), j);
    }
}

pub fn traffic(spec: Spec, run: usize, s: &Settings, prog: &mut Progress) -> Result<Record> {
    let mut rec = Record::new("traffic", spec.name, spec.description, run);
    if let Some(why) = systems::skip_reason(&spec) {
        rec.skipped = Some(why);
        prog.skip(STEPS);
        return Ok(rec);
    }
    prog.step("build", spec.name, run, s.runs);
    let Some(mut p) = attempt(&mut rec, "setup", || systems::build(spec))? else {
        prog.skip(STEPS - 1);
        return Ok(rec);
    };
    rec.notes.append(&mut p.notes);
    wait_quiet(&p, &mut rec, s)?;
    rec.set("loadavg1", cpu::loadavg1());

    prog.step("ping", spec.name, run, s.runs);
    if let Some(r) = attempt(&mut rec, "ping", || measure::ping(&p, s.ping_count))? {
        rec.set("ping_p50_us", Some(r.p50_us));
        rec.set("ping_p99_us", Some(r.p99_us));
        raw(&mut rec, "ping", &r);
    }
    for streams in [1u32, 4] {
        prog.step(&format!("tcp x{streams}"), spec.name, run, s.runs);
        let profiler = match (&s.profile, streams) {
            (Some(dir), 1) if !p.switch_pids.is_empty() => {
                let file = dir.join(format!("{}-run{run}.perf.data", spec.name));
                attempt(&mut rec, "perf record", || profile(&mut p, &file, s.secs))?
                    .map(|pid| (pid, file))
            }
            _ => None,
        };
        let res = attempt(&mut rec, &format!("tcp {streams}"), || {
            measure::tcp(&mut p, s.secs, streams)
        })?;
        if let Some((pid, file)) = profiler {
            let deadline = Instant::now() + Duration::from_secs(20);
            while procs::alive(pid) && Instant::now() < deadline {
                procs::sleep_checked(Duration::from_millis(50))?;
            }
            p.lab.stop(pid);
            rec.notes
                .push(format!("profile: perf report -i {}", file.display()));
        }
        if let Some(r) = res {
            rec.set(&format!("tcp{streams}_gbps"), Some(r.gbps));
            if streams == 1 {
                let gb = r.bytes as f64 / 1e9;
                if gb > 0.0 {
                    rec.set("sw_cpu_s_per_gb", r.cpu.switch_cpu_secs.map(|c| c / gb));
                    rec.set(
                        "host_cpu_s_per_gb",
                        r.cpu.machine_busy_cores.map(|c| c * r.cpu.wall_secs / gb),
                    );
                }
                rec.set("tcp1_retr", r.retransmits.map(|x| x as f64));
                rec.set("tcp1_busy_cores", r.cpu.machine_busy_cores);
            }
            raw(&mut rec, &format!("tcp{streams}"), &r);
        }
    }
    prog.step("udp 64B", spec.name, run, s.runs);
    if let Some(r) = attempt(&mut rec, "udp", || measure::udp(&mut p, s.secs))? {
        rec.set("udp_rx_kpps", Some(r.nic_rx_pps / 1e3));
        rec.set("udp_sent_kpps", Some(r.sent_pps / 1e3));
        if r.sent_packets > 0 {
            let lost = r.sent_packets.saturating_sub(r.nic_rx_packets) as f64;
            rec.set("udp_lost_pct", Some(100.0 * lost / r.sent_packets as f64));
        }
        let mpkt = r.nic_rx_packets as f64 / 1e6;
        if mpkt > 0.0 {
            rec.set("sw_cpu_s_per_mpkt", r.cpu.switch_cpu_secs.map(|c| c / mpkt));
            rec.set(
                "host_cpu_s_per_mpkt",
                r.cpu.machine_busy_cores.map(|c| c * r.cpu.wall_secs / mpkt),
            );
        }
        rec.set("udp_busy_cores", r.cpu.machine_busy_cores);
        raw(&mut rec, "udp", &r);
    }
    rec.set(
        "switch_rss_mib",
        cpu::rss_kib(&p.switch_pids).map(|k| k as f64 / 1024.0),
    );
    check_switches(&p, &mut rec);
    drop(p);
    Ok(rec)
}

/// Starts `perf record -g` on the switch processes for the next `secs` seconds.
fn profile(p: &mut Pair, file: &std::path::Path, secs: f64) -> Result<u32> {
    let pids: Vec<String> = p.switch_pids.iter().map(|x| x.to_string()).collect();
    let log = std::fs::File::create(p.lab.dir.join("perf-record.log"))?;
    let pid = p.lab.spawn(
        std::process::Command::new("perf")
            .args(["record", "-F", "999", "-g", "-p", &pids.join(","), "-o"])
            .arg(file)
            .args(["--", "sleep", &format!("{secs}")])
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    Ok(pid)
}

/// The switch processes must have survived the tests; vswitchd's drop counters go with them.
fn check_switches(p: &Pair, rec: &mut Record) {
    for pid in &p.switch_pids {
        if !procs::alive(*pid) {
            rec.errors.push(format!(
                "switch process {pid} is no longer running; logs:\n{}",
                p.log_tail()
            ));
        }
    }
    for (i, d) in p.daemons.iter().enumerate() {
        if let Ok(stats) = d.ctl_json(&["stats"]) {
            let drops: serde_json::Map<String, serde_json::Value> = stats["drops"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            rec.raw
                .insert(format!("vswitchd{}_drops", i + 1), drops.into());
        }
    }
    if !rec.ok() {
        rec.notes.push(format!("switch logs:\n{}", p.log_tail()));
    }
}

/// One idle second first (background load: other workloads share this machine); waits, bounded
/// by `--quiet-wait`, for a quiet machine. The load seen is recorded either way.
pub fn wait_quiet(p: &Pair, rec: &mut Record, s: &Settings) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(s.quiet_wait);
    let mut waited = 0u32;
    loop {
        let s0 = cpu::snap(&p.switch_pids);
        procs::sleep_checked(Duration::from_secs(1))?;
        let idle = cpu::delta(&s0, &cpu::snap(&p.switch_pids));
        let busy = idle.machine_busy_cores.unwrap_or(0.0);
        rec.set("bg_busy_cores", Some(busy));
        rec.set("steal_cores", idle.steal_cores);
        // The switch's own share of that idle second: what an idle daemon costs.
        rec.set("sw_idle_cpu_pct", idle.switch_cores.map(|c| c * 100.0));
        if busy <= s.quiet_below {
            return Ok(());
        }
        if Instant::now() >= deadline {
            rec.notes.push(format!(
                "machine not quiet: {busy:.2} busy cores before the tests (waited {waited} s)"
            ));
            return Ok(());
        }
        if waited == 0 {
            eprintln!(
                "    {}: {busy:.2} cores busy elsewhere, waiting up to {} s",
                rec.system, s.quiet_wait
            );
        }
        waited += 1;
    }
}
