//! The Prometheus exposition of a [`Stats`] snapshot (text format 0.0.4, with the official
//! `prometheus-client` crate). Names follow Prometheus conventions: `vswitch_` prefix, base
//! units (bytes, seconds), `_total` on counters. The busy ratio of a worker is
//! `rate(vswitch_worker_busy_seconds_total[1m])`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use vswitch_api::{StatsReply as Stats, BATCH_BUCKETS};

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Renders a snapshot as Prometheus text.
pub fn render(stats: &Stats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(stats.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Snapshot(Stats);

type Labels = Vec<(&'static str, String)>;

/// A histogram whose buckets are already counted.
struct Buckets {
    sum: f64,
    count: u64,
    /// (upper bound, count in this bucket alone)
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for Buckets {
    fn encode(&self, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
        e.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One metric family: name, help, type, and its labelled samples.
fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let ty = first.metric_type();
    let mut d = e.encode_descriptor(name, help, None, ty)?;
    for (labels, m) in samples {
        m.encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn counter_f(v: f64) -> ConstCounter<f64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

fn gauge_f(v: f64) -> ConstGauge<f64> {
    ConstGauge::new(v)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        family(
            &mut e,
            "vswitch_build_info",
            "Build of the running vswitchd (always 1).",
            [(vec![("version", s.version.clone())], gauge(1))],
        )?;
        family(
            &mut e,
            "vswitch_start_time_seconds",
            "Unix time vswitchd started.",
            [(vec![], gauge_f(s.start_time_secs))],
        )?;

        let port = |p: &vswitch_api::PortStats| -> Labels {
            vec![("port", p.id.clone()), ("network", p.network.clone())]
        };
        type PortField = fn(&vswitch_api::PortStats) -> u64;
        let port_counters: [(&str, &str, PortField); 6] = [
            (
                "vswitch_port_rx_packets",
                "Frames received from the port.",
                |p| p.rx_packets,
            ),
            (
                "vswitch_port_rx_bytes",
                "Bytes received from the port.",
                |p| p.rx_bytes,
            ),
            ("vswitch_port_tx_packets", "Frames sent to the port.", |p| {
                p.tx_packets
            }),
            ("vswitch_port_tx_bytes", "Bytes sent to the port.", |p| {
                p.tx_bytes
            }),
            (
                "vswitch_port_rx_dropped",
                "Frames received from the port and dropped (any reason).",
                |p| p.rx_dropped,
            ),
            (
                "vswitch_port_tx_errors",
                "Frames that could not be written to the port.",
                |p| p.tx_errors,
            ),
        ];
        for (name, help, f) in port_counters {
            family(
                &mut e,
                name,
                help,
                s.ports.iter().map(|p| (port(p), counter(f(p)))),
            )?;
        }
        family(
            &mut e,
            "vswitch_drops",
            "Frames dropped by the dataplane, by reason.",
            s.drops
                .iter()
                .map(|(r, n)| (vec![("reason", r.clone())], counter(*n))),
        )?;

        family(
            &mut e,
            "vswitch_absorbed",
            "Frames the switch consumed as the protocol's peer (not drops), by kind.",
            s.absorbed
                .iter()
                .map(|(r, n)| (vec![("kind", r.clone())], counter(*n))),
        )?;

        let net = |n: &vswitch_api::NetworkStats| -> Labels { vec![("network", n.name.clone())] };
        family(
            &mut e,
            "vswitch_network_ports",
            "Local ports attached to the network.",
            s.networks.iter().map(|n| {
                let mut l = net(n);
                l.push(("kind", n.kind.clone()));
                (l, gauge(n.ports))
            }),
        )?;
        family(
            &mut e,
            "vswitch_fdb_entries",
            "Forwarding-table entries of the network, by source (local, learned, remote).",
            s.networks.iter().flat_map(|n| {
                [
                    ("local", n.fdb.local),
                    ("learned", n.fdb.learned),
                    ("remote", n.fdb.remote),
                ]
                .map(|(src, v)| {
                    let mut l = net(n);
                    l.push(("source", src.to_string()));
                    (l, gauge(v))
                })
            }),
        )?;
        family(
            &mut e,
            "vswitch_network_remote_endpoints",
            "Endpoints of the network on other nodes, known from the datastore.",
            s.networks
                .iter()
                .map(|n| (net(n), gauge(n.remote_endpoints))),
        )?;
        family(
            &mut e,
            "vswitch_ipam_addresses_used",
            "Addresses handed out by the built-in IPAM.",
            s.networks.iter().map(|n| (net(n), gauge(n.ipam_used))),
        )?;
        family(
            &mut e,
            "vswitch_ipam_addresses",
            "Addresses the built-in IPAM can hand out.",
            s.networks.iter().map(|n| (net(n), gauge(n.ipam_size))),
        )?;

        family(
            &mut e,
            "vswitch_peer_up",
            "Whether a peer node is up in the tables (1) or not (0).",
            s.peers.iter().map(|p| {
                (
                    vec![("peer", p.name.clone()), ("source", p.source.clone())],
                    gauge(u64::from(p.up)),
                )
            }),
        )?;
        family(
            &mut e,
            "vswitch_peer_endpoints",
            "Endpoints of a peer node known from the datastore.",
            s.peers
                .iter()
                .map(|p| (vec![("peer", p.name.clone())], gauge(p.endpoints))),
        )?;

        let worker =
            |w: &vswitch_api::WorkerStats| -> Labels { vec![("worker", w.id.to_string())] };
        family(
            &mut e,
            "vswitch_worker_ports",
            "Ports a dataplane worker polls.",
            s.workers.iter().map(|w| (worker(w), gauge(w.ports))),
        )?;
        family(
            &mut e,
            "vswitch_worker_batches",
            "Batches a worker handled.",
            s.workers.iter().map(|w| (worker(w), counter(w.batches))),
        )?;
        family(
            &mut e,
            "vswitch_worker_packets",
            "Packets a worker handled.",
            s.workers.iter().map(|w| (worker(w), counter(w.packets))),
        )?;
        family(
            &mut e,
            "vswitch_worker_busy_seconds",
            "Time a worker spent handling batches; its rate is the busy ratio.",
            s.workers
                .iter()
                .map(|w| (worker(w), counter_f(w.busy_ns as f64 / 1e9))),
        )?;
        family(
            &mut e,
            "vswitch_worker_batch_size_packets",
            "Packets per batch.",
            s.workers
                .iter()
                .filter(|w| !w.batch_sizes.is_empty())
                .map(|w| {
                    // Per-bucket counts: the encoder makes them cumulative.
                    let count = |i: usize| w.batch_sizes.get(i).copied().unwrap_or(0);
                    let mut buckets: Vec<(f64, u64)> = BATCH_BUCKETS
                        .iter()
                        .enumerate()
                        .map(|(i, le)| (f64::from(*le), count(i)))
                        .collect();
                    buckets.push((f64::INFINITY, count(BATCH_BUCKETS.len())));
                    (
                        worker(w),
                        Buckets {
                            sum: w.packets as f64,
                            count: buckets.iter().map(|b| b.1).sum(),
                            buckets,
                        },
                    )
                }),
        )?;

        family(
            &mut e,
            "vswitch_trace_sessions",
            "Trace and capture sessions running.",
            [(vec![], gauge(s.trace.sessions))],
        )?;
        family(
            &mut e,
            "vswitch_trace_records_lost",
            "Trace records dropped because a reader was too slow.",
            [(vec![], counter(s.trace.records_lost))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use vswitch_api::{FdbCounts, NetworkStats, PeerStats, PortStats, WorkerStats};

    pub(crate) fn sample() -> Stats {
        Stats {
            ports: vec![PortStats {
                id: "ns1:eth1".into(),
                network: "blue \"x\"".into(),
                rx_packets: 10,
                rx_bytes: 980,
                tx_packets: 9,
                tx_bytes: 882,
                rx_dropped: 1,
                tx_errors: 0,
            }],
            drops: [
                ("hairpin".to_string(), 1),
                ("spoofed_src_ip".to_string(), 0),
            ]
            .into(),
            absorbed: [("mld_report".to_string(), 2)].into(),
            version: "0.1.0".into(),
            start_time_secs: 1.7e9,
            uptime_secs: 12.5,
            networks: vec![NetworkStats {
                name: "blue \"x\"".into(),
                kind: "l2".into(),
                ports: 1,
                fdb: FdbCounts {
                    local: 2,
                    learned: 1,
                    remote: 3,
                },
                remote_endpoints: 3,
                ipam_used: 1,
                ipam_size: 253,
            }],
            peers: vec![PeerStats {
                name: "node-b".into(),
                underlay_ip: Some("10.1.0.2".parse().unwrap()),
                source: "static".into(),
                up: true,
                endpoints: 3,
            }],
            workers: vec![WorkerStats {
                id: 0,
                ports: 1,
                batches: 4,
                packets: 19,
                busy_ns: 1_500_000,
                batch_sizes: vec![2, 0, 1, 0, 1, 0, 0, 0, 0, 0],
            }],
            trace: Default::default(),
        }
    }

    #[test]
    fn names_labels_and_values() {
        let text = render(&sample());
        for line in [
            "# TYPE vswitch_port_rx_packets_total counter",
            r#"vswitch_port_rx_packets_total{port="ns1:eth1",network="blue \"x\""} 10"#,
            r#"vswitch_drops_total{reason="hairpin"} 1"#,
            r#"vswitch_absorbed_total{kind="mld_report"} 2"#,
            r#"vswitch_fdb_entries{network="blue \"x\"",source="remote"} 3"#,
            r#"vswitch_peer_up{peer="node-b",source="static"} 1"#,
            r#"vswitch_worker_busy_seconds_total{worker="0"} 0.0015"#,
            r#"vswitch_worker_batch_size_packets_bucket{worker="0",le="4"} 3"#,
            r#"vswitch_worker_batch_size_packets_bucket{worker="0",le="+Inf"} 4"#,
            r#"vswitch_worker_batch_size_packets_count{worker="0"} 4"#,
            r#"vswitch_worker_batch_size_packets_sum{worker="0"} 19.0"#,
            r#"vswitch_build_info{version="0.1.0"} 1"#,
            "vswitch_trace_sessions 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "0.0.4 text, not OpenMetrics");
    }

    /// `promtool check metrics` (Debian's `prometheus`, installed by tests/install-deps.sh) as
    /// the independent judge of the format and the naming conventions.
    #[test]
    fn promtool_accepts_it() {
        if Command::new("promtool").arg("--version").output().is_err() {
            eprintln!("promtool not installed (tests/install-deps.sh installs it): skipped");
            return;
        }
        for s in [sample(), Stats::default()] {
            let mut child = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let text = render(&s);
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
                "promtool: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
