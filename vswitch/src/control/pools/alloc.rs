//! Calico's block-affinity allocator on a [`Kv`].
//!
//! A pool is cut into blocks of `blockSize`; a node claims a block (creating its key, which
//! fails if any other node created it first) and hands out addresses from its own blocks first.
//! When it holds `maxBlocksPerHost` blocks or the pool has no unclaimed block left, it borrows a
//! free address from another node's block, unless `strictAffinity`. Every address is recorded
//! twice in one transaction, in its block (offset → handle) and in its handle (handle → IPs), so
//! the two can be checked against each other ([`Allocator::verify`]). A block that becomes empty
//! is deleted, which frees its affinity.
//!
//! Keys, under the store prefix: `pools/<name>`, `config`, `blocks/<a.b.c.d-len>`,
//! `handles/<handle>`, `nodes/<node>` (labels), `namespaces/<ns>` (annotations).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use vswitch_config::ippool::{IpPool, IpamConfig};

use super::kv::{Entry, Kv, KvError, Op};

/// How many times a write is retried after losing a race before giving up.
const MAX_ATTEMPTS: usize = 100;

/// Why an allocation or release failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("corrupt datastore record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("no free address in pools {pools:?}{why}")]
    Exhausted { pools: Vec<String>, why: String },
    #[error("{ip} is not inside an enabled IP pool")]
    NotInPool { ip: Ipv4Addr },
    #[error("{ip} is already assigned to {holder}")]
    Taken { ip: Ipv4Addr, holder: String },
    #[error("{ip} is reserved (network, broadcast or gateway address)")]
    Reserved { ip: Ipv4Addr },
    #[error("{ip} is in a block affine to node {node} and strictAffinity is on")]
    Strict { ip: Ipv4Addr, node: String },
    #[error("gave up after {MAX_ATTEMPTS} conflicting writes")]
    Contention,
}

/// Who holds one address of a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub handle: String,
    pub node: String,
}

/// A block: its pool, the node it is affine to, and its allocations by offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub cidr: Ipv4Net,
    pub pool: String,
    pub affinity: Option<String>,
    #[serde(default)]
    pub allocs: BTreeMap<u32, Holder>,
}

impl Block {
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.cidr.prefix_len())
    }

    pub fn ip(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + offset)
    }

    pub fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        self.cidr
            .contains(&ip)
            .then(|| u32::from(ip) - u32::from(self.cidr.network()))
    }

    /// The first offset that is neither allocated nor reserved.
    fn free_offset(&self, reserved: &dyn Fn(Ipv4Addr) -> bool) -> Option<u32> {
        (0..self.size()).find(|o| !self.allocs.contains_key(o) && !reserved(self.ip(*o)))
    }
}

/// What one handle (one attachment) holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    pub node: String,
    /// Each address with the block it lives in.
    pub addrs: Vec<(Ipv4Addr, Ipv4Net)>,
    /// Free text for `ipam show --ip` (pod namespace/name, network).
    #[serde(default)]
    pub note: String,
}

/// One allocation to make.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub node: &'a str,
    pub handle: &'a str,
    /// Candidate pools in order of preference (already filtered: enabled, selected).
    pub pools: &'a [IpPool],
    /// A specific address instead of any free one.
    pub ip: Option<Ipv4Addr>,
    /// Addresses never handed out (the network's gateway).
    pub reserved: &'a [Ipv4Addr],
    pub note: &'a str,
}

/// The result of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub ip: Ipv4Addr,
    pub block: Ipv4Net,
    /// Taken from a block affine to another node.
    pub borrowed: bool,
}

pub fn block_key_suffix(cidr: Ipv4Net) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix_len())
}

/// The allocator over one store prefix.
pub struct Allocator<'a> {
    pub kv: &'a dyn Kv,
    pub prefix: &'a str,
}

fn decode<T: serde::de::DeserializeOwned>(e: &Entry) -> Result<T, AllocError> {
    serde_json::from_str(&e.value).map_err(|err| AllocError::Corrupt {
        key: e.key.clone(),
        reason: err.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> String {
    // Our own plain data types: serialization cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

impl Allocator<'_> {
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub fn block_key(&self, cidr: Ipv4Net) -> String {
        self.key(&format!("blocks/{}", block_key_suffix(cidr)))
    }

    pub fn handle_key(&self, handle: &str) -> String {
        self.key(&format!("handles/{handle}"))
    }

    pub fn ipam_config(&self) -> Result<IpamConfig, AllocError> {
        match self.kv.get(&self.key("config"))? {
            Some(e) => decode(&e),
            None => Ok(IpamConfig::default()),
        }
    }

    /// Every block with its revision.
    pub fn blocks(&self) -> Result<Vec<(Block, i64)>, AllocError> {
        self.kv
            .list(&self.key("blocks/"))?
            .iter()
            .map(|e| Ok((decode::<Block>(e)?, e.rev)))
            .collect()
    }

    pub fn handles(&self) -> Result<Vec<(String, Handle, i64)>, AllocError> {
        let p = self.key("handles/");
        self.kv
            .list(&p)?
            .iter()
            .map(|e| Ok((e.key[p.len()..].to_string(), decode::<Handle>(e)?, e.rev)))
            .collect()
    }

    pub fn handle(&self, handle: &str) -> Result<Option<(Handle, i64)>, AllocError> {
        match self.kv.get(&self.handle_key(handle))? {
            Some(e) => Ok(Some((decode(&e)?, e.rev))),
            None => Ok(None),
        }
    }

    /// Writes `block` (at `rev`, 0 = new) and the new handle in one transaction.
    fn commit(
        &self,
        block: &Block,
        rev: i64,
        req: &Request<'_>,
        ip: Ipv4Addr,
    ) -> Result<bool, AllocError> {
        let h = Handle {
            node: req.node.to_string(),
            addrs: vec![(ip, block.cidr)],
            note: req.note.to_string(),
        };
        let bk = self.block_key(block.cidr);
        let hk = self.handle_key(req.handle);
        Ok(self.kv.txn(
            &[(bk.clone(), rev), (hk.clone(), 0)],
            &[Op::Put(bk, encode(block)), Op::Put(hk, encode(&h))],
        )?)
    }

    /// Assigns one address to `req.handle`; a handle that already holds addresses gets them
    /// back (a retried CNI ADD).
    pub fn assign(&self, req: &Request<'_>) -> Result<Assigned, AllocError> {
        let pool_reserved = |ip: Ipv4Addr| {
            req.reserved.contains(&ip)
                || req
                    .pools
                    .iter()
                    .any(|p| p.cidr.network() == ip || p.cidr.broadcast() == ip)
        };
        for _ in 0..MAX_ATTEMPTS {
            if let Some((h, _)) = self.handle(req.handle)? {
                if let Some((ip, block)) = h.addrs.first() {
                    return Ok(Assigned {
                        ip: *ip,
                        block: *block,
                        borrowed: false,
                    });
                }
            }
            let done = match req.ip {
                Some(ip) => self.try_static(req, ip, &pool_reserved)?,
                None => self.try_auto(req, &pool_reserved)?,
            };
            if let Some(a) = done {
                return Ok(a);
            }
            // Lost a race: read again.
        }
        Err(AllocError::Contention)
    }

    /// One attempt at a specific address; `None` after losing a race.
    fn try_static(
        &self,
        req: &Request<'_>,
        ip: Ipv4Addr,
        reserved: &dyn Fn(Ipv4Addr) -> bool,
    ) -> Result<Option<Assigned>, AllocError> {
        let Some(pool) = req.pools.iter().find(|p| p.cidr.contains(&ip)) else {
            return Err(AllocError::NotInPool { ip });
        };
        if reserved(ip) {
            return Err(AllocError::Reserved { ip });
        }
        let cidr = pool.block_of(ip).ok_or(AllocError::NotInPool { ip })?;
        let cfg = self.ipam_config()?;
        let (mut block, rev) = match self.kv.get(&self.block_key(cidr))? {
            Some(e) => (decode::<Block>(&e)?, e.rev),
            None => (
                Block {
                    cidr,
                    pool: pool.name.clone(),
                    affinity: Some(req.node.to_string()),
                    allocs: BTreeMap::new(),
                },
                0,
            ),
        };
        let off = block.offset(ip).ok_or(AllocError::NotInPool { ip })?;
        if let Some(h) = block.allocs.get(&off) {
            return Err(AllocError::Taken {
                ip,
                holder: h.handle.clone(),
            });
        }
        let borrowed = block.affinity.as_deref() != Some(req.node);
        if borrowed && cfg.strict_affinity {
            return Err(AllocError::Strict {
                ip,
                node: block.affinity.clone().unwrap_or_default(),
            });
        }
        block.allocs.insert(
            off,
            Holder {
                handle: req.handle.to_string(),
                node: req.node.to_string(),
            },
        );
        Ok(self.commit(&block, rev, req, ip)?.then_some(Assigned {
            ip,
            block: cidr,
            borrowed,
        }))
    }

    /// One attempt at any free address: own blocks, then a new block, then borrowing.
    fn try_auto(
        &self,
        req: &Request<'_>,
        reserved: &dyn Fn(Ipv4Addr) -> bool,
    ) -> Result<Option<Assigned>, AllocError> {
        let cfg = self.ipam_config()?;
        let blocks = self.blocks()?;
        let in_pools = |b: &Block| req.pools.iter().any(|p| p.name == b.pool);
        let mine = |b: &Block| b.affinity.as_deref() == Some(req.node);
        // 1. Own blocks, in pool order.
        for p in req.pools {
            for (b, rev) in blocks.iter().filter(|(b, _)| b.pool == p.name && mine(b)) {
                if let Some(off) = b.free_offset(reserved) {
                    return self.take(req, b.clone(), *rev, off, false);
                }
            }
        }
        // 2. Claim a new block, unless this node holds its maximum.
        let held = blocks.iter().filter(|(b, _)| mine(b)).count() as u64;
        let may_claim = cfg.max_blocks_per_host == 0 || held < u64::from(cfg.max_blocks_per_host);
        let existing: BTreeSet<Ipv4Net> = blocks.iter().map(|(b, _)| b.cidr).collect();
        let mut why;
        if may_claim {
            for p in req.pools {
                let n = p.block_count();
                // Start where this node's name hashes to, so nodes racing for blocks mostly
                // try different ones first.
                let start = name_hash(req.node) % n;
                for k in 0..n {
                    let Some(cidr) = p.block((start + k) % n) else {
                        continue;
                    };
                    if existing.contains(&cidr) {
                        continue;
                    }
                    let b = Block {
                        cidr,
                        pool: p.name.clone(),
                        affinity: Some(req.node.to_string()),
                        allocs: BTreeMap::new(),
                    };
                    let Some(off) = b.free_offset(reserved) else {
                        continue;
                    };
                    tracing::debug!(node = req.node, block = %cidr, pool = %p.name, "claiming block");
                    return self.take(req, b, 0, off, false);
                }
            }
            why = String::from(": every block is claimed");
        } else {
            why = format!(
                ": node {} holds maxBlocksPerHost={} blocks",
                req.node, cfg.max_blocks_per_host
            );
        }
        // 3. Borrow from another node's block.
        if cfg.strict_affinity {
            why.push_str(" and strictAffinity forbids borrowing");
        } else {
            for (b, rev) in blocks.iter().filter(|(b, _)| in_pools(b) && !mine(b)) {
                if let Some(off) = b.free_offset(reserved) {
                    tracing::debug!(node = req.node, block = %b.cidr, owner = ?b.affinity, "borrowing");
                    return self.take(req, b.clone(), *rev, off, true);
                }
            }
        }
        Err(AllocError::Exhausted {
            pools: req.pools.iter().map(|p| p.name.clone()).collect(),
            why,
        })
    }

    fn take(
        &self,
        req: &Request<'_>,
        mut b: Block,
        rev: i64,
        off: u32,
        borrowed: bool,
    ) -> Result<Option<Assigned>, AllocError> {
        let ip = b.ip(off);
        b.allocs.insert(
            off,
            Holder {
                handle: req.handle.to_string(),
                node: req.node.to_string(),
            },
        );
        Ok(self.commit(&b, rev, req, ip)?.then_some(Assigned {
            ip,
            block: b.cidr,
            borrowed,
        }))
    }

    /// Releases everything `handle` holds; blocks left empty are deleted (their affinity is
    /// freed). Returns the released addresses (none if the handle did not exist).
    pub fn release(&self, handle: &str) -> Result<Vec<Ipv4Addr>, AllocError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((h, hrev)) = self.handle(handle)? else {
                return Ok(Vec::new());
            };
            let hk = self.handle_key(handle);
            let mut cmps = vec![(hk.clone(), hrev)];
            let mut ops = vec![Op::Delete(hk)];
            let mut by_block: BTreeMap<Ipv4Net, Vec<Ipv4Addr>> = BTreeMap::new();
            for (ip, b) in &h.addrs {
                by_block.entry(*b).or_default().push(*ip);
            }
            for (cidr, ips) in &by_block {
                let bk = self.block_key(*cidr);
                let Some(e) = self.kv.get(&bk)? else {
                    continue; // already gone (forced pool delete)
                };
                let mut b: Block = decode(&e)?;
                for ip in ips {
                    if let Some(off) = b.offset(*ip) {
                        if b.allocs.get(&off).is_some_and(|x| x.handle == handle) {
                            b.allocs.remove(&off);
                        }
                    }
                }
                cmps.push((bk.clone(), e.rev));
                ops.push(if b.allocs.is_empty() {
                    Op::Delete(bk)
                } else {
                    Op::Put(bk, encode(&b))
                });
            }
            if self.kv.txn(&cmps, &ops)? {
                return Ok(h.addrs.iter().map(|(ip, _)| *ip).collect());
            }
        }
        Err(AllocError::Contention)
    }

    /// Who holds `ip`: the handle and the block.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Result<Option<(Holder, Block)>, AllocError> {
        for (b, _) in self.blocks()? {
            if let Some(off) = b.offset(ip) {
                return Ok(b.allocs.get(&off).cloned().map(|h| (h, b)));
            }
        }
        Ok(None)
    }

    /// Inconsistencies between blocks and handles (empty when the store is sound).
    pub fn verify(&self) -> Result<Vec<String>, AllocError> {
        let blocks = self.blocks()?;
        let handles = self.handles()?;
        let mut problems = Vec::new();
        let mut seen: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        let hmap: BTreeMap<&str, &Handle> =
            handles.iter().map(|(k, h, _)| (k.as_str(), h)).collect();
        for (b, _) in &blocks {
            for (off, holder) in &b.allocs {
                let ip = b.ip(*off);
                if let Some(prev) = seen.insert(ip, holder.handle.clone()) {
                    problems.push(format!("{ip} held twice: {prev} and {}", holder.handle));
                }
                match hmap.get(holder.handle.as_str()) {
                    Some(h) if h.addrs.iter().any(|(a, c)| *a == ip && *c == b.cidr) => {}
                    _ => problems.push(format!(
                        "{ip} in block {} names handle {} which does not hold it",
                        b.cidr, holder.handle
                    )),
                }
            }
        }
        for (k, h, _) in &handles {
            for (ip, cidr) in &h.addrs {
                let ok = blocks.iter().any(|(b, _)| {
                    b.cidr == *cidr
                        && b.offset(*ip)
                            .and_then(|o| b.allocs.get(&o))
                            .is_some_and(|x| x.handle == *k)
                });
                if !ok {
                    problems.push(format!(
                        "handle {k} holds {ip} but block {cidr} does not say so"
                    ));
                }
            }
        }
        Ok(problems)
    }
}

/// FNV-1a: a stable, cheap spread of node names over block indexes.
fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::super::kv::EmbeddedKv;
    use super::*;
    use vswitch_config::ippool::EncapMode;

    fn pool(name: &str, cidr: &str, bs: u8) -> IpPool {
        IpPool {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            block_size: bs,
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
            nat_outgoing: false,
            node_selector: String::new(),
            disabled: false,
            allowed_uses: vec!["Workload".into()],
        }
    }

    fn req<'a>(node: &'a str, handle: &'a str, pools: &'a [IpPool]) -> Request<'a> {
        Request {
            node,
            handle,
            pools,
            ip: None,
            reserved: &[],
            note: "",
        }
    }

    fn set_cfg(kv: &dyn Kv, strict: bool, max: u32) {
        let c = IpamConfig {
            strict_affinity: strict,
            max_blocks_per_host: max,
        };
        let cur = kv.get("t/config").unwrap().map_or(0, |e| e.rev);
        assert!(kv
            .txn(
                &[("t/config".into(), cur)],
                &[Op::Put("t/config".into(), encode(&c))]
            )
            .unwrap());
    }

    #[test]
    fn block_math() {
        let b = Block {
            cidr: "10.0.0.8/29".parse().unwrap(),
            pool: "p".into(),
            affinity: None,
            allocs: BTreeMap::new(),
        };
        assert_eq!(b.size(), 8);
        assert_eq!(b.ip(3), "10.0.0.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b.offset("10.0.0.15".parse().unwrap()), Some(7));
        assert_eq!(b.offset("10.0.0.16".parse().unwrap()), None);
        assert_eq!(
            block_key_suffix("10.0.0.8/29".parse().unwrap()),
            "10.0.0.8-29"
        );
    }

    #[test]
    fn own_block_first_then_claim_then_borrow_unless_strict() {
        let kv = EmbeddedKv::memory();
        let a = Allocator {
            kv: &kv,
            prefix: "t/",
        };
        // A /28 pool of two /29 blocks; network and broadcast reserved: 14 usable.
        let pools = [pool("p", "10.0.0.0/28", 29)];
        set_cfg(&kv, false, 1);
        let mut n1 = Vec::new();
        for i in 0..7 {
            let h = format!("n1-{i}");
            let r = a.assign(&req("n1", &h, &pools)).unwrap();
            assert!(!r.borrowed);
            n1.push(r);
        }
        // The first block n1 claimed is full (7 of 8, one reserved): with max 1 block, the
        // next address must be borrowed — but n2 has no block yet, so n2 claims first.
        let r2 = a.assign(&req("n2", "n2-0", &pools)).unwrap();
        assert!(!r2.borrowed);
        assert_ne!(r2.block, n1[0].block);
        let b = a.assign(&req("n1", "n1-7", &pools)).unwrap();
        assert!(b.borrowed, "{b:?}");
        assert_eq!(b.block, r2.block);
        // Retried ADD: same address.
        assert_eq!(a.assign(&req("n1", "n1-7", &pools)).unwrap().ip, b.ip);
        set_cfg(&kv, true, 1);
        let e = a.assign(&req("n1", "n1-8", &pools)).unwrap_err();
        assert!(
            matches!(e, AllocError::Exhausted { ref why, .. } if why.contains("strictAffinity")),
            "{e}"
        );
        assert!(a.verify().unwrap().is_empty());
        // Releasing everything frees both blocks.
        for i in 0..8 {
            assert_eq!(a.release(&format!("n1-{i}")).unwrap().len(), 1);
        }
        assert_eq!(a.release("n1-0").unwrap(), Vec::<Ipv4Addr>::new());
        a.release("n2-0").unwrap();
        assert!(a.blocks().unwrap().is_empty());
    }

    #[test]
    fn static_ip_in_pool_only_and_not_twice() {
        let kv = EmbeddedKv::memory();
        let a = Allocator {
            kv: &kv,
            prefix: "t/",
        };
        let pools = [pool("p", "10.1.0.0/24", 26)];
        let ip: Ipv4Addr = "10.1.0.77".parse().unwrap();
        let mut r = req("n1", "h1", &pools);
        r.ip = Some(ip);
        assert_eq!(a.assign(&r).unwrap().ip, ip);
        r.handle = "h2";
        assert!(matches!(a.assign(&r), Err(AllocError::Taken { .. })));
        r.ip = Some("10.2.0.1".parse().unwrap());
        assert!(matches!(a.assign(&r), Err(AllocError::NotInPool { .. })));
        r.ip = Some("10.1.0.0".parse().unwrap());
        assert!(matches!(a.assign(&r), Err(AllocError::Reserved { .. })));
        // The block was claimed for n1 by the static assignment.
        let blocks = a.blocks().unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].0.affinity.as_deref(), Some("n1"));
    }

    #[test]
    fn concurrent_nodes_never_share_an_address() {
        let kv = std::sync::Arc::new(EmbeddedKv::memory());
        let pools = std::sync::Arc::new(vec![pool("p", "10.2.0.0/22", 28)]);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let kv = kv.clone();
                let pools = pools.clone();
                std::thread::spawn(move || {
                    let a = Allocator {
                        kv: &*kv,
                        prefix: "t/",
                    };
                    let node = format!("n{t}");
                    (0..200)
                        .map(|i| {
                            let h = format!("{node}-{i}");
                            a.assign(&req(&node, &h, &pools)).unwrap().ip
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = BTreeSet::new();
        for t in threads {
            for ip in t.join().unwrap() {
                assert!(all.insert(ip), "{ip} handed out twice");
            }
        }
        assert_eq!(all.len(), 800);
        let a = Allocator {
            kv: &*kv,
            prefix: "t/",
        };
        assert!(a.verify().unwrap().is_empty());
        // Every allocation by an affine node, except borrowed ones (none: plenty of blocks).
        for (b, _) in a.blocks().unwrap() {
            for h in b.allocs.values() {
                assert_eq!(Some(&h.node), b.affinity.as_ref(), "block {}", b.cidr);
            }
        }
    }

    proptest::proptest! {
        /// Any interleaving of assigns and releases on two nodes: no address twice, and the
        /// store stays consistent.
        #[test]
        fn random_assign_release_stays_consistent(ops in proptest::collection::vec((0u8..2, 0u8..20, proptest::bool::ANY), 1..80), strict in proptest::bool::ANY) {
            let kv = EmbeddedKv::memory();
            let a = Allocator { kv: &kv, prefix: "t/" };
            set_cfg(&kv, strict, 2);
            let pools = [pool("p", "10.3.0.0/27", 29)];
            let mut held: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
            for (node, h, release) in ops {
                let node = format!("n{node}");
                let handle = format!("{node}-{h}");
                if release {
                    a.release(&handle).unwrap();
                    held.remove(&handle);
                } else if let Ok(r) = a.assign(&req(&node, &handle, &pools)) {
                    if let Some(prev) = held.get(&handle) {
                        proptest::prop_assert_eq!(*prev, r.ip);
                    }
                    proptest::prop_assert!(!strict || !r.borrowed);
                    held.insert(handle, r.ip);
                }
                let ips: BTreeSet<_> = held.values().collect();
                proptest::prop_assert_eq!(ips.len(), held.len());
                proptest::prop_assert!(a.verify().unwrap().is_empty());
            }
        }
    }
}
