//! Read-only views of the live tables: FDB dump, stats, kernel drop counters.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use vswitch_config::MacAddr;

use super::{err, sys_err, Daemon, Peer, Port};
use crate::control::netconf;
use crate::dataplane::fdb::{EntryKind, PortIdx};
use crate::dataplane::pipeline::{Dest, PeerIdx};
use crate::dataplane::port::PortDev;
use crate::dataplane::worker::Command;
use crate::dataplane::PortCounters;
use vswitch_api::{
    ApiError, ErrorKind, FdbEntryInfo, FdbEntryKind, FdbSource, PortStats, StatsReply,
};

impl Daemon {
    pub(super) fn fdb_show(&self, network: &str) -> Result<Vec<FdbEntryInfo>, ApiError> {
        let n = self.networks.get(network).ok_or_else(|| {
            err(
                ErrorKind::UnknownNetwork,
                format!("unknown network {network:?}"),
            )
        })?;
        let by_idx: BTreeMap<PortIdx, &Port> = self.ports.values().map(|p| (p.idx, p)).collect();
        let peer_by_idx: BTreeMap<PeerIdx, &Peer> =
            self.peers.values().map(|p| (p.idx, p)).collect();
        let mut rows: BTreeMap<MacAddr, FdbEntryInfo> = BTreeMap::new();
        rows.insert(
            n.conf.gateway_mac(),
            FdbEntryInfo {
                mac: n.conf.gateway_mac(),
                port: "gateway".into(),
                kind: FdbEntryKind::Static,
                ips: vec![n.conf.gateway_ip()],
                age_secs: None,
                source: FdbSource::Local,
            },
        );
        for w in &self.workers {
            let (tx, rx) = std::sync::mpsc::channel();
            w.call(Command::DumpFdb {
                domain: n.idx,
                reply: tx,
            })
            .map_err(|e| sys_err("read FDB", e))?;
            for r in rx.try_iter().flatten() {
                let (kind, age) = match r.kind {
                    EntryKind::Static => (FdbEntryKind::Static, None),
                    EntryKind::Learned => (FdbEntryKind::Learned, Some(r.age_secs)),
                };
                let row = match r.dest {
                    Dest::Port(i) => {
                        let Some(port) = by_idx.get(&i) else { continue };
                        FdbEntryInfo {
                            mac: r.mac,
                            port: port.info.id.clone(),
                            kind,
                            ips: if kind == FdbEntryKind::Static {
                                port.info.ips.clone()
                            } else {
                                Vec::new()
                            },
                            age_secs: age,
                            source: if kind == FdbEntryKind::Static {
                                FdbSource::Local
                            } else {
                                FdbSource::Learned
                            },
                        }
                    }
                    Dest::Peer(i) => {
                        let Some(peer) = peer_by_idx.get(&i) else {
                            continue;
                        };
                        let ip = self
                            .remote_endpoints
                            .get(&(network.to_string(), r.mac))
                            .and_then(|(ip, _)| *ip);
                        FdbEntryInfo {
                            mac: r.mac,
                            port: format!("peer:{}", peer.spec.name),
                            kind,
                            ips: ip.into_iter().collect(),
                            age_secs: age,
                            source: if kind == FdbEntryKind::Static {
                                FdbSource::Etcd
                            } else {
                                FdbSource::Learned
                            },
                        }
                    }
                };
                rows.entry(r.mac)
                    .and_modify(|e| {
                        if let (Some(a), Some(b)) = (e.age_secs, row.age_secs) {
                            e.age_secs = Some(a.min(b));
                        }
                    })
                    .or_insert(row);
            }
        }
        Ok(rows.into_values().collect())
    }

    pub(super) fn stats(&self) -> StatsReply {
        let ports = self
            .ports
            .values()
            .map(|p| {
                let sum = |f: fn(&PortCounters) -> &std::sync::atomic::AtomicU64| {
                    p.counters
                        .iter()
                        .map(|c| f(c).load(Ordering::Relaxed))
                        .sum::<u64>()
                };
                PortStats {
                    id: p.info.id.clone(),
                    network: p.info.network.clone(),
                    rx_packets: sum(|c| &c.rx_packets),
                    rx_bytes: sum(|c| &c.rx_bytes),
                    tx_packets: sum(|c| &c.tx_packets),
                    tx_bytes: sum(|c| &c.tx_bytes),
                    rx_dropped: sum(|c| &c.rx_dropped),
                    tx_errors: sum(|c| &c.tx_errors),
                }
            })
            .collect();
        let mut drops: BTreeMap<String, u64> = crate::dataplane::DropReason::ALL
            .iter()
            .map(|r| {
                let n = self.workers.iter().map(|w| w.drops.get(*r)).sum();
                (r.name().to_string(), n)
            })
            .collect();
        for (k, v) in self.kernel_drops() {
            drops.insert(k.to_string(), v);
        }
        let mut absorbed: BTreeMap<String, u64> = BTreeMap::new();
        for w in &self.workers {
            for (a, n) in w.drops.absorbed() {
                *absorbed.entry(a.name().to_string()).or_default() += n;
            }
        }
        self.stats_more(StatsReply {
            ports,
            drops,
            absorbed,
            ..Default::default()
        })
    }

    /// Losses in the kernel around us, by where they happen: in front of us, pod taps' queues
    /// and veths' backlogs towards us (the pod sent faster than we read), AF_PACKET sockets' and
    /// the underlay sockets' receive buffers; behind us, pods' receive backlogs (we delivered
    /// faster than the pod's stack took it).
    pub(super) fn kernel_drops(&self) -> Vec<(&'static str, u64)> {
        let mut tap = 0;
        let mut veth = 0;
        let mut pod_rx = 0;
        for p in self.ports.values() {
            let (rx, tx) = netconf::pod_drops(&p.netns, &p.info.ifname).unwrap_or((0, 0));
            pod_rx += rx;
            match &p.dev {
                Some(PortDev::Tap(_)) => tap += tx,
                Some(PortDev::Packet(s)) => {
                    // The veth's backlog towards us was full: counted as the pod end's transmit
                    // drops or the host end's receive drops, depending on the kernel.
                    veth += tx;
                    veth += std::fs::read_to_string(format!(
                        "/sys/class/net/{}/statistics/rx_dropped",
                        p.info.host_ifname
                    ))
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                    // PACKET_STATISTICS resets on read: keep the running total per port.
                    p.kernel_drops
                        .fetch_add(s.take_drops().unwrap_or(0), Ordering::Relaxed);
                }
                _ => {}
            }
        }
        let packet_total: u64 = self
            .ports
            .values()
            .map(|p| p.kernel_drops.load(Ordering::Relaxed))
            .sum();
        let underlay = self.uplink.as_ref().map_or(0, |u| {
            u.vxlan_rx
                .iter()
                .map(|s| s.drops().unwrap_or(0))
                .sum::<u64>()
                + u.ipip_rx.drops().unwrap_or(0)
        });
        vec![
            ("kernel_tap_queue_full", tap),
            ("kernel_veth_backlog_full", veth),
            ("kernel_pod_rx_dropped", pod_rx),
            ("kernel_af_packet_rcvbuf_full", packet_total),
            ("kernel_underlay_rcvbuf_full", underlay),
        ]
    }
}
