//! The switching pipeline of one worker, free of I/O so it is tested without root:
//! ingress checks (size, anti-spoofing) → ARP/ICMP answered locally → FDB forwarding, strictly
//! inside the ingress port's domain. A frame can only ever be sent to ports of the domain of the
//! port it came from: every output port is taken from that domain's own tables.

use std::net::Ipv4Addr;

use vswitch_config::MacAddr;

use super::counters::DropReason;
use super::fdb::{EntryKind, FastMap, Fdb, PortIdx};
use crate::packet::{
    arp, ethernet, icmp, ipv4, ArpPacket, EtherType, EthernetFrame, IcmpPacket, Ipv4Packet,
    Ipv6Packet,
};

pub type DomainIdx = u32;

/// What to do with a frame after the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop(DropReason),
    /// Send to this port.
    Forward(PortIdx),
    /// Send to every other port of the ingress port's domain.
    Flood,
    /// The frame was rewritten in place into an answer (ARP reply, echo reply): send it back.
    Reply,
}

/// A port as the pipeline sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConf {
    pub domain: DomainIdx,
    pub mac: MacAddr,
    pub ips: Vec<Ipv4Addr>,
    /// MTU + Ethernet header: longer frames are dropped.
    pub max_frame: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainConf {
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: MacAddr,
}

#[derive(Debug)]
struct Domain {
    conf: DomainConf,
    ports: Vec<PortIdx>,
    /// IP → MAC of this domain's ports, for ARP suppression.
    endpoints: FastMap<Ipv4Addr, MacAddr>,
    fdb: Fdb,
}

/// One FDB row for `fdb show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbRow {
    pub mac: MacAddr,
    pub port: PortIdx,
    pub kind: EntryKind,
    pub age_secs: u64,
}

#[derive(Debug)]
pub struct Switch {
    ports: Vec<Option<PortConf>>,
    domains: Vec<Option<Domain>>,
    aging_secs: u64,
    max_learned: usize,
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
            aging_secs,
            max_learned,
        }
    }

    pub fn add_domain(&mut self, idx: DomainIdx, conf: DomainConf) {
        *slot(&mut self.domains, idx) = Some(Domain {
            conf,
            ports: Vec::new(),
            endpoints: FastMap::default(),
            fdb: Fdb::new(self.aging_secs, self.max_learned),
        });
    }

    /// Removes a domain; the control plane only does this once it has no ports.
    pub fn remove_domain(&mut self, idx: DomainIdx) {
        if let Some(d) = self.domains.get_mut(idx as usize) {
            *d = None;
        }
    }

    /// Adds a port to its domain, with a static FDB entry and ARP endpoints. False if the domain
    /// does not exist.
    pub fn add_port(&mut self, idx: PortIdx, conf: PortConf) -> bool {
        let Some(Some(d)) = self.domains.get_mut(conf.domain as usize) else {
            return false;
        };
        d.ports.push(idx);
        d.fdb.add_static(conf.mac, idx);
        for ip in &conf.ips {
            d.endpoints.insert(*ip, conf.mac);
        }
        *slot(&mut self.ports, idx) = Some(conf);
        true
    }

    pub fn remove_port(&mut self, idx: PortIdx) {
        let Some(conf) = self.ports.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        if let Some(Some(d)) = self.domains.get_mut(conf.domain as usize) {
            d.ports.retain(|p| *p != idx);
            d.fdb.remove_port(idx);
            for ip in &conf.ips {
                if d.endpoints.get(ip) == Some(&conf.mac) {
                    d.endpoints.remove(ip);
                }
            }
        }
    }

    pub fn port(&self, idx: PortIdx) -> Option<&PortConf> {
        self.ports.get(idx as usize)?.as_ref()
    }

    /// Ports a flood from `in_port` goes to: its domain's ports, without `in_port`.
    pub fn flood_targets(&self, in_port: PortIdx) -> impl Iterator<Item = PortIdx> + '_ {
        let ports: &[PortIdx] = self
            .port(in_port)
            .and_then(|p| self.domains.get(p.domain as usize)?.as_ref())
            .map_or(&[], |d| d.ports.as_slice());
        ports.iter().copied().filter(move |p| *p != in_port)
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
                port: e.port,
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

    /// Runs one frame received on `in_port` through the pipeline. `frame` may be rewritten in
    /// place (answers). `vlan_stripped`: the kernel removed a VLAN tag (AF_PACKET metadata).
    pub fn process(
        &mut self,
        in_port: PortIdx,
        frame: &mut [u8],
        vlan_stripped: bool,
        now: u64,
    ) -> Verdict {
        let Some(port) = self.ports.get(in_port as usize).and_then(Option::as_ref) else {
            return Verdict::Drop(DropReason::PortGone);
        };
        let Some(Some(domain)) = self.domains.get_mut(port.domain as usize) else {
            return Verdict::Drop(DropReason::PortGone);
        };
        if frame.len() < ethernet::HEADER_LEN {
            return Verdict::Drop(DropReason::FrameTooShort);
        }
        if frame.len() > port.max_frame {
            return Verdict::Drop(DropReason::FrameTooLong);
        }
        let eth = EthernetFrame::new_unchecked(&*frame);
        let (src, dst) = (eth.src(), eth.dst());
        if !src.is_valid_unicast() {
            return Verdict::Drop(DropReason::InvalidSrcMac);
        }
        if src != port.mac {
            return Verdict::Drop(DropReason::SpoofedSrcMac);
        }
        if vlan_stripped {
            return Verdict::Drop(DropReason::VlanTagged);
        }
        let gw = domain.conf;
        match eth.ethertype() {
            EtherType::Arp => {
                let Ok(a) = ArpPacket::new_checked(eth.payload()) else {
                    return Verdict::Drop(DropReason::MalformedArp);
                };
                let sip = a.sender_ip();
                if a.sender_mac() != port.mac || !(sip.is_unspecified() || port.ips.contains(&sip))
                {
                    return Verdict::Drop(DropReason::SpoofedArp);
                }
                if a.operation() == arp::OP_REQUEST {
                    let tip = a.target_ip();
                    let answer = if tip == gw.gateway_ip {
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
                        let mut eth = EthernetFrame::new_unchecked(&mut *frame);
                        eth.set_dst(src);
                        eth.set_src(mac);
                        if let Ok(mut a) = ArpPacket::new_checked(eth.payload_mut()) {
                            a.make_reply(mac);
                        }
                        return Verdict::Reply;
                    }
                }
            }
            EtherType::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    return Verdict::Drop(DropReason::MalformedIpv4);
                };
                if !port.ips.contains(&ip.src()) {
                    return Verdict::Drop(DropReason::SpoofedSrcIp);
                }
                if dst == gw.gateway_mac {
                    if ip.dst() != gw.gateway_ip
                        || ip.protocol() != ipv4::PROTO_ICMP
                        || ip.is_fragment()
                    {
                        return Verdict::Drop(DropReason::NotForGateway);
                    }
                    return answer_echo(frame, gw);
                }
            }
            EtherType::Ipv6 => {
                let Ok(ip6) = Ipv6Packet::new_checked(eth.payload()) else {
                    return Verdict::Drop(DropReason::MalformedIpv6);
                };
                let s = ip6.src();
                // Pods here own no global IPv6 address; link-local (from their MAC) and the
                // unspecified address (duplicate address detection) are theirs to use.
                if !(s.is_unspecified() || s.is_unicast_link_local()) {
                    return Verdict::Drop(DropReason::SpoofedSrcIp);
                }
            }
            EtherType::Vlan => return Verdict::Drop(DropReason::VlanTagged),
            EtherType::Other(_) => return Verdict::Drop(DropReason::UnsupportedEthertype),
        }
        // L2 forwarding within the domain.
        domain.fdb.learn(src, in_port, now);
        if dst.is_multicast() {
            return Verdict::Flood;
        }
        if dst == gw.gateway_mac {
            return Verdict::Drop(DropReason::NotForGateway);
        }
        match domain.fdb.lookup(&dst, now) {
            Some(p) if p == in_port => Verdict::Drop(DropReason::Hairpin),
            Some(p) => Verdict::Forward(p),
            None => Verdict::Flood,
        }
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
                DomainConf {
                    gateway_ip: GW,
                    gateway_mac: GW_MAC,
                },
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
                    max_frame: 1514,
                },
            );
            s.add_port(
                base + 1,
                PortConf {
                    domain: d,
                    mac: m(d, 2),
                    ips: vec![ip(11)],
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
        assert_eq!(s.process(10, &mut f, false, 0), Verdict::Flood);
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
        assert_eq!(s.process(0, &mut f, false, 0), Verdict::Flood);
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
        assert_eq!(s.process(0, &mut f, false, 0), Verdict::Flood);
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
        assert_eq!(s.process(0, &mut f, false, 0), Verdict::Flood);
        assert!(s.fdb_rows(0, 0).iter().all(|r| r.mac != mac(2)));
        assert_eq!(s.flood_targets(0).count(), 0);
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
                Verdict::Flood => for o in s.flood_targets(in_port) { prop_assert_eq!(s.port(o).unwrap().domain, p); },
                _ => {}
            }
        }
    }
}
