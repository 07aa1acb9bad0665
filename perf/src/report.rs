//! Results: one record per configuration and run, medians, ratios against the bridge measured
//! in the same run, the printed tables and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::cpu::CpuUse;
use crate::measure::{PingResult, TcpResult, UdpResult};

/// Everything measured for one configuration in one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub config: String,
    pub run: usize,
    pub description: String,
    pub notes: Vec<String>,
    /// CPU use during one idle second before the tests.
    pub idle: Option<CpuUse>,
    /// Empty when every step worked.
    pub errors: Vec<String>,
    pub ping: Option<PingResult>,
    pub tcp: Option<TcpResult>,
    pub udp: Option<UdpResult>,
    /// `vswitchctl --json stats` after the tests (vswitch configurations only).
    pub vswitch_stats: Option<Value>,
    /// Non-zero drop counters from those stats.
    pub vswitch_drops: BTreeMap<String, u64>,
    /// Whether vswitchd was still running after the tests.
    pub vswitchd_alive: Option<bool>,
}

impl RunRecord {
    pub fn new(config: &str, run: usize, description: &str) -> Self {
        RunRecord {
            config: config.to_string(),
            run,
            description: description.to_string(),
            notes: Vec::new(),
            idle: None,
            errors: Vec::new(),
            ping: None,
            tcp: None,
            udp: None,
            vswitch_stats: None,
            vswitch_drops: BTreeMap::new(),
            vswitchd_alive: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// The numbers shown per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    TcpGbps,
    TcpRetr,
    UdpSentKpps,
    UdpNicKpps,
    UdpAppKpps,
    PingAvgUs,
    PingMaxUs,
    SwitchCpuTcp,
    SwitchCpuUdp,
    SwitchIdleCores,
    BgBusyCores,
}

const METRICS: &[(Metric, &str)] = &[
    (Metric::TcpGbps, "TCP Gbps"),
    (Metric::TcpRetr, "TCP retr"),
    (Metric::UdpSentKpps, "UDP64 sent kpps"),
    (Metric::UdpNicKpps, "UDP64 at pod NIC kpps"),
    (Metric::UdpAppKpps, "UDP64 app kpps"),
    (Metric::PingAvgUs, "ping avg us"),
    (Metric::PingMaxUs, "ping max us"),
    (Metric::SwitchCpuTcp, "switch CPU s (TCP)"),
    (Metric::SwitchCpuUdp, "switch CPU s (UDP)"),
    (Metric::SwitchIdleCores, "switch CPU idle cores"),
    (Metric::BgBusyCores, "machine busy cores idle"),
];

fn metric(r: &RunRecord, m: Metric) -> Option<f64> {
    match m {
        Metric::TcpGbps => r.tcp.as_ref().map(|t| t.gbps),
        Metric::TcpRetr => r.tcp.as_ref()?.retransmits.map(|x| x as f64),
        Metric::UdpSentKpps => r.udp.as_ref().map(|u| u.sent_pps / 1e3),
        Metric::UdpNicKpps => r.udp.as_ref().map(|u| u.nic_rx_pps / 1e3),
        Metric::UdpAppKpps => r.udp.as_ref()?.app_rx_pps.map(|x| x / 1e3),
        Metric::PingAvgUs => r.ping.as_ref().map(|p| p.avg_us),
        Metric::PingMaxUs => r.ping.as_ref().map(|p| p.max_us),
        Metric::SwitchCpuTcp => r.tcp.as_ref()?.cpu.switch_cpu_secs,
        Metric::SwitchCpuUdp => r.udp.as_ref()?.cpu.switch_cpu_secs,
        Metric::SwitchIdleCores => r.idle.as_ref()?.switch_cores,
        Metric::BgBusyCores => r.idle.as_ref()?.machine_busy_cores,
    }
}

fn fmt_metric(m: Metric, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) => match m {
            Metric::TcpGbps => format!("{v:.2}"),
            Metric::TcpRetr | Metric::PingAvgUs | Metric::PingMaxUs => format!("{v:.0}"),
            Metric::UdpSentKpps | Metric::UdpNicKpps | Metric::UdpAppKpps => format!("{v:.1}"),
            Metric::SwitchCpuTcp
            | Metric::SwitchCpuUdp
            | Metric::SwitchIdleCores
            | Metric::BgBusyCores => {
                format!("{v:.2}")
            }
        },
    }
}

/// Ratios of one configuration against a baseline: TCP and delivered pps as
/// this/baseline (higher is better), ping RTT avg as this/baseline (lower is better).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ratios {
    pub tcp: Option<f64>,
    pub pps: Option<f64>,
    pub rtt: Option<f64>,
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratios(r: &RunRecord, base: &RunRecord) -> Ratios {
    Ratios {
        tcp: div(metric(r, Metric::TcpGbps), metric(base, Metric::TcpGbps)),
        pps: div(
            metric(r, Metric::UdpNicKpps),
            metric(base, Metric::UdpNicKpps),
        ),
        rtt: div(
            metric(r, Metric::PingAvgUs),
            metric(base, Metric::PingAvgUs),
        ),
    }
}

pub const BASELINES: &[&str] = &["bridge", "bridge-nooff"];

fn baseline<'a>(records: &'a [RunRecord], name: &str, run: usize) -> Option<&'a RunRecord> {
    records.iter().find(|r| r.config == name && r.run == run)
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians over runs for one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub config: String,
    pub runs: usize,
    pub failed_runs: usize,
    pub tcp_gbps: Option<f64>,
    pub tcp_retransmits: Option<f64>,
    pub udp_sent_kpps: Option<f64>,
    pub udp_nic_rx_kpps: Option<f64>,
    pub udp_app_rx_kpps: Option<f64>,
    pub ping_avg_us: Option<f64>,
    pub ping_max_us: Option<f64>,
    pub switch_cpu_secs_tcp: Option<f64>,
    pub switch_cpu_secs_udp: Option<f64>,
    pub switch_idle_cores: Option<f64>,
    /// Busy cores on the machine in the idle second before the tests (other workloads).
    pub machine_busy_cores_idle: Option<f64>,
    /// Median over runs of the ratio against each baseline measured in the same run.
    pub vs: BTreeMap<String, Ratios>,
}

fn config_order(records: &[RunRecord]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in records {
        if !names.contains(&r.config) {
            names.push(r.config.clone());
        }
    }
    names
}

pub fn summarize(records: &[RunRecord]) -> Vec<Summary> {
    config_order(records)
        .into_iter()
        .map(|name| {
            let rs: Vec<&RunRecord> = records.iter().filter(|r| r.config == name).collect();
            let med = |m: Metric| median(rs.iter().filter_map(|r| metric(r, m)).collect());
            let mut vs = BTreeMap::new();
            for b in BASELINES {
                if *b == name {
                    continue;
                }
                let per_run: Vec<Ratios> = rs
                    .iter()
                    .filter_map(|r| baseline(records, b, r.run).map(|base| ratios(r, base)))
                    .collect();
                if per_run.is_empty() {
                    continue;
                }
                vs.insert(
                    b.to_string(),
                    Ratios {
                        tcp: median(per_run.iter().filter_map(|x| x.tcp).collect()),
                        pps: median(per_run.iter().filter_map(|x| x.pps).collect()),
                        rtt: median(per_run.iter().filter_map(|x| x.rtt).collect()),
                    },
                );
            }
            Summary {
                config: name.clone(),
                runs: rs.len(),
                failed_runs: rs.iter().filter(|r| !r.ok()).count(),
                tcp_gbps: med(Metric::TcpGbps),
                tcp_retransmits: med(Metric::TcpRetr),
                udp_sent_kpps: med(Metric::UdpSentKpps),
                udp_nic_rx_kpps: med(Metric::UdpNicKpps),
                udp_app_rx_kpps: med(Metric::UdpAppKpps),
                ping_avg_us: med(Metric::PingAvgUs),
                ping_max_us: med(Metric::PingMaxUs),
                switch_cpu_secs_tcp: med(Metric::SwitchCpuTcp),
                switch_cpu_secs_udp: med(Metric::SwitchCpuUdp),
                switch_idle_cores: med(Metric::SwitchIdleCores),
                machine_busy_cores_idle: med(Metric::BgBusyCores),
                vs,
            }
        })
        .collect()
}

fn summary_metric(s: &Summary, m: Metric) -> Option<f64> {
    match m {
        Metric::TcpGbps => s.tcp_gbps,
        Metric::TcpRetr => s.tcp_retransmits,
        Metric::UdpSentKpps => s.udp_sent_kpps,
        Metric::UdpNicKpps => s.udp_nic_rx_kpps,
        Metric::UdpAppKpps => s.udp_app_rx_kpps,
        Metric::PingAvgUs => s.ping_avg_us,
        Metric::PingMaxUs => s.ping_max_us,
        Metric::SwitchCpuTcp => s.switch_cpu_secs_tcp,
        Metric::SwitchCpuUdp => s.switch_cpu_secs_udp,
        Metric::SwitchIdleCores => s.switch_idle_cores,
        Metric::BgBusyCores => s.machine_busy_cores_idle,
    }
}

/// A markdown table with aligned columns (readable as plain text too).
fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i == 0 {
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            } else {
                let _ = write!(s, " {}{c} |", " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    out.push('|');
    for (i, wi) in w.iter().enumerate() {
        if i == 0 {
            let _ = write!(out, "{}|", "-".repeat(wi + 2));
        } else {
            let _ = write!(out, "{}:|", "-".repeat(wi + 1));
        }
    }
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into())
}

fn ratio_header(first: &[&str], baselines: &[&str]) -> Vec<String> {
    let mut h: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    for b in baselines {
        h.push(format!("TCP vs {b}"));
        h.push(format!("pps vs {b}"));
        h.push(format!("RTT vs {b}"));
    }
    h
}

fn present_baselines(records: &[RunRecord]) -> Vec<&'static str> {
    BASELINES
        .iter()
        .copied()
        .filter(|b| records.iter().any(|r| r.config == *b))
        .collect()
}

/// The full text report: per-run metrics and ratios, and medians when there is more than
/// one run.
pub fn render(records: &[RunRecord], runs: usize) -> String {
    let mut out = String::new();
    let bases = present_baselines(records);

    let mut header = vec!["config".to_string(), "run".to_string()];
    header.extend(METRICS.iter().map(|(_, h)| h.to_string()));
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let mut row = vec![
                if r.ok() {
                    r.config.clone()
                } else {
                    format!("{} (FAILED)", r.config)
                },
                r.run.to_string(),
            ];
            row.extend(METRICS.iter().map(|(m, _)| fmt_metric(*m, metric(r, *m))));
            row
        })
        .collect();
    out.push_str("Per run:\n\n");
    out.push_str(&table(&header, &rows));

    let ratio_rows: Vec<Vec<String>> = records
        .iter()
        .filter(|r| !bases.contains(&r.config.as_str()) || bases.len() > 1)
        .map(|r| {
            let mut row = vec![r.config.clone(), r.run.to_string()];
            for b in &bases {
                let rt = if r.config == *b {
                    Ratios::default()
                } else {
                    baseline(records, b, r.run)
                        .map(|base| ratios(r, base))
                        .unwrap_or_default()
                };
                row.push(fmt_ratio(rt.tcp));
                row.push(fmt_ratio(rt.pps));
                row.push(fmt_ratio(rt.rtt));
            }
            row
        })
        .collect();
    if !bases.is_empty() {
        out.push_str(
            "\nRatios against the bridge measured in the same run (TCP, pps delivered at the pod NIC: higher is better; RTT avg: lower is better):\n\n",
        );
        out.push_str(&table(
            &ratio_header(&["config", "run"], &bases),
            &ratio_rows,
        ));
    }

    if runs > 1 {
        let sums = summarize(records);
        let mut header = vec!["config".to_string(), "runs ok".to_string()];
        header.extend(METRICS.iter().map(|(_, h)| h.to_string()));
        let rows: Vec<Vec<String>> = sums
            .iter()
            .map(|s| {
                let mut row = vec![
                    s.config.clone(),
                    format!("{}/{}", s.runs - s.failed_runs, s.runs),
                ];
                row.extend(
                    METRICS
                        .iter()
                        .map(|(m, _)| fmt_metric(*m, summary_metric(s, *m))),
                );
                row
            })
            .collect();
        let _ = write!(out, "\nMedian over {runs} runs:\n\n");
        out.push_str(&table(&header, &rows));
        if !bases.is_empty() {
            let rows: Vec<Vec<String>> = sums
                .iter()
                .map(|s| {
                    let mut row = vec![s.config.clone()];
                    for b in &bases {
                        let rt = s.vs.get(*b).copied().unwrap_or_default();
                        row.push(fmt_ratio(rt.tcp));
                        row.push(fmt_ratio(rt.pps));
                        row.push(fmt_ratio(rt.rtt));
                    }
                    row
                })
                .collect();
            out.push_str("\nMedian of the per-run ratios:\n\n");
            out.push_str(&table(&ratio_header(&["config"], &bases), &rows));
        }
    }

    let failures: Vec<&RunRecord> = records.iter().filter(|r| !r.ok()).collect();
    if !failures.is_empty() {
        out.push_str("\nFailures:\n");
        for r in failures {
            for e in &r.errors {
                let first: String = e.lines().take(6).collect::<Vec<_>>().join("\n    ");
                let _ = writeln!(out, "  {} run {}: {first}", r.config, r.run);
            }
        }
    }
    let paths: Vec<String> = records
        .iter()
        .filter_map(|r| {
            let u = r.udp.as_ref()?;
            let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
            Some(format!(
                "  {} run {}: sent {} | client if tx_dropped {} | switch rx {} | switch tx {} | server if rx {}",
                r.config,
                r.run,
                u.sent_packets,
                opt(u.client_tx_dropped),
                opt(u.switch_rx_from_client),
                opt(u.switch_tx_to_server),
                u.nic_rx_packets
            ))
        })
        .collect();
    if !paths.is_empty() {
        out.push_str("\nUDP64 packets along the path (switch rx/tx: vswitchd port counters):\n");
        for p in paths {
            out.push_str(&p);
            out.push('\n');
        }
    }
    let drops: Vec<&RunRecord> = records
        .iter()
        .filter(|r| !r.vswitch_drops.is_empty())
        .collect();
    if !drops.is_empty() {
        out.push_str("\nvswitchd drop counters after each run (non-zero):\n");
        for r in drops {
            let d: Vec<String> = r
                .vswitch_drops
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "  {} run {}: {}", r.config, r.run, d.join(" "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn table_is_aligned() {
        let t = table(
            &["a".into(), "bb".into()],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "1000".into()],
            ],
        );
        let widths: Vec<usize> = t.lines().map(|l| l.len()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }
}
