//! `vswitch-perf`: builds two pods on vswitch (tap and af_packet) and on a Linux bridge in
//! the same run, measures TCP throughput, 64-byte UDP packets/s delivered to the receiving
//! pod and ping RTT for each, and prints them with the ratios against the bridge.
#![deny(unsafe_code)]

mod cpu;
mod measure;
mod procs;
mod report;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use crate::procs::Interrupted;
use crate::report::RunRecord;
use crate::topology::Spec;

#[derive(Parser, Debug)]
#[command(
    name = "vswitch-perf",
    version,
    about = "Benchmark vswitch (tap, af_packet) against the Linux bridge in one run",
    after_help = "Must run as root. vswitchd/vswitchctl are taken from VSWITCH_BIN_DIR, else from \
                  the directory of this binary (build them with `cargo build --workspace --bins`)."
)]
struct Args {
    /// Seconds per iperf3 test.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Runs; configurations are interleaved run by run, medians are printed when > 1.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Comma-separated configurations (bridge, bridge-nooff, vswitch-tap, vswitch-afpacket,
    /// vswitch-tap-nooff, vswitch-afpacket-nooff).
    #[arg(long, value_delimiter = ',', default_value = topology::DEFAULT_CONFIGS)]
    configs: Vec<String>,
    /// vswitchd dataplane workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Go on with the other configurations when one fails.
    #[arg(long)]
    keep_going: bool,
    /// Write all raw numbers to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Pings per configuration (at 10 ms intervals).
    #[arg(long, default_value_t = 200)]
    ping_count: u32,
}

#[derive(Serialize)]
struct Machine {
    kernel: String,
    cpus: usize,
    cpu_model: String,
    iperf3: String,
    loadavg_at_start: String,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let iperf3 = std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpus: cpu::ncpu(),
        cpu_model,
        iperf3,
        loadavg_at_start: read("/proc/loadavg").trim().to_string(),
    }
}

#[derive(Serialize)]
struct Params<'a> {
    duration_secs: u64,
    runs: usize,
    configs: Vec<&'a str>,
    workers: usize,
    ping_count: u32,
    udp_payload_bytes: u32,
    client_ip: &'a str,
    server_ip: &'a str,
    command: Vec<String>,
}

fn validate(a: &Args) -> Result<()> {
    if !(1..=600).contains(&a.duration) {
        bail!("--duration must be within 1..=600 seconds");
    }
    if !(1..=100).contains(&a.runs) {
        bail!("--runs must be within 1..=100");
    }
    if !(1..=64).contains(&a.workers) {
        bail!("--workers must be within 1..=64");
    }
    if !(1..=10_000).contains(&a.ping_count) {
        bail!("--ping-count must be within 1..=10000");
    }
    Ok(())
}

/// Builds one configuration, measures it and tears it down (the lab drops at the end).
fn measure_one(spec: Spec, run: usize, args: &Args) -> Result<RunRecord> {
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

fn write_json(path: &PathBuf, args: &Args, specs: &[Spec], records: &[RunRecord]) -> Result<()> {
    let params = Params {
        duration_secs: args.duration,
        runs: args.runs,
        configs: specs.iter().map(|s| s.name).collect(),
        workers: args.workers,
        ping_count: args.ping_count,
        udp_payload_bytes: measure::UDP_PAYLOAD,
        client_ip: topology::CLIENT_IP,
        server_ip: topology::SERVER_IP,
        command: std::env::args().collect(),
    };
    let doc = serde_json::json!({
        "machine": machine(),
        "params": params,
        "configs": specs,
        "runs": records,
        "summary": report::summarize(records),
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

fn run(args: &Args) -> Result<bool> {
    validate(args)?;
    let specs = topology::parse_specs(&args.configs)?;
    if !vswitch_lab::is_root() {
        bail!("vswitch-perf must run as root: it creates network namespaces, veths and taps");
    }
    procs::require_tools(&["ip", "iperf3", "ping", "ss", "ethtool", "getconf"])?;
    if specs.iter().any(|s| s.kind.is_vswitch()) {
        let dir = vswitch_lab::bin_dir();
        for b in ["vswitchd", "vswitchctl"] {
            if !dir.join(b).is_file() {
                bail!(
                    "{} not found: build with `cargo build --workspace --bins` (or --release) \
                     or set VSWITCH_BIN_DIR",
                    dir.join(b).display()
                );
            }
        }
        eprintln!("vswitch binaries from {}", dir.display());
    }
    procs::install_interrupt_handler()?;

    let mut records: Vec<RunRecord> = Vec::new();
    let mut outcome: Result<()> = Ok(());
    'runs: for run in 1..=args.runs {
        for spec in &specs {
            eprintln!("[{}] run {run}/{}", spec.name, args.runs);
            match measure_one(*spec, run, args) {
                Ok(rec) => {
                    let failed = !rec.ok();
                    if failed {
                        eprintln!(
                            "[{}] run {run} FAILED: {}",
                            spec.name,
                            rec.errors.join("; ")
                        );
                    }
                    records.push(rec);
                    if failed && !args.keep_going {
                        outcome = Err(anyhow::anyhow!(
                            "{} failed in run {run} (use --keep-going to continue past failures)",
                            spec.name
                        ));
                        break 'runs;
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break 'runs;
                }
            }
        }
    }

    println!("{}", report::render(&records, args.runs));
    if let Some(p) = &args.json {
        write_json(p, args, &specs, &records)?;
        eprintln!("raw numbers written to {}", p.display());
    }
    outcome?;
    Ok(records.iter().all(RunRecord::ok))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("vswitch-perf: interrupted; lab torn down");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("vswitch-perf: {e:#}");
            ExitCode::from(1)
        }
    }
}
