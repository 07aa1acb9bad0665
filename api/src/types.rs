//! Requests and replies of the control protocol.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use vswitch_config::{AttachKind, Ipv4Net, MacAddr, NetworkConfig, RouteSpec};

// ---- requests ----

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ping {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkList {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkAdd {
    pub network: NetworkConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkDel {
    pub name: String,
}

/// Attach a pod interface to a network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PortAdd {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortDel {
    pub id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PortList {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdbShow {
    pub network: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerList {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamShow {
    pub domain: String,
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
    /// vswitchd assigns from Calico-style IP pools (`ipam.type = "vswitch-pools"`).
    Pools { request: crate::pools::PoolRequest },
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

/// The Kubernetes pod an attachment belongs to (`K8S_POD_NAMESPACE`, `K8S_POD_NAME` of CNI_ARGS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniAdd {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    /// The CNI network name (config `name`): with container id and ifname, the attachment's key.
    #[serde(default)]
    pub network: String,
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Used when the network does not exist yet.
    #[serde(default)]
    pub attach: Option<AttachKind>,
    #[serde(default)]
    pub mtu: Option<u16>,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    pub ipam: CniIpam,
}

/// Which container interface an attachment is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CniAttachmentId {
    pub container_id: String,
    pub ifname: String,
}

/// One attachment, as DEL and CHECK name it: (network, container id, ifname).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniAttachment {
    pub container_id: String,
    pub ifname: String,
    /// The CNI network name (config `name`).
    #[serde(default)]
    pub network: String,
    /// The pod's netns as the runtime passed it (may be empty on DEL): where DEL looks for an
    /// interface left behind without a record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    /// Isolation domain (= vswitch network name).
    pub domain: String,
    /// Release addresses from the built-in IPAM (DEL).
    #[serde(default)]
    pub builtin_ipam: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CniDel(pub CniAttachment);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CniCheck(pub CniAttachment);

/// GC of one CNI network: only its own attachments (by network name) are candidates, even when
/// other networks share its domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CniGc {
    #[serde(default)]
    pub network: String,
    pub domain: String,
    pub valid: Vec<CniAttachmentId>,
}

// ---- replies ----

/// An empty success (`{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReply {
    pub version: String,
    /// The daemon binary's build id (`VSWITCH_BUILD_ID` at build time, else `<version>-dev`):
    /// tells an upgraded daemon from the one before. Empty from a daemon that predates it.
    #[serde(default)]
    pub build: String,
    /// Dataplane worker threads.
    #[serde(default)]
    pub workers: usize,
    /// The I/O backend the workers run: `io_uring` or `epoll`.
    #[serde(default)]
    pub io: String,
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
    /// The CNI network that holds it (absent for allocations recorded before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniGcReply {
    pub removed_ports: Vec<String>,
    pub released: Vec<CniAttachmentId>,
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

/// A port's standing after a daemon restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortState {
    /// Created by this daemon run.
    #[default]
    Up,
    /// Persisted by an earlier run, its interface found alive and re-attached at start.
    Restored,
    /// Persisted by an earlier run, its interface or namespace gone at start: nothing of it is
    /// forwarded; its addresses stay assigned until the runtime's DEL (or `port del`).
    Gone,
}

impl std::fmt::Display for PortState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortState::Up => "up",
            PortState::Restored => "restored",
            PortState::Gone => "gone",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: String,
    pub network: String,
    pub netns: String,
    pub ifname: String,
    /// Name of the device the daemon holds: the tap (inside the pod) or the host veth end.
    pub host_ifname: String,
    /// Where the port stands after the daemon's last start (reconciliation with what exists).
    #[serde(default)]
    pub state: PortState,
    pub attach: AttachKind,
    pub mac: MacAddr,
    pub ips: Vec<Ipv4Addr>,
    pub mtu: u16,
    pub worker: usize,
    /// Set for ports created through CNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The CNI network name of the attachment (ports created through CNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
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
