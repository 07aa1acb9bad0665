//! `vswitch-perf`: every path a user chooses between, measured side by side in one run on this
//! machine — bare veth, Linux bridge, Linux VXLAN across two nodes, Open vSwitch's userspace
//! datapath (tap with TSO, AF_PACKET, userspace VXLAN), and vswitch (tap, af_packet, mixed, its
//! VXLAN / IPIP / direct overlays, 1 and N workers) — plus a scale scenario (100 and 1000 ports)
//! and CNI ADD/DEL latency. Prints absolute numbers and ratios against every peer of the run.
#![deny(unsafe_code)]

mod build_kernel;
mod build_ovs;
mod build_vswitch;
mod cni;
mod cpu;
mod jsonout;
mod measure;
mod procs;
mod progress;
mod report;
mod runner;
mod scale;
mod svg;
mod systems;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use crate::procs::Interrupted;
use crate::progress::Progress;
use crate::report::Record;

#[derive(Parser, Debug)]
#[command(
    name = "vswitch-perf",
    version,
    about = "Benchmark vswitch against the kernel bridge, kernel VXLAN, Open vSwitch userspace and a \
             bare veth, in one run, on this machine",
    after_help = "Must run as root. vswitchd, vswitchctl, the CNI plugin `vswitch` and \
                  vswitch-perf-udp are taken from VSWITCH_BIN_DIR, else from the directory of this \
                  binary: build them with `cargo build --release --workspace --bins` (a debug build \
                  measures the debug build). Systems whose package is missing (openvswitch-switch, \
                  containernetworking-plugins) are skipped with a line saying what to install. \
                  VSWITCH_PERF_DAEMON_TOML adds top-level settings to every vswitchd config the \
                  harness writes (e.g. `io = \"epoll\"`), for A/B runs of one knob."
)]
struct Args {
    /// Runs; systems are interleaved run by run, tables show medians and median per-run ratios.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seconds per TCP and UDP test.
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Every system and scenario once, about 1 s per test, no quiet wait, scale up to 100
    /// ports, 5 CNI pods: proves the harness end to end (CI), measures nothing worth quoting.
    #[arg(long)]
    quick: bool,
    /// Comma-separated systems of the traffic scenario (`all`, or names from the list in
    /// BENCHMARKS.md: veth, bridge, kvxlan, ovs-tap, vs-tap, vs-vxlan, ...).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    systems: Vec<String>,
    /// Comma-separated scenarios: traffic, scale, cni.
    #[arg(long, value_delimiter = ',', default_value = "traffic,scale,cni")]
    scenarios: Vec<String>,
    /// Port counts of the scale scenario (each in 1, 10 and 100 networks; 2 ports always).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    scale_ports: Vec<usize>,
    /// ADD+DEL pairs per plugin and run in the CNI scenario.
    #[arg(long, default_value_t = 30)]
    cni_pods: usize,
    /// Pings per system (at 10 ms intervals).
    #[arg(long, default_value_t = 200)]
    ping_count: u32,
    /// Before each system, wait up to this many seconds for the machine to be quiet (0: measure
    /// right away). The load seen is reported either way.
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// "Quiet" means at most this many busy cores (whole machine) over one idle second.
    #[arg(long, default_value_t = 0.3)]
    quiet_below: f64,
    /// Write every raw number to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a bar chart of the ratios (SVG) to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Record a CPU profile of the switch processes (`perf record -g`) during each TCP 1-stream
    /// test into DIR/<system>-run<k>.perf.data (read with `perf report -i FILE`).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Measure nothing: re-render the tables (and --svg) from a file written by --json.
    #[arg(long)]
    from_json: Option<PathBuf>,
}

/// The effective parameters (after --quick), also written to the JSON file.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub runs: usize,
    pub secs: f64,
    pub ping_count: u32,
    pub quiet_wait: u64,
    pub quiet_below: f64,
    pub cni_pods: usize,
    pub scale_ports: Vec<usize>,
    pub systems: Vec<String>,
    pub scenarios: Vec<String>,
    pub quick: bool,
    pub udp_payload_bytes: u32,
    pub profile: Option<PathBuf>,
}

fn settings(a: &Args) -> Result<Settings> {
    if !(1..=100).contains(&a.runs) {
        bail!("--runs must be within 1..=100");
    }
    if !(0.5..=600.0).contains(&a.duration) {
        bail!("--duration must be within 0.5..=600 seconds");
    }
    if !(1..=10_000).contains(&a.ping_count) {
        bail!("--ping-count must be within 1..=10000");
    }
    if a.quiet_wait > 3600 {
        bail!("--quiet-wait must be at most 3600 seconds");
    }
    if !(0.0..=1024.0).contains(&a.quiet_below) {
        bail!("--quiet-below must be within 0..=1024 cores");
    }
    if !(1..=1000).contains(&a.cni_pods) {
        bail!("--cni-pods must be within 1..=1000");
    }
    if let Some(p) = a.scale_ports.iter().find(|p| !(2..=1000).contains(*p)) {
        bail!("--scale-ports: {p} is outside 2..=1000");
    }
    for s in &a.scenarios {
        if !["traffic", "scale", "cni"].contains(&s.as_str()) {
            bail!("--scenarios: unknown scenario {s:?} (traffic, scale, cni)");
        }
    }
    let mut s = Settings {
        runs: a.runs,
        secs: a.duration,
        ping_count: a.ping_count,
        quiet_wait: a.quiet_wait,
        quiet_below: a.quiet_below,
        cni_pods: a.cni_pods,
        scale_ports: a.scale_ports.clone(),
        systems: a.systems.clone(),
        scenarios: a.scenarios.clone(),
        quick: a.quick,
        udp_payload_bytes: measure::UDP_PAYLOAD,
        profile: a.profile.clone(),
    };
    if let Some(d) = &s.profile {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        if procs::require_tools(&["perf"]).is_err() {
            bail!("--profile needs `perf` (Debian package linux-perf)");
        }
    }
    if a.quick {
        s.runs = 1;
        s.secs = 1.0;
        s.ping_count = 20;
        s.quiet_wait = 0;
        s.cni_pods = 5;
        s.scale_ports.retain(|p| *p <= 100);
        if s.scale_ports.is_empty() {
            s.scale_ports.push(100);
        }
    }
    Ok(s)
}

fn write_outputs(a: &Args, s: Option<&Settings>, loadavg: &str, records: &[Record]) -> Result<()> {
    if let (Some(p), Some(s)) = (&a.json, s) {
        jsonout::write_json(p, s, loadavg, records)?;
        eprintln!("raw numbers written to {}", p.display());
    }
    if let Some(p) = &a.svg {
        std::fs::write(p, svg::render(records))
            .with_context(|| format!("write {}", p.display()))?;
        eprintln!("chart written to {}", p.display());
    }
    Ok(())
}

fn check_setup() -> Result<()> {
    if !vswitch_lab::is_root() {
        bail!("vswitch-perf must run as root: it creates network namespaces, veths and taps");
    }
    procs::require_tools(&["ip", "iperf3", "ping", "ss", "ethtool"])?;
    let dir = vswitch_lab::bin_dir();
    for b in ["vswitchd", "vswitchctl", "vswitch-perf-udp"] {
        if !dir.join(b).is_file() {
            bail!(
                "{} not found: build with `cargo build --release --workspace --bins` or set \
                 VSWITCH_BIN_DIR",
                dir.join(b).display()
            );
        }
    }
    let profile = if dir.ends_with("release") {
        "release"
    } else {
        "NOT a release build"
    };
    eprintln!("vswitch binaries from {} ({profile})", dir.display());
    Ok(())
}

fn run(a: &Args) -> Result<bool> {
    if let Some(src) = &a.from_json {
        let (records, runs, machine) = jsonout::read_json(src)?;
        out(&format!("from {} (machine: {machine})\n", src.display()));
        out(&report::render(&records, runs));
        write_outputs(a, None, "", &records)?;
        return Ok(true);
    }
    let s = settings(a)?;
    let specs = if s.scenarios.iter().any(|x| x == "traffic") {
        systems::parse_specs(&s.systems)?
    } else {
        Vec::new()
    };
    let cases = if s.scenarios.iter().any(|x| x == "scale") {
        scale::cases(&s.scale_ports)
    } else {
        Vec::new()
    };
    let with_cni = s.scenarios.iter().any(|x| x == "cni");
    check_setup()?;
    for spec in &specs {
        if let Some(why) = systems::skip_reason(spec) {
            eprintln!("{why}");
        }
    }
    procs::install_interrupt_handler()?;
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let per_run = specs.len() * runner::STEPS
        + cases.len() * scale::STEPS
        + if with_cni { cni::STEPS } else { 0 };
    let mut prog = Progress::new(per_run * s.runs);
    let t0 = Instant::now();
    let mut records: Vec<Record> = Vec::new();
    let mut outcome: Result<()> = Ok(());
    'runs: for run in 1..=s.runs {
        for spec in &specs {
            match runner::traffic(*spec, run, &s, &mut prog) {
                Ok(r) => report_failure(r, &mut records),
                Err(e) => {
                    outcome = Err(e);
                    break 'runs;
                }
            }
        }
        for c in &cases {
            match scale::measure(*c, run, &s, &mut prog) {
                Ok(r) => report_failure(r, &mut records),
                Err(e) => {
                    outcome = Err(e);
                    break 'runs;
                }
            }
        }
        if with_cni {
            match cni::measure(run, &s, &mut prog) {
                Ok(rs) => rs.into_iter().for_each(|r| report_failure(r, &mut records)),
                Err(e) => {
                    outcome = Err(e);
                    break 'runs;
                }
            }
        }
    }
    eprintln!("measured in {:.0} s", t0.elapsed().as_secs_f64());
    out(&report::render(&records, s.runs));
    write_outputs(a, Some(&s), loadavg.trim(), &records)?;
    outcome?;
    Ok(records.iter().all(Record::ok))
}

/// Prints to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o
        .write_all(text.as_bytes())
        .and_then(|_| o.write_all(b"\n"));
}

/// Says on stderr right away when a system failed (the tables come at the end).
fn report_failure(r: Record, records: &mut Vec<Record>) {
    if !r.ok() {
        eprintln!(
            "    {} {} run {} FAILED: {}",
            r.scenario,
            r.system,
            r.run,
            procs::tail(&r.errors.join("; "), 1500)
        );
    }
    records.push(r);
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("vswitch-perf: some measurements failed (see the tables)");
            ExitCode::from(1)
        }
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
