//! Requests and replies of Calico-style IP pool IPAM (see `vswitch::control::pools`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use vswitch_config::ippool::{IpPool, IpamConfig};
use vswitch_config::Ipv4Net;

/// How a CNI ADD asks pool IPAM for its address; each list is empty when not given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRequest {
    /// `cni.projectcalico.org/ipv4pools` of the pod (names or CIDRs).
    #[serde(default)]
    pub pod_pools: Vec<String>,
    /// `cni.projectcalico.org/ipAddrs`: a static address, which must lie in an enabled pool.
    #[serde(default)]
    pub ip_addrs: Vec<Ipv4Addr>,
    /// `cni.projectcalico.org/ipAddrsNoIpam`: used as given, IPAM bypassed.
    #[serde(default)]
    pub ip_addrs_no_ipam: Vec<Ipv4Addr>,
    /// The CNI config's `ipam.ipv4_pools`.
    #[serde(default)]
    pub cni_pools: Vec<String>,
    /// `K8S_POD_NAMESPACE` (its `ipv4pools` annotation in the datastore applies).
    #[serde(default)]
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`, kept with the allocation for `ipam show --ip`.
    #[serde(default)]
    pub pod: Option<String>,
}

/// `apply -f`: the file's text (YAML or JSON, several documents).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolApply {
    pub text: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolApplyReply {
    /// One line per object: `ippool/NAME created|configured|unchanged`.
    pub applied: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolGet {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolInfo {
    pub pool: IpPool,
    pub blocks: usize,
    pub in_use: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolGetReply {
    pub pools: Vec<PoolInfo>,
    pub config: IpamConfig,
}

/// Deletes a pool; refused while any address of it is in use, unless `force` (which releases
/// them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolDelete {
    pub name: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolDeleteReply {
    pub released: Vec<Ipv4Addr>,
}

/// Sets (`key=value`) or removes (`key-`) labels of a node (default: this node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLabel {
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLabelsReply {
    pub node: String,
    /// Config labels overlaid with the datastore's.
    pub labels: BTreeMap<String, String>,
}

/// Sets (or, with `None`, removes) a namespace's `ipv4pools` annotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamespaceAnnotate {
    pub namespace: String,
    #[serde(default)]
    pub ipv4pools: Option<Vec<String>>,
}

/// `ipam show`: per pool totals, per block details, or who holds one address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolIpamShow {
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolUsage {
    pub name: String,
    pub cidr: Ipv4Net,
    pub total: u64,
    pub in_use: u64,
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockInfo {
    pub cidr: Ipv4Net,
    pub pool: String,
    pub affinity: Option<String>,
    pub total: u64,
    pub in_use: u64,
    /// Addresses held by nodes other than the affine one.
    pub borrowed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpHolder {
    pub ip: Ipv4Addr,
    pub handle: String,
    pub node: String,
    pub note: String,
    pub block: Ipv4Net,
    pub affinity: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolIpamShowReply {
    pub pools: Vec<PoolUsage>,
    pub blocks: Vec<BlockInfo>,
    #[serde(default)]
    pub holder: Option<IpHolder>,
}

/// `ipam check`: addresses allocated without a live attachment, and store inconsistencies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolIpamCheck {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leak {
    pub ip: Ipv4Addr,
    pub handle: String,
    pub node: String,
    pub why: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolIpamCheckReply {
    pub handles: usize,
    pub addresses: usize,
    pub leaked: Vec<Leak>,
    pub problems: Vec<String>,
}

/// `ipam release`: the given addresses, or (with `leaked`) every leaked one `ipam check` finds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolIpamRelease {
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub leaked: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolIpamReleaseReply {
    pub released: Vec<Ipv4Addr>,
}
