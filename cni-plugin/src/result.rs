//! CNI results in the caller's spec version, and CHECK against prevResult.

use serde_json::{json, Value};
use vswitch_api::{CniAddReply, CniCheckReply};
use vswitch_config::{Ipv4Net, MacAddr, RouteSpec};

use crate::{code, CniError};

/// The ADD result. Before 1.0.0 IP entries carry `"version": "4"`; 1.1.0 adds the MTU.
pub fn add_result(version: &str, netns: &str, r: &CniAddReply) -> Value {
    let legacy = version.starts_with("0.");
    let mut iface = json!({"name": r.port.ifname, "mac": r.port.mac.to_string(), "sandbox": netns});
    if version == "1.1.0" {
        iface["mtu"] = json!(r.port.mtu);
    }
    let ips: Vec<Value> = r
        .addrs
        .iter()
        .map(|a| {
            let mut v = json!({"address": format!("{}/{}", a.ip, a.prefix), "interface": 0});
            if let Some(g) = a.gateway {
                v["gateway"] = json!(g.to_string());
            }
            if legacy {
                v["version"] = json!("4");
            }
            v
        })
        .collect();
    let routes: Vec<Value> = r
        .routes
        .iter()
        .map(|rt| {
            let mut v = json!({"dst": rt.dst.to_string()});
            if let Some(g) = rt.via {
                v["gw"] = json!(g.to_string());
            }
            v
        })
        .collect();
    json!({"cniVersion": version, "interfaces": [iface], "ips": ips, "routes": routes, "dns": {}})
}

/// Compares the pod interface as it is now with prevResult: interface present with its MAC, every
/// IPv4 address and every IPv4 route of prevResult still there.
pub fn check(prev: &Value, ifname: &str, reply: &CniCheckReply) -> Result<(), CniError> {
    let bad = |m: String| CniError::new(code::CHECK_MISMATCH, m);
    let o = &reply.observed;
    if !o.exists {
        return Err(bad(format!("interface {ifname} is missing from the pod")));
    }
    let ifaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mine = ifaces
        .iter()
        .position(|i| i.get("name").and_then(Value::as_str) == Some(ifname));
    let Some(idx) = mine else {
        return Err(bad(format!("prevResult has no interface {ifname}")));
    };
    if let Some(m) = ifaces[idx].get("mac").and_then(Value::as_str) {
        let want: MacAddr = m
            .parse()
            .map_err(|_| bad(format!("prevResult mac {m:?} is invalid")))?;
        if o.mac != Some(want) {
            return Err(bad(format!(
                "{ifname} has MAC {:?}, prevResult says {want}",
                o.mac
            )));
        }
        if reply.port.mac != want {
            return Err(bad(format!(
                "vswitchd has MAC {} for {ifname}, prevResult says {want}",
                reply.port.mac
            )));
        }
    }
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(a) = ip.get("address").and_then(Value::as_str) else {
            continue;
        };
        if a.contains(':') {
            continue;
        }
        let iface = ip.get("interface").and_then(Value::as_u64);
        if iface.is_some_and(|i| i as usize != idx) {
            continue;
        }
        if !o.addrs.iter().any(|x| x == a) {
            return Err(bad(format!(
                "{ifname} lacks address {a} (has {:?})",
                o.addrs
            )));
        }
    }
    for RouteSpec { dst, via: gw } in ipv4_routes(prev) {
        let found = o
            .routes
            .iter()
            .any(|x| x.dst == dst && (gw.is_none() || x.via == gw));
        if !found {
            return Err(bad(format!(
                "{ifname} lacks route {dst} via {gw:?} (has {:?})",
                o.routes
            )));
        }
    }
    Ok(())
}

/// The IPv4 routes of a CNI result (any spec version); IPv6 and unparsable entries are skipped.
pub fn ipv4_routes(result: &Value) -> Vec<RouteSpec> {
    result
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let dst = r.get("dst")?.as_str()?.parse::<Ipv4Net>().ok()?;
            let via = r
                .get("gw")
                .and_then(Value::as_str)
                .and_then(|g| g.parse().ok());
            Some(RouteSpec {
                dst: dst.trunc(),
                via,
            })
        })
        .collect()
}
