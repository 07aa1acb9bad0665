//! CNI network configuration as found in a NetworkAttachmentDefinition or a conflist, for the
//! `vswitch` plugin. A kernel-bridge NAD works by changing only `"type": "bridge"` to
//! `"type": "vswitch"`: the bridge plugin's keys are understood or tolerated, unknown keys ignored.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    is_host_of, validate_name, AttachKind, ConfigError, Ipv4Net, MacAddr, MAX_MTU, MIN_MTU,
};

/// The CNI spec versions the plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// IPAM type handled inside vswitchd (durable, host-local compatible ranges).
pub const BUILTIN_IPAM: &str = "vswitch";

/// The plugin's network configuration (stdin of every CNI command).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Isolation domain (vswitch key).
    #[serde(default)]
    pub domain: Option<String>,
    /// The bridge plugin's key: same bridge name means same L2 segment.
    #[serde(default)]
    pub bridge: Option<String>,
    /// The bridge plugin's access VLAN: each (domain, vlan) is its own isolation domain; 0 or
    /// absent means untagged.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// The bridge plugin's trunk ports: not supported (rejected, never silently dropped).
    #[serde(default)]
    pub vlan_trunk: Option<serde_json::Value>,
    /// The bridge plugin's key: the pod gets a default route via the network gateway.
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub attach: Option<AttachKind>,
    #[serde(default)]
    pub mtu: Option<u16>,
    /// A MAC for the pod interface (all pods of this config would share it: meant for one-pod NADs).
    #[serde(default)]
    pub mac: Option<String>,
    /// vswitchd control socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Also append the plugin's log lines to this file (stderr always gets them).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

/// Capability arguments (`"capabilities": {"ips": true, "mac": true}`), as Multus and podman pass them.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

/// Built-in IPAM configuration (host-local's keys).
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub ipam_type: String,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub range_start: Option<Ipv4Addr>,
    #[serde(default)]
    pub range_end: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    #[serde(default)]
    pub routes: Vec<CniRoute>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub subnet: String,
    #[serde(default)]
    pub range_start: Option<Ipv4Addr>,
    #[serde(default)]
    pub range_end: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct CniRoute {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
}

/// One validated IPv4 range: addresses `start..=end` of `subnet`, `gateway` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub subnet: Ipv4Net,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

impl Range {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip) && ip >= self.start && ip <= self.end
    }
}

/// A validated built-in IPAM setup: one address is taken from each range set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPlan {
    pub range_sets: Vec<Vec<Range>>,
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
}

fn parse_v4_net(s: &str, field: &str) -> Result<Ipv4Net, ConfigError> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        ConfigError::invalid(
            field,
            format!("{s:?} is not an IPv4 CIDR (IPv6 ranges are not supported)"),
        )
    })?;
    if net.prefix_len() > 30 {
        return Err(ConfigError::invalid(
            field,
            format!("{s} leaves no room for hosts (need /30 or larger)"),
        ));
    }
    Ok(net.trunc())
}

impl RangeConf {
    fn validate(&self, field: &str) -> Result<Range, ConfigError> {
        let subnet = parse_v4_net(&self.subnet, &format!("{field}.subnet"))?;
        let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let last = Ipv4Addr::from(u32::from(subnet.broadcast()) - 1);
        let gateway = self.gateway.unwrap_or(first);
        if !is_host_of(subnet, gateway) {
            return Err(ConfigError::invalid(
                format!("{field}.gateway"),
                format!("{gateway} is not in {subnet}"),
            ));
        }
        let start = self.range_start.unwrap_or(first);
        let end = self.range_end.unwrap_or(last);
        for (name, ip) in [("rangeStart", start), ("rangeEnd", end)] {
            if !is_host_of(subnet, ip) {
                return Err(ConfigError::invalid(
                    format!("{field}.{name}"),
                    format!("{ip} is not a host address of {subnet}"),
                ));
            }
        }
        if start > end {
            return Err(ConfigError::invalid(
                format!("{field}.rangeStart"),
                format!("{start} is after rangeEnd {end}"),
            ));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }
}

impl IpamConf {
    /// Decodes the config's `ipam` object; a value of the wrong type is an error naming its
    /// field (`ipam.ranges[0][1].rangeStart`).
    pub fn from_value(v: serde_json::Value) -> Result<IpamConf, ConfigError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = crate::error_path(e.path());
            let field = if path.is_empty() {
                "ipam".to_string()
            } else {
                format!("ipam.{path}")
            };
            ConfigError::invalid(field, e.into_inner().to_string())
        })
    }

    /// Validates the built-in IPAM section; field names in errors are prefixed with `ipam.`.
    pub fn plan(&self) -> Result<IpamPlan, ConfigError> {
        let mut sets = Vec::new();
        if let Some(subnet) = &self.subnet {
            if !self.ranges.is_empty() {
                return Err(ConfigError::invalid(
                    "ipam.subnet",
                    "use either subnet or ranges, not both",
                ));
            }
            let r = RangeConf {
                subnet: subnet.clone(),
                range_start: self.range_start,
                range_end: self.range_end,
                gateway: self.gateway,
            };
            sets.push(vec![r.validate("ipam")?]);
        }
        for (i, set) in self.ranges.iter().enumerate() {
            if set.is_empty() {
                return Err(ConfigError::invalid(
                    format!("ipam.ranges[{i}]"),
                    "empty range set",
                ));
            }
            let mut v = Vec::new();
            for (j, r) in set.iter().enumerate() {
                v.push(r.validate(&format!("ipam.ranges[{i}][{j}]"))?);
            }
            sets.push(v);
        }
        if sets.is_empty() {
            return Err(ConfigError::invalid(
                "ipam.subnet",
                "missing: set ipam.subnet or ipam.ranges",
            ));
        }
        let mut routes = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let dst: Ipv4Net = r.dst.parse().map_err(|_| {
                ConfigError::invalid(
                    format!("ipam.routes[{i}].dst"),
                    format!("{:?} is not an IPv4 CIDR", r.dst),
                )
            })?;
            let dst = dst.trunc();
            routes.push((dst, r.gw));
        }
        Ok(IpamPlan {
            range_sets: sets,
            routes,
        })
    }
}

impl NetConf {
    /// Parses stdin; errors are decode errors (CNI code 6) naming the field whose value has the
    /// wrong type (`field `mtu`: invalid type ...`).
    pub fn parse(bytes: &[u8]) -> Result<NetConf, String> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = crate::error_path(e.path());
            if field.is_empty() {
                format!("cannot decode network configuration: {}", e.inner())
            } else {
                format!(
                    "cannot decode network configuration: field `{field}`: {}",
                    e.inner()
                )
            }
        })
    }

    /// The segment the config names: `domain`, else `bridge`, else `name`.
    fn base_domain(&self) -> &str {
        self.domain
            .as_deref()
            .or(self.bridge.as_deref())
            .unwrap_or(&self.name)
    }

    /// The isolation domain: `domain`, else `bridge`, else `name`; with a non-zero `vlan`,
    /// `<that>.vlan<N>` (the kernel bridge keeps VLANs of one bridge apart, so do we).
    pub fn domain(&self) -> String {
        match self.vlan {
            Some(v) if v != 0 => format!("{}.vlan{v}", self.base_domain()),
            _ => self.base_domain().to_string(),
        }
    }

    /// Checks the plugin's own keys (CNI code 7 on failure).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::invalid("name", "missing"));
        }
        let field = if self.domain.is_some() {
            "domain"
        } else if self.bridge.is_some() {
            "bridge"
        } else {
            "name"
        };
        validate_name(self.base_domain()).map_err(|r| ConfigError::invalid(field, r))?;
        if let Some(v) = self.vlan {
            if v > 4094 {
                return Err(ConfigError::invalid(
                    "vlan",
                    format!("{v} is outside 0..=4094"),
                ));
            }
            validate_name(&self.domain()).map_err(|r| {
                ConfigError::invalid("vlan", format!("domain with the VLAN suffix: {r}"))
            })?;
        }
        if self.vlan_trunk.is_some() {
            return Err(ConfigError::invalid(
                "vlanTrunk",
                "trunk ports are not supported: use one config per VLAN (`vlan`)",
            ));
        }
        if let Some(m) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&m) {
                return Err(ConfigError::invalid(
                    "mtu",
                    format!("{m} is outside {MIN_MTU}..={MAX_MTU}"),
                ));
            }
        }
        if let Some(m) = &self.mac {
            parse_mac(m, "mac")?;
        }
        if self.ipam.is_none() {
            return Err(ConfigError::invalid(
                "ipam",
                "missing: vswitch needs an IPAM section (type \"vswitch\" or a delegated plugin)",
            ));
        }
        Ok(())
    }

    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str()
    }
}

pub fn parse_mac(s: &str, field: &str) -> Result<MacAddr, ConfigError> {
    let m: MacAddr = s
        .parse()
        .map_err(|e: crate::MacParseError| ConfigError::invalid(field, e.to_string()))?;
    if !m.is_valid_unicast() {
        return Err(ConfigError::invalid(
            field,
            format!("{m} is not a unicast address"),
        ));
    }
    Ok(m)
}

/// Parses an IP given as `A.B.C.D` or `A.B.C.D/len` (the prefix is ignored: the range decides).
pub fn parse_ip_request(s: &str, field: &str) -> Result<Ipv4Addr, ConfigError> {
    let ip = s.split('/').next().unwrap_or(s);
    ip.parse()
        .map_err(|_| ConfigError::invalid(field, format!("{s:?} is not an IPv4 address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_nad_parses_with_type_changed() {
        let nad = br#"{"cniVersion":"0.3.1","name":"tenant-a","type":"vswitch","bridge":"br-a",
            "isGateway":true,"ipMasq":false,"hairpinMode":true,
            "ipam":{"type":"vswitch","subnet":"192.168.1.0/24","rangeStart":"192.168.1.100",
                    "rangeEnd":"192.168.1.200","routes":[{"dst":"0.0.0.0/0"}]}}"#;
        let c = NetConf::parse(nad).unwrap();
        c.validate().unwrap();
        assert_eq!(c.domain(), "br-a");
        let ipam: IpamConf = serde_json::from_value(c.ipam.clone().unwrap()).unwrap();
        let plan = ipam.plan().unwrap();
        assert_eq!(
            plan.range_sets[0][0].gateway,
            "192.168.1.1".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            plan.range_sets[0][0].start,
            "192.168.1.100".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(plan.routes[0].0.prefix_len(), 0);
    }

    #[test]
    fn ipam_errors_name_fields() {
        let bad = |j: &str| -> String {
            let i: IpamConf = serde_json::from_str(j).unwrap();
            match i.plan().unwrap_err() {
                ConfigError::Invalid { field, .. } => field,
                e => panic!("{e}"),
            }
        };
        assert_eq!(bad(r#"{"type":"vswitch"}"#), "ipam.subnet");
        assert_eq!(
            bad(r#"{"type":"vswitch","subnet":"fd00::/64"}"#),
            "ipam.subnet"
        );
        assert_eq!(
            bad(r#"{"type":"vswitch","subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"}"#),
            "ipam.rangeStart"
        );
        assert_eq!(
            bad(r#"{"type":"vswitch","ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.9.0.1"}]]}"#),
            "ipam.ranges[0][0].gateway"
        );
    }

    #[test]
    fn ipam_type_errors_name_the_field() {
        let e = IpamConf::from_value(serde_json::json!({"type": "vswitch",
            "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24", "rangeStart": 7}]]}))
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { field, .. } if field == "ipam.ranges[0][1].rangeStart"),
            "{e}"
        );
        let e = IpamConf::from_value(serde_json::json!("vswitch")).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { field, .. } if field == "ipam"),
            "{e}"
        );
    }

    #[test]
    fn domain_precedence() {
        let mut c = NetConf {
            name: "n".into(),
            ..Default::default()
        };
        assert_eq!(c.domain(), "n");
        c.bridge = Some("b".into());
        assert_eq!(c.domain(), "b");
        c.domain = Some("d".into());
        assert_eq!(c.domain(), "d");
    }

    fn conf(j: &str) -> NetConf {
        NetConf::parse(j.as_bytes()).unwrap()
    }

    #[test]
    fn vlan_splits_the_domain() {
        let base = r#"{"cniVersion":"1.1.0","name":"n","type":"vswitch","bridge":"br0","ipam":{"type":"vswitch"}"#;
        let none = conf(&format!("{base}}}"));
        let zero = conf(&format!("{base},\"vlan\":0}}"));
        let v10 = conf(&format!("{base},\"vlan\":10}}"));
        let v20 = conf(&format!("{base},\"vlan\":20}}"));
        assert_eq!(none.domain(), "br0");
        assert_eq!(zero.domain(), "br0");
        assert_eq!(v10.domain(), "br0.vlan10");
        assert_ne!(v10.domain(), v20.domain());
        v10.validate().unwrap();
        let field = |c: NetConf| match c.validate().unwrap_err() {
            ConfigError::Invalid { field, .. } => field,
            e => panic!("{e}"),
        };
        assert_eq!(field(conf(&format!("{base},\"vlan\":4095}}"))), "vlan");
        assert_eq!(
            field(conf(&format!("{base},\"vlanTrunk\":[{{\"id\":5}}]}}"))),
            "vlanTrunk"
        );
        let long = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"vswitch","bridge":"{}","vlan":7,"ipam":{{"type":"vswitch"}}}}"#,
            "b".repeat(64)
        );
        assert_eq!(field(conf(&long)), "vlan");
    }

    #[test]
    fn decode_errors_name_the_field() {
        let e =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"vswitch","mtu":"big"}"#)
                .unwrap_err();
        assert!(e.contains("field `mtu`"), "{e}");
        let e = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"vswitch","runtimeConfig":{"ips":[5]}}"#,
        )
        .unwrap_err();
        assert!(e.contains("field `runtimeConfig.ips[0]`"), "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","isDefaultGateway":"yes"}"#)
            .unwrap_err();
        assert!(e.contains("field `isDefaultGateway`"), "{e}");
    }
}
