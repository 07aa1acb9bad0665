//! The switching pipeline of one worker, free of I/O so it is tested without root:
//! ingress checks (size, anti-spoofing) → ARP/ICMP answered locally → L2 forwarding (FDB) or L3
//! routing (Calico style), strictly inside the ingress port's domain. A frame can only ever go to
//! ports and peers of the domain it entered: every output is taken from that domain's own tables.
//!
//! Frames from other nodes enter through [`Switch::process_tunnel`] (VXLAN, already mapped to a
//! domain by its VNI) or [`Switch::process_routed_in`] (IPIP or direct routing, mapped by the
//! destination's L3 network); they are only ever delivered to local ports (split horizon).

use std::net::{Ipv4Addr, Ipv6Addr};

use vswitch_config::{EncapMode, Encapsulation, Ipv4Net, MacAddr, NetworkKind};

use super::counters::{Absorbed, DropReason};
use super::fdb::{Entry, EntryKind, FastMap, Fdb, Learn, PortIdx};
use super::ipv6::{Ip6Domain, Ip6Verdict, McastTo};
use super::trace::{Answer, EntrySource, Lookup, Off, Stage, Summary, Trace};
use crate::packet::offload::Offload;
use crate::packet::{
    arp, encap, ethernet, icmp, ipv4, ArpPacket, EtherType, EthernetFrame, IcmpPacket, Ipv4Packet,
};

pub type DomainIdx = u32;
pub type PeerIdx = u32;

/// FDB locations above this bit are peers, below are local ports.
const PEER_BIT: u32 = 1 << 31;

/// Where a MAC lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Port(PortIdx),
    Peer(PeerIdx),
}

impl Dest {
    fn loc(self) -> u32 {
        match self {
            Dest::Port(p) => p,
            Dest::Peer(p) => p | PEER_BIT,
        }
    }
    fn from_loc(l: u32) -> Dest {
        if l & PEER_BIT != 0 {
            Dest::Peer(l & !PEER_BIT)
        } else {
            Dest::Port(l)
        }
    }
}

/// How a frame travels to a peer node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The whole Ethernet frame in VXLAN with this VNI.
    Vxlan { vni: u32 },
    /// The IPv4 packet (after the Ethernet header) in IPIP.
    Ipip,
    /// The IPv4 packet as is, sent to the peer's underlay address.
    Direct,
}

/// What to do with a frame after the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop(DropReason),
    /// Send to this local port.
    Forward(PortIdx),
    /// Send to every other local port of the domain and, if `peers`, to the domain's peers.
    Flood {
        peers: bool,
    },
    /// The frame was rewritten in place into an answer (ARP reply, echo reply): send it back.
    Reply,
    /// The frame was replaced in place by an answer of this length (ICMP error): send it back.
    ReplyResized(usize),
    /// Send to a peer node.
    Tunnel {
        peer: PeerIdx,
        wire: Wire,
    },
    /// Consumed by the switch (MLD report, router solicitation...): counted, not a drop.
    Absorb(Absorbed),
    /// IPv6 multicast: to the local ports [`Switch::mcast_targets`] lists and, if `peers`, to
    /// the domain's peers.
    Multicast {
        to: McastTo,
        peers: bool,
    },
}

/// A port as the pipeline sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConf {
    pub domain: DomainIdx,
    pub mac: MacAddr,
    pub ips: Vec<Ipv4Addr>,
    /// Assigned IPv6 addresses, beside the link-local derived from `mac` (dataplane/ipv6.rs).
    pub ips6: Vec<Ipv6Addr>,
    /// May send router advertisements, redirects, DHCPv6 server messages, MLD queries.
    pub router: bool,
    /// MTU + Ethernet header: longer frames are dropped.
    pub max_frame: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainConf {
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: MacAddr,
    pub subnet: Ipv4Net,
    pub kind: NetworkKind,
    /// L2: spans nodes over VXLAN with this VNI. L3: VNI used when encapsulating in VXLAN.
    pub vni: Option<u32>,
    pub encapsulation: Encapsulation,
    pub mode: EncapMode,
}

impl DomainConf {
    /// A node-local L2 domain (tests and single-node setups).
    pub fn l2(gateway_ip: Ipv4Addr, gateway_mac: MacAddr, subnet: Ipv4Net) -> DomainConf {
        DomainConf {
            gateway_ip,
            gateway_mac,
            subnet,
            kind: NetworkKind::L2,
            vni: None,
            encapsulation: Encapsulation::Ipip,
            mode: EncapMode::Always,
        }
    }
}

/// A peer node as the pipeline sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConf {
    pub underlay_ip: Ipv4Addr,
    /// The peer's underlay IP is inside our underlay subnet (cross-subnet: direct).
    pub same_subnet: bool,
}

#[derive(Debug)]
struct Domain {
    conf: DomainConf,
    ports: Vec<PortIdx>,
    /// Peers that serve this domain: flood targets (L2 with a VNI).
    peers: Vec<PeerIdx>,
    /// L3: pod blocks of peers.
    routes: Vec<(Ipv4Net, PeerIdx)>,
    /// IP → MAC of this domain's endpoints (local ports, and remote ones from the datastore), for
    /// ARP suppression and L3 delivery.
    endpoints: FastMap<Ipv4Addr, MacAddr>,
    /// IPv6 endpoints, router ports, MLD snooping.
    ip6: Ip6Domain,
    fdb: Fdb,
}

impl Domain {
    fn route(&self, ip: Ipv4Addr) -> Option<PeerIdx> {
        self.routes
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, p)| *p)
    }
}

/// One FDB row for `fdb show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbRow {
    pub mac: MacAddr,
    pub dest: Dest,
    pub kind: EntryKind,
    pub age_secs: u64,
}

/// Underlay facts the pipeline needs for MTU decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayConf {
    pub mtu: u16,
}

#[derive(Debug)]
pub struct Switch {
    ports: Vec<Option<PortConf>>,
    domains: Vec<Option<Domain>>,
    peers: Vec<Option<PeerConf>>,
    underlay: Option<UnderlayConf>,
    aging_secs: u64,
    max_learned: usize,
    /// Entries learned since the last `take_learned` (shared with the other workers).
    learned: Vec<LearnEvent>,
    /// MLD reports steer IPv6 multicast (see `set_mld_snooping`).
    mld_snooping: bool,
}

fn slot<T>(v: &mut Vec<Option<T>>, i: u32) -> &mut Option<T> {
    let i = i as usize;
    if v.len() <= i {
        v.resize_with(i + 1, || None);
    }
    &mut v[i]
}

impl Switch {
    pub fn new(aging_secs: u64, max_learned: usize) -> Switch {
        Switch {
            ports: Vec::new(),
            domains: Vec::new(),
            peers: Vec::new(),
            underlay: None,
            aging_secs,
            max_learned,
            learned: Vec::with_capacity(MAX_LEARN_EVENTS),
            mld_snooping: true,
        }
    }

    pub fn set_underlay(&mut self, u: Option<UnderlayConf>) {
        self.underlay = u;
    }

    /// The underlay MTU, when this node has an underlay.
    pub fn underlay_mtu(&self) -> Option<u16> {
        self.underlay.map(|u| u.mtu)
    }

    pub fn add_domain(&mut self, idx: DomainIdx, conf: DomainConf) {
        let mut ip6 = Ip6Domain::default();
        ip6.set_snooping(self.mld_snooping);
        *slot(&mut self.domains, idx) = Some(Domain {
            conf,
            ports: Vec::new(),
            peers: Vec::new(),
            routes: Vec::new(),
            endpoints: FastMap::default(),
            ip6,
            fdb: Fdb::new(self.aging_secs, self.max_learned),
        });
    }

    /// Removes a domain; the control plane only does this once it has no ports.
    pub fn remove_domain(&mut self, idx: DomainIdx) {
        if let Some(d) = self.domains.get_mut(idx as usize) {
            *d = None;
        }
    }

    pub fn domain_conf(&self, idx: DomainIdx) -> Option<&DomainConf> {
        Some(&self.domains.get(idx as usize)?.as_ref()?.conf)
    }

    /// The L3 domain whose subnet holds `ip` (IPIP and direct traffic carry no network id;
    /// configuration guarantees at most one).
    pub fn l3_domain_for(&self, ip: Ipv4Addr) -> Option<DomainIdx> {
        self.domains.iter().enumerate().find_map(|(i, d)| {
            let d = d.as_ref()?;
            (d.conf.kind == NetworkKind::L3 && d.conf.subnet.contains(&ip))
                .then_some(i as DomainIdx)
        })
    }

    /// Adds a port to its domain, with a static FDB entry and ARP endpoints. False if the domain
    /// does not exist.
    pub fn add_port(&mut self, idx: PortIdx, conf: PortConf) -> bool {
        let Some(Some(d)) = self.domains.get_mut(conf.domain as usize) else {
            return false;
        };
        d.ports.push(idx);
        d.fdb.add_static(conf.mac, Dest::Port(idx).loc());
        for ip in &conf.ips {
            d.endpoints.insert(*ip, conf.mac);
        }
        d.ip6.add_port(idx, &conf);
        *slot(&mut self.ports, idx) = Some(conf);
        true
    }

    pub fn remove_port(&mut self, idx: PortIdx) {
        let Some(conf) = self.ports.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        if let Some(Some(d)) = self.domains.get_mut(conf.domain as usize) {
            d.ports.retain(|p| *p != idx);
            d.fdb.remove_port(Dest::Port(idx).loc());
            for ip in &conf.ips {
                if d.endpoints.get(ip) == Some(&conf.mac) {
                    d.endpoints.remove(ip);
                }
            }
            d.ip6.remove_port(idx, &conf);
        }
    }

    pub fn port(&self, idx: PortIdx) -> Option<&PortConf> {
        self.ports.get(idx as usize)?.as_ref()
    }

    /// Adds or updates a peer node.
    pub fn set_peer(&mut self, idx: PeerIdx, conf: PeerConf) {
        *slot(&mut self.peers, idx) = Some(conf);
    }

    /// The peer with this underlay address (traces name where an IPIP packet came from).
    pub fn peer_by_ip(&self, ip: Ipv4Addr) -> Option<PeerIdx> {
        self.peers
            .iter()
            .position(|p| p.is_some_and(|p| p.underlay_ip == ip))
            .map(|i| i as PeerIdx)
    }

    pub fn peer(&self, idx: PeerIdx) -> Option<&PeerConf> {
        self.peers.get(idx as usize)?.as_ref()
    }

    /// Removes a peer and everything pointing at it.
    pub fn remove_peer(&mut self, idx: PeerIdx) {
        if let Some(p) = self.peers.get_mut(idx as usize) {
            *p = None;
        }
        for d in self.domains.iter_mut().flatten() {
            d.peers.retain(|p| *p != idx);
            d.routes.retain(|(_, p)| *p != idx);
            d.fdb.remove_port(Dest::Peer(idx).loc());
        }
    }

    /// Sets which peers serve a domain (flood list) and the L3 blocks they own in it.
    pub fn set_domain_peers(
        &mut self,
        domain: DomainIdx,
        peers: Vec<PeerIdx>,
        routes: Vec<(Ipv4Net, PeerIdx)>,
    ) {
        if let Some(Some(d)) = self.domains.get_mut(domain as usize) {
            let gone: Vec<PeerIdx> = d
                .peers
                .iter()
                .copied()
                .filter(|p| !peers.contains(p))
                .collect();
            for p in gone {
                d.fdb.remove_port(Dest::Peer(p).loc());
            }
            d.peers = peers;
            d.routes = routes;
        }
    }

    /// A remote endpoint known from the datastore: static FDB entry to its node, ARP answers.
    pub fn add_remote_endpoint(
        &mut self,
        domain: DomainIdx,
        mac: MacAddr,
        ip: Option<Ipv4Addr>,
        peer: PeerIdx,
    ) {
        if let Some(Some(d)) = self.domains.get_mut(domain as usize) {
            if let Some(Dest::Port(_)) = d.fdb.lookup(&mac, u64::MAX).map(Dest::from_loc) {
                return; // never let a remote record take a local port's MAC
            }
            d.fdb.add_static(mac, Dest::Peer(peer).loc());
            d.ip6.add_remote(mac);
            if let Some(ip) = ip {
                d.endpoints.insert(ip, mac);
            }
        }
    }

    pub fn remove_remote_endpoint(
        &mut self,
        domain: DomainIdx,
        mac: MacAddr,
        ip: Option<Ipv4Addr>,
    ) {
        if let Some(Some(d)) = self.domains.get_mut(domain as usize) {
            if let Some(Dest::Peer(_)) = d.fdb.lookup(&mac, u64::MAX).map(Dest::from_loc) {
                d.fdb.remove_mac(&mac);
                d.ip6.remove_remote(mac);
                if let Some(ip) = ip {
                    if d.endpoints.get(&ip) == Some(&mac) {
                        d.endpoints.remove(&ip);
                    }
                }
            }
        }
    }

    /// Local ports a flood from `in_port` goes to: its domain's ports, without `in_port`.
    pub fn flood_targets(&self, in_port: PortIdx) -> impl Iterator<Item = PortIdx> + '_ {
        let ports: &[PortIdx] = self
            .port(in_port)
            .and_then(|p| self.domains.get(p.domain as usize)?.as_ref())
            .map_or(&[], |d| d.ports.as_slice());
        ports.iter().copied().filter(move |p| *p != in_port)
    }

    /// Local ports an IPv6 multicast frame from `in_port` goes to ([`Verdict::Multicast`]).
    pub fn mcast_targets(
        &self,
        in_port: PortIdx,
        to: McastTo,
    ) -> impl Iterator<Item = PortIdx> + '_ {
        self.port(in_port)
            .and_then(|p| self.domains.get(p.domain as usize)?.as_ref())
            .into_iter()
            .flat_map(move |d| d.ip6.targets(in_port, to))
    }

    /// Whether MLD reports steer multicast delivery; off when this switch copy does not see
    /// every port's reports (several workers).
    pub fn set_mld_snooping(&mut self, on: bool) {
        self.mld_snooping = on;
        for d in self.domains.iter_mut().flatten() {
            d.ip6.set_snooping(on);
        }
    }

    /// Local ports of a domain (flood of a frame that came from a peer).
    pub fn domain_ports(&self, domain: DomainIdx) -> &[PortIdx] {
        self.domains
            .get(domain as usize)
            .and_then(Option::as_ref)
            .map_or(&[], |d| d.ports.as_slice())
    }

    /// Peers a flood from local `in_port` is replicated to, with the domain's VNI.
    pub fn flood_peers(&self, in_port: PortIdx) -> (&[PeerIdx], u32) {
        self.port(in_port)
            .and_then(|p| self.domains.get(p.domain as usize)?.as_ref())
            .and_then(|d| Some((d.peers.as_slice(), d.conf.vni?)))
            .unwrap_or((&[], 0))
    }

    pub fn fdb_rows(&self, domain: DomainIdx, now: u64) -> Vec<FdbRow> {
        let Some(Some(d)) = self.domains.get(domain as usize) else {
            return Vec::new();
        };
        d.fdb
            .entries()
            .filter(|(m, _)| d.fdb.lookup(m, now).is_some())
            .map(|(m, e)| FdbRow {
                mac: *m,
                dest: Dest::from_loc(e.port),
                kind: e.kind,
                age_secs: now.saturating_sub(e.last_seen),
            })
            .collect()
    }

    /// Ages out learned FDB entries of every domain.
    pub fn expire(&mut self, now: u64) {
        for d in self.domains.iter_mut().flatten() {
            d.fdb.expire(now);
        }
    }

    /// Runs one frame received on local `in_port` through the pipeline (tests and callers
    /// without offload metadata or tracing).
    pub fn process(
        &mut self,
        in_port: PortIdx,
        frame: &mut [u8],
        vlan_stripped: bool,
        now: u64,
    ) -> Verdict {
        self.ingress(in_port, frame, &Offload::NONE, vlan_stripped, now, &mut Off)
    }

    /// Runs one frame received on local `in_port` through the pipeline. `frame` may be
    /// rewritten in place (answers, routing); `off` describes a superframe or a partial
    /// checksum. `vlan_stripped`: the kernel removed a VLAN tag. Every decision is reported
    /// to `t`.
    pub fn ingress<T: Trace>(
        &mut self,
        in_port: PortIdx,
        frame: &mut [u8],
        off: &Offload,
        vlan_stripped: bool,
        now: u64,
        t: &mut T,
    ) -> Verdict {
        let v = self.ingress_inner(in_port, frame, off, vlan_stripped, now, t);
        if let Verdict::Drop(r) = v {
            t.stage(|| Stage::Drop(r));
        }
        v
    }

    fn ingress_inner<T: Trace>(
        &mut self,
        in_port: PortIdx,
        frame: &mut [u8],
        off: &Offload,
        vlan_stripped: bool,
        now: u64,
        t: &mut T,
    ) -> Verdict {
        let Some(port) = self.ports.get(in_port as usize).and_then(Option::as_ref) else {
            return Verdict::Drop(DropReason::PortGone);
        };
        let dom_idx = port.domain;
        let Some(Some(domain)) = self.domains.get_mut(dom_idx as usize) else {
            return Verdict::Drop(DropReason::PortGone);
        };
        t.stage(|| Stage::Domain(dom_idx));
        if frame.len() < ethernet::HEADER_LEN {
            return Verdict::Drop(DropReason::FrameTooShort);
        }
        if wire_frame_len(frame, off) > port.max_frame {
            return Verdict::Drop(DropReason::FrameTooLong);
        }
        if T::ON {
            let s = summarize(frame);
            t.stage(|| Stage::Parsed(s));
        }
        let eth = EthernetFrame::new_unchecked(&*frame);
        let (src, dst) = (eth.src(), eth.dst());
        if !src.is_valid_unicast() {
            t.stage(|| Stage::Guard(Some(DropReason::InvalidSrcMac)));
            return Verdict::Drop(DropReason::InvalidSrcMac);
        }
        if src != port.mac {
            t.stage(|| Stage::Guard(Some(DropReason::SpoofedSrcMac)));
            return Verdict::Drop(DropReason::SpoofedSrcMac);
        }
        if vlan_stripped {
            return Verdict::Drop(DropReason::VlanTagged);
        }
        let gw = domain.conf;
        let l3 = gw.kind == NetworkKind::L3;
        match eth.ethertype() {
            EtherType::Arp => {
                let Ok(a) = ArpPacket::new_checked(eth.payload()) else {
                    return Verdict::Drop(DropReason::MalformedArp);
                };
                let sip = a.sender_ip();
                if a.sender_mac() != port.mac || !(sip.is_unspecified() || port.ips.contains(&sip))
                {
                    t.stage(|| Stage::Guard(Some(DropReason::SpoofedArp)));
                    return Verdict::Drop(DropReason::SpoofedArp);
                }
                t.stage(|| Stage::Guard(None));
                let tip = a.target_ip();
                let answer = if a.operation() != arp::OP_REQUEST {
                    None
                } else if tip == gw.gateway_ip {
                    Some(gw.gateway_mac)
                } else if l3 && tip != sip && !tip.is_unspecified() {
                    // L3: the switch is every pod's next hop (proxy ARP, as Calico does).
                    Some(gw.gateway_mac)
                } else if tip != sip {
                    domain
                        .endpoints
                        .get(&tip)
                        .copied()
                        .filter(|m| *m != port.mac)
                } else {
                    None
                };
                if let Some(mac) = answer {
                    t.stage(|| Stage::Answered(Answer::Arp { ip: tip, mac }));
                    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
                    eth.set_dst(src);
                    eth.set_src(mac);
                    if let Ok(mut a) = ArpPacket::new_checked(eth.payload_mut()) {
                        a.make_reply(mac);
                    }
                    return Verdict::Reply;
                }
                if l3 {
                    return Verdict::Drop(DropReason::L3NotRouted);
                }
            }
            EtherType::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    return Verdict::Drop(DropReason::MalformedIpv4);
                };
                if !port.ips.contains(&ip.src()) {
                    t.stage(|| Stage::Guard(Some(DropReason::SpoofedSrcIp)));
                    return Verdict::Drop(DropReason::SpoofedSrcIp);
                }
                t.stage(|| Stage::Guard(None));
                if dst == gw.gateway_mac {
                    if ip.dst() == gw.gateway_ip {
                        if ip.protocol() != ipv4::PROTO_ICMP || ip.is_fragment() {
                            return Verdict::Drop(DropReason::NotForGateway);
                        }
                        let v = answer_echo(frame, gw);
                        if v == Verdict::Reply {
                            t.stage(|| Stage::Answered(Answer::Echo));
                        }
                        return v;
                    }
                    if l3 {
                        return route_l3(domain, &self.peers, self.underlay, frame, off, t);
                    }
                    return Verdict::Drop(DropReason::NotForGateway);
                }
                if l3 {
                    return Verdict::Drop(DropReason::L3NotRouted);
                }
            }
            EtherType::Ipv6 => {
                // First-hop security, ND answers, MLD snooping: dataplane/ipv6.rs.
                let spans = domain.conf.vni.is_some() && !domain.peers.is_empty();
                match domain.ip6.ingress(in_port, port, frame) {
                    Ip6Verdict::Drop(r) => {
                        t.stage(|| Stage::Guard(Some(r)));
                        return Verdict::Drop(r);
                    }
                    _ if l3 => return Verdict::Drop(DropReason::L3NotRouted),
                    Ip6Verdict::Continue => t.stage(|| Stage::Guard(None)),
                    Ip6Verdict::Reply(n) => return Verdict::ReplyResized(n),
                    Ip6Verdict::Absorb(a) => return Verdict::Absorb(a),
                    Ip6Verdict::Multicast { to, peers } => {
                        let peers = peers && spans;
                        if !peers && domain.ip6.targets(in_port, to).next().is_none() {
                            return Verdict::Absorb(Absorbed::McastNoListener);
                        }
                        return Verdict::Multicast { to, peers };
                    }
                }
            }
            EtherType::Vlan => return Verdict::Drop(DropReason::VlanTagged),
            EtherType::Other(_) => return Verdict::Drop(DropReason::UnsupportedEthertype),
        }
        // L2 forwarding within the domain.
        if t.mutate() {
            let learned = domain.fdb.learn(src, Dest::Port(in_port).loc(), now);
            note_learned(
                &mut self.learned,
                dom_idx,
                src,
                Dest::Port(in_port),
                learned,
            );
        }
        let spans = domain.conf.vni.is_some() && !domain.peers.is_empty();
        if dst.is_multicast() {
            t.stage(|| Stage::Lookup {
                mac: dst,
                result: Lookup::Multicast,
            });
            return Verdict::Flood { peers: spans };
        }
        if dst == gw.gateway_mac {
            return Verdict::Drop(DropReason::NotForGateway);
        }
        let found = domain.fdb.get(&dst, now);
        if T::ON {
            t.stage(|| Stage::Lookup {
                mac: dst,
                result: lookup_result(found),
            });
        }
        match found.map(|e| Dest::from_loc(e.port)) {
            Some(Dest::Port(p)) if p == in_port => Verdict::Drop(DropReason::Hairpin),
            Some(Dest::Port(p)) => Verdict::Forward(p),
            Some(Dest::Peer(peer)) => match domain.conf.vni {
                Some(vni) => {
                    tunnel_or_too_big(self.underlay, frame, off, gw, peer, Wire::Vxlan { vni })
                }
                None => Verdict::Drop(DropReason::NoRoute),
            },
            None => Verdict::Flood { peers: spans },
        }
    }

    /// A frame that arrived from `peer` over VXLAN for `domain` (the inner Ethernet frame).
    pub fn process_tunnel(
        &mut self,
        domain: DomainIdx,
        peer: PeerIdx,
        frame: &mut [u8],
        now: u64,
    ) -> Verdict {
        self.tunnel_ingress(domain, peer, frame, now, &mut Off)
    }

    /// [`Switch::process_tunnel`] reporting to `t`.
    pub fn tunnel_ingress<T: Trace>(
        &mut self,
        domain: DomainIdx,
        peer: PeerIdx,
        frame: &mut [u8],
        now: u64,
        t: &mut T,
    ) -> Verdict {
        let v = self.tunnel_inner(domain, peer, frame, now, t);
        if let Verdict::Drop(r) = v {
            t.stage(|| Stage::Drop(r));
        }
        v
    }

    fn tunnel_inner<T: Trace>(
        &mut self,
        domain: DomainIdx,
        peer: PeerIdx,
        frame: &mut [u8],
        now: u64,
        t: &mut T,
    ) -> Verdict {
        let Some(Some(d)) = self.domains.get_mut(domain as usize) else {
            return Verdict::Drop(DropReason::UnknownVni);
        };
        t.stage(|| Stage::Domain(domain));
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Verdict::Drop(DropReason::FrameTooShort);
        };
        if T::ON {
            let s = summarize(frame);
            t.stage(|| Stage::Parsed(s));
        }
        if d.conf.kind == NetworkKind::L3 {
            return self.routed_inner(domain, frame, t);
        }
        let (src, dst) = (eth.src(), eth.dst());
        if !src.is_valid_unicast() {
            return Verdict::Drop(DropReason::InvalidSrcMac);
        }
        if t.mutate() {
            let learned = d.fdb.learn(src, Dest::Peer(peer).loc(), now);
            note_learned(&mut self.learned, domain, src, Dest::Peer(peer), learned);
        }
        if dst.is_multicast() {
            t.stage(|| Stage::Lookup {
                mac: dst,
                result: Lookup::Multicast,
            });
            return Verdict::Flood { peers: false };
        }
        let found = d.fdb.get(&dst, now);
        if T::ON {
            t.stage(|| Stage::Lookup {
                mac: dst,
                result: lookup_result(found),
            });
        }
        match found.map(|e| Dest::from_loc(e.port)) {
            Some(Dest::Port(p)) => Verdict::Forward(p),
            // Split horizon: what came from a peer never goes back to peers.
            Some(Dest::Peer(_)) => Verdict::Drop(DropReason::Hairpin),
            None => Verdict::Flood { peers: false },
        }
    }

    /// An IPv4 packet from another node for an L3 domain (IPIP, direct, or VXLAN in L3 mode),
    /// given as an Ethernet frame whose header the caller reserved: delivered to the local pod
    /// that owns the destination IP, with our gateway MAC as source.
    pub fn process_routed_in(&mut self, domain: DomainIdx, frame: &mut [u8]) -> Verdict {
        self.routed_ingress(domain, frame, &mut Off)
    }

    /// [`Switch::process_routed_in`] reporting to `t`.
    pub fn routed_ingress<T: Trace>(
        &mut self,
        domain: DomainIdx,
        frame: &mut [u8],
        t: &mut T,
    ) -> Verdict {
        let v = self.routed_inner(domain, frame, t);
        if let Verdict::Drop(r) = v {
            t.stage(|| Stage::Drop(r));
        }
        v
    }

    fn routed_inner<T: Trace>(
        &mut self,
        domain: DomainIdx,
        frame: &mut [u8],
        t: &mut T,
    ) -> Verdict {
        let Some(Some(d)) = self.domains.get_mut(domain as usize) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        if frame.len() < ethernet::HEADER_LEN {
            return Verdict::Drop(DropReason::FrameTooShort);
        }
        let Ok(ip) = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]) else {
            return Verdict::Drop(DropReason::MalformedIpv4);
        };
        if ip.ttl() <= 1 {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        let (dst_ip, ttl) = (ip.dst(), ip.ttl() - 1);
        let Some(mac) = d.endpoints.get(&dst_ip).copied() else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let Some(Dest::Port(p)) = d.fdb.lookup(&mac, 0).map(Dest::from_loc) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let gw_mac = d.conf.gateway_mac;
        t.stage(|| Stage::Route {
            dst: dst_ip,
            ttl,
            src_mac: gw_mac,
            dst_mac: mac,
            via_peer: None,
        });
        let mut eth = EthernetFrame::new_unchecked(&mut *frame);
        eth.set_dst(mac);
        eth.set_src(gw_mac);
        eth.set_ethertype(EtherType::Ipv4);
        encap::decrement_ttl(&mut frame[ethernet::HEADER_LEN..]);
        Verdict::Forward(p)
    }

    /// Applies an FDB entry another worker learned (it saw the traffic; this worker forwards
    /// for the same domain and must not flood what is known).
    pub fn learn_from_worker(&mut self, ev: &LearnEvent, now: u64) {
        if let Some(Some(d)) = self.domains.get_mut(ev.domain as usize) {
            let _ = d.fdb.learn(ev.mac, ev.loc, now);
        }
    }

    /// FDB entries learned since the last call, for the other workers.
    pub fn take_learned(&mut self) -> std::vec::Drain<'_, LearnEvent> {
        self.learned.drain(..)
    }
}

/// An FDB entry one worker learned, for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnEvent {
    pub domain: DomainIdx,
    pub mac: MacAddr,
    loc: u32,
}

/// Most entries a worker queues between two batches (the rest are re-announced on refresh).
const MAX_LEARN_EVENTS: usize = 1024;

fn note_learned(out: &mut Vec<LearnEvent>, domain: DomainIdx, mac: MacAddr, dest: Dest, l: Learn) {
    let share = matches!(
        l,
        Learn::New | Learn::Moved { .. } | Learn::Refreshed { share: true }
    );
    if share && out.len() < MAX_LEARN_EVENTS {
        out.push(LearnEvent {
            domain,
            mac,
            loc: dest.loc(),
        });
    }
}

fn lookup_result(e: Option<Entry>) -> Lookup {
    let Some(e) = e else { return Lookup::Miss };
    let learned = e.kind == EntryKind::Learned;
    match Dest::from_loc(e.port) {
        Dest::Port(port) => Lookup::Port {
            port,
            source: if learned {
                EntrySource::Learned
            } else {
                EntrySource::Local
            },
        },
        Dest::Peer(peer) => Lookup::Peer {
            peer,
            source: if learned {
                EntrySource::Learned
            } else {
                EntrySource::Remote
            },
        },
    }
}

/// The length of the largest frame that goes on a wire for this buffer: a superframe's segment.
fn wire_frame_len(frame: &[u8], off: &Offload) -> usize {
    if !off.is_gso() {
        return frame.len();
    }
    match crate::packet::gso::Layout::of(frame) {
        Some(l) => (l.payload + usize::from(off.gso_size)).min(frame.len()),
        None => frame.len(),
    }
}

/// Headers of a frame for a trace line (only called for traced packets).
pub fn summarize(frame: &[u8]) -> Summary {
    let mut s = Summary {
        len: frame.len() as u32,
        ..Summary::default()
    };
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return s;
    };
    s.eth_src = eth.src();
    s.eth_dst = eth.dst();
    s.ethertype = u16::from(eth.ethertype());
    let l4 = match eth.ethertype() {
        EtherType::Arp => {
            if let Ok(a) = ArpPacket::new_checked(eth.payload()) {
                s.ip_src = Some(a.sender_ip().into());
                s.ip_dst = Some(a.target_ip().into());
                s.op = Some(a.operation());
            }
            None
        }
        EtherType::Ipv4 => Ipv4Packet::new_checked(eth.payload()).ok().map(|ip| {
            s.ip_src = Some(ip.src().into());
            s.ip_dst = Some(ip.dst().into());
            s.ip_proto = Some(ip.protocol());
            s.ttl = Some(ip.ttl());
            (ip.protocol(), ethernet::HEADER_LEN + ip.header_len())
        }),
        EtherType::Ipv6 => crate::packet::Ipv6Packet::new_checked(eth.payload())
            .ok()
            .map(|ip| {
                s.ip_src = Some(ip.src().into());
                s.ip_dst = Some(ip.dst().into());
                s.ip_proto = Some(ip.next_header());
                (
                    ip.next_header(),
                    ethernet::HEADER_LEN + crate::packet::ipv6::HEADER_LEN,
                )
            }),
        _ => None,
    };
    if let Some((proto, at)) = l4 {
        let p = frame.get(at..).unwrap_or(&[]);
        match proto {
            ipv4::PROTO_TCP | ipv4::PROTO_UDP if p.len() >= 4 => {
                s.l4_src = Some(u16::from_be_bytes([p[0], p[1]]));
                s.l4_dst = Some(u16::from_be_bytes([p[2], p[3]]));
            }
            ipv4::PROTO_ICMP | 58 if !p.is_empty() => s.op = Some(u16::from(p[0])),
            _ => {}
        }
    }
    s
}

/// Routes an IPv4 packet a local pod sent to the gateway MAC in an L3 domain.
fn route_l3<T: Trace>(
    domain: &Domain,
    peers: &[Option<PeerConf>],
    underlay: Option<UnderlayConf>,
    frame: &mut [u8],
    off: &Offload,
    t: &mut T,
) -> Verdict {
    let gw = domain.conf;
    let ip_off = ethernet::HEADER_LEN;
    let (dst, ttl) = match Ipv4Packet::new_checked(&frame[ip_off..]) {
        Ok(ip) => (ip.dst(), ip.ttl()),
        Err(_) => return Verdict::Drop(DropReason::MalformedIpv4),
    };
    if ttl <= 1 {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    if let Some(mac) = domain.endpoints.get(&dst).copied() {
        if let Some(Dest::Port(p)) = domain.fdb.lookup(&mac, 0).map(Dest::from_loc) {
            t.stage(|| Stage::Route {
                dst,
                ttl: ttl - 1,
                src_mac: gw.gateway_mac,
                dst_mac: mac,
                via_peer: None,
            });
            let mut eth = EthernetFrame::new_unchecked(&mut *frame);
            eth.set_dst(mac);
            eth.set_src(gw.gateway_mac);
            encap::decrement_ttl(&mut frame[ip_off..]);
            return Verdict::Forward(p);
        }
    }
    let Some(peer) = domain.route(dst) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let Some(pc) = peers.get(peer as usize).and_then(Option::as_ref) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    let direct = match gw.mode {
        EncapMode::Never => true,
        EncapMode::CrossSubnet => pc.same_subnet,
        EncapMode::Always => false,
    };
    let wire = match (direct, gw.encapsulation, gw.vni) {
        (true, _, _) => Wire::Direct,
        (false, Encapsulation::Ipip, _) => Wire::Ipip,
        (false, Encapsulation::Vxlan, Some(vni)) => Wire::Vxlan { vni },
        (false, Encapsulation::Vxlan, None) => return Verdict::Drop(DropReason::NoRoute),
    };
    if let Verdict::ReplyResized(n) = tunnel_or_too_big(underlay, frame, off, gw, peer, wire) {
        t.stage(|| Stage::Answered(Answer::FragNeeded { mtu: 0 }));
        return Verdict::ReplyResized(n);
    }
    t.stage(|| Stage::Route {
        dst,
        ttl: ttl - 1,
        src_mac: gw.gateway_mac,
        dst_mac: gw.gateway_mac,
        via_peer: Some(peer),
    });
    encap::decrement_ttl(&mut frame[ip_off..]);
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    eth.set_src(gw.gateway_mac);
    eth.set_dst(gw.gateway_mac);
    Verdict::Tunnel { peer, wire }
}

/// `Tunnel`, unless the encapsulated packet (for a superframe: each of its segments) would
/// exceed the underlay MTU: then an ICMP "fragmentation needed" goes back to the sender (never
/// a silent drop).
fn tunnel_or_too_big(
    underlay: Option<UnderlayConf>,
    frame: &mut [u8],
    off: &Offload,
    gw: DomainConf,
    peer: PeerIdx,
    wire: Wire,
) -> Verdict {
    let wire_len = wire_frame_len(frame, off);
    let ip_len = wire_len - ethernet::HEADER_LEN;
    let outer = match wire {
        Wire::Vxlan { .. } => encap::VXLAN_PUSH + wire_len,
        Wire::Ipip => encap::IPIP_PUSH + ip_len,
        Wire::Direct => ip_len,
    };
    let Some(u) = underlay else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    if outer <= usize::from(u.mtu) {
        return Verdict::Tunnel { peer, wire };
    }
    if off.is_gso() {
        // The sender's MSS does not fit: the kernel would have sent smaller segments had it
        // known; segments are cut at the egress to the size that fits instead.
        return Verdict::Tunnel { peer, wire };
    }
    let room = usize::from(u.mtu) - (outer - ip_len);
    let mut icmp = [0u8; 14 + 20 + 8 + 60 + 8];
    match encap::frag_needed(&mut icmp, frame, gw.gateway_ip, gw.gateway_mac, room as u16) {
        Some(n) if n <= frame.len() => {
            frame[..n].copy_from_slice(&icmp[..n]);
            Verdict::ReplyResized(n)
        }
        _ => Verdict::Drop(DropReason::MtuExceeded),
    }
}
/// Turns an ICMP echo request to the gateway into the reply, in place.
fn answer_echo(frame: &mut [u8], gw: DomainConf) -> Verdict {
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    let requester = eth.src();
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return Verdict::Drop(DropReason::MalformedIpv4);
    };
    {
        let Ok(ic) = IcmpPacket::new_checked(ip.payload()) else {
            return Verdict::Drop(DropReason::MalformedIcmp);
        };
        if !ic.verify_checksum() {
            return Verdict::Drop(DropReason::MalformedIcmp);
        }
        if ic.msg_type() != icmp::TYPE_ECHO_REQUEST || ic.code() != 0 {
            return Verdict::Drop(DropReason::NotForGateway);
        }
    }
    let src = ip.src();
    ip.set_src(gw.gateway_ip);
    ip.set_dst(src);
    ip.set_ttl(64);
    ip.fill_checksum();
    if let Ok(mut ic) = IcmpPacket::new_checked(ip.payload_mut()) {
        ic.make_echo_reply();
    }
    eth.set_dst(requester);
    eth.set_src(gw.gateway_mac);
    Verdict::Reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::internet_checksum;
    use proptest::prelude::*;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const GW_MAC: MacAddr = MacAddr([2, 0xaa, 0, 0, 0, 1]);

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 1, n)
    }

    /// Three domains with the same subnet; each has ports with the same IPs; domain 2 even
    /// reuses domain 0's MACs.
    fn lab() -> Switch {
        let mut s = Switch::new(300, 100);
        for d in 0..3 {
            s.add_domain(
                d,
                DomainConf::l2(GW, GW_MAC, "192.168.1.0/24".parse().unwrap()),
            );
        }
        let m = |d: u32, n: u8| {
            if d == 2 {
                mac(n)
            } else {
                mac(n + 10 * d as u8)
            }
        };
        for d in 0..3u32 {
            let base = d * 10;
            s.add_port(
                base,
                PortConf {
                    domain: d,
                    mac: m(d, 1),
                    ips: vec![ip(205)],
                    ips6: vec![],
                    router: false,
                    max_frame: 1514,
                },
            );
            s.add_port(
                base + 1,
                PortConf {
                    domain: d,
                    mac: m(d, 2),
                    ips: vec![ip(11)],
                    ips6: vec![],
                    router: false,
                    max_frame: 1514,
                },
            );
        }
        s
    }

    fn eth(dst: MacAddr, src: MacAddr, ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&ty.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn arp_req(src: MacAddr, sip: Ipv4Addr, tip: Ipv4Addr) -> Vec<u8> {
        let mut a = [0u8; 28];
        arp::emit(&mut a, arp::OP_REQUEST, src, sip, MacAddr::ZERO, tip);
        eth(MacAddr::BROADCAST, src, 0x0806, &a)
    }

    fn icmp_echo(dst_mac: MacAddr, src: MacAddr, sip: Ipv4Addr, dip: Ipv4Addr) -> Vec<u8> {
        let mut icmp = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'h', b'i'];
        let c = internet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut p = vec![0u8; 20];
        ipv4::emit(&mut p, sip, dip, ipv4::PROTO_ICMP, icmp.len());
        p.extend_from_slice(&icmp);
        eth(dst_mac, src, 0x0800, &p)
    }

    #[test]
    fn arp_for_gateway_and_peer_is_answered_in_place() {
        let mut s = lab();
        let mut f = arp_req(mac(1), ip(205), GW);
        assert_eq!(s.process(0, &mut f, false, 0), Verdict::Reply);
        let a = ArpPacket::new_checked(&f[14..]).unwrap();
        assert_eq!(
            (a.operation(), a.sender_mac(), a.sender_ip()),
            (arp::OP_REPLY, GW_MAC, GW)
        );
        assert_eq!(EthernetFrame::new_checked(&f[..]).unwrap().dst(), mac(1));

        // Peer in the same domain: answered with that peer's MAC, not flooded.
        let mut f = arp_req(mac(11), ip(205), ip(11));
        assert_eq!(s.process(10, &mut f, false, 0), Verdict::Reply);
        assert_eq!(
            ArpPacket::new_checked(&f[14..]).unwrap().sender_mac(),
            mac(12)
        );
        // Unknown target: flooded, and only within the domain.
        let mut f = arp_req(mac(11), ip(205), ip(77));
        assert_eq!(
            s.process(10, &mut f, false, 0),
            Verdict::Flood { peers: false }
        );
        assert_eq!(s.flood_targets(10).collect::<Vec<_>>(), vec![11]);
    }

    #[test]
    fn echo_to_gateway_is_answered() {
        let mut s = lab();
        let mut f = icmp_echo(GW_MAC, mac(1), ip(205), GW);
        assert_eq!(s.process(0, &mut f, false, 0), Verdict::Reply);
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((e.src(), e.dst()), (GW_MAC, mac(1)));
        let p = Ipv4Packet::new_checked(e.payload()).unwrap();
        assert!(p.verify_checksum());
        assert_eq!((p.src(), p.dst()), (GW, ip(205)));
        let ic = IcmpPacket::new_checked(p.payload()).unwrap();
        assert_eq!(ic.msg_type(), icmp::TYPE_ECHO_REPLY);
        assert!(ic.verify_checksum());
        // Bad ICMP checksum is dropped, not answered.
        let mut f = icmp_echo(GW_MAC, mac(1), ip(205), GW);
        let n = f.len();
        f[n - 1] ^= 0xff;
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::MalformedIcmp)
        );
        // Off-subnet traffic to the gateway MAC: nothing routes in an L2 network.
        let mut f = icmp_echo(GW_MAC, mac(1), ip(205), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::NotForGateway)
        );
    }

    #[test]
    fn unicast_stays_in_domain_even_with_shared_macs() {
        let mut s = lab();
        // Domain 2 reuses domain 0's MACs: a frame from domain 2's port to mac(2) goes to port 21.
        let mut f = icmp_echo(mac(2), mac(1), ip(205), ip(11));
        assert_eq!(s.process(20, &mut f, false, 0), Verdict::Forward(21));
        let mut f = icmp_echo(mac(2), mac(1), ip(205), ip(11));
        assert_eq!(s.process(0, &mut f, false, 0), Verdict::Forward(1));
        // A MAC that only exists in domain 1 is unknown in domain 0: flooded within domain 0 only.
        let mut f = icmp_echo(mac(12), mac(1), ip(205), ip(11));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Flood { peers: false }
        );
        assert_eq!(s.flood_targets(0).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn anti_spoofing() {
        let mut s = lab();
        let mut f = icmp_echo(mac(2), mac(9), ip(205), ip(11));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::SpoofedSrcMac)
        );
        let mut f = icmp_echo(mac(2), mac(1), ip(99), ip(11));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::SpoofedSrcIp)
        );
        let mut f = arp_req(mac(1), ip(11), GW);
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::SpoofedArp)
        );
        let mut f = icmp_echo(mac(2), MacAddr::BROADCAST, ip(205), ip(11));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::InvalidSrcMac)
        );
        // ARP probe (sender IP 0.0.0.0) is allowed.
        let mut f = arp_req(mac(1), Ipv4Addr::UNSPECIFIED, ip(77));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Flood { peers: false }
        );
    }

    #[test]
    fn malformed_and_sizes() {
        let mut s = lab();
        assert_eq!(
            s.process(0, &mut [0u8; 13], false, 0),
            Verdict::Drop(DropReason::FrameTooShort)
        );
        let mut big = icmp_echo(mac(2), mac(1), ip(205), ip(11));
        big.resize(1515, 0);
        assert_eq!(
            s.process(0, &mut big, false, 0),
            Verdict::Drop(DropReason::FrameTooLong)
        );
        let mut f = eth(mac(2), mac(1), 0x0806, &[0u8; 10]);
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::MalformedArp)
        );
        let mut f = eth(mac(2), mac(1), 0x0800, &[0x45, 0, 0, 20]);
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::MalformedIpv4)
        );
        let mut f = eth(mac(2), mac(1), 0x8100, &[0u8; 50]);
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::VlanTagged)
        );
        let mut f = eth(mac(2), mac(1), 0x88cc, &[0u8; 50]);
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::UnsupportedEthertype)
        );
        let mut f = icmp_echo(mac(1), mac(1), ip(205), ip(205));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::Hairpin)
        );
        assert_eq!(
            s.process(77, &mut f, false, 0),
            Verdict::Drop(DropReason::PortGone)
        );
    }

    #[test]
    fn port_removal_clears_fdb_and_endpoints() {
        let mut s = lab();
        s.remove_port(1);
        let mut f = arp_req(mac(1), ip(205), ip(11));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Flood { peers: false }
        );
        assert!(s.fdb_rows(0, 0).iter().all(|r| r.mac != mac(2)));
        assert_eq!(s.flood_targets(0).count(), 0);
    }

    /// Two L3 domains' worth of setup: local pods .1.5 and .1.6 on node A, a peer in the same
    /// underlay subnet serving 10.244.2.0/24 and one in another serving 10.244.3.0/24.
    fn l3(mode: EncapMode, encapsulation: Encapsulation) -> Switch {
        let mut s = Switch::new(300, 100);
        s.set_underlay(Some(UnderlayConf { mtu: 1500 }));
        let conf = DomainConf {
            gateway_ip: Ipv4Addr::new(10, 244, 0, 1),
            gateway_mac: GW_MAC,
            subnet: "10.244.0.0/16".parse().unwrap(),
            kind: NetworkKind::L3,
            vni: Some(4096),
            encapsulation,
            mode,
        };
        s.add_domain(0, conf);
        s.add_port(
            0,
            PortConf {
                domain: 0,
                mac: mac(1),
                ips: vec![Ipv4Addr::new(10, 244, 1, 5)],
                ips6: vec![],
                router: false,
                max_frame: 1514,
            },
        );
        s.add_port(
            1,
            PortConf {
                domain: 0,
                mac: mac(2),
                ips: vec![Ipv4Addr::new(10, 244, 1, 6)],
                ips6: vec![],
                router: false,
                max_frame: 1514,
            },
        );
        s.set_peer(
            0,
            PeerConf {
                underlay_ip: Ipv4Addr::new(10, 1, 5, 12),
                same_subnet: true,
            },
        );
        s.set_peer(
            1,
            PeerConf {
                underlay_ip: Ipv4Addr::new(10, 1, 8, 21),
                same_subnet: false,
            },
        );
        s.set_domain_peers(
            0,
            vec![],
            vec![
                ("10.244.2.0/24".parse().unwrap(), 0),
                ("10.244.3.0/24".parse().unwrap(), 1),
            ],
        );
        s
    }

    #[test]
    fn l3_routes_by_mode() {
        let to = |d: u8| Ipv4Addr::new(10, 244, d, 9);
        let src = Ipv4Addr::new(10, 244, 1, 5);
        for (mode, enc, near, far) in [
            (
                EncapMode::Always,
                Encapsulation::Ipip,
                Wire::Ipip,
                Wire::Ipip,
            ),
            (
                EncapMode::CrossSubnet,
                Encapsulation::Ipip,
                Wire::Direct,
                Wire::Ipip,
            ),
            (
                EncapMode::Never,
                Encapsulation::Ipip,
                Wire::Direct,
                Wire::Direct,
            ),
            (
                EncapMode::Always,
                Encapsulation::Vxlan,
                Wire::Vxlan { vni: 4096 },
                Wire::Vxlan { vni: 4096 },
            ),
            (
                EncapMode::CrossSubnet,
                Encapsulation::Vxlan,
                Wire::Direct,
                Wire::Vxlan { vni: 4096 },
            ),
        ] {
            let mut s = l3(mode, enc);
            let mut f = icmp_echo(GW_MAC, mac(1), src, to(2));
            assert_eq!(
                s.process(0, &mut f, false, 0),
                Verdict::Tunnel {
                    peer: 0,
                    wire: near
                },
                "{mode:?} {enc:?}"
            );
            assert_eq!(
                Ipv4Packet::new_checked(&f[14..]).unwrap().ttl(),
                63,
                "TTL decremented"
            );
            assert!(Ipv4Packet::new_checked(&f[14..]).unwrap().verify_checksum());
            let mut f = icmp_echo(GW_MAC, mac(1), src, to(3));
            assert_eq!(
                s.process(0, &mut f, false, 0),
                Verdict::Tunnel { peer: 1, wire: far },
                "{mode:?} {enc:?}"
            );
        }
        // Local pod: routed to its port with MACs rewritten; unknown block: no route.
        let mut s = l3(EncapMode::Always, Encapsulation::Ipip);
        let mut f = icmp_echo(GW_MAC, mac(1), src, Ipv4Addr::new(10, 244, 1, 6));
        assert_eq!(s.process(0, &mut f, false, 0), Verdict::Forward(1));
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((e.src(), e.dst()), (GW_MAC, mac(2)));
        let mut f = icmp_echo(GW_MAC, mac(1), src, to(9));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::NoRoute)
        );
    }

    #[test]
    fn l3_proxy_arp_and_no_l2_flooding() {
        let mut s = l3(EncapMode::Always, Encapsulation::Ipip);
        let src = Ipv4Addr::new(10, 244, 1, 5);
        let mut f = arp_req(mac(1), src, Ipv4Addr::new(10, 244, 3, 3));
        assert_eq!(s.process(0, &mut f, false, 0), Verdict::Reply);
        assert_eq!(
            ArpPacket::new_checked(&f[14..]).unwrap().sender_mac(),
            GW_MAC
        );
        let mut f = icmp_echo(
            MacAddr::BROADCAST,
            mac(1),
            src,
            Ipv4Addr::new(10, 244, 255, 255),
        );
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::L3NotRouted)
        );
    }

    #[test]
    fn routed_in_delivers_to_local_pod_only() {
        let mut s = l3(EncapMode::Always, Encapsulation::Ipip);
        let mut f = icmp_echo(
            MacAddr::ZERO,
            MacAddr::ZERO,
            Ipv4Addr::new(10, 244, 2, 9),
            Ipv4Addr::new(10, 244, 1, 6),
        );
        assert_eq!(s.process_routed_in(0, &mut f), Verdict::Forward(1));
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((e.src(), e.dst()), (GW_MAC, mac(2)));
        let mut f = icmp_echo(
            MacAddr::ZERO,
            MacAddr::ZERO,
            Ipv4Addr::new(10, 244, 2, 9),
            Ipv4Addr::new(10, 244, 1, 99),
        );
        assert_eq!(
            s.process_routed_in(0, &mut f),
            Verdict::Drop(DropReason::NoRoute)
        );
        assert_eq!(s.l3_domain_for(Ipv4Addr::new(10, 244, 7, 7)), Some(0));
        assert_eq!(s.l3_domain_for(Ipv4Addr::new(10, 245, 7, 7)), None);
    }

    #[test]
    fn too_big_for_the_underlay_gets_frag_needed() {
        let mut s = l3(EncapMode::Always, Encapsulation::Ipip);
        let mut f = icmp_echo(
            GW_MAC,
            mac(1),
            Ipv4Addr::new(10, 244, 1, 5),
            Ipv4Addr::new(10, 244, 2, 9),
        );
        f.resize(14 + 1490, 0); // 1490 + 20 outer > 1500
        let n = 14 + 1490 - 14;
        f[16..18].copy_from_slice(&(n as u16).to_be_bytes());
        Ipv4Packet::new_checked(&mut f[14..])
            .unwrap()
            .fill_checksum();
        let Verdict::ReplyResized(len) = s.process(0, &mut f, false, 0) else {
            panic!("expected an ICMP error")
        };
        let ip = Ipv4Packet::new_checked(&f[14..len]).unwrap();
        let icmp = ip.payload();
        assert_eq!(
            (ip.dst(), icmp[0], icmp[1]),
            (Ipv4Addr::new(10, 244, 1, 5), 3, 4)
        );
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1480);
    }

    #[test]
    fn vxlan_l2_learns_remote_and_keeps_split_horizon() {
        let mut s = lab();
        let mut conf = DomainConf::l2(GW, GW_MAC, "192.168.1.0/24".parse().unwrap());
        conf.vni = Some(100);
        s.add_domain(5, conf);
        s.set_underlay(Some(UnderlayConf { mtu: 1500 }));
        s.add_port(
            50,
            PortConf {
                domain: 5,
                mac: mac(1),
                ips: vec![ip(205)],
                ips6: vec![],
                router: false,
                max_frame: 1514,
            },
        );
        s.set_peer(
            0,
            PeerConf {
                underlay_ip: Ipv4Addr::new(10, 1, 5, 12),
                same_subnet: true,
            },
        );
        s.set_domain_peers(5, vec![0], vec![]);
        // Broadcast from the local pod floods to peers too; from a peer, only locally.
        let mut f = arp_req(mac(1), ip(205), ip(77));
        assert_eq!(
            s.process(50, &mut f, false, 0),
            Verdict::Flood { peers: true }
        );
        let mut f = arp_req(mac(40), ip(9), ip(205));
        assert_eq!(
            s.process_tunnel(5, 0, &mut f, 0),
            Verdict::Flood { peers: false }
        );
        // The remote MAC was learned: unicast to it tunnels to that peer.
        let mut f = icmp_echo(mac(40), mac(1), ip(205), ip(9));
        assert_eq!(
            s.process(50, &mut f, false, 0),
            Verdict::Tunnel {
                peer: 0,
                wire: Wire::Vxlan { vni: 100 }
            }
        );
        // A frame from a peer to another remote MAC is not sent back out.
        let mut f = icmp_echo(mac(40), mac(41), ip(8), ip(9));
        assert_eq!(
            s.process_tunnel(5, 0, &mut f, 0),
            Verdict::Drop(DropReason::Hairpin)
        );
        // Domains without that VNI never see it: the other domains' tables are untouched.
        assert!(s.fdb_rows(0, 0).iter().all(|r| r.mac != mac(40)));
        // A remote endpoint from the datastore cannot take a local port's MAC.
        s.add_remote_endpoint(5, mac(1), Some(ip(200)), 0);
        assert!(s
            .fdb_rows(5, 0)
            .iter()
            .any(|r| r.mac == mac(1) && r.dest == Dest::Port(50)));
        s.remove_peer(0);
        let mut f = icmp_echo(mac(40), mac(1), ip(205), ip(9));
        assert_eq!(
            s.process(50, &mut f, false, 0),
            Verdict::Flood { peers: false }
        );
    }

    proptest! {
        /// Whatever bytes arrive, the pipeline never panics and never picks a port outside the
        /// ingress domain.
        #[test]
        fn hostile_input(mut data in proptest::collection::vec(any::<u8>(), 0..200), p in 0u32..3, src_ok in any::<bool>()) {
            let mut s = lab();
            let in_port = p * 10;
            if src_ok && data.len() >= 12 {
                data[6..12].copy_from_slice(&s.port(in_port).unwrap().mac.0);
            }
            match s.process(in_port, &mut data, false, 0) {
                Verdict::Forward(o) => prop_assert_eq!(s.port(o).unwrap().domain, p),
                Verdict::Flood { .. } => for o in s.flood_targets(in_port) { prop_assert_eq!(s.port(o).unwrap().domain, p); },
                _ => {}
            }
        }
    }
}
