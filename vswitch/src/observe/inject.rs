//! Packets described in words for a synthetic trace (`vswitchctl trace --inject`), built into
//! frames with `etherparse` (checksums included, so the pipeline judges them like real ones).
//!
//! The description uses the match-expression syntax, restricted to `field=value` pairs joined by
//! `,` (or `and`): `in_port=P` (or `--port P`), `eth_src`, `eth_dst`, `ip_src`, `ip_dst` (one address,
//! IPv4 or IPv6), `ttl`, one of `icmp` `icmp6` `tcp` `udp` `arp`, `tp_src`, `tp_dst`,
//! `icmp_type`, `arp_op`. What is left out comes from the port and the live tables: the port's
//! MAC and first address as the source, the destination's MAC from the network's endpoints (else
//! the gateway's), TTL 64, an echo request (ping's 56 bytes), a TCP SYN to port 80, a UDP
//! datagram to port 53, an ARP request (broadcast).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{ArpEthIpv4Packet, ArpOperation, PacketBuilder};
use vswitch_config::MacAddr;

use super::filter::{parse, Expr, ParseError, Proto, Span, Test};

/// A parsed description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InjectSpec {
    pub in_port: String,
    pub eth_src: Option<MacAddr>,
    pub eth_dst: Option<MacAddr>,
    pub ip_src: Option<IpAddr>,
    pub ip_dst: Option<IpAddr>,
    pub ttl: Option<u8>,
    pub proto: Option<Proto>,
    pub tp_src: Option<u16>,
    pub tp_dst: Option<u16>,
    pub icmp_type: Option<u8>,
    pub arp_op: Option<u16>,
}

/// What the live tables say about the ingress port, for the fields left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectDefaults {
    pub port_mac: MacAddr,
    pub port_ipv4: Option<Ipv4Addr>,
    pub gateway_mac: MacAddr,
    /// Endpoints of the port's network (IP → MAC).
    pub neighbours: Vec<(IpAddr, MacAddr)>,
}

/// Why a description cannot be built into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{0}")]
    Build(String),
}

fn flatten<'e>(e: &'e Expr, out: &mut Vec<(&'e Test, Span)>) -> Result<(), Span> {
    match e {
        Expr::And(v) => v.iter().try_for_each(|e| flatten(e, out)),
        Expr::Pred(p) => {
            out.push((&p.test, p.span));
            Ok(())
        }
        Expr::Or(v) => Err(first_span(&v[0])),
        Expr::Not(e) => Err(first_span(e)),
    }
}

fn first_span(e: &Expr) -> Span {
    match e {
        Expr::Pred(p) => p.span,
        Expr::And(v) | Expr::Or(v) => first_span(&v[0]),
        Expr::Not(e) => first_span(e),
    }
}

fn single_ip(net: &ipnet::IpNet) -> Option<IpAddr> {
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

/// Parses a description (`in_port` may be left out when the caller knows the port).
pub fn parse_inject(src: &str) -> Result<InjectSpec, ParseError> {
    let e = parse(src)?;
    let mut fields = Vec::new();
    flatten(&e, &mut fields).map_err(|sp| {
        ParseError::new(
            src,
            sp.start,
            "a packet is described by field=value pairs joined by `,`; `or` and `not` have no meaning here",
        )
    })?;
    let mut s = InjectSpec::default();
    let mut seen = std::collections::HashSet::new();
    for (t, sp) in fields {
        let err = |m: String| ParseError::new(src, sp.start, m);
        let key = match t {
            Test::Proto(_) => "protocol".to_string(),
            other => other
                .to_string()
                .split('=')
                .next()
                .unwrap_or("")
                .to_string(),
        };
        if !seen.insert(key.clone()) {
            return Err(err(format!("{key} given twice")));
        }
        let port = |r: &super::filter::PortRange| {
            (r.lo == r.hi)
                .then_some(r.lo)
                .ok_or_else(|| err(format!("{key} needs one port, not a range")))
        };
        let ip = |n: &ipnet::IpNet| {
            single_ip(n).ok_or_else(|| err(format!("{key} needs one address, not a prefix")))
        };
        match t {
            Test::InPort(p) | Test::Port(p) => s.in_port = p.clone(),
            Test::EthSrc(m) => s.eth_src = Some(*m),
            Test::EthDst(m) => s.eth_dst = Some(*m),
            Test::IpSrc(n) => s.ip_src = Some(ip(n)?),
            Test::IpDst(n) => s.ip_dst = Some(ip(n)?),
            Test::Ttl(v) => s.ttl = Some(*v),
            Test::Proto(p @ (Proto::Tcp | Proto::Udp | Proto::Icmp | Proto::Icmp6 | Proto::Arp)) => {
                s.proto = Some(*p)
            }
            Test::TpSrc(r) => s.tp_src = Some(port(r)?),
            Test::TpDst(r) => s.tp_dst = Some(port(r)?),
            Test::IcmpType(v) => s.icmp_type = Some(*v),
            Test::ArpOp(v) => s.arp_op = Some(*v),
            other => {
                return Err(err(format!(
                    "`{other}` cannot describe a packet to inject (fields: in_port eth_src eth_dst \
                     ip_src ip_dst ttl tp_src tp_dst icmp_type arp_op; protocols: icmp icmp6 tcp udp arp)"
                )))
            }
        }
    }
    Ok(s)
}

/// The IPv6 link-local address a port derives from its MAC (EUI-64).
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

impl InjectSpec {
    /// Builds the Ethernet frame.
    pub fn build(&self, d: &InjectDefaults) -> Result<Vec<u8>, InjectError> {
        let bad = |m: &str| InjectError::Build(m.to_string());
        let src_mac = self.eth_src.unwrap_or(d.port_mac);
        let dst_ip = self.ip_dst;
        let proto = match (self.proto, dst_ip) {
            (Some(p), _) => p,
            (None, Some(IpAddr::V6(_))) => Proto::Icmp6,
            (None, Some(IpAddr::V4(_))) => Proto::Icmp,
            (None, None) => return Err(bad("say where the packet goes: ip_dst=ADDR")),
        };
        let dst_ip = dst_ip.ok_or_else(|| bad("ip_dst=ADDR is required"))?;
        let neighbour = |ip: IpAddr| {
            d.neighbours
                .iter()
                .find(|(i, _)| *i == ip)
                .map_or(d.gateway_mac, |(_, m)| *m)
        };
        let mut out = Vec::new();
        if proto == Proto::Arp {
            let (IpAddr::V4(tip), sip) = (dst_ip, self.ip_src.or(d.port_ipv4.map(IpAddr::V4)))
            else {
                return Err(bad("ARP is IPv4 only"));
            };
            let sip = match sip {
                Some(IpAddr::V4(s)) => s,
                None => Ipv4Addr::UNSPECIFIED,
                Some(IpAddr::V6(_)) => return Err(bad("ARP is IPv4 only")),
            };
            let op = self.arp_op.unwrap_or(1);
            let eth_dst = self.eth_dst.unwrap_or(if op == 1 {
                MacAddr::BROADCAST
            } else {
                neighbour(IpAddr::V4(tip))
            });
            let target_mac = if op == 1 { [0; 6] } else { eth_dst.0 };
            let arp = ArpEthIpv4Packet {
                operation: ArpOperation(op),
                sender_mac: src_mac.0,
                sender_ipv4: sip.octets(),
                target_mac,
                target_ipv4: tip.octets(),
            };
            PacketBuilder::ethernet2(src_mac.0, eth_dst.0)
                .arp(arp.into())
                .write(&mut out)
                .map_err(|e| InjectError::Build(e.to_string()))?;
            return Ok(out);
        }
        let eth_dst = self.eth_dst.unwrap_or_else(|| neighbour(dst_ip));
        let eth = PacketBuilder::ethernet2(src_mac.0, eth_dst.0);
        let ttl = self.ttl.unwrap_or(64);
        let ip = match dst_ip {
            IpAddr::V4(dst) => {
                let src = match self.ip_src {
                    Some(IpAddr::V4(s)) => s,
                    None => d
                        .port_ipv4
                        .ok_or_else(|| bad("the port has no IPv4 address; give ip_src"))?,
                    Some(IpAddr::V6(_)) => {
                        return Err(bad("ip_src and ip_dst must both be IPv4 or IPv6"))
                    }
                };
                if proto == Proto::Icmp6 {
                    return Err(bad("icmp6 needs IPv6 addresses"));
                }
                eth.ipv4(src.octets(), dst.octets(), ttl)
            }
            IpAddr::V6(dst) => {
                let src = match self.ip_src {
                    Some(IpAddr::V6(s)) => s,
                    None => link_local(src_mac),
                    Some(IpAddr::V4(_)) => {
                        return Err(bad("ip_src and ip_dst must both be IPv4 or IPv6"))
                    }
                };
                if proto == Proto::Icmp {
                    return Err(bad("icmp is IPv4; say icmp6 for IPv6"));
                }
                eth.ipv6(src.octets(), dst.octets(), ttl)
            }
        };
        let sport = self.tp_src.unwrap_or(40000);
        let write = |r: Result<(), etherparse::err::packet::BuildWriteError>| {
            r.map_err(|e| InjectError::Build(e.to_string()))
        };
        let ping = [0u8; 56];
        match proto {
            Proto::Icmp => match self.icmp_type.unwrap_or(8) {
                8 => write(ip.icmpv4_echo_request(1, 1).write(&mut out, &ping))?,
                t => write(ip.icmpv4_raw(t, 0, [0; 4]).write(&mut out, &[]))?,
            },
            Proto::Icmp6 => match self.icmp_type.unwrap_or(128) {
                128 => write(ip.icmpv6_echo_request(1, 1).write(&mut out, &ping))?,
                t => write(ip.icmpv6_raw(t, 0, [0; 4]).write(&mut out, &[]))?,
            },
            Proto::Tcp => write(
                ip.tcp(sport, self.tp_dst.unwrap_or(80), 1, 64240)
                    .syn()
                    .write(&mut out, &[]),
            )?,
            Proto::Udp => write(
                ip.udp(sport, self.tp_dst.unwrap_or(53))
                    .write(&mut out, &[0u8; 16]),
            )?,
            Proto::Arp | Proto::Ipv4 | Proto::Ipv6 => return Err(bad("unsupported protocol")),
        }
        if self.tp_src.or(self.tp_dst).is_some() && !matches!(proto, Proto::Tcp | Proto::Udp) {
            return Err(bad("tp_src/tp_dst need tcp or udp"));
        }
        Ok(out)
    }
}

/// What the daemon provides to run a synthetic trace.
pub trait DryRun {
    /// The port's index and the defaults for a packet entering on it.
    fn port(&self, id: &str) -> Option<(crate::dataplane::fdb::PortIdx, InjectDefaults)>;
    /// Runs `frame` as received on `port` through the live tables with `Recorder::dry_run()`
    /// (on the worker that owns the port) and returns its record.
    fn run(
        &self,
        port: crate::dataplane::fdb::PortIdx,
        frame: Vec<u8>,
    ) -> Result<super::hub::Record, String>;
    fn names(&self) -> super::render::NameTable;
}

/// Most frames one inject request may carry (a pcap file of a whole capture is not a trace).
pub const MAX_INJECT_FRAMES: usize = 256;

/// Serves an inject request: builds or decodes the frames, runs each, names the records.
pub fn serve(
    req: &vswitch_api::Inject,
    d: &dyn DryRun,
) -> Result<vswitch_api::InjectReply, String> {
    let (port_id, frames) = match (&req.description, req.frames.is_empty()) {
        (Some(desc), true) => {
            let mut spec = parse_inject(desc).map_err(|e| e.render(desc))?;
            if spec.in_port.is_empty() {
                spec.in_port = req
                    .port
                    .clone()
                    .ok_or("say which port the packet enters on: in_port=PORT (or --port)")?;
            }
            let (_, defaults) = d
                .port(&spec.in_port)
                .ok_or_else(|| format!("no port `{}` on this node", spec.in_port))?;
            let f = spec.build(&defaults).map_err(|e| e.to_string())?;
            (spec.in_port, vec![f])
        }
        (None, false) => {
            let port = req
                .port
                .clone()
                .ok_or("frames to inject need the port they enter on")?;
            if req.frames.len() > MAX_INJECT_FRAMES {
                return Err(format!("at most {MAX_INJECT_FRAMES} frames per request"));
            }
            let frames = req
                .frames
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    vswitch_api::trace::decode_hex(h).ok_or_else(|| format!("frame {i}: not hex"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (port, frames)
        }
        _ => return Err("give either a description or frames".into()),
    };
    let (idx, _) = d
        .port(&port_id)
        .ok_or_else(|| format!("no port `{port_id}` on this node"))?;
    let mut events = Vec::with_capacity(frames.len());
    let mut names = None;
    for f in frames {
        let mut rec = d.run(idx, f)?;
        rec.dry_run = true;
        let names = names.get_or_insert_with(|| d.names());
        events.push(super::render::event(&rec, names, 0));
    }
    Ok(vswitch_api::InjectReply { events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::trace::Summary;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn defaults() -> InjectDefaults {
        InjectDefaults {
            port_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            port_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
            gateway_mac: MacAddr([2, 0, 0, 0, 0, 0xfe]),
            neighbours: vec![(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 6)),
                MacAddr([2, 0, 0, 0, 0, 2]),
            )],
        }
    }

    fn build(src: &str) -> Vec<u8> {
        parse_inject(src)
            .unwrap_or_else(|e| panic!("{}", e.render(src)))
            .build(&defaults())
            .unwrap()
    }

    #[test]
    fn defaults_fill_in_from_the_port_and_the_tables() {
        // An echo request to a neighbour: its MAC, the port's own addresses, valid checksums.
        let f = build("in_port=pod-a,ip_dst=10.0.0.6");
        let s = Summary::from_frame(&f);
        assert_eq!(
            (s.eth_src, s.eth_dst),
            (defaults().port_mac, MacAddr([2, 0, 0, 0, 0, 2]))
        );
        assert_eq!(
            (s.ip_proto, s.op, s.ttl, s.len),
            (Some(1), Some(8), Some(64), 98)
        );
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 0, 0, 5));
        assert!(ip.header().to_header().calc_header_checksum() == ip.header().header_checksum());
        // Off the table: the gateway's MAC.
        let f = build("in_port=pod-a, ip_dst=192.0.2.1, udp, tp_dst=5353, ttl=1");
        let s = Summary::from_frame(&f);
        assert_eq!(
            (s.eth_dst, s.l4_dst, s.ttl),
            (defaults().gateway_mac, Some(5353), Some(1))
        );
        let f =
            build("in_port=pod-a,eth_src=02:00:00:00:00:09,ip_src=10.0.0.99,ip_dst=10.0.0.6,tcp");
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!()
        };
        assert!(t.syn() && t.destination_port() == 80);
        assert_eq!(
            Summary::from_frame(&f).ip_src,
            Some("10.0.0.99".parse().unwrap())
        );
    }

    #[test]
    fn arp_and_ipv6() {
        let f = build("in_port=pod-a,arp,ip_dst=10.0.0.1");
        let s = Summary::from_frame(&f);
        assert_eq!(
            (s.eth_dst, s.op, s.ip_src, s.ip_dst),
            (
                MacAddr::BROADCAST,
                Some(1),
                Some("10.0.0.5".parse().unwrap()),
                Some("10.0.0.1".parse().unwrap())
            )
        );
        let f = build("in_port=pod-a,ip_dst=fe80::2");
        let s = Summary::from_frame(&f);
        assert_eq!(
            (s.ethertype, s.ip_proto, s.op),
            (0x86dd, Some(58), Some(128))
        );
        assert_eq!(
            s.ip_src,
            Some(IpAddr::V6("fe80::ff:fe00:1".parse().unwrap()))
        );
    }

    struct Fake;
    impl DryRun for Fake {
        fn port(&self, id: &str) -> Option<(crate::dataplane::fdb::PortIdx, InjectDefaults)> {
            (id == "pod-a").then(|| (0, defaults()))
        }
        fn run(
            &self,
            port: crate::dataplane::fdb::PortIdx,
            frame: Vec<u8>,
        ) -> Result<crate::observe::hub::Record, String> {
            use crate::dataplane::trace::{Rx, Stage};
            let mut r = crate::observe::hub::Record::new(0, Rx::Port(port), Some(0), &frame, 0);
            r.stages = vec![Stage::TxPort(1)];
            Ok(r)
        }
        fn names(&self) -> crate::observe::render::NameTable {
            crate::observe::render::NameTable {
                ports: [(0, ("pod-a".into(), 0)), (1, ("pod-b".into(), 0))].into(),
                ..Default::default()
            }
        }
    }

    #[test]
    fn serve_builds_runs_and_names() {
        use vswitch_api::trace::{encode_hex, Inject as InjectRequest, RxInfo};
        let r = serve(
            &InjectRequest {
                description: Some("in_port=pod-a,ip_dst=10.0.0.6".into()),
                ..Default::default()
            },
            &Fake,
        )
        .unwrap();
        assert_eq!(r.events.len(), 1);
        let e = &r.events[0];
        assert_eq!(
            (e.verdict.as_str(), e.dry_run, e.orig_len),
            ("tx pod-b", true, 98)
        );
        assert_eq!(
            e.rx,
            RxInfo::Inject {
                port: "pod-a".into()
            }
        );
        let hex = encode_hex(&build("in_port=pod-a,ip_dst=10.0.0.6"));
        let req = InjectRequest {
            frames: vec![hex.clone(), hex],
            port: Some("pod-a".into()),
            ..Default::default()
        };
        assert_eq!(serve(&req, &Fake).unwrap().events.len(), 2);
        for (req, needle) in [
            (
                InjectRequest {
                    description: Some("in_port=zz,ip_dst=1.2.3.4".into()),
                    ..Default::default()
                },
                "no port `zz`",
            ),
            (
                InjectRequest {
                    frames: vec!["00".into()],
                    ..Default::default()
                },
                "need the port",
            ),
            (
                InjectRequest {
                    frames: vec!["0g".into()],
                    port: Some("pod-a".into()),
                    ..Default::default()
                },
                "not hex",
            ),
            (InjectRequest::default(), "either"),
            (
                InjectRequest {
                    description: Some("ip_dst=10.0.0.1".into()),
                    ..Default::default()
                },
                "in_port=PORT",
            ),
        ] {
            let e = serve(&req, &Fake).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn errors() {
        for (src, col, needle) in [
            ("in_port=a or tcp", 1, "field=value"),
            ("in_port=a,ip_dst=10.0.0.0/24", 11, "one address"),
            ("in_port=a,tcp,udp", 15, "twice"),
            ("in_port=a,tp_dst=1-3", 11, "range"),
            ("in_port=a,dropped", 11, "cannot describe"),
        ] {
            let e = parse_inject(src).expect_err(src);
            assert_eq!(e.column, col, "{src}: {e}");
            assert!(e.message.contains(needle), "{src}: {e}");
        }
        for (src, needle) in [
            ("in_port=a", "ip_dst"),
            ("in_port=a,ip_dst=fe80::1,arp", "IPv4 only"),
            ("in_port=a,ip_dst=fe80::1,icmp", "icmp6"),
            ("in_port=a,ip_dst=10.0.0.1,ip_src=fe80::1", "both"),
            ("in_port=a,ip_dst=10.0.0.1,tp_dst=9", "tcp or udp"),
        ] {
            let e = parse_inject(src)
                .unwrap()
                .build(&defaults())
                .expect_err(src);
            assert!(e.to_string().contains(needle), "{src}: {e}");
        }
    }
}
