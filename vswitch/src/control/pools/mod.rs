//! Calico-style IP pools: cluster-wide IPAM with blocks affine to nodes.
//!
//! - [`kv`]: the datastore (etcd in cluster mode, an embedded file store on one node), with
//!   compare-and-swap transactions on revisions;
//! - [`alloc`]: blocks, affinity, borrowing, release;
//! - this module: the operations the API exposes (apply, get, delete, labels, namespace
//!   annotations, `ipam show|check|release`) and pool choice for a CNI ADD.
//!
//! Pool choice, highest priority first: the pod's `ipv4pools` (CNI args / runtimeConfig), its
//! namespace's annotation, the CNI config's `ipam.ipv4_pools`, then every enabled pool whose
//! `nodeSelector` matches this node's labels. A static address (`ipAddrs`) must lie in an
//! enabled pool; `ipAddrsNoIpam` bypasses IPAM.

pub mod alloc;
pub mod cli;
pub mod kv;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use vswitch_api::{
    ApiError, BlockInfo, ErrorKind, IpHolder, Leak, NodeLabelsReply, PoolApplyReply,
    PoolDeleteReply, PoolGetReply, PoolInfo, PoolIpamCheckReply, PoolIpamShowReply, PoolRequest,
    PoolUsage,
};
use vswitch_config::ippool::{self, IpPool, IpamConfig, Object};
use vswitch_config::{DaemonConfig, Ipv4Net};

use alloc::{AllocError, Allocator};
use kv::{EmbeddedKv, EtcdKv, Kv, Op};

const STORE_FILE: &str = "ippools.json";

fn err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

fn alloc_err(e: AllocError) -> ApiError {
    let kind = match &e {
        AllocError::Kv(_) | AllocError::Corrupt { .. } | AllocError::Contention => {
            ErrorKind::Unavailable
        }
        AllocError::Exhausted { .. } => ErrorKind::AddressExhausted,
        AllocError::Taken { .. } | AllocError::Strict { .. } => ErrorKind::AddressConflict,
        AllocError::NotInPool { .. } | AllocError::Reserved { .. } => ErrorKind::InvalidConfig,
    };
    err(kind, e.to_string())
}

fn kv_err(e: kv::KvError) -> ApiError {
    err(ErrorKind::Unavailable, e.to_string())
}

/// What the daemon needs to know about one address it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    pub ip: Ipv4Addr,
    /// Whether pool IPAM holds it (false for `ipAddrsNoIpam`).
    pub managed: bool,
}

/// Pool IPAM of one node.
pub struct PoolIpam {
    kv: Box<dyn Kv>,
    /// Key prefix of the IPAM records.
    prefix: String,
    /// Key prefix of cluster membership (`<prefix>/nodes/`), to tell dead nodes' handles.
    members: Option<String>,
    node: String,
    config_labels: BTreeMap<String, String>,
    /// This node's blocks and borrowed addresses (as /32s), for route publication; refreshed
    /// after each change this node makes.
    routes: Vec<Ipv4Net>,
}

/// The handle of a CNI attachment.
pub fn handle_of(domain: &str, container_id: &str, ifname: &str) -> String {
    format!("{domain}/{container_id}/{ifname}")
}

impl PoolIpam {
    /// etcd when the config has `[cluster]`, else the embedded store in the state dir.
    pub fn open(cfg: &DaemonConfig, node: String) -> anyhow::Result<PoolIpam> {
        let (kv, prefix, members): (Box<dyn Kv>, String, Option<String>) = match &cfg.cluster {
            Some(c) => {
                let base = c.prefix.trim_end_matches('/');
                (
                    Box::new(EtcdKv::new(c.etcd_endpoints.clone())?),
                    format!("{base}/ipam/"),
                    Some(format!("{base}/nodes/")),
                )
            }
            None => (
                Box::new(EmbeddedKv::open(&cfg.state_dir.join(STORE_FILE))?),
                "ipam/".to_string(),
                None,
            ),
        };
        let mut p = PoolIpam::with_kv(
            kv,
            prefix,
            members,
            node,
            cfg.node
                .as_ref()
                .map(|n| n.labels.clone())
                .unwrap_or_default(),
        );
        p.refresh();
        Ok(p)
    }

    pub fn with_kv(
        kv: Box<dyn Kv>,
        prefix: String,
        members: Option<String>,
        node: String,
        config_labels: BTreeMap<String, String>,
    ) -> PoolIpam {
        PoolIpam {
            kv,
            prefix,
            members,
            node,
            config_labels,
            routes: Vec::new(),
        }
    }

    fn alloc(&self) -> Allocator<'_> {
        Allocator {
            kv: &*self.kv,
            prefix: &self.prefix,
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Every pool with its revision, in name order.
    pub fn pools(&self) -> Result<Vec<(IpPool, i64)>, ApiError> {
        let entries = self.kv.list(&self.key("pools/")).map_err(kv_err)?;
        entries
            .iter()
            .map(|e| {
                serde_json::from_str::<IpPool>(&e.value)
                    .map(|p| (p, e.rev))
                    .map_err(|x| err(ErrorKind::System, format!("corrupt {}: {x}", e.key)))
            })
            .collect()
    }

    /// Whether any pools exist (then pools drive this node's L3 blocks).
    pub fn routes(&self) -> &[Ipv4Net] {
        &self.routes
    }

    /// Re-reads this node's blocks and borrowed addresses; true if they changed.
    pub fn refresh(&mut self) -> bool {
        let a = self.alloc();
        let (Ok(blocks), Ok(handles)) = (a.blocks(), a.handles()) else {
            return false;
        };
        let mut routes: BTreeSet<Ipv4Net> = blocks
            .iter()
            .filter(|(b, _)| b.affinity.as_deref() == Some(&self.node))
            .map(|(b, _)| b.cidr)
            .collect();
        for (_, h, _) in &handles {
            if h.node != self.node {
                continue;
            }
            for (ip, cidr) in &h.addrs {
                let affine_here = blocks
                    .iter()
                    .any(|(b, _)| b.cidr == *cidr && b.affinity.as_deref() == Some(&self.node));
                if !affine_here {
                    if let Ok(n) = Ipv4Net::new(*ip, 32) {
                        routes.insert(n);
                    }
                }
            }
        }
        let routes: Vec<Ipv4Net> = routes.into_iter().collect();
        let changed = routes != self.routes;
        self.routes = routes;
        changed
    }

    /// `apply -f`: every object validated (and the resulting pool set checked) before any is
    /// written; the writes then go in one transaction conditioned on the pools read.
    pub fn apply(&mut self, text: &str) -> Result<PoolApplyReply, ApiError> {
        let objs = ippool::parse_documents(text)
            .map_err(|e| err(ErrorKind::InvalidConfig, e.to_string()))?;
        let current = self.pools()?;
        let blocks = self.alloc().blocks().map_err(alloc_err)?;
        let mut next: BTreeMap<String, IpPool> = current
            .iter()
            .map(|(p, _)| (p.name.clone(), p.clone()))
            .collect();
        let mut cmps: Vec<(String, i64)> = current
            .iter()
            .map(|(p, r)| (self.key(&format!("pools/{}", p.name)), *r))
            .collect();
        let mut ops = Vec::new();
        let mut reply = PoolApplyReply::default();
        for o in objs {
            match o {
                Object::IPPool(p) => {
                    let verb = match next.get(&p.name) {
                        None => "created",
                        Some(old) if *old == p => "unchanged",
                        Some(old) => {
                            let has_blocks = blocks.iter().any(|(b, _)| b.pool == p.name);
                            if has_blocks && (old.cidr != p.cidr || old.block_size != p.block_size)
                            {
                                return Err(err(
                                    ErrorKind::InvalidConfig,
                                    format!(
                                        "IPPool {:?}: spec.cidr/spec.blockSize cannot change while the pool has blocks (delete it first)",
                                        p.name
                                    ),
                                ));
                            }
                            "configured"
                        }
                    };
                    reply.applied.push(format!("ippool/{} {verb}", p.name));
                    let k = self.key(&format!("pools/{}", p.name));
                    if !cmps.iter().any(|(c, _)| *c == k) {
                        cmps.push((k.clone(), 0));
                    }
                    ops.push(Op::Put(k, serde_json::to_string(&p).unwrap_or_default()));
                    next.insert(p.name.clone(), p);
                }
                Object::IPAMConfig(c) => {
                    let k = self.key("config");
                    let rev = self.kv.get(&k).map_err(kv_err)?.map_or(0, |e| e.rev);
                    if !cmps.iter().any(|(x, _)| *x == k) {
                        cmps.push((k.clone(), rev));
                    }
                    ops.push(Op::Put(k, serde_json::to_string(&c).unwrap_or_default()));
                    reply.applied.push("ipamconfig/default configured".into());
                }
            }
        }
        let all: Vec<IpPool> = next.into_values().collect();
        ippool::check_pools(&all).map_err(|e| err(ErrorKind::InvalidConfig, e.to_string()))?;
        if !self.kv.txn(&cmps, &ops).map_err(kv_err)? {
            return Err(err(
                ErrorKind::Unavailable,
                "the pools changed while applying; nothing written, apply again",
            ));
        }
        Ok(reply)
    }

    pub fn get(&self) -> Result<PoolGetReply, ApiError> {
        let blocks = self.alloc().blocks().map_err(alloc_err)?;
        let config = self.alloc().ipam_config().map_err(alloc_err)?;
        let pools = self
            .pools()?
            .into_iter()
            .map(|(p, _)| {
                let mine: Vec<_> = blocks.iter().filter(|(b, _)| b.pool == p.name).collect();
                PoolInfo {
                    blocks: mine.len(),
                    in_use: mine.iter().map(|(b, _)| b.allocs.len() as u64).sum(),
                    pool: p,
                }
            })
            .collect();
        Ok(PoolGetReply { pools, config })
    }

    /// Deletes a pool; refused with its holders while addresses are in use, unless `force`.
    pub fn delete(&mut self, name: &str, force: bool) -> Result<PoolDeleteReply, ApiError> {
        let k = self.key(&format!("pools/{name}"));
        let Some(e) = self.kv.get(&k).map_err(kv_err)? else {
            return Err(err(ErrorKind::BadRequest, format!("no IP pool {name:?}")));
        };
        let a = self.alloc();
        let blocks: Vec<_> = a
            .blocks()
            .map_err(alloc_err)?
            .into_iter()
            .filter(|(b, _)| b.pool == name)
            .collect();
        let holders: Vec<String> = blocks
            .iter()
            .flat_map(|(b, _)| {
                b.allocs
                    .iter()
                    .map(|(o, h)| format!("{} ({} on {})", b.ip(*o), h.handle, h.node))
            })
            .collect();
        if !holders.is_empty() && !force {
            return Err(err(
                ErrorKind::PoolInUse,
                format!(
                    "IP pool {name:?} has {} addresses in use: {}; release them or delete with --force",
                    holders.len(),
                    holders.join(", ")
                ),
            ));
        }
        let mut released = Vec::new();
        let handles: BTreeSet<String> = blocks
            .iter()
            .flat_map(|(b, _)| b.allocs.values().map(|h| h.handle.clone()))
            .collect();
        for h in handles {
            released.extend(a.release(&h).map_err(alloc_err)?);
        }
        // Blocks left (empty ones are deleted by release; any others go now), then the pool.
        let mut cmps = vec![(k.clone(), e.rev)];
        let mut ops = vec![Op::Delete(k)];
        for (b, _) in a.blocks().map_err(alloc_err)? {
            if b.pool == name {
                let bk = a.block_key(b.cidr);
                let rev = self.kv.get(&bk).map_err(kv_err)?.map_or(0, |x| x.rev);
                cmps.push((bk.clone(), rev));
                ops.push(Op::Delete(bk));
            }
        }
        if !self.kv.txn(&cmps, &ops).map_err(kv_err)? {
            return Err(err(
                ErrorKind::Unavailable,
                format!("IP pool {name:?} changed while deleting; try again"),
            ));
        }
        self.refresh();
        Ok(PoolDeleteReply { released })
    }

    /// Labels of `node`: config labels (this node only) overlaid with the datastore's.
    pub fn labels(&self, node: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let mut l = if node == self.node {
            self.config_labels.clone()
        } else {
            BTreeMap::new()
        };
        if let Some(e) = self
            .kv
            .get(&self.key(&format!("nodes/{node}")))
            .map_err(kv_err)?
        {
            let stored: BTreeMap<String, String> = serde_json::from_str(&e.value)
                .map_err(|x| err(ErrorKind::System, format!("corrupt {}: {x}", e.key)))?;
            l.extend(stored);
        }
        Ok(l)
    }

    pub fn label_node(
        &mut self,
        node: Option<&str>,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<NodeLabelsReply, ApiError> {
        let node = node.unwrap_or(&self.node).to_string();
        vswitch_config::validate_name(&node)
            .map_err(|m| err(ErrorKind::InvalidConfig, format!("node: {m}")))?;
        for k in set.keys().chain(remove) {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
            {
                return Err(err(
                    ErrorKind::InvalidConfig,
                    format!("label key {k:?}: letters, digits and _ . / - only"),
                ));
            }
        }
        let k = self.key(&format!("nodes/{node}"));
        let cur = self.kv.get(&k).map_err(kv_err)?;
        let mut stored: BTreeMap<String, String> = cur
            .as_ref()
            .and_then(|e| serde_json::from_str(&e.value).ok())
            .unwrap_or_default();
        stored.extend(set.clone());
        for r in remove {
            stored.remove(r);
        }
        let rev = cur.map_or(0, |e| e.rev);
        let v = serde_json::to_string(&stored).unwrap_or_default();
        if !self
            .kv
            .txn(&[(k.clone(), rev)], &[Op::Put(k, v)])
            .map_err(kv_err)?
        {
            return Err(err(
                ErrorKind::Unavailable,
                "labels changed meanwhile; try again",
            ));
        }
        Ok(NodeLabelsReply {
            labels: self.labels(&node)?,
            node,
        })
    }

    pub fn annotate_namespace(
        &mut self,
        ns: &str,
        pools: Option<&[String]>,
    ) -> Result<(), ApiError> {
        vswitch_config::validate_name(ns)
            .map_err(|m| err(ErrorKind::InvalidConfig, format!("namespace: {m}")))?;
        let k = self.key(&format!("namespaces/{ns}"));
        let ops = match pools {
            Some(p) => vec![Op::Put(
                k.clone(),
                serde_json::json!({ "ipv4pools": p }).to_string(),
            )],
            None => vec![Op::Delete(k.clone())],
        };
        let rev = self.kv.get(&k).map_err(kv_err)?.map_or(0, |e| e.rev);
        if !self.kv.txn(&[(k, rev)], &ops).map_err(kv_err)? {
            return Err(err(
                ErrorKind::Unavailable,
                "namespace changed meanwhile; try again",
            ));
        }
        Ok(())
    }

    fn namespace_pools(&self, ns: &str) -> Result<Vec<String>, ApiError> {
        let Some(e) = self
            .kv
            .get(&self.key(&format!("namespaces/{ns}")))
            .map_err(kv_err)?
        else {
            return Ok(Vec::new());
        };
        let v: serde_json::Value = serde_json::from_str(&e.value).unwrap_or_default();
        Ok(v.get("ipv4pools")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default())
    }

    /// The candidate pools for a request, in preference order, restricted to `subnet`.
    fn choose(&self, req: &PoolRequest, subnet: Ipv4Net) -> Result<Vec<IpPool>, ApiError> {
        let all: Vec<IpPool> = self
            .pools()?
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.for_workloads() && subnet.contains(&p.cidr))
            .collect();
        if !req.ip_addrs.is_empty() {
            // A static address may come from any enabled pool.
            return Ok(all.into_iter().filter(|p| !p.disabled).collect());
        }
        let ns_pools = match &req.namespace {
            Some(ns) => self.namespace_pools(ns)?,
            None => Vec::new(),
        };
        let (names, source) = if !req.pod_pools.is_empty() {
            (
                &req.pod_pools,
                "pod annotation cni.projectcalico.org/ipv4pools",
            )
        } else if !ns_pools.is_empty() {
            (&ns_pools, "namespace annotation ipv4pools")
        } else if !req.cni_pools.is_empty() {
            (&req.cni_pools, "ipam.ipv4_pools")
        } else {
            let labels = self.labels(&self.node)?;
            let picked: Vec<IpPool> = all
                .into_iter()
                .filter(|p| !p.disabled && p.selector().matches(&labels))
                .collect();
            if picked.is_empty() {
                return Err(err(
                    ErrorKind::AddressExhausted,
                    format!(
                        "no enabled IP pool inside {subnet} selects node {} (labels {labels:?})",
                        self.node
                    ),
                ));
            }
            return Ok(picked);
        };
        let mut out = Vec::new();
        let mut disabled = Vec::new();
        for n in names {
            let p = all
                .iter()
                .find(|p| p.name == *n || p.cidr.to_string() == *n)
                .ok_or_else(|| {
                    err(
                        ErrorKind::InvalidConfig,
                        format!("{source}: no IP pool {n:?} inside network subnet {subnet}"),
                    )
                })?;
            if p.disabled {
                disabled.push(p.name.clone());
            } else {
                out.push(p.clone());
            }
        }
        if out.is_empty() {
            return Err(err(
                ErrorKind::AddressExhausted,
                format!("{source}: IP pools {disabled:?} are disabled"),
            ));
        }
        Ok(out)
    }

    /// Assigns the address of a CNI attachment (or returns the one it already has).
    pub fn assign(
        &mut self,
        handle: &str,
        req: &PoolRequest,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<Got, ApiError> {
        if let Some(ip) = req.ip_addrs_no_ipam.first() {
            if req.ip_addrs_no_ipam.len() > 1 || !req.ip_addrs.is_empty() {
                return Err(err(
                    ErrorKind::InvalidConfig,
                    "cni.projectcalico.org/ipAddrsNoIpam: one IPv4 address, without ipAddrs",
                ));
            }
            return Ok(Got {
                ip: *ip,
                managed: false,
            });
        }
        if req.ip_addrs.len() > 1 {
            return Err(err(
                ErrorKind::InvalidConfig,
                "cni.projectcalico.org/ipAddrs: one IPv4 address per attachment",
            ));
        }
        let pools = self.choose(req, subnet)?;
        let note = match (&req.namespace, &req.pod) {
            (Some(ns), Some(pod)) => format!("pod {ns}/{pod}"),
            _ => String::new(),
        };
        let ip = req.ip_addrs.first().copied();
        if let Some(ip) = ip {
            if !pools.iter().any(|p| p.cidr.contains(&ip)) {
                return Err(err(
                    ErrorKind::InvalidConfig,
                    format!("cni.projectcalico.org/ipAddrs: {ip} is not inside an enabled IP pool"),
                ));
            }
        }
        let r = alloc::Request {
            node: &self.node,
            handle,
            pools: &pools,
            ip,
            reserved: &[gateway],
            note: &note,
        };
        let got = self.alloc().assign(&r).map_err(alloc_err)?;
        if got.borrowed {
            tracing::info!(ip = %got.ip, block = %got.block, "borrowed an address from another node's block");
        }
        self.refresh();
        Ok(Got {
            ip: got.ip,
            managed: true,
        })
    }

    pub fn has_handle(&self, handle: &str) -> Result<bool, ApiError> {
        Ok(self.alloc().handle(handle).map_err(alloc_err)?.is_some())
    }

    /// Releases a handle (idempotent).
    pub fn release(&mut self, handle: &str) -> Result<Vec<Ipv4Addr>, ApiError> {
        let r = self.alloc().release(handle).map_err(alloc_err)?;
        if !r.is_empty() {
            self.refresh();
        }
        Ok(r)
    }

    /// CNI GC of a domain: releases this node's handles of `domain` not in `keep` (handles).
    pub fn gc(&mut self, domain: &str, keep: &BTreeSet<String>) -> Result<Vec<String>, ApiError> {
        let prefix = format!("{domain}/");
        let stale: Vec<String> = self
            .alloc()
            .handles()
            .map_err(alloc_err)?
            .into_iter()
            .filter(|(k, h, _)| h.node == self.node && k.starts_with(&prefix) && !keep.contains(k))
            .map(|(k, _, _)| k)
            .collect();
        for h in &stale {
            self.release(h)?;
        }
        Ok(stale)
    }

    pub fn show(&self, ip: Option<Ipv4Addr>) -> Result<PoolIpamShowReply, ApiError> {
        let a = self.alloc();
        let blocks = a.blocks().map_err(alloc_err)?;
        let pools = self
            .pools()?
            .into_iter()
            .map(|(p, _)| {
                let reserved = if p.cidr.prefix_len() >= 31 { 0 } else { 2 };
                PoolUsage {
                    total: (1u64 << (32 - p.cidr.prefix_len())) - reserved,
                    in_use: blocks
                        .iter()
                        .filter(|(b, _)| b.pool == p.name)
                        .map(|(b, _)| b.allocs.len() as u64)
                        .sum(),
                    name: p.name,
                    cidr: p.cidr,
                    disabled: p.disabled,
                }
            })
            .collect();
        let infos = blocks
            .iter()
            .map(|(b, _)| BlockInfo {
                cidr: b.cidr,
                pool: b.pool.clone(),
                affinity: b.affinity.clone(),
                total: u64::from(b.size()),
                in_use: b.allocs.len() as u64,
                borrowed: b
                    .allocs
                    .values()
                    .filter(|h| Some(&h.node) != b.affinity.as_ref())
                    .count() as u64,
            })
            .collect();
        let holder = match ip {
            Some(ip) => a.holder_of(ip).map_err(alloc_err)?.map(|(h, b)| IpHolder {
                ip,
                note: a
                    .handle(&h.handle)
                    .ok()
                    .flatten()
                    .map(|(x, _)| x.note)
                    .unwrap_or_default(),
                handle: h.handle,
                node: h.node,
                block: b.cidr,
                affinity: b.affinity,
            }),
            None => None,
        };
        Ok(PoolIpamShowReply {
            pools,
            blocks: infos,
            holder,
        })
    }

    /// Leaked addresses: this node's handles without a live attachment (`live` holds the
    /// handles of this node's ports), and handles of nodes no longer registered in the cluster.
    pub fn check(&self, live: &BTreeSet<String>) -> Result<PoolIpamCheckReply, ApiError> {
        let a = self.alloc();
        let handles = a.handles().map_err(alloc_err)?;
        let members: Option<BTreeSet<String>> = match &self.members {
            Some(p) => Some(
                self.kv
                    .list(p)
                    .map_err(kv_err)?
                    .into_iter()
                    .map(|e| e.key[p.len()..].to_string())
                    .collect(),
            ),
            None => None,
        };
        let mut reply = PoolIpamCheckReply {
            handles: handles.len(),
            addresses: handles.iter().map(|(_, h, _)| h.addrs.len()).sum(),
            problems: a.verify().map_err(alloc_err)?,
            ..Default::default()
        };
        for (k, h, _) in &handles {
            let why = if h.node == self.node {
                (!live.contains(k)).then(|| "no live attachment on its node".to_string())
            } else {
                match &members {
                    Some(m) if !m.contains(&h.node) => {
                        Some(format!("node {} is not registered in the cluster", h.node))
                    }
                    _ => None,
                }
            };
            if let Some(why) = why {
                for (ip, _) in &h.addrs {
                    reply.leaked.push(Leak {
                        ip: *ip,
                        handle: k.clone(),
                        node: h.node.clone(),
                        why: why.clone(),
                    });
                }
            }
        }
        Ok(reply)
    }

    /// Releases the handles holding `ips`, plus every leaked one if `leaked`.
    pub fn release_ips(
        &mut self,
        ips: &[Ipv4Addr],
        leaked: bool,
        live: &BTreeSet<String>,
    ) -> Result<Vec<Ipv4Addr>, ApiError> {
        let mut handles = BTreeSet::new();
        for ip in ips {
            match self.alloc().holder_of(*ip).map_err(alloc_err)? {
                Some((h, _)) => {
                    handles.insert(h.handle);
                }
                None => return Err(err(ErrorKind::BadRequest, format!("{ip} is not allocated"))),
            }
        }
        if leaked {
            for l in self.check(live)?.leaked {
                handles.insert(l.handle);
            }
        }
        let mut out = Vec::new();
        for h in handles {
            out.extend(self.release(&h)?);
        }
        Ok(out)
    }

    pub fn config(&self) -> Result<IpamConfig, ApiError> {
        self.alloc().ipam_config().map_err(alloc_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOLS: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: rack0}
spec: {cidr: 10.244.0.0/24, blockSize: 29, nodeSelector: rack == "0"}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: rack1}
spec: {cidr: 10.244.1.0/24, blockSize: 29, nodeSelector: rack == "1"}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: special}
spec: {cidr: 10.244.9.0/24, nodeSelector: "!all()"}
"#;

    fn ipam(node: &str, rack: &str, kv: std::sync::Arc<EmbeddedKv>) -> PoolIpam {
        struct Shared(std::sync::Arc<EmbeddedKv>);
        impl Kv for Shared {
            fn get(&self, k: &str) -> Result<Option<kv::Entry>, kv::KvError> {
                self.0.get(k)
            }
            fn list(&self, p: &str) -> Result<Vec<kv::Entry>, kv::KvError> {
                self.0.list(p)
            }
            fn txn(&self, c: &[(String, i64)], o: &[Op]) -> Result<bool, kv::KvError> {
                self.0.txn(c, o)
            }
        }
        PoolIpam::with_kv(
            Box::new(Shared(kv)),
            "ipam/".into(),
            None,
            node.into(),
            [("rack".to_string(), rack.to_string())].into(),
        )
    }

    #[test]
    fn pool_choice_priority_and_disable_delete() {
        let kv = std::sync::Arc::new(EmbeddedKv::memory());
        let mut n0 = ipam("n0", "0", kv.clone());
        let mut n1 = ipam("n1", "1", kv);
        let r = n0.apply(POOLS).unwrap();
        assert_eq!(r.applied.len(), 3, "{r:?}");
        let subnet: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let gw: Ipv4Addr = "10.244.0.1".parse().unwrap();
        let mut req = PoolRequest::default();
        // Node selectors.
        let a = n0.assign("d/a/eth0", &req, subnet, gw).unwrap();
        assert!("10.244.0.0/24".parse::<Ipv4Net>().unwrap().contains(&a.ip));
        assert_ne!(a.ip, gw);
        let b = n1.assign("d/b/eth0", &req, subnet, gw).unwrap();
        assert!("10.244.1.0/24".parse::<Ipv4Net>().unwrap().contains(&b.ip));
        assert_eq!(n0.routes().len(), 1);
        // CNI config, namespace, then pod annotation win in that order.
        req.cni_pools = vec!["rack1".into()];
        let c = n0.assign("d/c/eth0", &req, subnet, gw).unwrap();
        assert!(c.ip.octets()[2] == 1, "{c:?}");
        n0.annotate_namespace("ns1", Some(&["special".into()]))
            .unwrap();
        req.namespace = Some("ns1".into());
        let d = n0.assign("d/d/eth0", &req, subnet, gw).unwrap();
        assert_eq!(d.ip.octets()[2], 9);
        req.pod_pools = vec!["10.244.0.0/24".into()];
        let e = n0.assign("d/e/eth0", &req, subnet, gw).unwrap();
        assert_eq!(e.ip.octets()[2], 0);
        // Static address: inside an enabled pool only.
        let st = PoolRequest {
            ip_addrs: vec!["10.244.9.50".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(
            n0.assign("d/s/eth0", &st, subnet, gw)
                .unwrap()
                .ip
                .to_string(),
            "10.244.9.50"
        );
        let bad = PoolRequest {
            ip_addrs: vec!["10.244.50.5".parse().unwrap()],
            ..Default::default()
        };
        let e2 = n0.assign("d/x/eth0", &bad, subnet, gw).unwrap_err();
        assert!(e2.message.contains("not inside an enabled IP pool"), "{e2}");
        // Disable "special": nothing new from it, existing address stays.
        n0.apply(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: special}\n\
             spec: {cidr: 10.244.9.0/24, nodeSelector: \"!all()\", disabled: true}\n",
        )
        .unwrap();
        let mut ns_req = PoolRequest {
            namespace: Some("ns1".into()),
            ..Default::default()
        };
        let e3 = n0.assign("d/y/eth0", &ns_req, subnet, gw).unwrap_err();
        assert!(e3.message.contains("disabled"), "{e3}");
        let e4 = n0.delete("special", false).unwrap_err();
        assert_eq!(e4.kind, ErrorKind::PoolInUse);
        assert!(
            e4.message.contains("d/d/eth0") && e4.message.contains("d/s/eth0"),
            "{e4}"
        );
        n0.release("d/d/eth0").unwrap();
        n0.release("d/s/eth0").unwrap();
        n0.delete("special", false).unwrap();
        ns_req.namespace = None;
        assert!(n0.assign("d/y/eth0", &ns_req, subnet, gw).is_ok());
        // Overlap refused, naming the field.
        let e5 = n0
            .apply("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: big}\nspec: {cidr: 10.244.0.0/16}\n")
            .unwrap_err();
        assert!(
            e5.message.contains("spec.cidr") && e5.message.contains("overlaps"),
            "{e5}"
        );
        // Leak check: handles of this node without a live attachment.
        let live: BTreeSet<String> = ["d/a/eth0".to_string()].into();
        let chk = n0.check(&live).unwrap();
        assert!(chk.problems.is_empty());
        assert!(chk
            .leaked
            .iter()
            .all(|l| l.node == "n0" && l.handle != "d/a/eth0"));
        let rel = n0.release_ips(&[], true, &live).unwrap();
        assert_eq!(rel.len(), chk.leaked.len());
        assert!(n0.check(&live).unwrap().leaked.is_empty());
    }
}
