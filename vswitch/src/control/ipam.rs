//! Built-in IPAM (`ipam.type = "vswitch"`): host-local compatible ranges, static requests, and
//! durable allocations keyed by (domain, container id, interface), each recording the CNI
//! network that holds it: CNI networks sharing a domain share its address space (so no two pods
//! of one L2 segment get one IP), but DEL and GC of one network never release another's.
//!
//! An allocation is committed to the store before the caller creates any interface, so a crash
//! at any point can leave at most an allocation whose container never got its interface; CNI GC
//! (or DEL) releases it. Two containers can never hold the same IP in one domain, and a repeated
//! ADD for the same attachment returns the same addresses.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vswitch_api::{IpamAllocation, PodRef};
use vswitch_config::cni::{IpamPlan, Range};

use super::store::{FileStore, StoreError};

/// Why addresses could not be assigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("requested IP {0} is not inside any configured range")]
    NotInRange(Ipv4Addr),
    #[error("requested IP {ip} is already assigned to {owner}")]
    Taken { ip: Ipv4Addr, owner: String },
    #[error("requested IP {0} is the gateway of its range")]
    Gateway(Ipv4Addr),
    #[error("requested IPs {0} and {1} fall into the same range set")]
    SameRangeSet(Ipv4Addr, Ipv4Addr),
    #[error("no free address left in range set {0}")]
    Exhausted(usize),
    #[error("container {container_id} interface {ifname} already holds addresses of network {network:?} in this domain")]
    OtherNetwork {
        container_id: String,
        ifname: String,
        network: String,
    },
    #[error("attachment already holds {existing:?}, not the requested {requested:?}")]
    Mismatch {
        existing: Vec<Ipv4Addr>,
        requested: Vec<Ipv4Addr>,
    },
    #[error("IPAM store: {0}")]
    Store(String),
}

impl From<StoreError> for IpamError {
    fn from(e: StoreError) -> Self {
        IpamError::Store(e.to_string())
    }
}

/// An assigned address with the range it came from (for prefix length and gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    pub ip: Ipv4Addr,
    pub range: Range,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    container_id: String,
    ifname: String,
    addrs: Vec<Assigned>,
    /// The CNI network name; absent in records written before it was kept (those belong to
    /// whichever network of the domain asks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<PodRef>,
}

impl Record {
    fn held_by(&self, network: &str) -> bool {
        network.is_empty() || self.network.as_deref().is_none_or(|n| n == network)
    }
}

/// Who an allocation is for: the CNI attachment key (network, container id, ifname) and the pod.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// CNI network name; empty from a plugin that does not send it (matches any).
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub pod: Option<&'a PodRef>,
}

/// Chooses addresses: one per range set, requested ones where given, else the next free one
/// after the last handed out (round robin, like host-local, so a released IP is not reused at once).
pub fn choose(
    plan: &IpamPlan,
    used: &BTreeMap<Ipv4Addr, String>,
    requested: &[Ipv4Addr],
    last: &[Option<Ipv4Addr>],
) -> Result<Vec<Assigned>, IpamError> {
    let mut out = Vec::new();
    let mut matched = vec![false; requested.len()];
    for (si, set) in plan.range_sets.iter().enumerate() {
        let mut pick = None;
        for (ri, ip) in requested.iter().enumerate() {
            // The range that holds the IP, else (for a clear error) one whose subnet does.
            let Some(range) = set
                .iter()
                .find(|r| r.contains(*ip))
                .or_else(|| set.iter().find(|r| r.subnet.contains(ip)))
            else {
                continue;
            };
            if let Some((prev, _)) = pick {
                return Err(IpamError::SameRangeSet(prev, *ip));
            }
            if set.iter().any(|r| r.gateway == *ip) {
                return Err(IpamError::Gateway(*ip));
            }
            if !range.contains(*ip) {
                return Err(IpamError::NotInRange(*ip));
            }
            if let Some(owner) = used.get(ip) {
                return Err(IpamError::Taken {
                    ip: *ip,
                    owner: owner.clone(),
                });
            }
            matched[ri] = true;
            pick = Some((*ip, *range));
        }
        let chosen = match pick {
            Some((ip, range)) => Assigned { ip, range },
            None => next_free(set, used, last.get(si).copied().flatten())
                .ok_or(IpamError::Exhausted(si))?,
        };
        out.push(chosen);
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(IpamError::NotInRange(requested[i]));
    }
    Ok(out)
}

fn next_free(
    set: &[Range],
    used: &BTreeMap<Ipv4Addr, String>,
    last: Option<Ipv4Addr>,
) -> Option<Assigned> {
    // All candidates of the set in order; start after `last`, wrap around once.
    let total: u64 = set
        .iter()
        .map(|r| u64::from(u32::from(r.end) - u32::from(r.start)) + 1)
        .sum();
    let nth = |mut n: u64| -> Option<Assigned> {
        for r in set {
            let len = u64::from(u32::from(r.end) - u32::from(r.start)) + 1;
            if n < len {
                return Some(Assigned {
                    ip: Ipv4Addr::from(u32::from(r.start) + n as u32),
                    range: *r,
                });
            }
            n -= len;
        }
        None
    };
    let start = last
        .and_then(|l| {
            let mut base = 0u64;
            for r in set {
                if r.contains(l) {
                    return Some(base + u64::from(u32::from(l) - u32::from(r.start)) + 1);
                }
                base += u64::from(u32::from(r.end) - u32::from(r.start)) + 1;
            }
            None
        })
        .unwrap_or(0);
    (0..total)
        .map(|k| (start + k) % total)
        .filter_map(nth)
        .find(|a| a.ip != a.range.gateway && !used.contains_key(&a.ip))
}

/// The durable allocation table of all domains.
pub struct Ipam {
    store: FileStore,
}

fn alloc_prefix(domain: &str) -> String {
    format!("alloc/{domain}/")
}

fn alloc_key(domain: &str, container_id: &str, ifname: &str) -> String {
    format!("alloc/{domain}/{container_id}/{ifname}")
}

impl Ipam {
    pub fn open(state_dir: &Path) -> Result<Ipam, IpamError> {
        Ok(Ipam {
            store: FileStore::open(&state_dir.join("ipam.json"))?,
        })
    }

    fn records(&self, domain: &str) -> Vec<(String, Record)> {
        let prefix = alloc_prefix(domain);
        self.store
            .scan(&prefix)
            .filter_map(|(k, v)| {
                Some((k.clone(), serde_json::from_value::<Record>(v.clone()).ok()?))
            })
            .collect()
    }

    /// Addresses in use in `domain`, with their owner (`container/ifname`).
    pub fn used(&self, domain: &str) -> BTreeMap<Ipv4Addr, String> {
        self.records(domain)
            .into_iter()
            .flat_map(|(_, r)| {
                let owner = format!("{}/{}", r.container_id, r.ifname);
                r.addrs.into_iter().map(move |a| (a.ip, owner.clone()))
            })
            .collect()
    }

    /// Assigns (and durably records) addresses for an attachment; returns the existing ones if the
    /// attachment already has some (a retried ADD).
    pub fn assign(
        &mut self,
        domain: &str,
        owner: &Owner<'_>,
        plan: &IpamPlan,
        requested: &[Ipv4Addr],
    ) -> Result<Vec<Assigned>, IpamError> {
        let key = alloc_key(domain, owner.container_id, owner.ifname);
        if let Some(existing) = self
            .store
            .get(&key)
            .and_then(|v| serde_json::from_value::<Record>(v.clone()).ok())
        {
            if !existing.held_by(owner.network) {
                return Err(IpamError::OtherNetwork {
                    container_id: owner.container_id.to_string(),
                    ifname: owner.ifname.to_string(),
                    network: existing.network.unwrap_or_default(),
                });
            }
            let have: Vec<Ipv4Addr> = existing.addrs.iter().map(|a| a.ip).collect();
            if requested.is_empty() || requested.iter().all(|r| have.contains(r)) {
                return Ok(existing.addrs);
            }
            return Err(IpamError::Mismatch {
                existing: have,
                requested: requested.to_vec(),
            });
        }
        let used = self.used(domain);
        let last: Vec<Option<Ipv4Addr>> = (0..plan.range_sets.len())
            .map(|i| {
                self.store
                    .get(&format!("last/{domain}/{i}"))
                    .and_then(|v| v.as_str()?.parse().ok())
            })
            .collect();
        let addrs = choose(plan, &used, requested, &last)?;
        let rec = Record {
            container_id: owner.container_id.to_string(),
            ifname: owner.ifname.to_string(),
            addrs: addrs.clone(),
            network: Some(owner.network.to_string()).filter(|n| !n.is_empty()),
            pod: owner.pod.cloned(),
        };
        let mut puts = vec![(
            key,
            serde_json::to_value(&rec).map_err(|e| IpamError::Store(e.to_string()))?,
        )];
        for (i, a) in addrs.iter().enumerate() {
            puts.push((
                format!("last/{domain}/{i}"),
                serde_json::Value::String(a.ip.to_string()),
            ));
        }
        self.store.commit(puts, vec![])?;
        Ok(addrs)
    }

    /// Releases an attachment's addresses; `Ok(false)` if it held none, or they belong to
    /// another network of the domain (DEL is idempotent and scoped to its network).
    pub fn release(
        &mut self,
        domain: &str,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<bool, IpamError> {
        let key = alloc_key(domain, container_id, ifname);
        let held = self
            .store
            .get(&key)
            .and_then(|v| serde_json::from_value::<Record>(v.clone()).ok())
            .is_some_and(|r| r.held_by(network));
        if !held {
            return Ok(false);
        }
        self.store.commit(vec![], vec![key])?;
        Ok(true)
    }

    /// Releases every allocation of CNI network `network` in `domain` not in `valid` (container
    /// id, ifname); returns them. Other networks' allocations are never candidates; records
    /// without a network are, unless `valid` lists them (the caller adds every live port).
    pub fn gc(
        &mut self,
        domain: &str,
        network: &str,
        valid: &HashSet<(String, String)>,
    ) -> Result<Vec<(String, String)>, IpamError> {
        let stale: Vec<(String, Record)> = self
            .records(domain)
            .into_iter()
            .filter(|(_, r)| r.held_by(network))
            .filter(|(_, r)| !valid.contains(&(r.container_id.clone(), r.ifname.clone())))
            .collect();
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        self.store
            .commit(vec![], stale.iter().map(|(k, _)| k.clone()).collect())?;
        Ok(stale
            .into_iter()
            .map(|(_, r)| (r.container_id, r.ifname))
            .collect())
    }

    /// Every allocation of `domain`, with its network and pod, for `vswitchctl ipam show`.
    pub fn allocations(&self, domain: &str) -> Vec<IpamAllocation> {
        self.records(domain)
            .into_iter()
            .map(|(_, r)| IpamAllocation {
                container_id: r.container_id,
                ifname: r.ifname,
                ips: r.addrs.iter().map(|a| a.ip).collect(),
                network: r.network,
                pod: r.pod,
            })
            .collect()
    }

    /// Every attachment of `domain`: (container id, ifname, addresses).
    pub fn attachments(&self, domain: &str) -> Vec<(String, String, Vec<Ipv4Addr>)> {
        self.records(domain)
            .into_iter()
            .map(|(_, r)| {
                (
                    r.container_id,
                    r.ifname,
                    r.addrs.iter().map(|a| a.ip).collect(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vswitch_config::cni::IpamConf;

    fn plan(j: &str) -> IpamPlan {
        serde_json::from_str::<IpamConf>(j).unwrap().plan().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn dynamic_skips_gateway_and_used_and_round_robins() {
        let p = plan(r#"{"type":"vswitch","subnet":"10.0.0.0/29"}"#); // hosts .1-.6, gw .1
        let mut used = BTreeMap::new();
        let a = choose(&p, &used, &[], &[None]).unwrap();
        assert_eq!(a[0].ip, ip("10.0.0.2"));
        used.insert(ip("10.0.0.2"), "x".into());
        let b = choose(&p, &used, &[], &[Some(ip("10.0.0.2"))]).unwrap();
        assert_eq!(b[0].ip, ip("10.0.0.3"));
        // After the last address it wraps to the start.
        let c = choose(&p, &BTreeMap::new(), &[], &[Some(ip("10.0.0.6"))]).unwrap();
        assert_eq!(c[0].ip, ip("10.0.0.2"));
    }

    #[test]
    fn static_requests() {
        let p = plan(
            r#"{"type":"vswitch","subnet":"192.168.1.0/24","rangeStart":"192.168.1.100","rangeEnd":"192.168.1.210"}"#,
        );
        let mut used = BTreeMap::new();
        assert_eq!(
            choose(&p, &used, &[ip("192.168.1.205")], &[None]).unwrap()[0].ip,
            ip("192.168.1.205")
        );
        assert_eq!(
            choose(&p, &used, &[ip("192.168.1.1")], &[None]),
            Err(IpamError::Gateway(ip("192.168.1.1")))
        );
        assert_eq!(
            choose(&p, &used, &[ip("192.168.1.50")], &[None]),
            Err(IpamError::NotInRange(ip("192.168.1.50")))
        );
        assert_eq!(
            choose(&p, &used, &[ip("10.1.1.1")], &[None]),
            Err(IpamError::NotInRange(ip("10.1.1.1")))
        );
        used.insert(ip("192.168.1.205"), "c1/eth0".into());
        assert!(matches!(
            choose(&p, &used, &[ip("192.168.1.205")], &[None]),
            Err(IpamError::Taken { .. })
        ));
    }

    #[test]
    fn static_ip_in_a_later_range_of_the_same_subnet() {
        let p = plan(
            r#"{"type":"vswitch","ranges":[[{"subnet":"192.168.1.0/24","rangeStart":"192.168.1.100","rangeEnd":"192.168.1.139"},
                {"subnet":"192.168.1.0/24","rangeStart":"192.168.1.205","rangeEnd":"192.168.1.205"}]]}"#,
        );
        let used = BTreeMap::new();
        assert_eq!(
            choose(&p, &used, &[ip("192.168.1.205")], &[None]).unwrap()[0].ip,
            ip("192.168.1.205")
        );
        assert_eq!(
            choose(&p, &used, &[ip("192.168.1.150")], &[None]),
            Err(IpamError::NotInRange(ip("192.168.1.150")))
        );
    }

    #[test]
    fn exhaustion() {
        let p = plan(r#"{"type":"vswitch","subnet":"10.0.0.0/30"}"#); // .1 gw, .2 only
        let mut used = BTreeMap::new();
        used.insert(ip("10.0.0.2"), "x".into());
        assert_eq!(
            choose(&p, &used, &[], &[None]),
            Err(IpamError::Exhausted(0))
        );
    }

    #[test]
    fn durable_assign_release_gc() {
        let dir = std::env::temp_dir().join(format!("vswitch-ipam-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = plan(r#"{"type":"vswitch","subnet":"10.0.0.0/24"}"#);
        let mut ipam = Ipam::open(&dir).unwrap();
        let a = ipam.assign("d", &owner("n", "c1"), &p, &[]).unwrap();
        assert_eq!(
            ipam.assign("d", &owner("n", "c1"), &p, &[]).unwrap(),
            a,
            "retried ADD is idempotent"
        );
        let b = ipam.assign("d", &owner("n", "c2"), &p, &[]).unwrap();
        assert_ne!(a[0].ip, b[0].ip);
        // Another domain may reuse the same address space.
        assert_eq!(
            ipam.assign("other", &owner("n", "c1"), &p, &[]).unwrap()[0].ip,
            a[0].ip
        );
        drop(ipam);
        let mut ipam = Ipam::open(&dir).unwrap();
        assert_eq!(ipam.used("d").len(), 2);
        let valid: HashSet<_> = [("c1".to_string(), "eth0".to_string())].into();
        assert_eq!(
            ipam.gc("d", "n", &valid).unwrap(),
            vec![("c2".to_string(), "eth0".to_string())]
        );
        assert!(ipam.release("d", "n", "c1", "eth0").unwrap());
        assert!(!ipam.release("d", "n", "c1", "eth0").unwrap());
        assert!(ipam.used("d").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn owner<'a>(network: &'a str, container_id: &'a str) -> Owner<'a> {
        Owner {
            network,
            container_id,
            ifname: "eth0",
            pod: None,
        }
    }

    #[test]
    fn networks_sharing_a_domain_share_addresses_not_lifecycles() {
        let dir = std::env::temp_dir().join(format!("vswitch-ipam-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = plan(r#"{"type":"vswitch","subnet":"10.0.0.0/24"}"#);
        let mut ipam = Ipam::open(&dir).unwrap();
        let pod = PodRef {
            namespace: "ns".into(),
            name: "web".into(),
        };
        let a = ipam
            .assign(
                "br",
                &Owner {
                    pod: Some(&pod),
                    ..owner("A", "ca")
                },
                &p,
                &[],
            )
            .unwrap();
        let b = ipam.assign("br", &owner("B", "cb"), &p, &[]).unwrap();
        assert_ne!(a[0].ip, b[0].ip, "one domain, one address space");
        // GC for A with an empty valid list: B's allocation stays.
        let none = HashSet::new();
        assert_eq!(
            ipam.gc("br", "A", &none).unwrap(),
            vec![("ca".to_string(), "eth0".to_string())]
        );
        assert_eq!(ipam.used("br").len(), 1);
        // DEL and ADD of B's key through network A touch nothing.
        assert!(!ipam.release("br", "A", "cb", "eth0").unwrap());
        assert!(matches!(
            ipam.assign("br", &owner("A", "cb"), &p, &[]),
            Err(IpamError::OtherNetwork { .. })
        ));
        let shown = ipam.allocations("br");
        assert_eq!(shown[0].network.as_deref(), Some("B"));
        let a = ipam
            .assign(
                "br",
                &Owner {
                    pod: Some(&pod),
                    ..owner("A", "ca")
                },
                &p,
                &[],
            )
            .unwrap();
        let shown = ipam.allocations("br");
        let rec = shown.iter().find(|r| r.ips == vec![a[0].ip]).unwrap();
        assert_eq!(rec.pod.as_ref(), Some(&pod));
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        /// Whatever the order of assigns and releases, no address is ever held twice in a domain
        /// and the gateway is never handed out.
        #[test]
        fn no_duplicates(ops in proptest::collection::vec((any::<bool>(), 0u8..12), 1..60)) {
            let p = plan(r#"{"type":"vswitch","subnet":"10.0.0.0/28"}"#);
            let mut used: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
            let mut owners: BTreeMap<u8, Ipv4Addr> = BTreeMap::new();
            let mut last = None;
            for (add, c) in ops {
                if add && !owners.contains_key(&c) {
                    if let Ok(a) = choose(&p, &used, &[], &[last]) {
                        prop_assert!(!used.contains_key(&a[0].ip));
                        prop_assert_ne!(a[0].ip, ip("10.0.0.1"));
                        used.insert(a[0].ip, c.to_string());
                        owners.insert(c, a[0].ip);
                        last = Some(a[0].ip);
                    }
                } else if let Some(ipv) = owners.remove(&c) {
                    used.remove(&ipv);
                }
            }
        }
    }
}
