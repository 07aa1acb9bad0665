//! Unit and property tests of IPv6 first-hop security, through the pipeline's
//! `Switch::process` so the hook is covered too.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use vswitch_config::MacAddr;

use super::*;
use crate::dataplane::pipeline::{DomainConf, Switch, Verdict};
use crate::packet::icmpv6::pseudo_checksum;

const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const GW_MAC: MacAddr = MacAddr([2, 0xaa, 0, 0, 0, 1]);
const ROUTER: u32 = 9;

fn mac(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, n])
}
fn ll(n: u8) -> Ipv6Addr {
    link_local(mac(n))
}
fn a6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn conf(n: u8, ips6: Vec<Ipv6Addr>, router: bool) -> PortConf {
    PortConf {
        domain: 0,
        mac: mac(n),
        ips: vec![Ipv4Addr::new(192, 168, 1, n)],
        ips6,
        router,
        max_frame: 1514,
    }
}

/// Domain 0: ports 0, 1, 2 (MACs 1, 2, 3; port 1 also owns fd00::2); domain 1: port 10 (MAC 1
/// again, its own domain).
fn lab() -> Switch {
    let mut s = Switch::new(300, 100);
    let net = "192.168.1.0/24".parse().unwrap();
    s.add_domain(0, DomainConf::l2(GW, GW_MAC, net));
    s.add_domain(1, DomainConf::l2(GW, GW_MAC, net));
    s.add_port(0, conf(1, vec![], false));
    s.add_port(1, conf(2, vec![a6("fd00::2")], false));
    s.add_port(2, conf(3, vec![], false));
    s.add_port(
        10,
        PortConf {
            domain: 1,
            ..conf(1, vec![], false)
        },
    );
    s
}

fn with_router(mut s: Switch) -> Switch {
    s.add_port(ROUTER, conf(9, vec![], true));
    s
}

/// An Ethernet + IPv6 frame; `exts` are extension headers (already chained to `nh`).
fn frame(
    eth_dst: MacAddr,
    eth_src: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    first_nh: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40];
    f[..6].copy_from_slice(&eth_dst.0);
    f[6..12].copy_from_slice(&eth_src.0);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    ip6::emit(&mut f[14..], src, dst, first_nh, payload.len(), hop);
    f.extend_from_slice(payload);
    f
}

/// ICMPv6 message with its checksum filled.
fn icmp(src: Ipv6Addr, dst: Ipv6Addr, mut m: Vec<u8>) -> Vec<u8> {
    m[2] = 0;
    m[3] = 0;
    let c = pseudo_checksum(src, dst, ip6::NH_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn lladdr_opt(kind: u8, m: MacAddr) -> Vec<u8> {
    let mut o = vec![kind, 1];
    o.extend_from_slice(&m.0);
    o
}

fn nd_body(ty: u8, flags: u8, target: Ipv6Addr, opts: &[Vec<u8>]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    for o in opts {
        m.extend_from_slice(o);
    }
    m
}

/// A multicast NS from port with `src_mac`, `src` for `target` (with a source link-layer option
/// naming `sllao` if given).
fn ns(src_mac: MacAddr, src: Ipv6Addr, target: Ipv6Addr, sllao: Option<MacAddr>) -> Vec<u8> {
    let dst = solicited_node(target);
    let opts: Vec<_> = sllao
        .map(|m| lladdr_opt(icmpv6::OPT_SOURCE_LLADDR, m))
        .into_iter()
        .collect();
    let m = icmp(src, dst, nd_body(135, 0, target, &opts));
    frame(multicast_mac(dst), src_mac, src, dst, 255, 58, &m)
}

fn na(
    src_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    eth_dst: MacAddr,
    target: Ipv6Addr,
    tllao: MacAddr,
) -> Vec<u8> {
    let opts = [lladdr_opt(icmpv6::OPT_TARGET_LLADDR, tllao)];
    let m = icmp(src, dst, nd_body(136, 0x60, target, &opts));
    frame(eth_dst, src_mac, src, dst, 255, 58, &m)
}

fn ra(src_mac: MacAddr, src: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&lladdr_opt(icmpv6::OPT_SOURCE_LLADDR, src_mac));
    // Prefix information: 2001:db8:bad::/64, autonomous.
    let mut pi = vec![
        3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x0e, 0x10, 0, 0, 0, 0,
    ];
    pi.extend_from_slice(&a6("2001:db8:bad::").octets());
    m.extend_from_slice(&pi);
    let m = icmp(src, ALL_NODES, m);
    frame(
        multicast_mac(ALL_NODES),
        src_mac,
        src,
        ALL_NODES,
        255,
        58,
        &m,
    )
}

/// Hop-by-hop header with router alert (MLD), then ICMPv6.
fn hbh_ra() -> Vec<u8> {
    vec![58, 0, 5, 2, 0, 0, 1, 0]
}

fn mld(
    src_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    msg: Vec<u8>,
    alert: bool,
    hop: u8,
) -> Vec<u8> {
    let m = icmp(src, dst, msg);
    let (nh, mut p) = if alert { (0, hbh_ra()) } else { (58, vec![]) };
    p.extend_from_slice(&m);
    frame(multicast_mac(dst), src_mac, src, dst, hop, nh, &p)
}

fn mld2_report(src_mac: MacAddr, src: Ipv6Addr, records: &[(u8, Ipv6Addr)]) -> Vec<u8> {
    let mut m = vec![143, 0, 0, 0, 0, 0, 0, records.len() as u8];
    for (kind, g) in records {
        m.extend_from_slice(&[*kind, 0, 0, 0]);
        m.extend_from_slice(&g.octets());
    }
    mld(src_mac, src, a6("ff02::16"), m, true, 1)
}

fn mld1(ty: u8, src_mac: MacAddr, src: Ipv6Addr, group: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&group.octets());
    let dst = if ty == icmpv6::TYPE_MLD_DONE {
        a6("ff02::2")
    } else {
        group
    };
    mld(src_mac, src, dst, m, true, 1)
}

fn udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 12];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&12u16.to_be_bytes());
    let c = pseudo_checksum(src, dst, ip6::NH_UDP, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

fn echo(src_mac: MacAddr, dst_mac: MacAddr, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let m = icmp(src, dst, vec![128, 0, 0, 0, 0, 1, 0, 1, b'h', b'i']);
    frame(dst_mac, src_mac, src, dst, 64, 58, &m)
}

#[track_caller]
fn targets(s: &Switch, in_port: u32, v: Verdict) -> Vec<u32> {
    match v {
        Verdict::Multicast { to, .. } => {
            let mut t: Vec<_> = s.mcast_targets(in_port, to).collect();
            t.sort();
            t
        }
        other => panic!("expected multicast, got {other:?}"),
    }
}

#[test]
fn addresses_a_kernel_derives() {
    // What `ip -6 addr` shows for a pod with MAC 02:00:00:00:00:11 (addr_gen_mode eui64).
    assert_eq!(link_local(mac(0x11)), a6("fe80::ff:fe00:11"));
    assert_eq!(
        link_local(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
        a6("fe80::5054:ff:fe12:3456")
    );
    assert_eq!(
        solicited_node(a6("fe80::ff:fe00:11")),
        a6("ff02::1:ff00:11")
    );
    assert_eq!(
        solicited_node(a6("fd00::1234:5678")),
        a6("ff02::1:ff34:5678")
    );
    assert!(is_solicited_node(a6("ff02::1:ff00:11")));
    assert!(!is_solicited_node(a6("ff02::1:2")));
    assert_eq!(
        multicast_mac(a6("ff02::1:ff00:11")),
        MacAddr([0x33, 0x33, 0xff, 0, 0, 0x11])
    );
}

#[test]
fn source_must_be_the_ports_own() {
    let mut s = lab();
    // Another pod's link-local: dropped, whatever the destination.
    let mut f = echo(mac(1), mac(2), ll(2), ll(2));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::SpoofedSrcIpv6)
    );
    // A made-up global, and one another port owns.
    for src in [a6("2001:db8::1"), a6("fd00::2"), a6("fe80::1")] {
        let mut f = echo(mac(1), mac(2), src, ll(2));
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::SpoofedSrcIpv6)
        );
    }
    // :: is only for DAD, MLD and RS.
    let mut f = echo(mac(1), mac(2), Ipv6Addr::UNSPECIFIED, ll(2));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::SpoofedSrcIpv6)
    );
    // Own link-local and own assigned address: forwarded by the FDB.
    let mut f = echo(mac(1), mac(2), ll(1), ll(2));
    assert_eq!(s.process(0, &mut f, false, 0), Verdict::Forward(1));
    let mut f = echo(mac(2), mac(1), a6("fd00::2"), ll(1));
    assert_eq!(s.process(1, &mut f, false, 0), Verdict::Forward(0));
    // The same MAC in another domain owns its own link-local there, nothing more.
    let mut f = echo(mac(1), mac(2), ll(2), ll(2));
    assert_eq!(
        s.process(10, &mut f, false, 0),
        Verdict::Drop(DropReason::SpoofedSrcIpv6)
    );
}

#[test]
fn forged_neighbor_advertisements_are_dropped() {
    let mut s = lab();
    // Port 0 claims port 1's address (the classic hijack), with its own or the victim's MAC.
    for tlla in [mac(1), mac(2)] {
        let mut f = na(mac(1), ll(1), ll(3), mac(3), ll(2), tlla);
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::NdSpoofedTarget)
        );
    }
    let mut f = na(
        mac(1),
        ll(1),
        ALL_NODES,
        multicast_mac(ALL_NODES),
        a6("fd00::2"),
        mac(1),
    );
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::NdSpoofedTarget)
    );
    // Its own address with another MAC in the target link-layer option.
    let mut f = na(mac(1), ll(1), ll(3), mac(3), ll(1), mac(2));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::NdSpoofedLladdr)
    );
    // A legitimate NA (answer to a NUD probe) goes to its destination.
    let mut f = na(mac(1), ll(1), ll(3), mac(3), ll(1), mac(1));
    assert_eq!(s.process(0, &mut f, false, 0), Verdict::Forward(2));
    // Unsolicited NA to all nodes: flooded.
    let mut f = na(
        mac(1),
        ll(1),
        ALL_NODES,
        multicast_mac(ALL_NODES),
        ll(1),
        mac(1),
    );
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Flood { peers: false }
    );
    // A bad checksum or hop limit is malformed (receivers would ignore it anyway).
    let mut f = na(mac(1), ll(1), ll(3), mac(3), ll(1), mac(1));
    let n = f.len();
    f[n - 1] ^= 1;
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::MalformedNd)
    );
    let mut f = na(mac(1), ll(1), ll(3), mac(3), ll(1), mac(1));
    f[14 + 7] = 64;
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::MalformedNd)
    );
}

#[test]
fn solicitation_for_a_known_address_is_answered_by_the_switch() {
    let mut s = lab();
    let mut f = ns(mac(1), ll(1), ll(2), Some(mac(1)));
    let Verdict::ReplyResized(n) = s.process(0, &mut f, false, 0) else {
        panic!("expected an answer");
    };
    let e = EthernetFrame::new_checked(&f[..n]).unwrap();
    assert_eq!((e.dst(), e.src()), (mac(1), mac(2)));
    let ip = Ipv6Packet::new_checked(e.payload()).unwrap();
    assert_eq!((ip.src(), ip.dst(), ip.hop_limit()), (ll(2), ll(1), 255));
    let m = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(m.verify_checksum(ip.src(), ip.dst()));
    let nd = NdMessage::new_checked(ip.payload()).unwrap();
    assert_eq!(nd.msg_type(), icmpv6::TYPE_NEIGHBOR_ADVERT);
    assert_eq!(nd.target(), Some(ll(2)));
    assert_eq!(nd.na_flags(), icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE);
    let o: Vec<_> = nd.options().flatten().collect();
    assert_eq!((o.len(), o[0].kind, o[0].lladdr()), (1, 2, Some(mac(2))));
    // The assigned address too.
    let mut f = ns(mac(1), ll(1), a6("fd00::2"), Some(mac(1)));
    assert!(matches!(
        s.process(0, &mut f, false, 0),
        Verdict::ReplyResized(_)
    ));
    // A unicast NS (reachability probe) goes to the neighbour itself.
    let m = icmp(
        ll(1),
        ll(2),
        nd_body(135, 0, ll(2), &[lladdr_opt(1, mac(1))]),
    );
    let mut f = frame(mac(2), mac(1), ll(1), ll(2), 255, 58, &m);
    assert_eq!(s.process(0, &mut f, false, 0), Verdict::Forward(1));
    // The source link-layer option must be the sender's MAC.
    let mut f = ns(mac(1), ll(1), ll(2), Some(mac(3)));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::NdSpoofedLladdr)
    );
    // Unknown target: nobody on this node can own it: no flood, no answer.
    let mut f = ns(mac(1), ll(1), a6("fe80::1:2:3:4"), Some(mac(1)));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Absorb(Absorbed::McastNoListener)
    );
    // ... except to router ports.
    let mut s = with_router(lab());
    let mut f = ns(mac(1), ll(1), a6("fe80::1:2:3:4"), Some(mac(1)));
    let v = s.process(0, &mut f, false, 0);
    assert_eq!(targets(&s, 0, v), vec![ROUTER]);
    // A router port's address is answered with the router flag (else hosts drop the router).
    let mut f = ns(mac(1), ll(1), ll(9), Some(mac(1)));
    let Verdict::ReplyResized(n) = s.process(0, &mut f, false, 0) else {
        panic!("expected an answer");
    };
    let nd = NdMessage::new_checked(&f[54..n]).unwrap();
    assert_eq!(
        nd.na_flags(),
        icmpv6::NA_ROUTER | icmpv6::NA_SOLICITED | icmpv6::NA_OVERRIDE
    );
}

#[test]
fn duplicate_address_detection() {
    let mut s = lab();
    // A pod probing its own address: nobody else owns it, nothing is sent anywhere.
    let mut f = ns(mac(1), Ipv6Addr::UNSPECIFIED, ll(1), None);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Absorb(Absorbed::McastNoListener)
    );
    // Probing an address another port owns: the switch defends it for the owner.
    let mut f = ns(mac(1), Ipv6Addr::UNSPECIFIED, ll(2), None);
    let Verdict::ReplyResized(n) = s.process(0, &mut f, false, 0) else {
        panic!("expected a defence");
    };
    let e = EthernetFrame::new_checked(&f[..n]).unwrap();
    assert_eq!((e.dst(), e.src()), (multicast_mac(ALL_NODES), mac(2)));
    let ip = Ipv6Packet::new_checked(e.payload()).unwrap();
    assert_eq!((ip.src(), ip.dst()), (ll(2), ALL_NODES));
    assert!(Icmpv6Packet::new_checked(ip.payload())
        .unwrap()
        .verify_checksum(ip.src(), ip.dst()));
    let nd = NdMessage::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (nd.target(), nd.na_flags()),
        (Some(ll(2)), icmpv6::NA_OVERRIDE)
    );
    // Probing an address nobody has: the port may not claim it.
    let mut f = ns(mac(1), Ipv6Addr::UNSPECIFIED, a6("fd00::77"), None);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::NdSpoofedTarget)
    );
    // A probe must not carry a source link-layer option, and must go to the solicited node.
    let mut f = ns(mac(1), Ipv6Addr::UNSPECIFIED, ll(1), Some(mac(1)));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::MalformedNd)
    );
    let mut f = ns(mac(1), Ipv6Addr::UNSPECIFIED, ll(1), None);
    f[14 + 24..14 + 40].copy_from_slice(&ALL_NODES.octets());
    let c = pseudo_checksum(Ipv6Addr::UNSPECIFIED, ALL_NODES, 58, &{
        let mut m = f[54..].to_vec();
        m[2] = 0;
        m[3] = 0;
        m
    });
    f[56..58].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::MalformedNd)
    );
}

#[test]
fn ra_redirect_dhcpv6_and_queries_only_from_router_ports() {
    let mut s = with_router(lab());
    let mut f = ra(mac(1), ll(1));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::RogueRa)
    );
    // Even with a forged source (the router's own address).
    let mut f = ra(mac(1), ll(9));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::RogueRa)
    );
    let mut f = ra(mac(9), ll(9));
    assert_eq!(
        s.process(ROUTER, &mut f, false, 0),
        Verdict::Flood { peers: false }
    );

    let mut m = vec![137, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&ll(1).octets());
    m.extend_from_slice(&a6("2001:db8::9").octets());
    let m = icmp(ll(1), ll(2), m);
    let mut f = frame(mac(2), mac(1), ll(1), ll(2), 255, 58, &m);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::RogueRedirect)
    );

    let dhcp_all = a6("ff02::1:2");
    for (sport, dport) in [(547, 546), (547, 547), (4000, 546)] {
        let u = udp(ll(1), ll(2), sport, dport);
        let mut f = frame(mac(2), mac(1), ll(1), ll(2), 64, 17, &u);
        assert_eq!(
            s.process(0, &mut f, false, 0),
            Verdict::Drop(DropReason::RogueDhcpv6)
        );
    }
    let u = udp(ll(9), ll(2), 547, 546);
    let mut f = frame(mac(2), mac(9), ll(9), ll(2), 64, 17, &u);
    assert_eq!(s.process(ROUTER, &mut f, false, 0), Verdict::Forward(1));
    // A client's solicit goes out (to the DHCP group: the router port is its only listener).
    let u = udp(ll(1), dhcp_all, 546, 547);
    let mut f = frame(multicast_mac(dhcp_all), mac(1), ll(1), dhcp_all, 1, 17, &u);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Flood { peers: false }
    );

    let mut q = vec![130, 0, 0, 0, 0x27, 0x10, 0, 0];
    q.extend_from_slice(&[0; 20]);
    let mut f = mld(mac(1), ll(1), ALL_NODES, q.clone(), true, 1);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::RogueMldQuery)
    );
    let mut f = mld(mac(9), ll(9), ALL_NODES, q, true, 1);
    assert_eq!(
        s.process(ROUTER, &mut f, false, 0),
        Verdict::Flood { peers: false }
    );
}

#[test]
fn ra_guard_sees_through_extension_headers_and_fragments() {
    let mut s = lab();
    let body = ra(mac(1), ll(1))[54..].to_vec();
    // Destination options, then the RA: found and dropped.
    let mut p = vec![58, 0, 1, 4, 0, 0, 0, 0];
    p.extend_from_slice(&body);
    let mut f = frame(
        multicast_mac(ALL_NODES),
        mac(1),
        ll(1),
        ALL_NODES,
        255,
        60,
        &p,
    );
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::RogueRa)
    );
    // A first fragment whose chain ends before the ICMPv6 header (RFC 7113's evasion).
    let mut p = vec![60, 0, 0, 1, 0, 0, 0, 7]; // fragment, offset 0, more
    p.extend_from_slice(&[58, 1, 1, 12]); // destination options claiming 16 bytes...
    p.extend_from_slice(&[0; 8]); // ...of which only 12 are here
    let mut f = frame(
        multicast_mac(ALL_NODES),
        mac(1),
        ll(1),
        ALL_NODES,
        255,
        44,
        &p,
    );
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::Ipv6HeaderChain)
    );
    // An RA in a first fragment is still an RA.
    let mut p = vec![58, 0, 0, 1, 0, 0, 0, 7];
    p.extend_from_slice(&body);
    let mut f = frame(
        multicast_mac(ALL_NODES),
        mac(1),
        ll(1),
        ALL_NODES,
        255,
        44,
        &p,
    );
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::RogueRa)
    );
    // A fragmented NS is malformed (RFC 6980).
    let nsb = ns(mac(1), ll(1), ll(2), Some(mac(1)))[54..].to_vec();
    let mut p = vec![58, 0, 0, 0, 0, 0, 0, 7];
    p.extend_from_slice(&nsb);
    let dst = solicited_node(ll(2));
    let mut f = frame(multicast_mac(dst), mac(1), ll(1), dst, 255, 44, &p);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::MalformedNd)
    );
}

#[test]
fn router_solicitations_are_absorbed_or_go_to_routers() {
    let mut s = lab();
    let rs = |src_mac: MacAddr, src: Ipv6Addr, sllao: bool| {
        let dst = a6("ff02::2");
        let mut m = vec![133, 0, 0, 0, 0, 0, 0, 0];
        if sllao {
            m.extend_from_slice(&lladdr_opt(1, src_mac));
        }
        let m = icmp(src, dst, m);
        frame(multicast_mac(dst), src_mac, src, dst, 255, 58, &m)
    };
    let mut f = rs(mac(1), ll(1), true);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Absorb(Absorbed::RouterSolicit)
    );
    let mut f = rs(mac(1), Ipv6Addr::UNSPECIFIED, false);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Absorb(Absorbed::RouterSolicit)
    );
    let mut s = with_router(s);
    let mut f = rs(mac(1), ll(1), true);
    let v = s.process(0, &mut f, false, 0);
    assert_eq!(targets(&s, 0, v), vec![ROUTER]);
}

#[test]
fn mld_snooping_delivers_to_members_only() {
    let mut s = lab();
    let g = a6("ff05::1:3");
    let data = |s: &mut Switch| {
        let m = udp(ll(1), g, 5000, 5000);
        let mut f = frame(multicast_mac(g), mac(1), ll(1), g, 8, 17, &m);
        s.process(0, &mut f, false, 0)
    };
    // Nobody reported the group: flooded (the bridge's safe behaviour without a querier).
    assert_eq!(data(&mut s), Verdict::Flood { peers: false });
    // Port 1 joins with an MLDv2 report: consumed, not sent to other pods.
    let mut f = mld2_report(mac(2), ll(2), &[(icmpv6::CHANGE_TO_EXCLUDE, g)]);
    assert_eq!(
        s.process(1, &mut f, false, 0),
        Verdict::Absorb(Absorbed::MldReport)
    );
    let v = data(&mut s);
    assert_eq!(targets(&s, 0, v), vec![1]);
    // Port 2 joins with MLDv1 (from :: is allowed for reports).
    let mut f = mld1(131, mac(3), Ipv6Addr::UNSPECIFIED, g);
    assert_eq!(
        s.process(2, &mut f, false, 0),
        Verdict::Absorb(Absorbed::MldReport)
    );
    let v = data(&mut s);
    assert_eq!(targets(&s, 0, v), vec![1, 2]);
    // A member's own traffic to the group does not come back to it.
    let m = udp(ll(2), g, 5000, 5000);
    let mut f = frame(multicast_mac(g), mac(2), ll(2), g, 8, 17, &m);
    let v = s.process(1, &mut f, false, 0);
    assert_eq!(targets(&s, 1, v), vec![2]);
    // Port 1 leaves (TO_IN {}), port 2 sends done: unreported again, so flooded.
    let mut f = mld2_report(mac(2), ll(2), &[(icmpv6::CHANGE_TO_INCLUDE, g)]);
    assert_eq!(
        s.process(1, &mut f, false, 0),
        Verdict::Absorb(Absorbed::MldReport)
    );
    let v = data(&mut s);
    assert_eq!(targets(&s, 0, v), vec![2]);
    let mut f = mld1(132, mac(3), ll(3), g);
    assert_eq!(
        s.process(2, &mut f, false, 0),
        Verdict::Absorb(Absorbed::MldReport)
    );
    assert_eq!(data(&mut s), Verdict::Flood { peers: false });
    // All nodes is always flooded.
    let m = icmp(ll(1), ALL_NODES, vec![128, 0, 0, 0, 0, 1, 0, 1]);
    let mut f = frame(
        multicast_mac(ALL_NODES),
        mac(1),
        ll(1),
        ALL_NODES,
        64,
        58,
        &m,
    );
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Flood { peers: false }
    );
    // Reports go to router ports when there are any.
    let mut s = with_router(s);
    let mut f = mld2_report(mac(2), ll(2), &[(icmpv6::MODE_IS_EXCLUDE, g)]);
    let v = s.process(1, &mut f, false, 0);
    assert_eq!(targets(&s, 1, v), vec![ROUTER]);
    let v = data(&mut s);
    assert_eq!(targets(&s, 0, v), vec![1, ROUTER]);
    // Removing the port removes its memberships: nobody reports the group any more.
    s.remove_port(1);
    assert_eq!(data(&mut s), Verdict::Flood { peers: false });
}

#[test]
fn invalid_mld_is_dropped_not_learned() {
    let mut s = lab();
    let g = a6("ff05::1:3");
    let rec = |alert, hop, src| {
        let mut m = vec![143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0];
        m.extend_from_slice(&g.octets());
        mld(mac(2), src, a6("ff02::16"), m, alert, hop)
    };
    for mut f in [
        rec(false, 1, ll(2)),
        rec(true, 2, ll(2)),
        rec(true, 1, a6("fd00::2")),
    ] {
        assert_eq!(
            s.process(1, &mut f, false, 0),
            Verdict::Drop(DropReason::MalformedMld)
        );
    }
    assert!(s.mcast_targets(0, McastTo::Routers).next().is_none());
    let m = udp(ll(1), g, 5000, 5000);
    let mut f = frame(multicast_mac(g), mac(1), ll(1), g, 8, 17, &m);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Flood { peers: false }
    );
}

#[test]
fn several_workers_flood_reported_groups_but_keep_solicited_node_owners() {
    let mut s = lab();
    s.set_mld_snooping(false);
    let g = a6("ff05::1:3");
    let mut f = mld2_report(mac(2), ll(2), &[(icmpv6::CHANGE_TO_EXCLUDE, g)]);
    assert_eq!(
        s.process(1, &mut f, false, 0),
        Verdict::Absorb(Absorbed::MldReport)
    );
    let m = udp(ll(1), g, 5000, 5000);
    let mut f = frame(multicast_mac(g), mac(1), ll(1), g, 8, 17, &m);
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Flood { peers: false }
    );
    // NS for an unknown target with the same low 24 bits as port 1's address reaches port 1 only.
    let t = a6("fe80::9:ff:fe00:2");
    assert_eq!(solicited_node(t), solicited_node(ll(2)));
    let mut f = ns(mac(1), ll(1), t, Some(mac(1)));
    let v = s.process(0, &mut f, false, 0);
    assert_eq!(targets(&s, 0, v), vec![1]);
}

#[test]
fn removed_ports_are_forgotten_and_remote_endpoints_answered() {
    let mut s = lab();
    s.remove_port(1);
    let mut f = ns(mac(1), ll(1), ll(2), Some(mac(1)));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Absorb(Absorbed::McastNoListener)
    );
    s.add_remote_endpoint(0, mac(40), None, 0);
    let mut f = ns(mac(1), ll(1), ll(40), Some(mac(1)));
    assert!(matches!(
        s.process(0, &mut f, false, 0),
        Verdict::ReplyResized(_)
    ));
    s.remove_remote_endpoint(0, mac(40), None);
    let mut f = ns(mac(1), ll(1), ll(40), Some(mac(1)));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Absorb(Absorbed::McastNoListener)
    );
}

#[test]
fn l3_networks_still_route_no_ipv6_but_check_it() {
    let mut s = Switch::new(300, 100);
    let mut c = DomainConf::l2(GW, GW_MAC, "192.168.1.0/24".parse().unwrap());
    c.kind = vswitch_config::NetworkKind::L3;
    s.add_domain(0, c);
    s.add_port(0, conf(1, vec![], false));
    s.add_port(1, conf(2, vec![], false));
    let mut f = echo(mac(1), mac(2), ll(1), ll(2));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::L3NotRouted)
    );
    let mut f = ra(mac(1), ll(1));
    assert_eq!(
        s.process(0, &mut f, false, 0),
        Verdict::Drop(DropReason::RogueRa)
    );
}

fn ty_strategy() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![128u8, 130, 131, 132, 133, 134, 135, 136, 137, 143, 1])
}

proptest! {
    /// Random bytes after a header naming the port's MAC: never a panic, every multicast target
    /// inside the domain, every answer inside the frame.
    #[test]
    fn hostile_ipv6(payload in proptest::collection::vec(any::<u8>(), 0..160), p in 0u32..3) {
        let mut s = with_router(lab());
        let m = mac(p as u8 + 1);
        let mut f = vec![0u8; 14];
        f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&m.0);
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&payload);
        let n = f.len();
        check(&s.process(p, &mut f, false, 0), &s, p, n)?;
    }

    /// Well-formed IPv6 headers from the port's own address around random ICMPv6 messages with
    /// correct checksums, behind an optional hop-by-hop header: the deep paths never panic.
    #[test]
    fn hostile_icmpv6(
        ty in ty_strategy(),
        body in proptest::collection::vec(any::<u8>(), 3..120),
        p in 0u32..3,
        hbh in any::<bool>(),
        hop in prop::sample::select(vec![1u8, 255]),
        dst_kind in 0u8..3,
        target_known in any::<bool>(),
    ) {
        let mut s = with_router(lab());
        let n = p as u8 + 1;
        let src = if target_known { ll(n) } else { Ipv6Addr::UNSPECIFIED };
        let mut msg = vec![ty];
        msg.extend_from_slice(&body);
        if msg.len() >= 24 && target_known {
            msg[8..24].copy_from_slice(&ll(2).octets());
        }
        let dst = match dst_kind {
            0 => ALL_NODES,
            1 => solicited_node(ll(2)),
            _ => ll(3),
        };
        let m = icmp(src, dst, msg);
        let (nh, mut pl) = if hbh { (0, hbh_ra()) } else { (58, vec![]) };
        pl.extend_from_slice(&m);
        let mut f = frame(multicast_mac(dst), mac(n), src, dst, hop, nh, &pl);
        let len = f.len();
        check(&s.process(p, &mut f, false, 0), &s, p, len)?;
    }
}

fn check(v: &Verdict, s: &Switch, p: u32, len: usize) -> Result<(), TestCaseError> {
    match *v {
        Verdict::Multicast { to, .. } => {
            for t in s.mcast_targets(p, to) {
                prop_assert_eq!(s.port(t).unwrap().domain, 0);
                prop_assert_ne!(t, p);
            }
        }
        Verdict::ReplyResized(n) => prop_assert!(n <= len),
        Verdict::Forward(o) => prop_assert_eq!(s.port(o).unwrap().domain, 0),
        _ => {}
    }
    Ok(())
}
