//! Records of the dataplane (indices) turned into [`TraceEvent`]s (names), with the daemon's
//! [`NameTable`] of the moment.

use std::collections::BTreeMap;

use super::hub::Record;
use super::matcher::Names;
use crate::dataplane::fdb::PortIdx;
use crate::dataplane::trace::{
    Answer, DomainIdx, EntrySource, Lookup, PeerIdx, Rx, Stage, Summary, WireKind,
};
use vswitch_api::trace::{encode_hex, verdict, Headers, RxInfo, StageInfo, TraceEvent};

/// Names of the dataplane's indices, as the control plane knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    /// Port index → (port id, its domain).
    pub ports: BTreeMap<PortIdx, (String, DomainIdx)>,
    pub networks: BTreeMap<DomainIdx, String>,
    pub peers: BTreeMap<PeerIdx, String>,
}

impl Names for NameTable {
    fn port(&self, id: &str) -> Option<(PortIdx, DomainIdx)> {
        self.ports
            .iter()
            .find(|(_, (n, _))| n == id)
            .map(|(i, (_, d))| (*i, *d))
    }
    fn network(&self, name: &str) -> Option<DomainIdx> {
        self.networks
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(i, _)| *i)
    }
    fn peer(&self, name: &str) -> Option<PeerIdx> {
        self.peers.iter().find(|(_, n)| *n == name).map(|(i, _)| *i)
    }
}

impl NameTable {
    /// A port's id (`#N` if it is gone).
    pub fn port_name(&self, i: PortIdx) -> String {
        self.ports
            .get(&i)
            .map_or_else(|| format!("#{i}"), |p| p.0.clone())
    }
    pub fn network_name(&self, i: DomainIdx) -> String {
        self.networks
            .get(&i)
            .cloned()
            .unwrap_or_else(|| format!("#{i}"))
    }
    pub fn peer_name(&self, i: PeerIdx) -> String {
        self.peers
            .get(&i)
            .cloned()
            .unwrap_or_else(|| format!("#{i}"))
    }

    /// Whether every port, network and peer a record mentions has a name here.
    pub fn knows(&self, r: &Record) -> bool {
        let port = |p: &PortIdx| self.ports.contains_key(p);
        let peer = |p: &PeerIdx| self.peers.contains_key(p);
        let rx = match r.rx {
            Rx::Port(p) => port(&p),
            Rx::Underlay { peer: q, .. } => q.as_ref().is_none_or(peer),
        };
        rx && r
            .domain
            .as_ref()
            .is_none_or(|d| self.networks.contains_key(d))
            && r.stages.iter().all(|s| match s {
                Stage::RxPort { port: p, .. } | Stage::TxPort(p) => port(p),
                Stage::Domain(d) => self.networks.contains_key(d),
                Stage::Encap { peer: q, .. } => peer(q),
                Stage::RxUnderlay { peer: q, .. } | Stage::Route { via_peer: q, .. } => {
                    q.as_ref().is_none_or(peer)
                }
                Stage::Lookup {
                    result: Lookup::Port { port: p, .. },
                    ..
                } => port(p),
                Stage::Lookup {
                    result: Lookup::Peer { peer: q, .. },
                    ..
                } => peer(q),
                _ => true,
            })
    }
}

fn wire(w: WireKind) -> String {
    match w {
        WireKind::Vxlan => "vxlan",
        WireKind::Ipip => "ipip",
        WireKind::Direct => "direct",
    }
    .into()
}

fn source(s: EntrySource) -> String {
    match s {
        EntrySource::Local => "local",
        EntrySource::Learned => "learned",
        EntrySource::Remote => "remote",
    }
    .into()
}

pub fn headers(s: &Summary) -> Headers {
    Headers {
        eth_src: s.eth_src,
        eth_dst: s.eth_dst,
        ethertype: s.ethertype,
        ip_src: s.ip_src,
        ip_dst: s.ip_dst,
        ip_proto: s.ip_proto,
        ttl: s.ttl,
        l4_src: s.l4_src,
        l4_dst: s.l4_dst,
        op: s.op,
        len: s.len,
    }
}

fn answer(a: &Answer) -> String {
    match a {
        Answer::Arp { ip, mac } => format!("arp reply: {ip} is-at {mac}"),
        Answer::Echo => "icmp echo reply from the gateway".into(),
        Answer::FragNeeded { mtu } => format!("icmp fragmentation needed, mtu {mtu}"),
        Answer::NeighborAdvert { mac } => format!("neighbor advertisement: {mac}"),
        Answer::RouterSolicit => "router solicitation absorbed".into(),
        Answer::MldReport => "mld report consumed".into(),
    }
}

/// One stage with names.
pub fn stage_info(s: &Stage, n: &NameTable) -> StageInfo {
    match s {
        Stage::RxPort {
            port,
            worker,
            offload,
        } => StageInfo::RxPort {
            port: n.port_name(*port),
            worker: *worker,
            gso_type: offload.gso_type,
            gso_size: offload.gso_size,
            csum_partial: offload.csum_partial,
        },
        Stage::RxUnderlay {
            wire: w,
            worker,
            outer_src,
            outer_dst,
            vni,
            udp_src,
            peer,
        } => StageInfo::RxUnderlay {
            wire: wire(*w),
            worker: *worker,
            outer_src: *outer_src,
            outer_dst: *outer_dst,
            vni: *vni,
            udp_src: *udp_src,
            peer: peer.map(|p| n.peer_name(p)),
        },
        Stage::Parsed(h) => StageInfo::Parsed(headers(h)),
        Stage::Domain(d) => StageInfo::Domain {
            network: n.network_name(*d),
        },
        Stage::Guard(r) => StageInfo::Guard {
            drop: r.map(|r| r.name().to_string()),
        },
        Stage::Answered(a) => StageInfo::Answered { answer: answer(a) },
        Stage::Lookup { mac, result } => {
            let (result, to, src) = match result {
                Lookup::Port { port, source: s } => {
                    ("port", Some(n.port_name(*port)), Some(source(*s)))
                }
                Lookup::Peer { peer, source: s } => {
                    ("peer", Some(n.peer_name(*peer)), Some(source(*s)))
                }
                Lookup::Miss => ("miss", None, None),
                Lookup::Multicast => ("multicast", None, None),
            };
            StageInfo::Lookup {
                mac: *mac,
                result: result.into(),
                to,
                source: src,
            }
        }
        Stage::Route {
            dst,
            ttl,
            src_mac,
            dst_mac,
            via_peer,
        } => StageInfo::Route {
            dst: *dst,
            ttl: *ttl,
            src_mac: *src_mac,
            dst_mac: *dst_mac,
            via_peer: via_peer.map(|p| n.peer_name(p)),
        },
        Stage::Encap {
            peer,
            wire: w,
            outer_src,
            outer_dst,
            vni,
            udp_src,
        } => StageInfo::Encap {
            peer: n.peer_name(*peer),
            wire: wire(*w),
            outer_src: *outer_src,
            outer_dst: *outer_dst,
            vni: *vni,
            udp_src: *udp_src,
        },
        Stage::Segment {
            segments,
            gso_size,
            why,
        } => StageInfo::Segment {
            segments: *segments,
            gso_size: *gso_size,
            why: (*why).into(),
        },
        Stage::Coalesce { segments } => StageInfo::Coalesce {
            segments: *segments,
        },
        Stage::TxPort(p) => StageInfo::TxPort {
            port: n.port_name(*p),
        },
        Stage::Flood { ports, peers } => StageInfo::Flood {
            ports: *ports,
            peers: *peers,
        },
        Stage::Drop(r) => StageInfo::Drop {
            reason: r.name().into(),
        },
    }
}

/// A record with names; `snaplen` bytes of its frame are kept (0 for a trace).
pub fn event(rec: &Record, n: &NameTable, snaplen: usize) -> TraceEvent {
    let stages: Vec<StageInfo> = rec.stages.iter().map(|s| stage_info(s, n)).collect();
    let rx = match (rec.rx, rec.dry_run) {
        (Rx::Port(p), false) => RxInfo::Port {
            port: n.port_name(p),
        },
        (Rx::Port(p), true) => RxInfo::Inject {
            port: n.port_name(p),
        },
        (Rx::Underlay { peer, .. }, _) => RxInfo::Underlay {
            peer: peer.map(|p| n.peer_name(p)),
        },
    };
    let domain = rec.domain.or_else(|| {
        rec.stages.iter().find_map(|s| match s {
            Stage::Domain(d) => Some(*d),
            _ => None,
        })
    });
    TraceEvent {
        time_ns: rec.time_ns,
        worker: rec.worker,
        rx,
        network: domain.map(|d| n.network_name(d)),
        verdict: verdict(&stages),
        stages,
        frame: encode_hex(&rec.frame[..rec.frame.len().min(snaplen)]),
        orig_len: rec.orig_len,
        dry_run: rec.dry_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::DropReason;
    use crate::observe::matcher::Matcher;
    use std::net::Ipv4Addr;
    use vswitch_config::MacAddr;

    pub(crate) fn lab_names() -> NameTable {
        NameTable {
            ports: [(0, ("pod-a".into(), 0)), (1, ("pod-b".into(), 0))].into(),
            networks: [(0, "blue".into())].into(),
            peers: [(0, "node-b".into())].into(),
        }
    }

    #[test]
    fn names_both_ways() {
        let n = lab_names();
        let m = Matcher::new("port=pod-b and network=blue and peer=node-b", &n).unwrap();
        assert_eq!(m.text(), "port=pod-b and network=blue and peer=node-b");
        assert_eq!(n.port_name(7), "#7");
        let mut rec = Record::new(2, Rx::Port(0), Some(0), &[0u8; 60], 16);
        rec.stages = vec![
            Stage::Lookup {
                mac: MacAddr([2, 0, 0, 0, 0, 2]),
                result: Lookup::Peer {
                    peer: 0,
                    source: EntrySource::Remote,
                },
            },
            Stage::Encap {
                peer: 0,
                wire: WireKind::Vxlan,
                outer_src: Ipv4Addr::new(10, 1, 0, 1),
                outer_dst: Ipv4Addr::new(10, 1, 0, 2),
                vni: Some(7),
                udp_src: None,
            },
        ];
        let e = event(&rec, &n, 8);
        assert_eq!(e.frame.len(), 16, "8 bytes as hex");
        assert_eq!(e.network.as_deref(), Some("blue"));
        assert_eq!(e.verdict, "encap vxlan to node-b 10.1.0.1 > 10.1.0.2 vni 7");
        assert_eq!(
            e.stages[0].to_string(),
            "lookup   fdb 02:00:00:00:00:02: peer node-b (remote)"
        );
        rec.stages.push(Stage::Drop(DropReason::MtuExceeded));
        rec.dry_run = true;
        let e = event(&rec, &n, 0);
        assert_eq!(e.verdict, "drop mtu_exceeded");
        assert_eq!(
            e.rx,
            RxInfo::Inject {
                port: "pod-a".into()
            }
        );
        assert!(e.frame.is_empty());
    }
}
