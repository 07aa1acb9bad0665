//! The control-socket protocol: one JSON request per line, one JSON reply per line.
//!
//! Used by `vswitchctl` and the CNI plugin. A reply is either `{"ok": <data>}` or
//! `{"error": {"kind": "...", "message": "..."}}`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vswitch_config::{AttachKind, Ipv4Net, MacAddr, NetworkConfig, RouteSpec};

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; replies with the daemon version.
    Ping,
    NetworkList,
    NetworkAdd {
        network: NetworkConfig,
    },
    NetworkDel {
        name: String,
    },
    PortAdd(PortAddRequest),
    PortDel {
        id: String,
    },
    PortList,
    FdbShow {
        network: String,
    },
    Stats,
    /// CNI ADD: ensure the network, assign addresses, create the pod interface.
    CniAdd(CniAddRequest),
    /// CNI DEL: remove the interface if present and release the addresses (idempotent).
    CniDel(CniAttachment),
    /// CNI CHECK: the attachment's record and what its interface looks like in the pod now.
    CniCheck(CniAttachment),
    /// Peer nodes and where they came from.
    Peers,
    /// Built-in IPAM allocations of a domain.
    IpamShow {
        domain: String,
    },
    /// CNI GC: remove every attachment of the domain not in `valid`.
    CniGc {
        domain: String,
        valid: Vec<CniAttachmentId>,
    },
}

/// Which container interface an attachment is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CniAttachmentId {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniAttachment {
    pub container_id: String,
    pub ifname: String,
    /// Isolation domain (= vswitch network name).
    pub domain: String,
    /// Release addresses from the built-in IPAM (DEL).
    #[serde(default)]
    pub builtin_ipam: bool,
}

/// How the addresses of a CNI attachment are decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CniIpam {
    /// vswitchd assigns from these ranges (requested IPs first).
    Builtin {
        plan: vswitch_config::cni::IpamPlan,
        #[serde(default)]
        requested: Vec<Ipv4Addr>,
    },
    /// A delegated IPAM plugin already decided.
    Fixed {
        addrs: Vec<CniAddr>,
        #[serde(default)]
        routes: Vec<RouteSpec>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAddr {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniAddRequest {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub domain: String,
    /// Used when the network does not exist yet.
    #[serde(default)]
    pub attach: Option<AttachKind>,
    #[serde(default)]
    pub mtu: Option<u16>,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    pub ipam: CniIpam,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniAddReply {
    pub port: PortInfo,
    pub addrs: Vec<CniAddr>,
    pub routes: Vec<RouteSpec>,
}

/// What a pod interface looks like inside its namespace right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInterface {
    pub exists: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// `ip/prefix` strings.
    #[serde(default)]
    pub addrs: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniCheckReply {
    pub port: PortInfo,
    pub observed: ObservedInterface,
}

/// One built-in IPAM allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamAllocation {
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniGcReply {
    pub removed_ports: Vec<String>,
    pub released: Vec<CniAttachmentId>,
}

/// Attach a pod interface to a network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PortAddRequest {
    /// Port id; default `<netns>:<ifname>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Pod network namespace: a name under /run/netns or a path (e.g. /proc/PID/ns/net).
    pub netns: String,
    pub network: String,
    /// Interface name inside the pod (eth1, net1, ...).
    pub ifname: String,
    /// Default: a random locally administered MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Pod IPs, each inside the network's subnet.
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    /// Routes to install in the pod (next hop defaults to the network gateway).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Port kind for this pod; default: the network's `attach`. Kinds may be mixed in a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<AttachKind>,
    /// The pod is a router: it may send IPv6 router advertisements, redirects, DHCPv6 server
    /// messages and MLD queries (dropped from other ports).
    #[serde(default)]
    pub router: bool,
}

/// What kind of failure a request met; stable strings for scripts and the CNI plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    InvalidConfig,
    UnknownNetwork,
    NetworkExists,
    NetworkInUse,
    UnknownPort,
    PortExists,
    AddressConflict,
    /// No free address left in the IPAM ranges.
    AddressExhausted,
    NetnsNotFound,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(ApiError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub gateway_mac: MacAddr,
    pub attach: AttachKind,
    pub mtu: u16,
    pub ports: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: String,
    pub network: String,
    pub netns: String,
    pub ifname: String,
    /// Name of the device the daemon holds: the tap (inside the pod) or the host veth end.
    pub host_ifname: String,
    pub attach: AttachKind,
    pub mac: MacAddr,
    pub ips: Vec<Ipv4Addr>,
    pub mtu: u16,
    pub worker: usize,
    /// Set for ports created through CNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdbEntryKind {
    /// Known from port configuration; never ages out, never moved by learning.
    Static,
    /// Learned from traffic; ages out.
    Learned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntryInfo {
    pub mac: MacAddr,
    /// Port id, or `gateway` for the switch's own gateway MAC.
    pub port: String,
    pub kind: FdbEntryKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<Ipv4Addr>,
    /// Seconds since last seen (learned entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<u64>,
    /// Where the entry came from.
    pub source: FdbSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdbSource {
    /// A port of this node (or the gateway).
    Local,
    /// Learned from traffic (flood-and-learn).
    Learned,
    /// Published by another node in the datastore.
    Etcd,
}

/// Another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// Inside our underlay subnet (cross-subnet traffic to it goes direct).
    pub same_subnet: bool,
    /// `static` (config) or `etcd`.
    pub source: String,
    pub blocks: BTreeMap<String, Vec<Ipv4Net>>,
    /// Its endpoints known from the datastore.
    pub endpoints: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub id: String,
    pub network: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames received on this port and dropped (any reason).
    pub rx_dropped: u64,
    /// Frames that could not be written to this port (ring full, device gone).
    pub tx_errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    pub ports: Vec<PortStats>,
    /// Drops by reason, over the daemon's lifetime (every reason listed, zero or not).
    pub drops: BTreeMap<String, u64>,
    /// Frames the switch consumed as the protocol's peer (MLD reports, router solicitations,
    /// multicast nobody else listens to): not drops.
    #[serde(default)]
    pub absorbed: BTreeMap<String, u64>,
}

/// Client error: transport or daemon-side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to vswitchd at {path}: {source} (is vswitchd running? set --socket)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad reply from vswitchd: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// Sends one request and waits for its reply.
pub fn call<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<T, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reply = String::new();
    if BufReader::new(&stream).read_line(&mut reply)? == 0 {
        return Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "vswitchd closed the connection without a reply",
        )));
    }
    match serde_json::from_str::<Reply>(&reply)? {
        Reply::Ok(v) => Ok(serde_json::from_value(v)?),
        Reply::Error(e) => Err(ClientError::Api(e)),
    }
}
