//! A match expression compiled against the dataplane's indices, and its evaluation.
//!
//! Evaluation happens twice for a packet, without allocating:
//! - *before* the pipeline runs (`stages == None`), from what the worker knows (rx port, domain,
//!   headers): predicates that depend on the outcome (`out_port`, `peer` of a packet from a pod,
//!   `dropped`, `drop_reason`) are *unknown*, and Kleene's three-valued logic carries that through
//!   `not`/`and`/`or`. Only a packet whose result is not *false* is run with a recorder.
//! - *after* it ran (`stages == Some`), when every predicate has an answer; the record is kept if
//!   the result is *true*.

use ipnet::IpNet;
use vswitch_config::MacAddr;

use super::filter::{Expr, ParseError, PortRange, Proto, Test};
use crate::dataplane::fdb::PortIdx;
use crate::dataplane::trace::{DomainIdx, PeerIdx, Rx, Stage, Summary};
use crate::dataplane::DropReason;

/// Resolves the names in an expression to the dataplane's indices.
pub trait Names {
    /// A port's index and the domain it belongs to.
    fn port(&self, id: &str) -> Option<(PortIdx, DomainIdx)>;
    fn network(&self, name: &str) -> Option<DomainIdx>;
    fn peer(&self, name: &str) -> Option<PeerIdx>;
}

/// Three-valued truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    False,
    Unknown,
    True,
}

impl Tri {
    fn from(b: bool) -> Tri {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
    fn not(self) -> Tri {
        match self {
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
            Tri::True => Tri::False,
        }
    }
}

/// What is known about a packet when a filter is evaluated.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub rx: Rx,
    /// The domain, when the worker already knows it (a port's domain, a VNI's domain).
    pub domain: Option<DomainIdx>,
    /// Headers as received. Only read when [`Matcher::needs_headers`].
    pub headers: &'a Summary,
    /// The pipeline's stages, once it ran.
    pub stages: Option<&'a [Stage]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Any,
    InPort(PortIdx),
    OutPort { port: PortIdx, domain: DomainIdx },
    Network(DomainIdx),
    Peer(PeerIdx),
    Underlay,
    Traced,
    EthSrc(MacAddr),
    EthDst(MacAddr),
    Mac(MacAddr),
    EthType(u16),
    IpSrc(IpNet),
    IpDst(IpNet),
    Ip(IpNet),
    Proto(Proto),
    IpProto(u8),
    Ttl(u8),
    TpSrc(PortRange),
    TpDst(PortRange),
    L4Port(PortRange),
    IcmpType(u8),
    ArpOp(u16),
    Dropped,
    DropReason(DropReason),
}

impl Leaf {
    fn needs_headers(&self) -> bool {
        !matches!(
            self,
            Leaf::Any
                | Leaf::InPort(_)
                | Leaf::OutPort { .. }
                | Leaf::Network(_)
                | Leaf::Peer(_)
                | Leaf::Underlay
                | Leaf::Traced
                | Leaf::Dropped
                | Leaf::DropReason(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// Operands are `kids[start..start + len]`.
    And {
        start: u16,
        len: u16,
    },
    Or {
        start: u16,
        len: u16,
    },
    Not(u16),
    Leaf(Leaf),
}

/// A compiled filter: a flat tree (nodes refer to each other by index), evaluated in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    nodes: Vec<Node>,
    kids: Vec<u16>,
    root: u16,
    needs_headers: bool,
    text: String,
}

impl Matcher {
    /// Compiles `expr` (parsed from `src`, for error positions), resolving names with `names`.
    pub fn compile(src: &str, expr: &Expr, names: &dyn Names) -> Result<Matcher, ParseError> {
        let mut m = Matcher {
            nodes: Vec::new(),
            kids: Vec::new(),
            root: 0,
            needs_headers: false,
            text: expr.to_string(),
        };
        m.root = m.add(src, expr, names)?;
        m.needs_headers = m
            .nodes
            .iter()
            .any(|n| matches!(n, Node::Leaf(l) if l.needs_headers()));
        Ok(m)
    }

    /// Parses and compiles in one step.
    pub fn new(src: &str, names: &dyn Names) -> Result<Matcher, ParseError> {
        Self::compile(src, &super::filter::parse(src)?, names)
    }

    /// Matches every packet.
    pub fn any() -> Matcher {
        Matcher {
            nodes: vec![Node::Leaf(Leaf::Any)],
            kids: Vec::new(),
            root: 0,
            needs_headers: false,
            text: "any".into(),
        }
    }

    /// The expression, as printed by the parser.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether evaluation reads packet headers (else the worker need not summarise them).
    pub fn needs_headers(&self) -> bool {
        self.needs_headers
    }

    fn push(&mut self, n: Node) -> u16 {
        // The parser bounds predicates (256) and operands, so indices fit in u16.
        self.nodes.push(n);
        (self.nodes.len() - 1) as u16
    }

    fn add(&mut self, src: &str, e: &Expr, names: &dyn Names) -> Result<u16, ParseError> {
        Ok(match e {
            Expr::And(v) | Expr::Or(v) => {
                let ids = v
                    .iter()
                    .map(|c| self.add(src, c, names))
                    .collect::<Result<Vec<_>, _>>()?;
                let start = self.kids.len() as u16;
                self.kids.extend(ids);
                let len = v.len() as u16;
                self.push(if matches!(e, Expr::And(_)) {
                    Node::And { start, len }
                } else {
                    Node::Or { start, len }
                })
            }
            Expr::Not(inner) => {
                let i = self.add(src, inner, names)?;
                self.push(Node::Not(i))
            }
            Expr::Pred(p) => {
                let unknown = |what: &str, n: &str| {
                    ParseError::new(src, p.span.start, format!("no {what} `{n}` on this node"))
                };
                let leaf = match &p.test {
                    Test::Any => Leaf::Any,
                    Test::InPort(n) => {
                        Leaf::InPort(names.port(n).ok_or_else(|| unknown("port", n))?.0)
                    }
                    Test::OutPort(n) => {
                        let (port, domain) = names.port(n).ok_or_else(|| unknown("port", n))?;
                        Leaf::OutPort { port, domain }
                    }
                    Test::Port(n) => {
                        // Either direction: in_port=P or out_port=P.
                        let (port, domain) = names.port(n).ok_or_else(|| unknown("port", n))?;
                        let a = self.push(Node::Leaf(Leaf::InPort(port)));
                        let b = self.push(Node::Leaf(Leaf::OutPort { port, domain }));
                        let start = self.kids.len() as u16;
                        self.kids.extend([a, b]);
                        return Ok(self.push(Node::Or { start, len: 2 }));
                    }
                    Test::Network(n) => {
                        Leaf::Network(names.network(n).ok_or_else(|| unknown("network", n))?)
                    }
                    Test::Peer(n) => Leaf::Peer(names.peer(n).ok_or_else(|| unknown("peer", n))?),
                    Test::Underlay => Leaf::Underlay,
                    Test::Traced => Leaf::Traced,
                    Test::EthSrc(m) => Leaf::EthSrc(*m),
                    Test::EthDst(m) => Leaf::EthDst(*m),
                    Test::Mac(m) => Leaf::Mac(*m),
                    Test::EthType(t) => Leaf::EthType(*t),
                    Test::IpSrc(n) => Leaf::IpSrc(*n),
                    Test::IpDst(n) => Leaf::IpDst(*n),
                    Test::Ip(n) => Leaf::Ip(*n),
                    Test::Proto(p) => Leaf::Proto(*p),
                    Test::IpProto(p) => Leaf::IpProto(*p),
                    Test::Ttl(t) => Leaf::Ttl(*t),
                    Test::TpSrc(r) => Leaf::TpSrc(*r),
                    Test::TpDst(r) => Leaf::TpDst(*r),
                    Test::L4Port(r) => Leaf::L4Port(*r),
                    Test::IcmpType(t) => Leaf::IcmpType(*t),
                    Test::ArpOp(o) => Leaf::ArpOp(*o),
                    Test::Dropped => Leaf::Dropped,
                    Test::DropReason(r) => Leaf::DropReason(*r),
                };
                self.push(Node::Leaf(leaf))
            }
        })
    }

    /// Evaluates the filter for a packet. Before the pipeline ran the answer may be
    /// [`Tri::Unknown`]; after, it is true or false.
    pub fn eval(&self, p: &Packet<'_>) -> Tri {
        self.node(self.root, p)
    }

    /// Before the pipeline: may this packet match (run it with a recorder)?
    #[inline]
    pub fn may_match(&self, p: &Packet<'_>) -> bool {
        self.eval(p) != Tri::False
    }

    /// After the pipeline: does the packet match (keep its record)?
    pub fn matches(&self, p: &Packet<'_>) -> bool {
        self.eval(p) == Tri::True
    }

    fn node(&self, i: u16, p: &Packet<'_>) -> Tri {
        match self.nodes[usize::from(i)] {
            Node::And { start, len } => {
                let mut out = Tri::True;
                for k in &self.kids[usize::from(start)..usize::from(start + len)] {
                    match self.node(*k, p) {
                        Tri::False => return Tri::False,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::True => {}
                    }
                }
                out
            }
            Node::Or { start, len } => {
                let mut out = Tri::False;
                for k in &self.kids[usize::from(start)..usize::from(start + len)] {
                    match self.node(*k, p) {
                        Tri::True => return Tri::True,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::False => {}
                    }
                }
                out
            }
            Node::Not(k) => self.node(k, p).not(),
            Node::Leaf(l) => leaf(&l, p),
        }
    }
}

fn stage_domain(stages: &[Stage]) -> Option<DomainIdx> {
    stages.iter().find_map(|s| match s {
        Stage::Domain(d) => Some(*d),
        _ => None,
    })
}

fn leaf(l: &Leaf, p: &Packet<'_>) -> Tri {
    let h = p.headers;
    let ip_in = |net: &IpNet, a: Option<std::net::IpAddr>| a.is_some_and(|a| net.contains(&a));
    let range = |r: &PortRange, v: Option<u16>| v.is_some_and(|v| r.contains(v));
    let domain = p.domain.or_else(|| p.stages.and_then(stage_domain));
    Tri::from(match l {
        Leaf::Any => true,
        Leaf::InPort(port) => p.rx == Rx::Port(*port),
        Leaf::Underlay => matches!(p.rx, Rx::Underlay { .. }),
        Leaf::Traced => matches!(p.rx, Rx::Underlay { marked: true, .. }),
        Leaf::Network(d) => match domain {
            Some(x) => x == *d,
            None if p.stages.is_none() => return Tri::Unknown,
            None => false,
        },
        Leaf::OutPort { port, domain: pd } => {
            // Domains are isolated: only a packet of the port's own domain can reach it.
            if domain.is_some_and(|d| d != *pd) {
                return Tri::False;
            }
            let Some(stages) = p.stages else {
                return Tri::Unknown;
            };
            let from_port = p.rx == Rx::Port(*port);
            stages.iter().any(|s| match s {
                Stage::TxPort(t) => t == port,
                // A flood goes to every port of the domain but the ingress one.
                Stage::Flood { ports, .. } => *ports > 0 && !from_port && domain == Some(*pd),
                // An answer goes back out of the port it came in on.
                Stage::Answered(_) => from_port,
                _ => false,
            })
        }
        Leaf::Peer(q) => match (p.rx, p.stages) {
            (Rx::Underlay { peer, .. }, _) => peer == Some(*q),
            (Rx::Port(_), None) => return Tri::Unknown,
            (Rx::Port(_), Some(stages)) => stages
                .iter()
                .any(|s| matches!(s, Stage::Encap { peer, .. } if peer == q)),
        },
        Leaf::Dropped => match p.stages {
            None => return Tri::Unknown,
            Some(s) => s.iter().any(|s| matches!(s, Stage::Drop(_))),
        },
        Leaf::DropReason(r) => match p.stages {
            None => return Tri::Unknown,
            Some(s) => s.iter().any(|s| matches!(s, Stage::Drop(x) if x == r)),
        },
        Leaf::EthSrc(m) => h.eth_src == *m,
        Leaf::EthDst(m) => h.eth_dst == *m,
        Leaf::Mac(m) => h.eth_src == *m || h.eth_dst == *m,
        Leaf::EthType(t) => h.ethertype == *t,
        Leaf::IpSrc(n) => ip_in(n, h.ip_src),
        Leaf::IpDst(n) => ip_in(n, h.ip_dst),
        Leaf::Ip(n) => ip_in(n, h.ip_src) || ip_in(n, h.ip_dst),
        Leaf::Proto(pr) => match pr {
            Proto::Tcp => h.ip_proto == Some(6),
            Proto::Udp => h.ip_proto == Some(17),
            Proto::Icmp => h.ethertype == 0x0800 && h.ip_proto == Some(1),
            Proto::Icmp6 => h.ethertype == 0x86dd && h.ip_proto == Some(58),
            Proto::Arp => h.ethertype == 0x0806,
            Proto::Ipv4 => h.ethertype == 0x0800,
            Proto::Ipv6 => h.ethertype == 0x86dd,
        },
        Leaf::IpProto(n) => h.ip_proto == Some(*n),
        Leaf::Ttl(t) => h.ttl == Some(*t),
        Leaf::TpSrc(r) => range(r, h.l4_src),
        Leaf::TpDst(r) => range(r, h.l4_dst),
        Leaf::L4Port(r) => range(r, h.l4_src) || range(r, h.l4_dst),
        Leaf::IcmpType(t) => {
            matches!(h.ip_proto, Some(1 | 58))
                && h.ethertype != 0x0806
                && h.op == Some(u16::from(*t))
        }
        Leaf::ArpOp(o) => h.ethertype == 0x0806 && h.op == Some(*o),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::trace::{Answer, EntrySource, Lookup, WireKind};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// Ports 0 and 1 in domain 0 ("blue"), port 2 in domain 1 ("red"); peer 0 "node-b".
    struct Lab;
    impl Names for Lab {
        fn port(&self, id: &str) -> Option<(PortIdx, DomainIdx)> {
            match id {
                "a" => Some((0, 0)),
                "b" => Some((1, 0)),
                "c" => Some((2, 1)),
                _ => None,
            }
        }
        fn network(&self, name: &str) -> Option<DomainIdx> {
            match name {
                "blue" => Some(0),
                "red" => Some(1),
                _ => None,
            }
        }
        fn peer(&self, name: &str) -> Option<PeerIdx> {
            (name == "node-b").then_some(0)
        }
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn udp_frame(src: u8, dst: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(mac(dst).0);
        f.extend(mac(src).0);
        f.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        ip.extend([10, 0, 0, src]);
        ip.extend([10, 0, 0, dst]);
        f.extend(ip);
        f.extend(sport.to_be_bytes());
        f.extend(dport.to_be_bytes());
        f.extend([0, 8, 0, 0]);
        f
    }

    fn m(src: &str) -> Matcher {
        Matcher::new(src, &Lab).unwrap_or_else(|e| panic!("{}", e.render(src)))
    }

    fn pkt<'a>(
        rx: Rx,
        domain: Option<DomainIdx>,
        h: &'a Summary,
        st: Option<&'a [Stage]>,
    ) -> Packet<'a> {
        Packet {
            rx,
            domain,
            headers: h,
            stages: st,
        }
    }

    #[test]
    fn headers_and_ports() {
        let h = Summary::from_frame(&udp_frame(1, 2, 5353, 53));
        assert_eq!(h.l4_dst, Some(53));
        let p = pkt(Rx::Port(0), Some(0), &h, None);
        for (src, want) in [
            ("udp and tp_dst=53", Tri::True),
            ("udp, tp_dst=1-52", Tri::False),
            (
                "l4_port=5353 and ip_src=10.0.0.0/24 and ip_dst=10.0.0.2",
                Tri::True,
            ),
            ("ip=10.0.0.9 or tcp", Tri::False),
            (
                "mac=02:00:00:00:00:02 and eth_src=02:00:00:00:00:01",
                Tri::True,
            ),
            ("in_port=a and network=blue", Tri::True),
            ("in_port=b or network=red", Tri::False),
            ("ipv4 and not ipv6 and not arp and not icmp", Tri::True),
            ("eth_type=0x0800 and ip_proto=17 and ttl=64", Tri::True),
            // Outcome-dependent: unknown before the run...
            ("out_port=b", Tri::Unknown),
            ("dropped", Tri::Unknown),
            ("not dropped", Tri::Unknown),
            ("peer=node-b", Tri::Unknown),
            // ... but not when the rest decides, or the port is in another domain.
            ("dropped or udp", Tri::True),
            ("dropped and tcp", Tri::False),
            ("out_port=c", Tri::False),
            ("port=c", Tri::False),
            ("port=a", Tri::True),
            ("underlay", Tri::False),
        ] {
            assert_eq!(m(src).eval(&p), want, "{src}");
        }
        assert!(!m("in_port=a").needs_headers());
        assert!(m("in_port=a and tcp").needs_headers());
    }

    #[test]
    fn outcomes_after_the_run() {
        let h = Summary::from_frame(&udp_frame(1, 2, 1, 2));
        let fwd = [
            Stage::Domain(0),
            Stage::Lookup {
                mac: mac(2),
                result: Lookup::Port {
                    port: 1,
                    source: EntrySource::Local,
                },
            },
            Stage::TxPort(1),
        ];
        let flood = [Stage::Flood { ports: 1, peers: 0 }];
        let drop = [
            Stage::Guard(Some(DropReason::SpoofedSrcIp)),
            Stage::Drop(DropReason::SpoofedSrcIp),
        ];
        let enc = [Stage::Encap {
            peer: 0,
            wire: WireKind::Vxlan,
            outer_src: Ipv4Addr::new(10, 1, 0, 1),
            outer_dst: Ipv4Addr::new(10, 1, 0, 2),
            vni: Some(100),
            udp_src: Some(40000),
        }];
        let arp = [Stage::Answered(Answer::Arp {
            ip: Ipv4Addr::new(10, 0, 0, 1),
            mac: mac(9),
        })];
        let a = Rx::Port(0);
        for (src, rx, st, want) in [
            ("out_port=b", a, &fwd[..], true),
            ("out_port=a", a, &fwd[..], false),
            ("port=b", a, &flood[..], true),
            ("out_port=a", a, &flood[..], false),
            ("out_port=a", a, &arp[..], true),
            ("dropped", a, &drop[..], true),
            ("drop_reason=spoofed_src_ip", a, &drop[..], true),
            ("drop_reason=hairpin or not dropped", a, &drop[..], false),
            ("peer=node-b", a, &enc[..], true),
            ("peer=node-b", a, &fwd[..], false),
            (
                "peer=node-b and underlay",
                Rx::Underlay {
                    peer: Some(0),
                    marked: false,
                },
                &fwd[..],
                true,
            ),
            (
                "peer=node-b",
                Rx::Underlay {
                    peer: None,
                    marked: false,
                },
                &fwd[..],
                false,
            ),
            (
                "network=blue",
                Rx::Underlay {
                    peer: None,
                    marked: false,
                },
                &fwd[..],
                true,
            ),
            (
                "network=red",
                Rx::Underlay {
                    peer: None,
                    marked: false,
                },
                &fwd[..],
                false,
            ),
            (
                "traced",
                Rx::Underlay {
                    peer: Some(0),
                    marked: true,
                },
                &fwd[..],
                true,
            ),
            (
                "traced",
                Rx::Underlay {
                    peer: Some(0),
                    marked: false,
                },
                &fwd[..],
                false,
            ),
            ("traced", a, &enc[..], false),
        ] {
            let domain = if rx == a { Some(0) } else { None };
            let p = pkt(rx, domain, &h, Some(st));
            assert_eq!(m(src).matches(&p), want, "{src} on {st:?}");
        }
        // Before the run a packet from the underlay has no domain yet.
        let p = pkt(
            Rx::Underlay {
                peer: None,
                marked: false,
            },
            None,
            &h,
            None,
        );
        assert_eq!(m("network=blue").eval(&p), Tri::Unknown);
    }

    #[test]
    fn arp_and_icmp_fields() {
        let mut f = Vec::new();
        f.extend(MacAddr::BROADCAST.0);
        f.extend(mac(1).0);
        f.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend(mac(1).0);
        f.extend([10, 0, 0, 1]);
        f.extend([0; 6]);
        f.extend([10, 0, 0, 7]);
        let h = Summary::from_frame(&f);
        let p = pkt(Rx::Port(0), Some(0), &h, None);
        assert_eq!(
            m("arp and arp_op=request and ip_dst=10.0.0.7").eval(&p),
            Tri::True
        );
        assert_eq!(m("icmp_type=1 or arp_op=reply").eval(&p), Tri::False);
    }

    #[test]
    fn names_must_exist_and_errors_point_at_them() {
        let e = Matcher::new("tcp and port=zz", &Lab).unwrap_err();
        assert_eq!(e.column, 9);
        assert!(e.message.contains("no port `zz`"), "{e}");
        assert!(Matcher::new("network=green", &Lab).is_err());
        assert!(Matcher::new("peer=x", &Lab).is_err());
        assert_eq!(m("").text(), "any");
        assert!(Matcher::any().may_match(&pkt(Rx::Port(9), None, &Summary::default(), None)));
    }

    proptest! {
        /// Evaluation before the run never contradicts evaluation after it: what the worker
        /// skips could not have matched.
        #[test]
        fn pre_is_consistent_with_post(
            src in prop_oneof![Just("out_port=b"), Just("not out_port=b and udp"), Just("dropped or in_port=c"), Just("not (peer=node-b or dropped)"), Just("port=a and not drop_reason=hairpin")],
            stage in 0usize..4,
            rx_port in 0u32..3,
        ) {
            let stages = [
                vec![Stage::TxPort(1)],
                vec![Stage::Drop(DropReason::Hairpin)],
                vec![Stage::Flood { ports: 2, peers: 1 }],
                vec![Stage::Encap { peer: 0, wire: WireKind::Ipip, outer_src: Ipv4Addr::LOCALHOST, outer_dst: Ipv4Addr::LOCALHOST, vni: None, udp_src: None }],
            ];
            let h = Summary::from_frame(&udp_frame(1, 2, 1, 2));
            let domain = Some(if rx_port == 2 { 1 } else { 0 });
            let f = m(src);
            let pre = f.eval(&pkt(Rx::Port(rx_port), domain, &h, None));
            let post = f.eval(&pkt(Rx::Port(rx_port), domain, &h, Some(&stages[stage])));
            prop_assert_ne!(post, Tri::Unknown);
            if pre != Tri::Unknown {
                prop_assert_eq!(pre, post);
            }
        }

        #[test]
        fn summary_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let s = Summary::from_frame(&data);
            prop_assert_eq!(s.len as usize, data.len());
        }
    }
}
