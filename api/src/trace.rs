//! Packet trace and capture on the control socket: the requests (`trace`, `inject`), what the
//! daemon streams back (one JSON object per packet, with names instead of dataplane indices),
//! and their human rendering (one line per stage).
//!
//! A `trace` request is answered with [`TraceStarted`]; then the daemon writes one
//! [`TraceLine`] per line on the same connection until [`TraceLine::End`] (or the client goes
//! away: closing the connection ends the session).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use vswitch_config::MacAddr;

/// Where the packet entered this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RxInfo {
    Port {
        port: String,
    },
    Underlay {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
    },
    /// A synthetic packet (`trace --inject`), entering as if received on `port`.
    Inject {
        port: String,
    },
}

impl RxInfo {
    /// The capture interface the packet belongs to: the port id, or `underlay`.
    pub fn interface(&self) -> &str {
        match self {
            RxInfo::Port { port } | RxInfo::Inject { port } => port,
            RxInfo::Underlay { .. } => "underlay",
        }
    }
}

/// One pipeline stage and its verdict, with names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum StageInfo {
    RxPort {
        port: String,
        worker: u16,
        /// virtio-net GSO type (0 none) and segment size, checksum left partial.
        #[serde(default)]
        gso_type: u8,
        #[serde(default)]
        gso_size: u16,
        #[serde(default)]
        csum_partial: bool,
    },
    RxUnderlay {
        wire: String,
        worker: u16,
        outer_src: Ipv4Addr,
        outer_dst: Ipv4Addr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        udp_src: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
    },
    Parsed(Headers),
    Domain {
        network: String,
    },
    /// Anti-spoofing: passed, or the drop reason.
    Guard {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drop: Option<String>,
    },
    /// Answered by the switch itself.
    Answered {
        answer: String,
    },
    Lookup {
        mac: MacAddr,
        /// `port`, `peer`, `miss` (flooded) or `multicast`.
        result: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// `local`, `learned` or `remote` (datastore or static config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    Route {
        dst: Ipv4Addr,
        ttl: u8,
        src_mac: MacAddr,
        dst_mac: MacAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via_peer: Option<String>,
    },
    Encap {
        peer: String,
        wire: String,
        outer_src: Ipv4Addr,
        outer_dst: Ipv4Addr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        udp_src: Option<u16>,
    },
    Segment {
        segments: u16,
        gso_size: u16,
        why: String,
    },
    Coalesce {
        segments: u16,
    },
    TxPort {
        port: String,
    },
    Flood {
        ports: u16,
        peers: u16,
    },
    Drop {
        reason: String,
    },
}

/// Headers of the packet as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    pub eth_src: MacAddr,
    pub eth_dst: MacAddr,
    pub ethertype: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_src: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_dst: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_proto: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4_src: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4_dst: Option<u16>,
    /// ARP operation or ICMP/ICMPv6 type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<u16>,
    pub len: u32,
}

/// What a trace session collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// Stage lists.
    #[default]
    Trace,
    /// Stage lists and frames.
    Capture,
    /// Stage lists and frames of dropped packets.
    Drops,
}

/// Starts a trace or capture session; its records stream on the same connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Trace {
    /// Match expression (see vswitchd's `observe::filter`); empty matches everything.
    #[serde(default)]
    pub filter: String,
    #[serde(default)]
    pub kind: TraceKind,
    /// Bytes of each frame kept (captures).
    #[serde(default)]
    pub snaplen: u32,
    /// Stop after this many records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Stop after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The reply to a [`Trace`] request: the session runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStarted {
    /// The filter as the daemon understood it.
    pub filter: String,
    /// Capture interfaces known now (port ids and `underlay`), in this order.
    pub interfaces: Vec<String>,
}

/// How a session ended, with its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEnd {
    /// `count`, `timeout`, `client` (went away) or `error`.
    pub reason: String,
    pub matched: u64,
    pub delivered: u64,
    /// Records dropped because this client read too slowly.
    pub lost: u64,
}

/// Lines the daemon streams after [`TraceStarted`], one JSON object each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceLine {
    Event(TraceEvent),
    End(TraceEnd),
}

/// Runs packets through the live tables without sending them or changing anything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inject {
    /// A description (`in_port=P,ip_dst=…,icmp`), see vswitchd's `observe::inject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Or frames (hex) received on `port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

/// One event per injected packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectReply {
    pub events: Vec<TraceEvent>,
}

/// One traced packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub worker: u16,
    pub rx: RxInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    pub stages: Vec<StageInfo>,
    /// The outcome in one line (also the pcapng packet comment); see [`verdict`].
    pub verdict: String,
    /// Captured bytes, hex (captures only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub frame: String,
    /// Length of the whole frame.
    pub orig_len: u32,
    /// Synthetic: run through the live tables without changing them.
    #[serde(default)]
    pub dry_run: bool,
}

impl TraceEvent {
    /// The captured bytes.
    pub fn frame_bytes(&self) -> Option<Vec<u8>> {
        decode_hex(&self.frame)
    }
}

pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(b"0123456789abcdef"[usize::from(x >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(x & 15)]));
    }
    s
}

/// Hex to bytes; spaces, colons and a `0x` prefix are allowed (for `--inject-hex`).
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b':')
        .collect();
    let pairs = digits.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// The outcome of a packet in one line, from its stages: `drop <reason>`, `answer <what>`,
/// `encap <wire> to <peer> <outer src> > <outer dst> [vni N] [sport N]`, `tx <port>[,<port>…]`,
/// `flood <n> ports, <m> peers`, or `none` when no stage decided.
pub fn verdict(stages: &[StageInfo]) -> String {
    if let Some(r) = stages.iter().find_map(|s| match s {
        StageInfo::Drop { reason } => Some(reason),
        _ => None,
    }) {
        return format!("drop {r}");
    }
    if let Some(a) = stages.iter().find_map(|s| match s {
        StageInfo::Answered { answer } => Some(answer),
        _ => None,
    }) {
        return format!("answer {a}");
    }
    let mut out = Vec::new();
    for s in stages {
        match s {
            StageInfo::Encap {
                peer,
                wire,
                outer_src,
                outer_dst,
                vni,
                udp_src,
            } => {
                let mut e = format!("encap {wire} to {peer} {outer_src} > {outer_dst}");
                if let Some(v) = vni {
                    e += &format!(" vni {v}");
                }
                if let Some(p) = udp_src {
                    e += &format!(" sport {p}");
                }
                out.push(e);
            }
            StageInfo::Flood { ports, peers } => {
                out.push(format!("flood {ports} ports, {peers} peers"))
            }
            _ => {}
        }
    }
    let tx: Vec<&str> = stages
        .iter()
        .filter_map(|s| match s {
            StageInfo::TxPort { port } => Some(port.as_str()),
            _ => None,
        })
        .collect();
    if !tx.is_empty() {
        out.insert(0, format!("tx {}", tx.join(",")));
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join("; ")
    }
}

fn ethertype_name(t: u16) -> String {
    match t {
        0x0800 => "ipv4".into(),
        0x0806 => "arp".into(),
        0x86dd => "ipv6".into(),
        0x8100 => "vlan".into(),
        t => format!("0x{t:04x}"),
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmp6".into(),
        p => format!("proto {p}"),
    }
}

impl fmt::Display for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} > {} {}",
            self.eth_src,
            self.eth_dst,
            ethertype_name(self.ethertype)
        )?;
        if let (Some(s), Some(d)) = (self.ip_src, self.ip_dst) {
            write!(f, " {s} > {d}")?;
        }
        if self.ethertype == 0x0806 {
            match self.op {
                Some(1) => write!(f, " request")?,
                Some(2) => write!(f, " reply")?,
                Some(o) => write!(f, " op {o}")?,
                None => {}
            }
        } else if let Some(p) = self.ip_proto {
            write!(f, " {}", proto_name(p))?;
            if let (Some(s), Some(d)) = (self.l4_src, self.l4_dst) {
                write!(f, " {s} > {d}")?;
            }
            if let Some(t) = self.op {
                write!(f, " type {t}")?;
            }
        }
        if let Some(t) = self.ttl {
            write!(f, " ttl {t}")?;
        }
        write!(f, " len {}", self.len)
    }
}

impl StageInfo {
    /// The stage's short name (the first column of `vswitchctl trace`).
    pub fn name(&self) -> &'static str {
        match self {
            StageInfo::RxPort { .. } | StageInfo::RxUnderlay { .. } => "rx",
            StageInfo::Parsed(_) => "parse",
            StageInfo::Domain { .. } => "domain",
            StageInfo::Guard { .. } => "guard",
            StageInfo::Answered { .. } => "answer",
            StageInfo::Lookup { .. } => "lookup",
            StageInfo::Route { .. } => "route",
            StageInfo::Encap { .. } => "encap",
            StageInfo::Segment { .. } => "segment",
            StageInfo::Coalesce { .. } => "coalesce",
            StageInfo::TxPort { .. } => "tx",
            StageInfo::Flood { .. } => "flood",
            StageInfo::Drop { .. } => "drop",
        }
    }
}

impl fmt::Display for StageInfo {
    /// `<name>  <detail>`, names padded so the details line up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<9}", self.name())?;
        let opt =
            |label: &str, v: Option<String>| v.map(|v| format!(" {label} {v}")).unwrap_or_default();
        match self {
            StageInfo::RxPort {
                port,
                worker,
                gso_type,
                gso_size,
                csum_partial,
            } => {
                write!(f, "port {port} (worker {worker})")?;
                if *gso_type != 0 {
                    write!(f, " gso type {gso_type} size {gso_size}")?;
                }
                if *csum_partial {
                    write!(f, " csum partial")?;
                }
                Ok(())
            }
            StageInfo::RxUnderlay {
                wire,
                worker,
                outer_src,
                outer_dst,
                vni,
                udp_src,
                peer,
            } => write!(
                f,
                "underlay {wire} {outer_src} > {outer_dst}{}{}{} (worker {worker}), decapsulated",
                opt("vni", vni.map(|v| v.to_string())),
                opt("sport", udp_src.map(|v| v.to_string())),
                opt("from peer", peer.clone()),
            ),
            StageInfo::Parsed(h) => write!(f, "{h}"),
            StageInfo::Domain { network } => write!(f, "network {network}"),
            StageInfo::Guard { drop: None } => write!(f, "anti-spoofing passed"),
            StageInfo::Guard { drop: Some(r) } => write!(f, "anti-spoofing failed: {r}"),
            StageInfo::Answered { answer } => write!(f, "{answer}"),
            StageInfo::Lookup {
                mac,
                result,
                to,
                source,
            } => {
                write!(f, "fdb {mac}: {result}")?;
                if let Some(t) = to {
                    write!(f, " {t}")?;
                }
                if let Some(s) = source {
                    write!(f, " ({s})")?;
                }
                Ok(())
            }
            StageInfo::Route {
                dst,
                ttl,
                src_mac,
                dst_mac,
                via_peer,
            } => write!(
                f,
                "route {dst} ttl {ttl}, mac {src_mac} > {dst_mac}{}",
                opt("via peer", via_peer.clone())
            ),
            StageInfo::Encap {
                peer,
                wire,
                outer_src,
                outer_dst,
                vni,
                udp_src,
            } => write!(
                f,
                "{wire} to peer {peer}: {outer_src} > {outer_dst}{}{}",
                opt("vni", vni.map(|v| v.to_string())),
                opt("sport", udp_src.map(|v| v.to_string())),
            ),
            StageInfo::Segment {
                segments,
                gso_size,
                why,
            } => write!(
                f,
                "{segments} segments of {gso_size} bytes in software: {why}"
            ),
            StageInfo::Coalesce { segments } => write!(f, "{segments} segments into one"),
            StageInfo::TxPort { port } => write!(f, "port {port}"),
            StageInfo::Flood { ports, peers } => write!(f, "{ports} ports, {peers} peers"),
            StageInfo::Drop { reason } => write!(f, "{reason}"),
        }
    }
}

/// `HH:MM:SS.nnnnnnnnn` (UTC) of a timestamp in ns since the epoch.
pub fn time_of_day(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:09}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        ns % 1_000_000_000
    )
}

impl fmt::Display for TraceEvent {
    /// A header line, then one indented line per stage.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = match &self.rx {
            RxInfo::Port { port } => format!("port {port}"),
            RxInfo::Underlay { peer: Some(p) } => format!("underlay from {p}"),
            RxInfo::Underlay { peer: None } => "underlay".into(),
            RxInfo::Inject { port } => format!("injected on port {port} (dry run)"),
        };
        writeln!(
            f,
            "{} UTC {from}, worker {}: {}",
            time_of_day(self.time_ns),
            self.worker,
            self.verdict
        )?;
        for s in &self.stages {
            writeln!(f, "    {s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_rendering() {
        let tx = StageInfo::TxPort {
            port: "pod-b".into(),
        };
        assert_eq!(verdict(std::slice::from_ref(&tx)), "tx pod-b");
        let drop = StageInfo::Drop {
            reason: "spoofed_src_ip".into(),
        };
        assert_eq!(verdict(&[tx.clone(), drop]), "drop spoofed_src_ip");
        let enc = StageInfo::Encap {
            peer: "node-b".into(),
            wire: "vxlan".into(),
            outer_src: Ipv4Addr::new(10, 1, 0, 1),
            outer_dst: Ipv4Addr::new(10, 1, 0, 2),
            vni: Some(100),
            udp_src: Some(50000),
        };
        assert_eq!(
            verdict(&[enc.clone(), StageInfo::Flood { ports: 2, peers: 1 }]),
            "encap vxlan to node-b 10.1.0.1 > 10.1.0.2 vni 100 sport 50000; flood 2 ports, 1 peers"
        );
        assert_eq!(verdict(&[]), "none");
        assert_eq!(
            enc.to_string(),
            "encap    vxlan to peer node-b: 10.1.0.1 > 10.1.0.2 vni 100 sport 50000"
        );
        let ev = TraceEvent {
            time_ns: 3_723_000_000_042,
            worker: 1,
            rx: RxInfo::Port {
                port: "pod-a".into(),
            },
            network: Some("blue".into()),
            stages: vec![tx],
            verdict: "tx pod-b".into(),
            frame: encode_hex(&[0xde, 0xad]),
            orig_len: 2,
            dry_run: false,
        };
        assert_eq!(
            ev.to_string(),
            "01:02:03.000000042 UTC port pod-a, worker 1: tx pod-b\n    tx       port pod-b\n"
        );
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains(r#""stage":"tx_port""#), "{json}");
        assert_eq!(serde_json::from_str::<TraceEvent>(&json).unwrap(), ev);
        assert_eq!(ev.frame_bytes(), Some(vec![0xde, 0xad]));
        assert_eq!(decode_hex("0x01 02:0a"), Some(vec![1, 2, 10]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
    }
}
