//! `vswitch-perf`: builds two pods on vswitch (tap and af_packet) and on a Linux bridge in
//! the same run, measures TCP throughput, 64-byte UDP packets/s delivered to the receiving
//! pod and ping RTT for each, and prints them with the ratios against the bridge.
#![deny(unsafe_code)]

mod cpu;
mod jsonout;
mod measure;
mod procs;
mod report;
mod runner;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;

use crate::procs::Interrupted;
use crate::report::RunRecord;

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
    /// Before each configuration, wait up to this many seconds for the machine to be quiet
    /// (0: measure right away). The load seen is reported either way.
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// "Quiet" means at most this many busy cores (whole machine) over one idle second.
    #[arg(long, default_value_t = 0.3)]
    quiet_below: f64,
    /// Pings per configuration (at 10 ms intervals).
    #[arg(long, default_value_t = 200)]
    ping_count: u32,
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
    if a.quiet_wait > 3600 {
        bail!("--quiet-wait must be at most 3600 seconds");
    }
    if !(0.0..=1024.0).contains(&a.quiet_below) {
        bail!("--quiet-below must be within 0..=1024 cores");
    }
    if !(1..=10_000).contains(&a.ping_count) {
        bail!("--ping-count must be within 1..=10000");
    }
    Ok(())
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
            match runner::measure_config(*spec, run, args) {
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
        jsonout::write_json(p, args, &specs, &records)?;
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
