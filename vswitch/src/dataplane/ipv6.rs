//! IPv6 first-hop security and neighbour/multicast handling for one L2 domain, free of I/O
//! (the pipeline calls [`Ip6Domain::ingress`] for every IPv6 frame from a local port).
//!
//! **What a port owns.** Its link-local address, derived from its MAC by EUI-64 (RFC 4291
//! 2.5.1) as a pod's kernel does by default (`addr_gen_mode` 0: a fresh network namespace resets
//! IPv6 settings to the kernel defaults, so stable-privacy or random link-locals appear only if
//! the pod sets them), plus the IPv6 addresses assigned to the port (`PortConf::ips6`). A port
//! marked `router` may also send router advertisements, redirects, DHCPv6 server messages and
//! MLD queries.
//!
//! **Checks** (each drop has its own reason, see `counters.rs`): source address is one the port
//! owns, or `::` only for DAD probes, MLD reports and router solicitations; NS/NA claim only the
//! port's addresses (NA target, DAD target) and its MAC (source/target link-layer options);
//! RA, redirect, DHCPv6 server traffic and MLD queries only from router ports (RA guard, RFC 6105;
//! DHCPv6 shield, RFC 7610); the upper layer must be visible in the first fragment (RFC 7112,
//! RFC 7113: RA guard evasion through extension headers); ND and MLD are validated as their
//! receivers would (hop limit 255 / 1, checksum, options, router alert for MLD, no fragments:
//! RFC 6980).
//!
//! **Answers.** A multicast NS for an address in the domain's table (every address a port may
//! use is there) is answered by the switch with a solicited, override NA from the owner's MAC,
//! as ARP is; unicast NS (neighbour unreachability detection) goes to the real neighbour, so
//! reachability stays genuine. A DAD probe for an address another port owns is answered with
//! the owner's NA to all-nodes (sent only to the prober), so the newcomer sees the conflict
//! (`dadfailed`) instead of using an address whose traffic would be dropped. Router
//! solicitations go to router ports, or are absorbed when there is none: the switch is the
//! pods' gateway and an L2 network routes no IPv6, so no RA is sent.
//!
//! **Multicast** (MLD snooping, as the Linux bridge with `multicast_snooping=1`): reports and
//! dones are consumed by the switch (never sent to other pods: RFC 4541 2.1.1, and it keeps
//! MLDv1 report suppression from hiding listeners) and go to router ports only. Delivery:
//! - `ff02::1` (all nodes) is flooded, as the bridge does.
//! - Solicited-node groups (`ff02::1:ffXX:XXXX`, DAD and address resolution) go to the ports
//!   owning a matching address, known from configuration (complete: no other address may be
//!   used), plus ports that reported the group, router ports and peers. Nobody else: no flood.
//! - Other groups: to the ports that reported them (MLDv1/v2, without source filtering, exactly
//!   as the bridge in MLDv1 mode treats v2 records: `TO_IN{}`/`IS_IN{}` leave, all else joins),
//!   router ports and peers. A group nobody reported is flooded.
//!
//! **No querier.** The switch does not send MLD queries, like the bridge's default
//! `multicast_querier=0`. Without queries hosts never refresh their reports, so memberships
//! cannot be aged safely: a membership lasts until the port sends a done / leave record or is
//! removed (a pod that leaves silently keeps receiving: extra traffic, never lost traffic), and
//! groups nobody reported are flooded, the bridge's safe behaviour without a querier. The
//! bridge floods even reported groups when it has no querier; we do not, since our table is
//! complete for what it covers: every report from every port of this switch reaches it (with
//! several workers, see [`Ip6Domain::set_snooping`]).

use std::net::Ipv6Addr;

use vswitch_config::MacAddr;

use super::counters::{Absorbed, DropReason};
use super::fdb::{FastMap, PortIdx};
use super::pipeline::PortConf;
use crate::packet::icmpv6::{self, MldMessage, NdMessage};
use crate::packet::ipv6::{self as ip6, ChainError, Ipv6Packet, ROUTER_ALERT_MLD};
use crate::packet::{ethernet, EthernetFrame, Icmpv6Packet};

/// The link-local address a kernel derives from `mac` by modified EUI-64 (RFC 4291 App. A).
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// The solicited-node multicast group of `a` (RFC 4291 2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn is_solicited_node(a: Ipv6Addr) -> bool {
    let s = a.segments();
    s[..5] == [0xff02, 0, 0, 0, 0] && s[5] == 1 && s[6] >> 8 == 0xff
}

/// The Ethernet group address of an IPv6 multicast address (RFC 2464 7).
pub fn multicast_mac(a: Ipv6Addr) -> MacAddr {
    let o = a.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Index of a multicast group in a domain's table (valid until the table next changes).
pub type GroupIdx = u32;

/// Which local ports a multicast frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McastTo {
    /// The group's members and the router ports.
    Group(GroupIdx),
    /// Router ports only (a group with no member, router solicitations, MLD reports).
    Routers,
}

/// What the pipeline does with an IPv6 frame after [`Ip6Domain::ingress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip6Verdict {
    /// Nothing IPv6-specific to do: ordinary L2 forwarding (FDB or flood).
    Continue,
    Drop(DropReason),
    /// The frame was rewritten in place into an answer of this length: send it back.
    Reply(usize),
    /// Consumed by the switch as the protocol's peer; counted, not a drop.
    Absorb(Absorbed),
    /// To these local ports (and to the domain's peers if `peers`).
    Multicast {
        to: McastTo,
        peers: bool,
    },
}

/// The owner of an IPv6 address: its MAC, and whether it is a router port (its NAs carry the
/// router flag: a host drops a router whose NA clears it, RFC 4861 7.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub mac: MacAddr,
    pub router: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    addr: Ipv6Addr,
    /// Ports owning an address whose solicited-node group this is (from configuration).
    owners: Vec<PortIdx>,
    /// Ports that reported the group.
    joined: Vec<PortIdx>,
}

/// IPv6 state of one domain: address table, router ports, multicast groups.
#[derive(Debug, Default)]
pub struct Ip6Domain {
    /// Address → owner of every local port's addresses and remote endpoints' link-locals.
    endpoints: FastMap<Ipv6Addr, Owner>,
    routers: Vec<PortIdx>,
    groups: Vec<Option<Group>>,
    free: Vec<GroupIdx>,
    by_addr: FastMap<Ipv6Addr, GroupIdx>,
    /// Learned (reported) memberships are used for delivery; see `set_snooping`.
    no_snooping: bool,
}

/// Every address `conf` may use as a source.
fn owned(conf: &PortConf) -> impl Iterator<Item = Ipv6Addr> + '_ {
    std::iter::once(link_local(conf.mac)).chain(conf.ips6.iter().copied())
}

fn owns(conf: &PortConf, a: Ipv6Addr) -> bool {
    a == link_local(conf.mac) || conf.ips6.contains(&a)
}

/// The kinds of IPv6 packet the checks tell apart.
enum Kind {
    Icmp(u8),
    DhcpServer,
    Other,
}

impl Ip6Domain {
    /// Whether reported memberships steer delivery (default: yes). A switch that does not see
    /// every port's reports (several workers, each with its own copy of the tables, until
    /// learned state is shared between them) must turn this off: reported groups are then
    /// flooded, solicited-node groups keep their configured owners.
    pub fn set_snooping(&mut self, on: bool) {
        self.no_snooping = !on;
    }

    pub fn add_port(&mut self, idx: PortIdx, conf: &PortConf) {
        for a in owned(conf) {
            self.endpoints.insert(
                a,
                Owner {
                    mac: conf.mac,
                    router: conf.router,
                },
            );
            let g = self.group_mut(solicited_node(a));
            if !g.owners.contains(&idx) {
                g.owners.push(idx);
            }
        }
        if conf.router && !self.routers.contains(&idx) {
            self.routers.push(idx);
        }
    }

    pub fn remove_port(&mut self, idx: PortIdx, conf: &PortConf) {
        for a in owned(conf) {
            if self.endpoints.get(&a).is_some_and(|o| o.mac == conf.mac) {
                self.endpoints.remove(&a);
            }
        }
        self.routers.retain(|p| *p != idx);
        for i in 0..self.groups.len() {
            if let Some(g) = &mut self.groups[i] {
                g.owners.retain(|p| *p != idx);
                g.joined.retain(|p| *p != idx);
                self.release_if_empty(i as GroupIdx);
            }
        }
    }

    /// A remote endpoint (another node's pod): its link-local answers NS like a local one.
    pub fn add_remote(&mut self, mac: MacAddr) {
        self.endpoints
            .entry(link_local(mac))
            .or_insert(Owner { mac, router: false });
    }

    pub fn remove_remote(&mut self, mac: MacAddr) {
        let a = link_local(mac);
        if self.endpoints.get(&a).is_some_and(|o| o.mac == mac) {
            self.endpoints.remove(&a);
        }
    }

    /// Who owns `a`, if any port or remote endpoint of the domain does.
    pub fn owner(&self, a: Ipv6Addr) -> Option<Owner> {
        self.endpoints.get(&a).copied()
    }

    fn group_mut(&mut self, addr: Ipv6Addr) -> &mut Group {
        let i = match self.by_addr.get(&addr) {
            Some(i) => *i,
            None => {
                let g = Group {
                    addr,
                    owners: Vec::new(),
                    joined: Vec::new(),
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.groups[i as usize] = Some(g);
                        i
                    }
                    None => {
                        self.groups.push(Some(g));
                        (self.groups.len() - 1) as GroupIdx
                    }
                };
                self.by_addr.insert(addr, i);
                i
            }
        };
        self.groups[i as usize]
            .as_mut()
            .expect("indexed group exists")
    }

    fn release_if_empty(&mut self, i: GroupIdx) {
        let slot = &mut self.groups[i as usize];
        if let Some(g) = slot {
            if g.owners.is_empty() && g.joined.is_empty() {
                self.by_addr.remove(&g.addr);
                *slot = None;
                self.free.push(i);
            }
        }
    }

    fn join(&mut self, port: PortIdx, addr: Ipv6Addr) {
        // ff02::1 is never reported and always flooded; non-multicast "groups" are nonsense.
        if !addr.is_multicast() || addr == ALL_NODES {
            return;
        }
        let g = self.group_mut(addr);
        if !g.joined.contains(&port) {
            g.joined.push(port);
        }
    }

    fn leave(&mut self, port: PortIdx, addr: Ipv6Addr) {
        if let Some(&i) = self.by_addr.get(&addr) {
            if let Some(g) = &mut self.groups[i as usize] {
                g.joined.retain(|p| *p != port);
            }
            self.release_if_empty(i);
        }
    }

    /// Groups a port reported (for `vswitchctl` and tests), sorted.
    pub fn joined_groups(&self, port: PortIdx) -> Vec<Ipv6Addr> {
        let mut v: Vec<_> = self
            .groups
            .iter()
            .flatten()
            .filter(|g| g.joined.contains(&port))
            .map(|g| g.addr)
            .collect();
        v.sort();
        v
    }

    /// Local ports a multicast frame from `in_port` goes to.
    pub fn targets(&self, in_port: PortIdx, to: McastTo) -> impl Iterator<Item = PortIdx> + '_ {
        let g = match to {
            McastTo::Group(i) => self.groups.get(i as usize).and_then(Option::as_ref),
            McastTo::Routers => None,
        };
        let (owners, joined): (&[PortIdx], &[PortIdx]) =
            g.map_or((&[], &[]), |g| (&g.owners, &g.joined));
        let routers = self
            .routers
            .iter()
            .filter(move |r| !owners.contains(r) && !joined.contains(r));
        let joined = joined.iter().filter(move |p| !owners.contains(p));
        owners
            .iter()
            .chain(joined)
            .chain(routers)
            .copied()
            .filter(move |p| *p != in_port)
    }

    /// Where IPv6 multicast to `dst` goes: `None` means flood (all nodes, or a group whose
    /// listeners are not known).
    fn multicast(&self, dst: Ipv6Addr) -> Option<McastTo> {
        if dst == ALL_NODES {
            return None;
        }
        match self.by_addr.get(&dst) {
            Some(&i) => {
                let g = self.groups[i as usize].as_ref()?;
                if g.owners.is_empty() && self.no_snooping {
                    None
                } else {
                    Some(McastTo::Group(i))
                }
            }
            // A solicited-node group no address maps to: no local port may own such an
            // address, so only routers and peers can have it.
            None if is_solicited_node(dst) => Some(McastTo::Routers),
            None => None,
        }
    }

    fn multicast_verdict(&self, frame_dst: MacAddr, dst: Ipv6Addr) -> Ip6Verdict {
        if !frame_dst.is_multicast() || !dst.is_multicast() {
            return Ip6Verdict::Continue;
        }
        match self.multicast(dst) {
            Some(to) => Ip6Verdict::Multicast { to, peers: true },
            None => Ip6Verdict::Continue,
        }
    }

    /// Runs the IPv6 checks and answers for `frame` (a whole Ethernet frame whose source MAC the
    /// pipeline already matched to `port`) from local port `in_port`.
    pub fn ingress(&mut self, in_port: PortIdx, port: &PortConf, frame: &mut [u8]) -> Ip6Verdict {
        let eth_dst = EthernetFrame::new_unchecked(&*frame).dst();
        let Ok(ip) = Ipv6Packet::new_checked(&frame[ethernet::HEADER_LEN..]) else {
            return Ip6Verdict::Drop(DropReason::MalformedIpv6);
        };
        let (src, dst, hop_limit) = (ip.src(), ip.dst(), ip.hop_limit());
        let chain = match ip.chain() {
            Ok(c) => c,
            Err(ChainError::Truncated | ChainError::Malformed) => {
                return Ip6Verdict::Drop(DropReason::Ipv6HeaderChain)
            }
        };
        let l4 = &ip.payload()[chain.upper_offset..];
        let kind = match chain.upper {
            Some(ip6::NH_ICMPV6) => match l4.first() {
                Some(t) if l4.len() >= icmpv6::HEADER_LEN => Kind::Icmp(*t),
                _ => return Ip6Verdict::Drop(DropReason::Ipv6HeaderChain),
            },
            Some(ip6::NH_UDP) => match icmpv6::is_dhcpv6_server_message(l4) {
                Some(true) => Kind::DhcpServer,
                Some(false) => Kind::Other,
                None => return Ip6Verdict::Drop(DropReason::Ipv6HeaderChain),
            },
            // Non-first fragment: its first fragment carried (and was checked for) the upper
            // layer; or another protocol.
            _ => Kind::Other,
        };

        // Guards for messages only routers send, before the source check: the operator wants
        // to see "rogue RA", whatever address the attacker forged.
        if !port.router {
            match kind {
                Kind::Icmp(icmpv6::TYPE_ROUTER_ADVERT) => {
                    return Ip6Verdict::Drop(DropReason::RogueRa)
                }
                Kind::Icmp(icmpv6::TYPE_REDIRECT) => {
                    return Ip6Verdict::Drop(DropReason::RogueRedirect)
                }
                Kind::Icmp(icmpv6::TYPE_MLD_QUERY) => {
                    return Ip6Verdict::Drop(DropReason::RogueMldQuery)
                }
                Kind::DhcpServer => return Ip6Verdict::Drop(DropReason::RogueDhcpv6),
                _ => {}
            }
        }

        let may_be_unspecified = matches!(
            kind,
            Kind::Icmp(
                icmpv6::TYPE_NEIGHBOR_SOLICIT
                    | icmpv6::TYPE_ROUTER_SOLICIT
                    | icmpv6::TYPE_MLD_REPORT
                    | icmpv6::TYPE_MLD_DONE
                    | icmpv6::TYPE_MLD2_REPORT
            )
        );
        if !(owns(port, src) || src.is_unspecified() && may_be_unspecified) {
            return Ip6Verdict::Drop(DropReason::SpoofedSrcIpv6);
        }

        let Kind::Icmp(ty) = kind else {
            return self.multicast_verdict(eth_dst, dst);
        };
        let fragmented = chain.fragment.is_some();
        let icmp_off = ethernet::HEADER_LEN + ip6::HEADER_LEN + chain.upper_offset;
        let icmp_end = ethernet::HEADER_LEN + ip6::HEADER_LEN + ip.payload_len();
        match ty {
            icmpv6::TYPE_ROUTER_SOLICIT
            | icmpv6::TYPE_NEIGHBOR_SOLICIT
            | icmpv6::TYPE_NEIGHBOR_ADVERT => {
                let icmp = &frame[icmp_off..icmp_end];
                let valid = !fragmented
                    && hop_limit == 255
                    && icmp[1] == 0
                    && Icmpv6Packet::new_checked(icmp).is_ok_and(|p| p.verify_checksum(src, dst));
                let facts = NdMessage::new_checked(icmp)
                    .ok()
                    .filter(|m| valid && m.options().all(|o| o.is_ok()))
                    .map(|m| NdFacts::of(&m, port.mac));
                let Some(facts) = facts else {
                    return Ip6Verdict::Drop(DropReason::MalformedNd);
                };
                self.neighbor_discovery(in_port, port, frame, ty, src, dst, eth_dst, facts)
            }
            icmpv6::TYPE_MLD_REPORT | icmpv6::TYPE_MLD_DONE | icmpv6::TYPE_MLD2_REPORT => {
                let icmp = &frame[icmp_off..icmp_end];
                let valid = !fragmented
                    && hop_limit == 1
                    && chain.router_alert == Some(ROUTER_ALERT_MLD)
                    && (src.is_unicast_link_local() || src.is_unspecified())
                    && Icmpv6Packet::new_checked(icmp).is_ok_and(|p| p.verify_checksum(src, dst));
                let Some(m) = MldMessage::new_checked(icmp).ok().filter(|_| valid) else {
                    return Ip6Verdict::Drop(DropReason::MalformedMld);
                };
                match ty {
                    icmpv6::TYPE_MLD_REPORT => {
                        if let Some(g) = m.group() {
                            self.join(in_port, g);
                        }
                    }
                    icmpv6::TYPE_MLD_DONE => {
                        if let Some(g) = m.group() {
                            self.leave(in_port, g);
                        }
                    }
                    _ => {
                        let records: Vec<_> = m.records().collect();
                        for r in records {
                            match r.kind {
                                icmpv6::MODE_IS_INCLUDE | icmpv6::CHANGE_TO_INCLUDE
                                    if r.sources == 0 =>
                                {
                                    self.leave(in_port, r.group)
                                }
                                icmpv6::MODE_IS_INCLUDE..=icmpv6::BLOCK_OLD_SOURCES => {
                                    self.join(in_port, r.group)
                                }
                                _ => {}
                            }
                        }
                    }
                }
                self.to_routers_or(in_port, Absorbed::MldReport)
            }
            _ => self.multicast_verdict(eth_dst, dst),
        }
    }

    /// To the router ports if the domain has any (beside `in_port`), else absorbed as `a`.
    fn to_routers_or(&self, in_port: PortIdx, a: Absorbed) -> Ip6Verdict {
        if self.routers.iter().any(|r| *r != in_port) {
            Ip6Verdict::Multicast {
                to: McastTo::Routers,
                peers: false,
            }
        } else {
            Ip6Verdict::Absorb(a)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn neighbor_discovery(
        &mut self,
        in_port: PortIdx,
        port: &PortConf,
        frame: &mut [u8],
        ty: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        eth_dst: MacAddr,
        nd: NdFacts,
    ) -> Ip6Verdict {
        if !nd.sllao_ok {
            return Ip6Verdict::Drop(DropReason::NdSpoofedLladdr);
        }
        if src.is_unspecified() && nd.has_sllao {
            // RFC 4861 4.1/4.3: no source link-layer option from the unspecified address.
            return Ip6Verdict::Drop(DropReason::MalformedNd);
        }
        match ty {
            icmpv6::TYPE_ROUTER_SOLICIT => self.to_routers_or(in_port, Absorbed::RouterSolicit),
            icmpv6::TYPE_NEIGHBOR_ADVERT => {
                if !owns(port, nd.target) {
                    return Ip6Verdict::Drop(DropReason::NdSpoofedTarget);
                }
                if !nd.tllao_ok {
                    return Ip6Verdict::Drop(DropReason::NdSpoofedLladdr);
                }
                self.multicast_verdict(eth_dst, dst)
            }
            _ => {
                let target = nd.target;
                if target.is_multicast() || target.is_unspecified() {
                    return Ip6Verdict::Drop(DropReason::MalformedNd);
                }
                let owner = self.owner(target).filter(|o| o.mac != port.mac);
                let router_flag = |o: Owner| if o.router { icmpv6::NA_ROUTER } else { 0 };
                if src.is_unspecified() {
                    // Duplicate address detection (RFC 4862 5.4.2): sent to the target's
                    // solicited-node group.
                    if dst != solicited_node(target) {
                        return Ip6Verdict::Drop(DropReason::MalformedNd);
                    }
                    if owns(port, target) {
                        return self.multicast_verdict(eth_dst, dst);
                    }
                    let Some(o) = owner else {
                        return Ip6Verdict::Drop(DropReason::NdSpoofedTarget);
                    };
                    // Defend the address for its owner: the prober sees the conflict.
                    let n = write_na(
                        frame,
                        multicast_mac(ALL_NODES),
                        o.mac,
                        ALL_NODES,
                        icmpv6::NA_OVERRIDE | router_flag(o),
                        target,
                    );
                    return Ip6Verdict::Reply(n);
                }
                if dst.is_multicast() && eth_dst.is_multicast() {
                    if let Some(o) = owner {
                        if frame.len() >= NA_FRAME_LEN {
                            let n = write_na(
                                frame,
                                port.mac,
                                o.mac,
                                src,
                                icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE | router_flag(o),
                                target,
                            );
                            return Ip6Verdict::Reply(n);
                        }
                    }
                }
                self.multicast_verdict(eth_dst, dst)
            }
        }
    }
}

/// What the ND checks need from a message, read before the frame is rewritten.
#[derive(Debug, Clone, Copy)]
struct NdFacts {
    /// NS/NA target (`::` for RS).
    target: Ipv6Addr,
    /// Every source link-layer option names `mac`.
    sllao_ok: bool,
    has_sllao: bool,
    /// Every target link-layer option names `mac`.
    tllao_ok: bool,
}

impl NdFacts {
    fn of(m: &NdMessage<&[u8]>, mac: MacAddr) -> NdFacts {
        let all = |kind| icmpv6::lladdr_options_match(m.options(), kind, mac) == Ok(true);
        NdFacts {
            target: m.target().unwrap_or(Ipv6Addr::UNSPECIFIED),
            sllao_ok: all(icmpv6::OPT_SOURCE_LLADDR),
            has_sllao: icmpv6::has_option(m.options(), icmpv6::OPT_SOURCE_LLADDR),
            tllao_ok: all(icmpv6::OPT_TARGET_LLADDR),
        }
    }
}

/// An NA with a target link-layer option, as an Ethernet frame.
const NA_FRAME_LEN: usize =
    ethernet::HEADER_LEN + ip6::HEADER_LEN + icmpv6::NA_LEN + icmpv6::LLADDR_OPT_LEN;

/// Rewrites `frame` (an NS) into an NA for `target` at `owner` (from `owner`, to `eth_dst` /
/// `ip_dst`), in place; returns its length. The target link-layer option is included when the
/// frame has room (a DAD probe without a nonce is 8 bytes shorter than the answer; the option is
/// optional for its defence). RFC 4861 7.2.4.
fn write_na(
    frame: &mut [u8],
    eth_dst: MacAddr,
    owner: MacAddr,
    ip_dst: Ipv6Addr,
    flags: u8,
    target: Ipv6Addr,
) -> usize {
    let tlla = (frame.len() >= NA_FRAME_LEN).then_some(owner);
    let icmp_start = ethernet::HEADER_LEN + ip6::HEADER_LEN;
    let icmp_len = icmpv6::emit_neighbor_advert(&mut frame[icmp_start..], flags, target, tlla);
    ip6::emit(
        &mut frame[ethernet::HEADER_LEN..],
        target,
        ip_dst,
        ip6::NH_ICMPV6,
        icmp_len,
        255,
    );
    if let Ok(mut p) = Icmpv6Packet::new_checked(&mut frame[icmp_start..icmp_start + icmp_len]) {
        p.fill_checksum(target, ip_dst);
    }
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    eth.set_dst(eth_dst);
    eth.set_src(owner);
    icmp_start + icmp_len
}

#[cfg(test)]
mod tests;
