//! Calico's IPAM objects in Calico's own YAML: `IPPool` and `IPAMConfig(uration)`, under
//! `apiVersion: projectcalico.org/v3` or `crd.projectcalico.org/v1`.
//!
//! [`parse_documents`] reads a multi-document file (`---` separated, as `calicoctl apply -f`
//! takes) into validated objects; every error names the object and the field. Pool sets are
//! checked together by [`check_pools`] (no two pools overlap).

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::selector::Selector;
use crate::ConfigError;

pub const API_V3: &str = "projectcalico.org/v3";
pub const API_CRD_V1: &str = "crd.projectcalico.org/v1";
pub const DEFAULT_BLOCK_SIZE: u8 = 26;
pub const MIN_BLOCK_SIZE: u8 = 20;
pub const MAX_BLOCK_SIZE: u8 = 32;

/// `ipipMode` / `vxlanMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum EncapMode {
    Always,
    CrossSubnet,
    #[default]
    Never,
}

/// A validated IP pool (IPv4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpPool {
    pub name: String,
    pub cidr: Ipv4Net,
    pub block_size: u8,
    pub ipip_mode: EncapMode,
    pub vxlan_mode: EncapMode,
    /// Stored and shown; vswitch does not masquerade pod traffic (see README).
    pub nat_outgoing: bool,
    /// Calico selector text; empty means `all()`.
    pub node_selector: String,
    pub disabled: bool,
    pub allowed_uses: Vec<String>,
}

/// Cluster-wide IPAM settings (Calico's `IPAMConfig`, name `default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    /// A node never borrows addresses from another node's block.
    pub strict_affinity: bool,
    /// 0 = unlimited.
    pub max_blocks_per_host: u32,
}

/// One object of an applied file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Object {
    IPPool(IpPool),
    IPAMConfig(IpamConfig),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct RawMeta {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPoolSpec {
    cidr: Option<String>,
    block_size: Option<i64>,
    ipip_mode: Option<EncapMode>,
    vxlan_mode: Option<EncapMode>,
    nat_outgoing: Option<bool>,
    node_selector: Option<String>,
    disabled: Option<bool>,
    allowed_uses: Option<Vec<String>>,
    /// Deprecated crd.projectcalico.org/v1 spellings.
    ipip: Option<RawIpip>,
    #[serde(rename = "nat-outgoing")]
    nat_outgoing_old: Option<bool>,
    /// Accepted and ignored (Calico's BGP export switch).
    disable_bgp_export: Option<bool>,
}

#[derive(Deserialize)]
struct RawIpip {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawIpamSpec {
    strict_affinity: Option<bool>,
    max_blocks_per_host: Option<i64>,
    auto_allocate_blocks: Option<bool>,
}

fn inv(obj: &str, field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(format!("{obj}: {field}"), reason)
}

/// Why a serde error happened, with the field serde names (unknown field / wrong type).
fn spec_err(obj: &str, e: serde_json::Error) -> ConfigError {
    inv(obj, "spec", e.to_string())
}

/// Parses every document of `text` (YAML or JSON; empty documents are skipped).
pub fn parse_documents(text: &str) -> Result<Vec<Object>, ConfigError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let where_ = format!("document {}", i + 1);
        let v = serde_norway::Value::deserialize(doc)
            .map_err(|e| ConfigError::invalid(&where_, format!("not valid YAML: {e}")))?;
        if v.is_null() {
            continue;
        }
        let raw: RawDoc = serde_norway::from_value(v)
            .map_err(|e| ConfigError::invalid(&where_, e.to_string()))?;
        out.push(parse_object(&where_, raw)?);
    }
    Ok(out)
}

fn parse_object(where_: &str, raw: RawDoc) -> Result<Object, ConfigError> {
    match raw.api_version.as_deref() {
        Some(API_V3) | Some(API_CRD_V1) => {}
        Some(other) => {
            return Err(inv(
                where_,
                "apiVersion",
                format!("{other:?} is not {API_V3:?} or {API_CRD_V1:?}"),
            ))
        }
        None => return Err(inv(where_, "apiVersion", "missing")),
    }
    let name = raw
        .metadata
        .name
        .ok_or_else(|| inv(where_, "metadata.name", "missing"))?;
    crate::validate_name(&name).map_err(|r| inv(where_, "metadata.name", r))?;
    let spec = if raw.spec.is_null() {
        serde_json::json!({})
    } else {
        raw.spec
    };
    match raw.kind.as_deref() {
        Some("IPPool") => {
            let obj = format!("IPPool {name:?}");
            let s: RawPoolSpec = serde_json::from_value(spec).map_err(|e| spec_err(&obj, e))?;
            Ok(Object::IPPool(pool_from_raw(&obj, name, s)?))
        }
        Some("IPAMConfig") | Some("IPAMConfiguration") => {
            let obj = format!("IPAMConfig {name:?}");
            if name != "default" {
                return Err(inv(&obj, "metadata.name", "must be \"default\""));
            }
            let s: RawIpamSpec = serde_json::from_value(spec).map_err(|e| spec_err(&obj, e))?;
            let _ = s.auto_allocate_blocks;
            let max = s.max_blocks_per_host.unwrap_or(0);
            let max = u32::try_from(max).map_err(|_| {
                inv(
                    &obj,
                    "spec.maxBlocksPerHost",
                    format!("{max} is not 0 (unlimited) or a positive count"),
                )
            })?;
            Ok(Object::IPAMConfig(IpamConfig {
                strict_affinity: s.strict_affinity.unwrap_or(false),
                max_blocks_per_host: max,
            }))
        }
        Some(k) => Err(inv(
            where_,
            "kind",
            format!("{k:?} is not IPPool or IPAMConfig"),
        )),
        None => Err(inv(where_, "kind", "missing")),
    }
}

fn pool_from_raw(obj: &str, name: String, s: RawPoolSpec) -> Result<IpPool, ConfigError> {
    let cidr_s = s.cidr.ok_or_else(|| inv(obj, "spec.cidr", "missing"))?;
    if cidr_s.contains(':') {
        return Err(inv(
            obj,
            "spec.cidr",
            format!("{cidr_s}: IPv6 pools are not supported"),
        ));
    }
    let cidr: Ipv4Net = cidr_s
        .parse()
        .map_err(|_| inv(obj, "spec.cidr", format!("{cidr_s:?} is not an IPv4 CIDR")))?;
    if cidr.trunc() != cidr {
        return Err(inv(
            obj,
            "spec.cidr",
            format!("{cidr} has host bits set (did you mean {}?)", cidr.trunc()),
        ));
    }
    let bs = s.block_size.unwrap_or(i64::from(DEFAULT_BLOCK_SIZE));
    if !(i64::from(MIN_BLOCK_SIZE)..=i64::from(MAX_BLOCK_SIZE)).contains(&bs) {
        return Err(inv(
            obj,
            "spec.blockSize",
            format!("{bs} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"),
        ));
    }
    let block_size = bs as u8;
    if block_size < cidr.prefix_len() {
        return Err(inv(
            obj,
            "spec.blockSize",
            format!(
                "/{block_size} blocks are larger than the pool {cidr}: at least {} needed",
                cidr.prefix_len()
            ),
        ));
    }
    let mut ipip_mode = s.ipip_mode.unwrap_or_default();
    if let Some(old) = s.ipip {
        if old.enabled && s.ipip_mode.is_none() {
            ipip_mode = match old.mode.as_deref() {
                Some("cross-subnet") => EncapMode::CrossSubnet,
                _ => EncapMode::Always,
            };
        }
    }
    let vxlan_mode = s.vxlan_mode.unwrap_or_default();
    if ipip_mode != EncapMode::Never && vxlan_mode != EncapMode::Never {
        return Err(inv(
            obj,
            "spec.ipipMode",
            format!("ipipMode {ipip_mode:?} and vxlanMode {vxlan_mode:?}: at most one may be other than Never"),
        ));
    }
    let node_selector = s.node_selector.unwrap_or_default();
    Selector::parse(&node_selector)
        .map_err(|e| inv(obj, "spec.nodeSelector", format!("{node_selector:?}: {e}")))?;
    let allowed_uses = s
        .allowed_uses
        .unwrap_or_else(|| vec!["Workload".into(), "Tunnel".into()]);
    for (i, u) in allowed_uses.iter().enumerate() {
        if u != "Workload" && u != "Tunnel" {
            return Err(inv(
                obj,
                &format!("spec.allowedUses[{i}]"),
                format!("{u:?} is not Workload or Tunnel"),
            ));
        }
    }
    let _ = s.disable_bgp_export;
    Ok(IpPool {
        name,
        cidr,
        block_size,
        ipip_mode,
        vxlan_mode,
        nat_outgoing: s.nat_outgoing.or(s.nat_outgoing_old).unwrap_or(false),
        node_selector,
        disabled: s.disabled.unwrap_or(false),
        allowed_uses,
    })
}

impl IpPool {
    /// The parsed node selector (validated when the pool was built).
    pub fn selector(&self) -> Selector {
        Selector::parse(&self.node_selector).unwrap_or(Selector::All)
    }

    /// Whether workloads may take addresses from it.
    pub fn for_workloads(&self) -> bool {
        self.allowed_uses.iter().any(|u| u == "Workload")
    }

    /// Number of blocks the pool is cut into.
    pub fn block_count(&self) -> u64 {
        1u64 << (self.block_size - self.cidr.prefix_len())
    }

    /// The `i`-th block (0-based).
    pub fn block(&self, i: u64) -> Option<Ipv4Net> {
        if i >= self.block_count() {
            return None;
        }
        let size = 1u64 << (32 - self.block_size);
        let base = u64::from(u32::from(self.cidr.network())) + i * size;
        Ipv4Net::new(std::net::Ipv4Addr::from(base as u32), self.block_size).ok()
    }

    /// The block that holds `ip`, if the pool does.
    pub fn block_of(&self, ip: std::net::Ipv4Addr) -> Option<Ipv4Net> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        Ipv4Net::new(ip, self.block_size).ok().map(|n| n.trunc())
    }

    /// Calico's YAML form (projectcalico.org/v3), for `get -o yaml|json`.
    pub fn to_calico(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": API_V3,
            "kind": "IPPool",
            "metadata": {"name": self.name},
            "spec": {
                "cidr": self.cidr.to_string(),
                "blockSize": self.block_size,
                "ipipMode": self.ipip_mode,
                "vxlanMode": self.vxlan_mode,
                "natOutgoing": self.nat_outgoing,
                "nodeSelector": if self.node_selector.is_empty() { "all()" } else { &self.node_selector },
                "disabled": self.disabled,
                "allowedUses": self.allowed_uses,
            }
        })
    }
}

/// Checks a whole pool set: no two pools (by different names) overlap.
pub fn check_pools(pools: &[IpPool]) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<&str, &IpPool> = BTreeMap::new();
    for p in pools {
        for q in seen.values() {
            if q.name != p.name && (q.cidr.contains(&p.cidr) || p.cidr.contains(&q.cidr)) {
                return Err(inv(
                    &format!("IPPool {:?}", p.name),
                    "spec.cidr",
                    format!("{} overlaps IPPool {:?} ({})", p.cidr, q.name, q.cidr),
                ));
            }
        }
        seen.insert(&p.name, p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack0
spec:
  cidr: 10.244.0.0/24
  blockSize: 29
  ipipMode: CrossSubnet
  natOutgoing: true
  nodeSelector: rack == "0"
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: legacy
spec:
  cidr: 10.245.0.0/16
  ipip:
    enabled: true
    mode: cross-subnet
  nat-outgoing: true
  disabled: true
---
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata:
  name: default
spec:
  strictAffinity: true
  maxBlocksPerHost: 4
"#;

    #[test]
    fn parses_both_api_versions_and_ipam_config() {
        let objs = parse_documents(TWO).unwrap();
        assert_eq!(objs.len(), 3);
        let Object::IPPool(p) = &objs[0] else {
            panic!()
        };
        assert_eq!(p.cidr.to_string(), "10.244.0.0/24");
        assert_eq!(p.block_size, 29);
        assert_eq!(p.ipip_mode, EncapMode::CrossSubnet);
        assert!(p.nat_outgoing && !p.disabled);
        assert_eq!(p.block_count(), 32);
        assert_eq!(p.block(1).unwrap().to_string(), "10.244.0.8/29");
        assert_eq!(p.block(32), None);
        assert_eq!(
            p.block_of("10.244.0.13".parse().unwrap())
                .unwrap()
                .to_string(),
            "10.244.0.8/29"
        );
        let Object::IPPool(l) = &objs[1] else {
            panic!()
        };
        assert_eq!(l.block_size, 26);
        assert_eq!(l.ipip_mode, EncapMode::CrossSubnet);
        assert!(l.nat_outgoing && l.disabled);
        assert_eq!(
            objs[2],
            Object::IPAMConfig(IpamConfig {
                strict_affinity: true,
                max_blocks_per_host: 4
            })
        );
    }

    fn err_of(spec: &str) -> String {
        let doc = format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n{spec}"
        );
        parse_documents(&doc).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err_of("  cidr: 10.0.0.0/24\n  blockSize: 33\n");
        assert!(e.contains("spec.blockSize") && e.contains("33"), "{e}");
        let e = err_of("  cidr: 10.0.0.0/24\n  blockSize: 19\n");
        assert!(e.contains("spec.blockSize"), "{e}");
        let e = err_of("  cidr: 10.0.0.0/28\n  blockSize: 26\n");
        assert!(e.contains("spec.blockSize") && e.contains("larger"), "{e}");
        let e = err_of("  cidr: 10.0.0.0/24\n  ipipMode: Always\n  vxlanMode: CrossSubnet\n");
        assert!(
            e.contains("spec.ipipMode") && e.contains("vxlanMode"),
            "{e}"
        );
        let e = err_of("  cidr: 10.0.0.0/24\n  nodeSelector: rack == \n");
        assert!(
            e.contains("spec.nodeSelector") && e.contains("position 7"),
            "{e}"
        );
        let e = err_of("  cidr: 10.0.0.1/24\n");
        assert!(e.contains("spec.cidr") && e.contains("host bits"), "{e}");
        let e = err_of("  cidr: fd00::/64\n");
        assert!(e.contains("spec.cidr") && e.contains("IPv6"), "{e}");
        let e = err_of("  cidr: 10.0.0.0/24\n  ipipMode: Sometimes\n");
        assert!(e.contains("spec"), "{e}");
        let e = err_of("  cidr: 10.0.0.0/24\n  allowedUses: [LoadBalancer]\n");
        assert!(e.contains("spec.allowedUses[0]"), "{e}");
        let e = err_of("  blockSize: 26\n");
        assert!(e.contains("spec.cidr") && e.contains("missing"), "{e}");
    }

    #[test]
    fn overlapping_pools_are_refused() {
        let mk = |name: &str, cidr: &str| IpPool {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            block_size: 26,
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
            nat_outgoing: false,
            node_selector: String::new(),
            disabled: false,
            allowed_uses: vec!["Workload".into()],
        };
        assert!(check_pools(&[mk("a", "10.0.0.0/24"), mk("b", "10.0.1.0/24")]).is_ok());
        let e = check_pools(&[mk("a", "10.0.0.0/16"), mk("b", "10.0.1.0/24")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPPool \"b\"") && e.contains("overlaps"), "{e}");
    }
}
