//! Typed, validated configuration shared by every vswitch binary.
//!
//! - [`DaemonConfig`]: the `vswitchd` TOML file (state dir, control socket, workers, networks).
//! - [`NetworkConfig`]: one isolation domain (an L2 segment with its subnet and gateway).
//!
//! Validation happens here, before anything is touched, and every error names the field.
#![deny(unsafe_code)]

pub mod cni;
pub mod ippool;
mod mac;
pub mod selector;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use ipnet::Ipv4Net;
pub use mac::{MacAddr, MacParseError};
use serde::{Deserialize, Serialize};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/vswitch";
pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitchd.sock";
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU an IPv4 network may use (RFC 791 minimum datagram a host must accept).
pub const MIN_MTU: u16 = 576;
/// Largest MTU a port may use; frames are bounded by the 64 KiB buffers behind them.
pub const MAX_MTU: u16 = 9000;
pub const MAX_WORKERS: usize = 64;
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A configuration error; the message always names the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    /// Syntax or type error. `field` is the dotted path of the key being read when the
    /// decoder failed (empty for a syntax error before any key); `reason` carries the line and
    /// column.
    #[error("config file {path}: {}{reason}", field_prefix(field))]
    Parse {
        path: String,
        field: String,
        reason: String,
    },
    #[error("field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        "not valid TOML for vswitchd: ".to_string()
    } else {
        format!("field `{field}`: ")
    }
}

/// The dotted path of the key a decoder failed on (`network[0].mtu`), or empty at the top.
pub fn error_path(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// How pod interfaces of a network are attached to the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AttachKind {
    /// A tap device moved into the pod; the daemon holds its fd (virtio-net header enabled).
    #[default]
    Tap,
    /// A veth pair; the daemon reads/writes the host end through PACKET_MMAP rings.
    AfPacket,
}

impl std::fmt::Display for AttachKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachKind::Tap => "tap",
            AttachKind::AfPacket => "af_packet",
        })
    }
}

impl std::str::FromStr for AttachKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tap" => Ok(AttachKind::Tap),
            "af_packet" | "af-packet" | "afpacket" => Ok(AttachKind::AfPacket),
            _ => Err(ConfigError::invalid(
                "attach",
                format!("{s:?} is not one of \"tap\", \"af_packet\""),
            )),
        }
    }
}

/// One network: an isolated L2 domain. CIDRs may overlap between networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Unique name; also the isolation domain key.
    pub name: String,
    /// The network's IPv4 subnet, e.g. 192.168.1.0/24.
    pub subnet: Ipv4Net,
    /// Gateway IP the switch answers ARP and ping for. Default: first host of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// MAC the switch uses for the gateway. Default: derived from the network name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mac: Option<MacAddr>,
    /// Port kind for pods of this network.
    #[serde(default)]
    pub attach: AttachKind,
    /// MTU of pod interfaces. Default: 1500, or the underlay MTU minus the encapsulation
    /// overhead for networks that span nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// `l2` (switched; spans nodes over VXLAN when `vni` is set) or `l3` (routed, Calico style).
    #[serde(default)]
    pub kind: NetworkKind,
    /// VXLAN network identifier (L2 networks spanning nodes; L3 networks encapsulating in VXLAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// L3: how packets to other nodes are encapsulated when they are.
    #[serde(default)]
    pub encapsulation: Encapsulation,
    /// L3: when to encapsulate.
    #[serde(default)]
    pub mode: EncapMode,
    /// L3: this node's pod blocks (sub-CIDRs of `subnet`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<Ipv4Net>,
    /// Checksum and segmentation offloads on pod taps (default on). Off: the pod's kernel
    /// finishes every segment and checksum, and vswitch segments superframes for it.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub offloads: bool,
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Switched or routed network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    #[default]
    L2,
    L3,
}

/// Encapsulation used between nodes for L3 networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encapsulation {
    #[default]
    Ipip,
    Vxlan,
}

/// When L3 traffic to another node is encapsulated (Calico's ipipMode / vxlanMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EncapMode {
    /// Always encapsulate.
    #[default]
    Always,
    /// Direct when the peer's underlay IP is in our underlay subnet, encapsulated otherwise.
    CrossSubnet,
    /// Never encapsulate: direct routing over the underlay.
    Never,
}

/// Outer header bytes added by VXLAN (IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u16 = 50;
/// Outer header bytes added by IPIP.
pub const IPIP_OVERHEAD: u16 = 20;

impl NetworkConfig {
    pub fn new(name: &str, subnet: Ipv4Net) -> Self {
        NetworkConfig {
            name: name.to_string(),
            subnet: subnet.trunc(),
            gateway: None,
            gateway_mac: None,
            attach: AttachKind::Tap,
            mtu: None,
            kind: NetworkKind::L2,
            vni: None,
            encapsulation: Encapsulation::Ipip,
            mode: EncapMode::Always,
            blocks: Vec::new(),
            offloads: true,
        }
    }

    /// Whether traffic of this network leaves the node.
    pub fn spans_nodes(&self) -> bool {
        match self.kind {
            NetworkKind::L2 => self.vni.is_some(),
            NetworkKind::L3 => true,
        }
    }

    /// Bytes of outer headers this network's traffic may carry between nodes.
    pub fn overhead(&self) -> u16 {
        match (self.kind, self.vni) {
            (NetworkKind::L2, Some(_)) => VXLAN_OVERHEAD,
            (NetworkKind::L2, None) => 0,
            (NetworkKind::L3, _) if self.mode == EncapMode::Never => 0,
            (NetworkKind::L3, _) => match self.encapsulation {
                Encapsulation::Ipip => IPIP_OVERHEAD,
                Encapsulation::Vxlan => VXLAN_OVERHEAD,
            },
        }
    }

    /// The pod MTU: configured, else underlay MTU minus overhead for networks spanning nodes.
    pub fn effective_mtu(&self, underlay_mtu: Option<u16>) -> u16 {
        self.mtu.unwrap_or_else(|| match underlay_mtu {
            Some(u) if self.spans_nodes() => u.saturating_sub(self.overhead()).max(MIN_MTU),
            _ => DEFAULT_MTU,
        })
    }

    /// The gateway IP: configured, or the first host address of the subnet.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(self.subnet.network()).wrapping_add(1)))
    }

    /// The gateway MAC: configured, or a locally administered MAC stable for the network name.
    pub fn gateway_mac(&self) -> MacAddr {
        self.gateway_mac
            .unwrap_or_else(|| MacAddr::local_from_seed(fnv1a(self.name.as_bytes())))
    }

    /// Checks every field; `prefix` is prepended to field names (e.g. `network[2].`).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let f = |name: &str| format!("{prefix}{name}");
        validate_name(&self.name).map_err(|r| ConfigError::invalid(f("name"), r))?;
        if self.subnet != self.subnet.trunc() {
            return Err(ConfigError::invalid(
                f("subnet"),
                format!(
                    "{} has host bits set; did you mean {}?",
                    self.subnet,
                    self.subnet.trunc()
                ),
            ));
        }
        if self.subnet.prefix_len() > 30 {
            return Err(ConfigError::invalid(
                f("subnet"),
                format!(
                    "{} leaves no room for a gateway and pods (need /30 or larger)",
                    self.subnet
                ),
            ));
        }
        let gw = self.gateway_ip();
        if !is_host_of(self.subnet, gw) {
            return Err(ConfigError::invalid(
                f("gateway"),
                format!("{gw} is not a host address of subnet {}", self.subnet),
            ));
        }
        if let Some(mac) = self.gateway_mac {
            if !mac.is_valid_unicast() {
                return Err(ConfigError::invalid(
                    f("gateway_mac"),
                    format!("{mac} is not a unicast address"),
                ));
            }
        }
        if let Some(mtu) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(ConfigError::invalid(
                    f("mtu"),
                    format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}"),
                ));
            }
        }
        if let Some(vni) = self.vni {
            if vni == 0 || vni >= 1 << 24 {
                return Err(ConfigError::invalid(
                    f("vni"),
                    format!("{vni} is outside 1..=16777215"),
                ));
            }
        }
        match self.kind {
            NetworkKind::L2 => {
                if !self.blocks.is_empty() {
                    return Err(ConfigError::invalid(
                        f("blocks"),
                        "only L3 networks have pod blocks",
                    ));
                }
            }
            NetworkKind::L3 => {
                if self.encapsulation == Encapsulation::Vxlan
                    && self.mode != EncapMode::Never
                    && self.vni.is_none()
                {
                    return Err(ConfigError::invalid(
                        f("vni"),
                        "required with encapsulation = \"vxlan\"",
                    ));
                }
                for (i, b) in self.blocks.iter().enumerate() {
                    if b.trunc() != *b || !self.subnet.contains(b) {
                        return Err(ConfigError::invalid(
                            f(&format!("blocks[{i}]")),
                            format!("{b} is not a block inside subnet {}", self.subnet),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// True if `ip` is a usable host address of `net` (not the network or broadcast address).
pub fn is_host_of(net: Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

/// Names of networks and ports: 1..=64 chars of `[A-Za-z0-9._-]`, not starting with `-` or `.`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?} must be 1 to 64 characters"));
    }
    if name.starts_with(['-', '.']) {
        return Err(format!("{name:?} must not start with '-' or '.'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; allowed are letters, digits, '.', '_', '-'"
        ));
    }
    Ok(())
}

/// Linux interface name rules: 1..=15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(format!("{name:?} must be 1 to {MAX_IFNAME_LEN} bytes"));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

/// 64-bit FNV-1a: a stable, dependency-free hash for deriving MACs and names.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The `vswitchd` configuration file (TOML). Every field has a default, so no file is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Durable state (networks created at runtime).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Control socket (unix, mode 0600) used by vswitchctl and the CNI plugin.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Dataplane worker threads; ports are spread over them.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Seconds before a learned FDB entry expires.
    #[serde(default = "default_fdb_aging")]
    pub fdb_aging_secs: u64,
    /// Prometheus metrics endpoint: `host:port`, `[v6]:port`, `:port` or `port` (the last two
    /// listen on loopback, 127.0.0.1). Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or comma-separated
    /// `target=level` directives (`info,vswitch::control=debug`). `RUST_LOG`, when set, wins.
    /// Default `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Dataplane I/O: `auto` (io_uring when the kernel and seccomp allow it, else epoll),
    /// `io_uring`, or `epoll`.
    #[serde(default)]
    pub io: IoBackend,
    /// Microseconds a worker keeps polling after a busy turn before it sleeps (0: never).
    #[serde(default = "default_busy_poll")]
    pub busy_poll_us: u64,
    /// Networks defined at startup.
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkConfig>,
    /// This node's identity and underlay (needed by networks that span nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeConfig>,
    /// Static peers.
    #[serde(default, rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    /// Cluster mode: membership and endpoints in etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// How dataplane workers do their I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IoBackend {
    #[default]
    Auto,
    #[serde(rename = "io_uring")]
    IoUring,
    Epoll,
}

impl std::str::FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoBackend::Auto),
            "io_uring" | "uring" => Ok(IoBackend::IoUring),
            "epoll" => Ok(IoBackend::Epoll),
            o => Err(format!("{o:?} is not one of auto, io_uring, epoll")),
        }
    }
}

/// This node on the underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Default: the hostname.
    #[serde(default)]
    pub name: Option<String>,
    /// Underlay NIC, for direct routing (received through an AF_PACKET ring on it).
    #[serde(default)]
    pub underlay_interface: Option<String>,
    #[serde(default)]
    pub underlay_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub underlay_subnet: Option<Ipv4Net>,
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// Node labels IP pools' `nodeSelector` is matched against (`vswitchctl node label` adds
    /// to them in the datastore).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_vxlan_port() -> u16 {
    4789
}

impl NodeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(n) = &self.name {
            validate_name(n).map_err(|r| ConfigError::invalid("node.name", r))?;
        }
        if let Some(i) = &self.underlay_interface {
            validate_ifname(i).map_err(|r| ConfigError::invalid("node.underlay_interface", r))?;
        }
        if let (Some(ip), Some(net)) = (self.underlay_ip, self.underlay_subnet) {
            if !net.contains(&ip) {
                return Err(ConfigError::invalid(
                    "node.underlay_subnet",
                    format!("{net} does not contain underlay_ip {ip}"),
                ));
            }
        }
        if self.vxlan_port == 0 {
            return Err(ConfigError::invalid("node.vxlan_port", "must not be 0"));
        }
        Ok(())
    }
}

/// A statically configured peer node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// L3 pod blocks the peer serves, by network name.
    #[serde(default)]
    pub blocks: std::collections::BTreeMap<String, Vec<Ipv4Net>>,
}

/// etcd cluster mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub etcd_endpoints: Vec<String>,
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
    /// Key prefix in etcd.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_lease_ttl() -> u64 {
    5
}
fn default_prefix() -> String {
    "/vswitch".into()
}

/// Checks rules across networks: IPIP carries no network id, so two IPIP networks must not
/// overlap; VNIs are unique.
pub fn check_network_set(nets: &[NetworkConfig]) -> Result<(), ConfigError> {
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[..i] {
            let ipip = |n: &NetworkConfig| {
                n.kind == NetworkKind::L3
                    && n.encapsulation == Encapsulation::Ipip
                    && n.mode != EncapMode::Never
            };
            let l3 = |n: &NetworkConfig| n.kind == NetworkKind::L3;
            let overlap =
                a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network());
            if overlap && ((ipip(a) && l3(b)) || (ipip(b) && l3(a))) {
                return Err(ConfigError::invalid(
                    format!("network[{i}].subnet"),
                    format!(
                        "{} of {:?} overlaps {} of L3 network {:?}; IPIP carries no network id, so an IPIP network's subnet must not overlap another L3 network",
                        a.subnet, a.name, b.subnet, b.name
                    ),
                ));
            }
            if a.vni.is_some() && a.vni == b.vni {
                return Err(ConfigError::invalid(
                    format!("network[{i}].vni"),
                    format!(
                        "VNI {} is already used by network {:?}",
                        a.vni.unwrap_or(0),
                        b.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_busy_poll() -> u64 {
    50
}

/// One core is left to the pods and the kernel; at least one worker.
fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1)
}
fn default_fdb_aging() -> u64 {
    300
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: default_state_dir(),
            socket: default_socket(),
            workers: default_workers(),
            fdb_aging_secs: default_fdb_aging(),
            metrics_listen: None,
            log_level: None,
            io: IoBackend::Auto,
            busy_poll_us: default_busy_poll(),
            networks: Vec::new(),
            node: None,
            peers: Vec::new(),
            cluster: None,
        }
    }
}

/// A listen address for a TCP endpoint: `host:port`, `[v6]:port`, or `:port` / `port` on
/// loopback (an endpoint is only reachable from elsewhere when the operator says so).
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let s = s.trim();
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok((Ipv4Addr::LOCALHOST, port).into());
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not host:port, [v6]:port, :port or a port (e.g. \"127.0.0.1:9090\")")
    })
}

/// Checks a log filter: levels and `target=level` directives, comma-separated.
pub fn validate_log_filter(s: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    if s.trim().is_empty() {
        return Err("must not be empty (e.g. \"info\")".into());
    }
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = d.rsplit_once('=').unwrap_or(("", d));
        let target_ok = target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
            && (target.is_empty() != d.contains('='));
        if !target_ok || !is_level(level) {
            return Err(format!(
                "{d:?} is not a level ({}) or a target=level directive",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

impl DaemonConfig {
    /// The metrics endpoint's address, if configured (validated by [`Self::validate`]).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listen
            .as_deref()
            .and_then(|m| parse_listen(m).ok())
    }

    /// Parses and validates a TOML document; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse_err = |field: String, e: toml::de::Error| ConfigError::Parse {
            path: origin.to_string(),
            field,
            reason: e.to_string().trim().to_string(),
        };
        // Syntax first (no field to name), then types, tracking the path of the key being read.
        let de = toml::Deserializer::parse(text).map_err(|e| parse_err(String::new(), e))?;
        let cfg: DaemonConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| parse_err(error_path(e.path()), e.into_inner()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.busy_poll_us > 10_000 {
            return Err(ConfigError::invalid(
                "busy_poll_us",
                format!("{} is above 10000 (10 ms)", self.busy_poll_us),
            ));
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(ConfigError::invalid(
                "workers",
                format!("{} is outside 1..={MAX_WORKERS}", self.workers),
            ));
        }
        if self.fdb_aging_secs == 0 {
            return Err(ConfigError::invalid("fdb_aging_secs", "must be at least 1"));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::invalid("socket", "must not be empty"));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("state_dir", "must not be empty"));
        }
        if let Some(m) = &self.metrics_listen {
            parse_listen(m).map_err(|r| ConfigError::invalid("metrics_listen", r))?;
        }
        if let Some(l) = &self.log_level {
            validate_log_filter(l).map_err(|r| ConfigError::invalid("log_level", r))?;
        }
        let mut names = HashSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            n.validate(&format!("network[{i}]."))?;
            if !names.insert(n.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("network[{i}].name"),
                    format!("network {:?} is defined twice", n.name),
                ));
            }
        }
        check_network_set(&self.networks)?;
        if let Some(node) = &self.node {
            node.validate()?;
        }
        let spans = self.networks.iter().any(NetworkConfig::spans_nodes);
        if spans && self.node.as_ref().is_none_or(|n| n.underlay_ip.is_none()) {
            return Err(ConfigError::invalid(
                "node.underlay_ip",
                "required when a network spans nodes (vni set or kind = \"l3\")",
            ));
        }
        let mut peers = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if !peers.insert(p.name.as_str())
                || self
                    .node
                    .as_ref()
                    .is_some_and(|n| n.name.as_deref() == Some(&p.name))
            {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].name"),
                    format!("{:?} is not unique", p.name),
                ));
            }
            for (net, blocks) in &p.blocks {
                for b in blocks {
                    if let Some(n) = self.networks.iter().find(|n| &n.name == net) {
                        if !n.subnet.contains(b) {
                            return Err(ConfigError::invalid(
                                format!("peer[{i}].blocks.{net}"),
                                format!("{b} is not inside network {net}'s subnet {}", n.subnet),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(c) = &self.cluster {
            if c.etcd_endpoints.is_empty() {
                return Err(ConfigError::invalid(
                    "cluster.etcd_endpoints",
                    "must list at least one endpoint",
                ));
            }
            if c.lease_ttl_secs < 2 {
                return Err(ConfigError::invalid(
                    "cluster.lease_ttl_secs",
                    "must be at least 2",
                ));
            }
        }
        Ok(())
    }
}

/// A route to install in a pod: destination and optional next hop (default: the network gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
}

impl std::str::FromStr for RouteSpec {
    type Err = String;
    /// `CIDR`, `default`, `CIDR=GW` or `default=GW`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (dst, via) = match s.split_once('=') {
            Some((d, v)) => (d, Some(v)),
            None => (s, None),
        };
        let dst: Ipv4Net = if dst == "default" {
            Ipv4Net::default()
        } else {
            dst.parse()
                .map_err(|_| format!("route {s:?}: {dst:?} is not an IPv4 CIDR or \"default\""))?
        };
        let via = via
            .map(|v| v.parse::<Ipv4Addr>())
            .transpose()
            .map_err(|_| format!("route {s:?}: next hop is not an IPv4 address"))?;
        Ok(RouteSpec {
            dst: dst.trunc(),
            via,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_uses_defaults() {
        let c = DaemonConfig::from_toml_str("", "test").unwrap();
        assert_eq!(c, DaemonConfig::default());
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn overlapping_networks_are_fine() {
        let t = r#"
            workers = 2
            [[network]]
            name = "a"
            subnet = "192.168.1.0/24"
            [[network]]
            name = "b"
            subnet = "192.168.1.0/24"
            attach = "af_packet"
            gateway = "192.168.1.254"
        "#;
        let c = DaemonConfig::from_toml_str(t, "test").unwrap();
        assert_eq!(c.networks.len(), 2);
        assert_eq!(
            c.networks[0].gateway_ip(),
            "192.168.1.1".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(c.networks[1].attach, AttachKind::AfPacket);
        assert_ne!(c.networks[0].gateway_mac(), c.networks[1].gateway_mac());
    }

    #[test]
    fn metrics_listen_and_log_level() {
        let c = DaemonConfig::from_toml_str(
            "metrics_listen = \"9090\"\nlog_level = \"warn,vswitch::control=debug\"",
            "test",
        )
        .unwrap();
        assert_eq!(c.metrics_addr(), Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(parse_listen(":9100"), Ok("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(parse_listen("0.0.0.0:1"), Ok("0.0.0.0:1".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:2"), Ok("[::1]:2".parse().unwrap()));
        assert!(parse_listen("localhost").is_err());
        assert!(validate_log_filter("DEBUG").is_ok());
        for bad in ["", "loud", "vswitch=loud", "a b=info"] {
            assert!(validate_log_filter(bad).is_err(), "{bad:?}");
        }
        for (t, field) in [
            ("metrics_listen = \"x:y\"", "metrics_listen"),
            ("log_level = \"verbose\"", "log_level"),
        ] {
            assert_eq!(
                field_of(DaemonConfig::from_toml_str(t, "test").unwrap_err()),
                field
            );
        }
    }

    fn field_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let dup = "[[network]]\nname='a'\nsubnet='10.0.0.0/24'\n[[network]]\nname='a'\nsubnet='10.0.1.0/24'";
        assert_eq!(
            field_of(DaemonConfig::from_toml_str(dup, "t").unwrap_err()),
            "network[1].name"
        );
        let gw = "[[network]]\nname='a'\nsubnet='10.0.0.0/24'\ngateway='10.0.1.1'";
        assert_eq!(
            field_of(DaemonConfig::from_toml_str(gw, "t").unwrap_err()),
            "network[0].gateway"
        );
        let hb = "[[network]]\nname='a'\nsubnet='10.0.0.5/24'";
        assert_eq!(
            field_of(DaemonConfig::from_toml_str(hb, "t").unwrap_err()),
            "network[0].subnet"
        );
        let mtu = "[[network]]\nname='a'\nsubnet='10.0.0.0/24'\nmtu=100";
        let ipip2 = "[node]\nunderlay_ip='10.1.0.1'\n[[network]]\nname='a'\nkind='l3'\nsubnet='10.244.0.0/16'\n[[network]]\nname='b'\nkind='l3'\nsubnet='10.244.8.0/24'";
        assert_eq!(
            field_of(DaemonConfig::from_toml_str(ipip2, "t").unwrap_err()),
            "network[1].subnet"
        );
        let vxlan_l3 = "[node]\nunderlay_ip='10.1.0.1'\n[[network]]\nname='a'\nkind='l3'\nsubnet='10.244.0.0/16'\nencapsulation='vxlan'";
        assert_eq!(
            field_of(DaemonConfig::from_toml_str(vxlan_l3, "t").unwrap_err()),
            "network[0].vni"
        );
        let no_node = "[[network]]\nname='a'\nsubnet='10.244.0.0/16'\nvni=5";
        assert_eq!(
            field_of(DaemonConfig::from_toml_str(no_node, "t").unwrap_err()),
            "node.underlay_ip"
        );
        let ok = "[node]\nunderlay_ip='10.1.0.1'\n[[network]]\nname='a'\nkind='l3'\nsubnet='10.244.0.0/16'\nmode='cross-subnet'\nblocks=['10.244.1.0/26']\n[[network]]\nname='b'\nkind='l3'\nsubnet='10.244.8.0/24'\nmode='never'";
        assert!(
            DaemonConfig::from_toml_str(ok, "t").is_err(),
            "never-mode L3 overlapping an IPIP network is still ambiguous on decap"
        );
        assert_eq!(
            field_of(DaemonConfig::from_toml_str(mtu, "t").unwrap_err()),
            "network[0].mtu"
        );
        assert_eq!(
            field_of(DaemonConfig::from_toml_str("workers = 0", "t").unwrap_err()),
            "workers"
        );
        let name = "[[network]]\nname='a b'\nsubnet='10.0.0.0/24'";
        assert_eq!(
            field_of(DaemonConfig::from_toml_str(name, "t").unwrap_err()),
            "network[0].name"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_parse_errors_naming_the_key() {
        let e = DaemonConfig::from_toml_str("wrokers = 2", "t").unwrap_err();
        assert!(e.to_string().contains("wrokers"), "{e}");
        let e = DaemonConfig::from_toml_str(
            "[[network]]\nname='a'\nsubnet='10.0.0.0/24'\nattach='vhost'",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("vhost"), "{e}");
    }

    fn parse_field_of(e: ConfigError) -> (String, String) {
        match e {
            ConfigError::Parse { field, reason, .. } => (field, reason),
            other => panic!("expected Parse, got {other:?}"),
        }
    }

    #[test]
    fn type_errors_name_the_field_and_the_line() {
        let t = "workers = 2\n[[network]]\nname='a'\nsubnet='10.0.0.0/24'\n[[network]]\nname='b'\nsubnet='10.0.1.0/24'\nmtu='big'";
        let e = DaemonConfig::from_toml_str(t, "t").unwrap_err();
        let msg = e.to_string();
        let (field, reason) = parse_field_of(e);
        assert_eq!(field, "network[1].mtu");
        assert!(reason.contains("line 8"), "{reason}");
        assert!(msg.contains("field `network[1].mtu`"), "{msg}");
        let (field, _) =
            parse_field_of(DaemonConfig::from_toml_str("workers = 'x'", "t").unwrap_err());
        assert_eq!(field, "workers");
        let (field, _) = parse_field_of(
            DaemonConfig::from_toml_str("[node]\nunderlay_ip = 5", "t").unwrap_err(),
        );
        assert_eq!(field, "node.underlay_ip");
        // A syntax error has no field, but still a line.
        let (field, reason) =
            parse_field_of(DaemonConfig::from_toml_str("workers = = 2", "t").unwrap_err());
        assert_eq!(field, "");
        assert!(reason.contains("line 1"), "{reason}");
    }

    #[test]
    fn routes_parse() {
        let r: RouteSpec = "default".parse().unwrap();
        assert_eq!(r.dst.prefix_len(), 0);
        let r: RouteSpec = "10.9.0.0/16=192.168.1.254".parse().unwrap();
        assert_eq!(r.via, Some("192.168.1.254".parse().unwrap()));
        assert!("10.9.0.0/33".parse::<RouteSpec>().is_err());
        assert!("10.9.0.0/16=x".parse::<RouteSpec>().is_err());
    }

    #[test]
    fn ifnames() {
        assert!(validate_ifname("eth1").is_ok());
        assert!(validate_ifname("a-very-long-ifname").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("").is_err());
    }
}
