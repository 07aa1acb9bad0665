//! Measures one configuration in one run: build it, wait for a quiet machine, ping, TCP,
//! UDP, collect vswitchd's counters, tear it down.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::procs::{self, Interrupted};
use crate::report::RunRecord;
use crate::topology::{self, Spec, Topology};
use crate::{cpu, measure, Args};

/// Builds one configuration, measures it and tears it down (the lab drops at the end).
pub fn measure_config(spec: Spec, run: usize, args: &Args) -> Result<RunRecord> {
    let mut rec = RunRecord::new(spec.name, run, spec.description);
    let mut topo = match topology::build(spec, args.workers) {
        Ok(t) => t,
        Err(e) if e.is::<Interrupted>() => return Err(e),
        Err(e) => {
            rec.errors.push(format!("setup: {e:#}"));
            return Ok(rec);
        }
    };
    rec.notes = topo.notes.clone();
    wait_quiet(&topo, &mut rec, args)?;
    eprintln!("  [{}] run {run}: ping", spec.name);
    match measure::ping(&topo, args.ping_count) {
        Ok(p) => rec.ping = Some(p),
        Err(e) if e.is::<Interrupted>() => return Err(e),
        Err(e) => rec.errors.push(format!("ping: {e:#}")),
    }
    eprintln!("  [{}] run {run}: tcp {} s", spec.name, args.duration);
    match measure::tcp(&mut topo, args.duration) {
        Ok(t) => rec.tcp = Some(t),
        Err(e) if e.is::<Interrupted>() => return Err(e),
        Err(e) => rec.errors.push(format!("tcp: {e:#}")),
    }
    eprintln!("  [{}] run {run}: udp 64B {} s", spec.name, args.duration);
    match measure::udp(&mut topo, args.duration) {
        Ok(u) => rec.udp = Some(u),
        Err(e) if e.is::<Interrupted>() => return Err(e),
        Err(e) => rec.errors.push(format!("udp: {e:#}")),
    }
    if let Some(pid) = topo.switch_pid() {
        let alive = procs::alive(pid);
        rec.vswitchd_alive = Some(alive);
        if !alive {
            rec.errors.push(format!(
                "vswitchd (pid {pid}) is no longer running; log:\n{}",
                topo.daemon_log_tail()
            ));
        }
        if let Some(stats) = measure::vswitch_stats(&topo) {
            if let Some(d) = stats["drops"].as_object() {
                for (k, v) in d {
                    if let Some(n) = v.as_u64().filter(|n| *n > 0) {
                        rec.vswitch_drops.insert(k.clone(), n);
                    }
                }
            }
            rec.vswitch_stats = Some(stats);
        }
        if !rec.ok() && alive {
            rec.notes
                .push(format!("vswitchd log tail:\n{}", topo.daemon_log_tail()));
        }
    }
    drop(topo);
    Ok(rec)
}

/// Idle seconds first: background load on the machine (other workloads share this VM), and
/// whether vswitchd busy-polls. Waits (bounded by `--quiet-wait`) for a quiet machine.
fn wait_quiet(topo: &Topology, rec: &mut RunRecord, args: &Args) -> Result<()> {
    let (name, run) = (rec.config.clone(), rec.run);
    let quiet_deadline = Instant::now() + Duration::from_secs(args.quiet_wait);
    let mut waited = 0u32;
    loop {
        let s0 = cpu::snap(topo.switch_pid());
        procs::sleep_checked(Duration::from_secs(1))?;
        let idle = cpu::delta(&s0, &cpu::snap(topo.switch_pid()));
        let busy = idle.machine_busy_cores.unwrap_or(0.0);
        rec.idle = Some(idle);
        if busy <= args.quiet_below {
            break;
        }
        if Instant::now() >= quiet_deadline {
            rec.notes.push(format!(
                "machine not quiet: {busy:.2} busy cores before the tests (waited {waited} s)"
            ));
            eprintln!(
                "  [{}] run {run}: {busy:.2} cores busy elsewhere, measuring anyway",
                name
            );
            break;
        }
        if waited == 0 {
            eprintln!(
                "  [{}] run {run}: {busy:.2} cores busy elsewhere, waiting up to {} s",
                name, args.quiet_wait
            );
        }
        waited += 1;
    }
    Ok(())
}
