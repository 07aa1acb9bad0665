//! The seam between the pipeline and packet tracing / capture.
//!
//! Every stage of the pipeline reports what it decided through a [`Trace`] implementation. The
//! fast path uses [`Off`], whose methods are empty and inlined away, so an untraced packet pays
//! nothing; a packet that matched a trace or capture session runs the *same* code with a
//! [`Recorder`], which collects the stages. A synthetic trace (`vswitchctl trace --inject`) runs
//! with a recorder in dry-run mode: the pipeline then changes no table (no learning).
//!
//! Indices (ports, domains, peers) are the dataplane's; the control plane names them when it
//! renders a record.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vswitch_config::MacAddr;

use super::counters::DropReason;
use super::fdb::PortIdx;

pub type DomainIdx = u32;
pub type PeerIdx = u32;

/// How a packet travels between nodes, as a trace shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireKind {
    Vxlan,
    Ipip,
    Direct,
}

/// Where an FDB entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySource {
    /// A local port's own MAC.
    Local,
    /// Learned from traffic (local port or peer).
    Learned,
    /// A remote endpoint from the datastore (etcd) or static config.
    Remote,
}

/// Outcome of a forwarding-table lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Known: a local port.
    Port { port: PortIdx, source: EntrySource },
    /// Known: behind a peer node.
    Peer { peer: PeerIdx, source: EntrySource },
    /// Unknown unicast: flooded within the domain.
    Miss,
    /// Broadcast/multicast: flooded (or, for snooped multicast, sent to members only).
    Multicast,
}

/// Something the switch answered itself instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// ARP reply for `ip` with `mac` (gateway, proxy ARP in L3, or endpoint table).
    Arp { ip: Ipv4Addr, mac: MacAddr },
    /// ICMP echo reply from the gateway.
    Echo,
    /// ICMP fragmentation needed, with the MTU that fits.
    FragNeeded { mtu: u16 },
    /// IPv6 neighbour advertisement from the endpoint table.
    NeighborAdvert { mac: MacAddr },
    /// IPv6 router solicitation absorbed / answered by the switch.
    RouterSolicit,
    /// MLD report consumed by the switch (snooping).
    MldReport,
}

/// Headers of a packet, summarised for a trace line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub eth_src: MacAddr,
    pub eth_dst: MacAddr,
    pub ethertype: u16,
    /// IPv4 or IPv6 source and destination, when there is one.
    pub ip_src: Option<std::net::IpAddr>,
    pub ip_dst: Option<std::net::IpAddr>,
    pub ip_proto: Option<u8>,
    pub ttl: Option<u8>,
    pub l4_src: Option<u16>,
    pub l4_dst: Option<u16>,
    /// ARP operation, ICMP/ICMPv6 type.
    pub op: Option<u16>,
    /// Bytes of the frame (a GSO superframe counts whole).
    pub len: u32,
}

impl Summary {
    /// Summarises a frame's headers straight from its bytes, for trace and capture filters and
    /// for pipelines that have not parsed a header yet. Never panics; what it cannot read it
    /// leaves empty. For ARP, `ip_src`/`ip_dst` are the sender/target protocol addresses and `op`
    /// the operation; for ICMP/ICMPv6, `op` is the message type. Only the first fragment of an
    /// IPv4 packet has L4 ports.
    pub fn from_frame(frame: &[u8]) -> Summary {
        let mut s = Summary {
            len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
            ..Summary::default()
        };
        let (Some(dst), Some(src), Some(et)) = (frame.get(0..6), frame.get(6..12), be16(frame, 12))
        else {
            return s;
        };
        s.eth_dst = MacAddr::from_bytes(dst).unwrap_or_default();
        s.eth_src = MacAddr::from_bytes(src).unwrap_or_default();
        s.ethertype = et;
        let l3 = &frame[14..];
        match et {
            0x0806 => summarise_arp(&mut s, l3),
            0x0800 => summarise_ipv4(&mut s, l3),
            0x86dd => summarise_ipv6(&mut s, l3),
            _ => {}
        }
        s
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn summarise_arp(s: &mut Summary, a: &[u8]) {
    // Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
    if be16(a, 0) != Some(1) || be16(a, 2) != Some(0x0800) || a.get(4..6) != Some(&[6, 4]) {
        return;
    }
    s.op = be16(a, 6);
    s.ip_src = ipv4_at(a, 14).map(IpAddr::V4);
    s.ip_dst = ipv4_at(a, 24).map(IpAddr::V4);
}

fn summarise_ipv4(s: &mut Summary, p: &[u8]) {
    let Some(&vihl) = p.first() else { return };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || p.len() < ihl {
        return;
    }
    s.ttl = Some(p[8]);
    s.ip_proto = Some(p[9]);
    s.ip_src = ipv4_at(p, 12).map(IpAddr::V4);
    s.ip_dst = ipv4_at(p, 16).map(IpAddr::V4);
    let frag_offset = be16(p, 6).unwrap_or(0) & 0x1fff;
    if frag_offset == 0 {
        summarise_l4(s, p[9], &p[ihl..]);
    }
}

fn summarise_ipv6(s: &mut Summary, p: &[u8]) {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return;
    }
    s.ttl = Some(p[7]);
    let addr = |at: usize| {
        let o: [u8; 16] = p[at..at + 16].try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(o)))
    };
    s.ip_src = addr(8);
    s.ip_dst = addr(24);
    // Walk the common extension headers (bounded) to the upper-layer protocol.
    let (mut next, mut at) = (p[6], 40usize);
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, excluding the first 8.
            0 | 43 | 60 => {
                let (Some(&n), Some(&l)) = (p.get(at), p.get(at + 1)) else {
                    return;
                };
                next = n;
                at += (usize::from(l) + 1) * 8;
            }
            // Fragment header: only the first fragment carries the L4 header.
            44 => {
                let (Some(&n), Some(off)) = (p.get(at), be16(p, at + 2)) else {
                    return;
                };
                next = n;
                at += 8;
                if off & 0xfff8 != 0 {
                    s.ip_proto = Some(next);
                    return;
                }
            }
            _ => break,
        }
    }
    s.ip_proto = Some(next);
    if let Some(l4) = p.get(at..) {
        summarise_l4(s, next, l4);
    }
}

fn summarise_l4(s: &mut Summary, proto: u8, l4: &[u8]) {
    match proto {
        6 | 17 | 132 => {
            s.l4_src = be16(l4, 0);
            s.l4_dst = be16(l4, 2);
        }
        1 | 58 => s.op = l4.first().map(|t| u16::from(*t)),
        _ => {}
    }
}

/// Where a packet entered this node, as trace and capture filters see it before the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// A local port.
    Port(PortIdx),
    /// The underlay (VXLAN, IPIP or direct), from this peer when the source is a known peer.
    /// `marked`: the sending vswitch node traced this packet and said so in its VXLAN header
    /// (see [`TRACE_MARK`]).
    Underlay { peer: Option<PeerIdx>, marked: bool },
}

/// The VXLAN header bit a vswitch node sets on a packet it traced, so the receiving node can
/// trace its decapsulation and delivery (`vswitchctl trace --match traced`): bit 0 of the last
/// reserved byte (byte 7). Linux drops VXLAN packets with unknown reserved bits, so it is only
/// ever set toward peers known to run vswitch (registered in the cluster datastore), and cleared
/// by the receiver before anything else looks at the header.
pub const TRACE_MARK: (usize, u8) = (7, 0x01);

/// Offload metadata of a buffer (from the virtio-net header), as a trace shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OffloadInfo {
    /// 0 none, else the virtio-net GSO type (TCPv4, TCPv6, UDP L4).
    pub gso_type: u8,
    pub gso_size: u16,
    /// Checksum left for the receiver/egress to complete.
    pub csum_partial: bool,
}

/// One pipeline stage and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Received on a local port by `worker`.
    RxPort {
        port: PortIdx,
        worker: u16,
        offload: OffloadInfo,
    },
    /// Received from the underlay (outer headers as seen on the wire).
    RxUnderlay {
        wire: WireKind,
        worker: u16,
        outer_src: Ipv4Addr,
        outer_dst: Ipv4Addr,
        /// VXLAN only.
        vni: Option<u32>,
        udp_src: Option<u16>,
        peer: Option<PeerIdx>,
    },
    Parsed(Summary),
    /// The isolation domain the packet belongs to from here on.
    Domain(DomainIdx),
    /// Anti-spoofing / first-hop security: passed (`None`) or the drop reason.
    Guard(Option<DropReason>),
    Answered(Answer),
    Lookup {
        mac: MacAddr,
        result: Lookup,
    },
    /// L3 routing in a routed network: TTL after decrement and the MAC rewrite.
    Route {
        dst: Ipv4Addr,
        ttl: u8,
        src_mac: MacAddr,
        dst_mac: MacAddr,
        /// The peer whose block holds `dst`, if it is not local.
        via_peer: Option<PeerIdx>,
    },
    /// Encapsulated (or sent directly) to a peer.
    Encap {
        peer: PeerIdx,
        wire: WireKind,
        outer_src: Ipv4Addr,
        outer_dst: Ipv4Addr,
        vni: Option<u32>,
        udp_src: Option<u16>,
    },
    /// A superframe cut into segments (or checksummed) in software at an egress.
    Segment {
        segments: u16,
        gso_size: u16,
        /// Why the egress could not take it whole.
        why: &'static str,
    },
    /// Coalesced with following segments of the same flow into one superframe (receive).
    Coalesce {
        segments: u16,
    },
    /// Sent to a local port.
    TxPort(PortIdx),
    /// Flooded to these many local ports and peers.
    Flood {
        ports: u16,
        peers: u16,
    },
    Drop(DropReason),
}

/// What a pipeline run reports to.
pub trait Trace {
    /// Whether this run records anything (lets callers skip building costly stages).
    const ON: bool;
    /// Records a stage; `f` is only called when recording.
    fn stage(&mut self, f: impl FnOnce() -> Stage);
    /// Whether the pipeline may change tables (FDB learning). False for synthetic traces.
    fn mutate(&self) -> bool {
        true
    }
}

/// The fast path: records nothing, costs nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Off;

impl Trace for Off {
    const ON: bool = false;
    #[inline(always)]
    fn stage(&mut self, _f: impl FnOnce() -> Stage) {}
}

/// Collects the stages of one traced packet.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub stages: Vec<Stage>,
    /// Synthetic trace: run through the live tables without changing them.
    pub dry_run: bool,
}

impl Recorder {
    pub fn dry_run() -> Recorder {
        Recorder {
            stages: Vec::new(),
            dry_run: true,
        }
    }
}

impl Trace for Recorder {
    const ON: bool = true;
    fn stage(&mut self, f: impl FnOnce() -> Stage) {
        self.stages.push(f());
    }
    fn mutate(&self) -> bool {
        !self.dry_run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Trace>(t: &mut T) -> bool {
        t.stage(|| Stage::Drop(DropReason::Hairpin));
        t.mutate()
    }

    #[test]
    fn off_records_nothing_and_recorder_everything() {
        assert!(run(&mut Off));
        let mut r = Recorder::default();
        assert!(run(&mut r));
        assert_eq!(r.stages, vec![Stage::Drop(DropReason::Hairpin)]);
        let mut d = Recorder::dry_run();
        assert!(!run(&mut d));
    }
}
