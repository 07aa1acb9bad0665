//! `ipam.type = "vswitch-pools"`: what the pod asks of vswitchd's IP pools.
//!
//! The plugin has no API-server access, so the pod's Calico annotations arrive as Multus
//! `cni-args` (`args.cni`), as `runtimeConfig` keys, or as `CNI_ARGS`, under their Calico names
//! (`cni.projectcalico.org/ipv4pools`, `…/ipAddrs`, `…/ipAddrsNoIpam`) or the short ones
//! (`ipv4pools`, `ipAddrs`, `ipAddrsNoIpam`). Values are Calico's JSON lists
//! (`["pool-a"]`), a JSON list, or comma-separated text. The namespace comes from
//! `K8S_POD_NAMESPACE`.

use serde_json::Value;
use vswitch_api::PoolRequest;

use crate::env::CniEnv;
use crate::{code, CniError};

pub const POOLS_IPAM: &str = "vswitch-pools";
const CALICO: &str = "cni.projectcalico.org/";

fn list(v: &Value, field: &str) -> Result<Vec<String>, CniError> {
    let bad = || {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{field}: expected a list of strings"),
        )
    };
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Value::String(s) => {
            if let Ok(l) = serde_json::from_str::<Vec<String>>(s) {
                return Ok(l);
            }
            Ok(s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect())
        }
        _ => Err(bad()),
    }
}

/// Looks `short` (or its Calico name) up in runtimeConfig, `args.cni`, then `CNI_ARGS`.
fn lookup(raw: &Value, env: &CniEnv, short: &str) -> Result<Vec<String>, CniError> {
    let long = format!("{CALICO}{short}");
    for (obj, place) in [
        (raw.get("runtimeConfig"), "runtimeConfig"),
        (raw.pointer("/args/cni"), "args.cni"),
    ] {
        if let Some(o) = obj {
            for k in [long.as_str(), short] {
                if let Some(v) = o.get(k) {
                    return list(v, &format!("{place}.{k}"));
                }
            }
        }
    }
    for k in [long.as_str(), short] {
        if let Some(v) = env.arg(k) {
            return list(&Value::String(v.to_string()), &format!("CNI_ARGS {k}"));
        }
    }
    Ok(Vec::new())
}

fn ips(v: Vec<String>, field: &str) -> Result<Vec<std::net::Ipv4Addr>, CniError> {
    v.iter()
        .map(|s| {
            s.split('/').next().unwrap_or(s).parse().map_err(|_| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("{field}: {s:?} is not an IPv4 address"),
                )
            })
        })
        .collect()
}

/// Builds the request from the raw network config and the environment.
pub fn request(raw: &Value, env: &CniEnv) -> Result<PoolRequest, CniError> {
    let cni_pools = match raw.pointer("/ipam/ipv4_pools") {
        Some(v) => list(v, "ipam.ipv4_pools")?,
        None => Vec::new(),
    };
    Ok(PoolRequest {
        pod_pools: lookup(raw, env, "ipv4pools")?,
        ip_addrs: ips(lookup(raw, env, "ipAddrs")?, "ipAddrs")?,
        ip_addrs_no_ipam: ips(lookup(raw, env, "ipAddrsNoIpam")?, "ipAddrsNoIpam")?,
        cni_pools,
        namespace: env.arg("K8S_POD_NAMESPACE").map(str::to_string),
        pod: env.arg("K8S_POD_NAME").map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_and_spelling() {
        let env = CniEnv {
            args: vec![
                ("K8S_POD_NAMESPACE".into(), "ns1".into()),
                ("ipAddrs".into(), "10.0.0.5".into()),
            ],
            ..Default::default()
        };
        let raw = serde_json::json!({
            "ipam": {"type": "vswitch-pools", "ipv4_pools": ["a", "b"]},
            "args": {"cni": {"cni.projectcalico.org/ipv4pools": "[\"pod-pool\"]"}},
            "runtimeConfig": {"ipAddrsNoIpam": ["10.9.9.9"]},
        });
        let r = request(&raw, &env).unwrap();
        assert_eq!(r.cni_pools, vec!["a", "b"]);
        assert_eq!(r.pod_pools, vec!["pod-pool"]);
        assert_eq!(
            r.ip_addrs,
            vec!["10.0.0.5".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(r.ip_addrs_no_ipam.len(), 1);
        assert_eq!(r.namespace.as_deref(), Some("ns1"));
        let bad = serde_json::json!({"args": {"cni": {"ipAddrs": ["nope"]}}});
        let e = request(&bad, &CniEnv::default()).unwrap_err();
        assert!(e.msg.contains("ipAddrs"), "{}", e.msg);
    }
}
