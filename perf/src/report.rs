//! Results: one [`Record`] per scenario, system and run with named numbers; medians over runs,
//! ratios against every peer of the same scenario (the median of the per-run ratios, so both
//! sides of a ratio saw the same machine), and the printed tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything measured for one system in one run of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub scenario: String,
    pub system: String,
    pub description: String,
    pub run: usize,
    /// Named numbers (see [`METRICS`]).
    pub metrics: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    /// Empty when every step worked.
    pub errors: Vec<String>,
    /// Set when the system could not be measured here (a missing package).
    pub skipped: Option<String>,
    /// The raw measurements (ping, iperf3, UDP, counters) as measured.
    pub raw: BTreeMap<String, Value>,
}

impl Record {
    pub fn new(scenario: &str, system: &str, description: &str, run: usize) -> Self {
        Record {
            scenario: scenario.into(),
            system: system.into(),
            description: description.into(),
            run,
            metrics: BTreeMap::new(),
            notes: Vec::new(),
            errors: Vec::new(),
            skipped: None,
            raw: BTreeMap::new(),
        }
    }

    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn set(&mut self, key: &str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.metrics.insert(key.into(), v);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Context only (no ratio).
    Neither,
}

pub struct MetricDef {
    pub key: &'static str,
    pub label: &'static str,
    pub better: Better,
    pub decimals: usize,
    /// Shown as a ratio table and in the chart.
    pub headline: bool,
}

const fn m(
    key: &'static str,
    label: &'static str,
    better: Better,
    decimals: usize,
    headline: bool,
) -> MetricDef {
    MetricDef {
        key,
        label,
        better,
        decimals,
        headline,
    }
}

use Better::{Higher, Lower, Neither};

/// The scenarios in print order, with their metrics.
pub const SCENARIOS: &[(&str, &str, &[MetricDef])] = &[
    (
        "traffic",
        "Two pods: TCP (iperf3, receiver), 64 B UDP delivered at the receiving pod's NIC, ping RTT, \
         CPU and RSS of the switch, machine load",
        &[
            m("tcp1_gbps", "TCP 1 Gbps", Higher, 2, true),
            m("tcp4_gbps", "TCP 4 Gbps", Higher, 2, true),
            m("udp_rx_kpps", "UDP64 rx kpps", Higher, 0, true),
            m("udp_sent_kpps", "UDP64 sent kpps", Neither, 0, false),
            m("udp_lost_pct", "UDP64 lost %", Neither, 1, false),
            m("ping_p50_us", "ping p50 us", Lower, 0, true),
            m("ping_p99_us", "ping p99 us", Lower, 0, false),
            m("sw_cpu_s_per_gb", "sw CPU s/GB", Lower, 2, false),
            m("host_cpu_s_per_gb", "host CPU s/GB", Lower, 2, false),
            m("sw_cpu_s_per_mpkt", "sw CPU s/Mpkt", Lower, 2, false),
            m("host_cpu_s_per_mpkt", "host CPU s/Mpkt", Lower, 2, false),
            m("switch_rss_mib", "sw RSS MiB", Lower, 1, false),
            m("tcp1_retr", "TCP1 retr", Neither, 0, false),
            m("bg_busy_cores", "idle load cores", Neither, 2, false),
            m("sw_idle_cpu_pct", "sw idle CPU %", Lower, 2, false),
            m("tcp1_busy_cores", "TCP1 busy cores", Neither, 2, false),
            m("udp_busy_cores", "UDP busy cores", Neither, 2, false),
            m("steal_cores", "steal cores", Neither, 2, false),
            m("loadavg1", "loadavg", Neither, 2, false),
        ],
    ),
    (
        "scale",
        "Many ports: RSS and port-add time; ping, TCP and 64 B UDP between two of the ports",
        &[
            m("ports", "ports", Neither, 0, false),
            m("networks", "networks", Neither, 0, false),
            m("rss_idle_mib", "RSS before MiB", Neither, 1, false),
            m("rss_mib", "sw RSS MiB", Lower, 1, true),
            m("port_add_ms", "port add ms", Lower, 2, false),
            m("setup_s", "setup s", Neither, 1, false),
            m("ping_p50_us", "ping p50 us", Lower, 0, false),
            m("ping_p99_us", "ping p99 us", Lower, 0, true),
            m("tcp1_gbps", "TCP 1 Gbps", Higher, 2, true),
            m("udp_rx_kpps", "UDP64 rx kpps", Higher, 0, true),
            m("bg_busy_cores", "idle load cores", Neither, 2, false),
            m("sw_idle_cpu_pct", "sw idle CPU %", Lower, 2, false),
        ],
    ),
    (
        "cni",
        "CNI ADD/DEL latency, plugin invoked directly with the CNI environment (ms)",
        &[
            m("add_p50_ms", "ADD p50 ms", Lower, 2, true),
            m("add_p90_ms", "ADD p90 ms", Lower, 2, false),
            m("del_p50_ms", "DEL p50 ms", Lower, 2, true),
            m("del_p90_ms", "DEL p90 ms", Lower, 2, false),
            m("calls", "calls", Neither, 0, false),
        ],
    ),
];

pub fn scenario_metrics(scenario: &str) -> &'static [MetricDef] {
    SCENARIOS
        .iter()
        .find(|s| s.0 == scenario)
        .map(|s| s.2)
        .unwrap_or(&[])
}

pub fn median(v: &mut [f64]) -> Option<f64> {
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

/// Systems of `scenario` in first-seen order.
pub fn systems(records: &[Record], scenario: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records.iter().filter(|r| r.scenario == scenario) {
        if !out.contains(&r.system) {
            out.push(r.system.clone());
        }
    }
    out
}

/// Median over runs of one metric of one system.
pub fn median_of(records: &[Record], scenario: &str, system: &str, key: &str) -> Option<f64> {
    let mut v: Vec<f64> = records
        .iter()
        .filter(|r| r.scenario == scenario && r.system == system)
        .filter_map(|r| r.metrics.get(key).copied())
        .collect();
    median(&mut v)
}

/// Median over runs of (system / peer) for one metric, from runs where both have it.
pub fn ratio(
    records: &[Record],
    scenario: &str,
    system: &str,
    peer: &str,
    key: &str,
) -> Option<f64> {
    let get = |s: &str, run: usize| {
        records
            .iter()
            .find(|r| r.scenario == scenario && r.system == s && r.run == run)
            .and_then(|r| r.metrics.get(key).copied())
    };
    let runs: Vec<usize> = records
        .iter()
        .filter(|r| r.scenario == scenario && r.system == system)
        .map(|r| r.run)
        .collect();
    let mut v: Vec<f64> = runs
        .into_iter()
        .filter_map(|run| match (get(system, run), get(peer, run)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        })
        .collect();
    median(&mut v)
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".into(),
    }
}

/// Every table: per scenario the absolute medians, then one ratio matrix per headline metric.
pub fn render(records: &[Record], runs: usize) -> String {
    let mut out = String::new();
    for (scen, title, defs) in SCENARIOS {
        let syss = systems(records, scen);
        if syss.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n== {scen}: {title}\n   (median over {runs} run(s); '-' = not measured)"
        );
        let w = syss.iter().map(|s| s.len()).max().unwrap_or(6).max(6);
        // Columns in chunks, so that a table fits a 120-column terminal.
        let mut chunks: Vec<Vec<&MetricDef>> = vec![Vec::new()];
        let mut width = w;
        for d in defs.iter() {
            let cw = d.label.len().max(6) + 1;
            if width + cw > 120 && !chunks.last().is_some_and(|c| c.is_empty()) {
                chunks.push(Vec::new());
                width = w;
            }
            width += cw;
            if let Some(c) = chunks.last_mut() {
                c.push(d);
            }
        }
        for (ci, chunk) in chunks.iter().enumerate() {
            out.push('\n');
            let _ = write!(out, "{:<w$}", "system");
            for d in chunk {
                let _ = write!(out, " {:>width$}", d.label, width = d.label.len().max(6));
            }
            out.push('\n');
            for s in &syss {
                let _ = write!(out, "{s:<w$}");
                for d in chunk {
                    let v = median_of(records, scen, s, d.key);
                    let _ = write!(
                        out,
                        " {:>width$}",
                        fmt(v, d.decimals),
                        width = d.label.len().max(6)
                    );
                }
                if ci == 0 {
                    let bad: Vec<&Record> = records
                        .iter()
                        .filter(|r| {
                            r.scenario == *scen
                                && &r.system == s
                                && (!r.ok() || r.skipped.is_some())
                        })
                        .collect();
                    for r in bad {
                        match &r.skipped {
                            Some(why) => {
                                let _ = write!(out, "  [skipped: {why}]");
                            }
                            None => {
                                let _ = write!(
                                    out,
                                    "  [run {} failed: {}]",
                                    r.run,
                                    first_line(&r.errors)
                                );
                            }
                        }
                    }
                }
                out.push('\n');
            }
        }
        for d in defs.iter().filter(|d| d.headline) {
            let _ = writeln!(
                out,
                "\n-- {scen}: {} ratio row/column ({} is better; median of per-run ratios)",
                d.label,
                if d.better == Higher {
                    "higher"
                } else {
                    "lower"
                }
            );
            let _ = write!(out, "{:<w$}", "");
            for (i, _) in syss.iter().enumerate() {
                let _ = write!(out, " {:>6}", format!("[{}]", i + 1));
            }
            out.push('\n');
            for (i, s) in syss.iter().enumerate() {
                let _ = write!(out, "{:<w$}", format!("[{}] {s}", i + 1), w = w + 5);
                for p in &syss {
                    let v = if p == s {
                        None
                    } else {
                        ratio(records, scen, s, p, d.key)
                    };
                    let _ = write!(out, " {:>6}", if p == s { "1".into() } else { fmt(v, 2) });
                }
                out.push('\n');
            }
        }
    }
    let drops: Vec<String> = records
        .iter()
        .filter_map(|r| {
            let parts: Vec<String> = r
                .raw
                .iter()
                .filter(|(k, v)| {
                    k.ends_with("_drops") && v.as_object().is_some_and(|o| !o.is_empty())
                })
                .map(|(k, v)| format!("{} {v}", k.trim_end_matches("_drops")))
                .collect();
            (!parts.is_empty()).then(|| {
                format!(
                    "{}/{} run {}: {}",
                    r.scenario,
                    r.system,
                    r.run,
                    parts.join("; ")
                )
            })
        })
        .collect();
    if !drops.is_empty() {
        let _ = writeln!(
            out,
            "\nvswitchd drop counters after the tests (non-zero only):"
        );
        for d in drops {
            let _ = writeln!(out, "  {}", first_chars(&d, 400));
        }
    }
    let notes: Vec<String> = records
        .iter()
        .filter(|r| !r.notes.is_empty() && r.run == 1)
        .map(|r| format!("{}/{}: {}", r.scenario, r.system, r.notes.join("; ")))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nnotes (run 1):");
        for n in notes {
            let _ = writeln!(out, "  {}", first_chars(&n, 400));
        }
    }
    out
}

fn first_line(v: &[String]) -> String {
    first_chars(
        v.first()
            .map(|s| s.lines().next().unwrap_or(""))
            .unwrap_or(""),
        160,
    )
}

fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Medians and full ratio matrices of every metric, for the JSON file.
pub fn summarize(records: &[Record]) -> Value {
    let mut out = serde_json::Map::new();
    for (scen, _, defs) in SCENARIOS {
        let syss = systems(records, scen);
        if syss.is_empty() {
            continue;
        }
        let mut med = serde_json::Map::new();
        let mut rat = serde_json::Map::new();
        for s in &syss {
            let mut m = serde_json::Map::new();
            let mut r = serde_json::Map::new();
            for d in defs.iter() {
                if let Some(v) = median_of(records, scen, s, d.key) {
                    m.insert(d.key.into(), v.into());
                }
                if d.better == Neither {
                    continue;
                }
                let mut row = serde_json::Map::new();
                for p in syss.iter().filter(|p| *p != s) {
                    if let Some(v) = ratio(records, scen, s, p, d.key) {
                        row.insert(p.clone(), v.into());
                    }
                }
                r.insert(d.key.into(), row.into());
            }
            med.insert(s.clone(), m.into());
            rat.insert(s.clone(), r.into());
        }
        out.insert(
            scen.to_string(),
            serde_json::json!({"medians": med, "ratios_vs_peers": rat}),
        );
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sys: &str, run: usize, v: f64) -> Record {
        let mut r = Record::new("traffic", sys, "", run);
        r.set("tcp1_gbps", Some(v));
        r
    }

    #[test]
    fn ratio_is_median_of_per_run_ratios() {
        let rs = vec![
            rec("a", 1, 2.0),
            rec("b", 1, 1.0),
            rec("a", 2, 3.0),
            rec("b", 2, 3.0),
            rec("a", 3, 8.0),
            rec("b", 3, 2.0),
        ];
        // Per run: 2, 1, 4 -> median 2 (the ratio of the medians would be 3/2).
        assert_eq!(ratio(&rs, "traffic", "a", "b", "tcp1_gbps"), Some(2.0));
        assert_eq!(median_of(&rs, "traffic", "a", "tcp1_gbps"), Some(3.0));
    }

    #[test]
    fn ratio_skips_runs_missing_a_side() {
        let mut rs = vec![rec("a", 1, 2.0), rec("b", 1, 1.0), rec("a", 2, 5.0)];
        rs.push(Record::new("traffic", "b", "", 2));
        assert_eq!(ratio(&rs, "traffic", "a", "b", "tcp1_gbps"), Some(2.0));
        assert_eq!(ratio(&rs, "traffic", "a", "c", "tcp1_gbps"), None);
    }

    #[test]
    fn render_has_a_row_per_system_and_marks_skips() {
        let mut s = Record::new("traffic", "ovs-tap", "", 1);
        s.skipped = Some("install openvswitch-switch".into());
        let rs = vec![rec("bridge", 1, 10.0), rec("vs-tap", 1, 4.0), s];
        let t = render(&rs, 1);
        assert!(t.contains("bridge"));
        assert!(t.contains("[skipped: install openvswitch-switch]"));
        assert!(t.contains("0.40"), "{t}");
    }
}
