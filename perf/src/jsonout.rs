//! The `--json` file (machine, parameters, every record with its raw numbers, medians and ratio
//! matrices) and `--from-json`, which reads it back to re-render tables and the chart.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::report::{self, Record};
use crate::{cpu, Settings};

#[derive(Serialize)]
struct Machine {
    kernel: String,
    cpus: usize,
    cpu_model: String,
    iperf3: String,
    ovs: String,
    vswitch_bin_dir: String,
    loadavg_at_start: String,
}

fn first_line(cmd: &str, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn machine(loadavg_at_start: &str) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpus: cpu::ncpu(),
        cpu_model,
        iperf3: first_line("iperf3", "--version"),
        ovs: first_line("ovs-vswitchd", "--version"),
        vswitch_bin_dir: vswitch_lab::bin_dir().display().to_string(),
        loadavg_at_start: loadavg_at_start.to_string(),
    }
}

pub fn write_json(path: &Path, s: &Settings, loadavg: &str, records: &[Record]) -> Result<()> {
    let doc = serde_json::json!({
        "machine": machine(loadavg),
        "params": s,
        "command": std::env::args().collect::<Vec<_>>(),
        "records": records,
        "summary": report::summarize(records),
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

/// Records and the number of runs from a file written by [`write_json`].
pub fn read_json(path: &Path) -> Result<(Vec<Record>, usize, Value)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let records: Vec<Record> = serde_json::from_value(v["records"].clone())
        .with_context(|| format!("{}: no valid \"records\" array", path.display()))?;
    let runs = v["params"]["runs"].as_u64().unwrap_or(1) as usize;
    Ok((records, runs, v["machine"].clone()))
}
