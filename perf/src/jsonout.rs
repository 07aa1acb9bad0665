//! The `--json` file: machine, parameters, every raw number and the medians.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::report::{self, RunRecord};
use crate::topology::{self, Spec};
use crate::{cpu, measure, Args};

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
    quiet_wait_secs: u64,
    quiet_below_cores: f64,
    udp_payload_bytes: u32,
    client_ip: &'a str,
    server_ip: &'a str,
    command: Vec<String>,
}

pub fn write_json(path: &Path, args: &Args, specs: &[Spec], records: &[RunRecord]) -> Result<()> {
    let params = Params {
        duration_secs: args.duration,
        runs: args.runs,
        configs: specs.iter().map(|s| s.name).collect(),
        workers: args.workers,
        ping_count: args.ping_count,
        quiet_wait_secs: args.quiet_wait,
        quiet_below_cores: args.quiet_below,
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
