//! Delegated IPAM: run the plugin named by `ipam.type` from `CNI_PATH` with our stdin and
//! environment, as libcni's `ExecPluginWithResult` does, and turn its result into addresses.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use vswitch_api::{CniAddr, CniIpam};
use vswitch_config::Ipv4Net;

use crate::env::CniEnv;
use crate::{code, CniError};

fn find(plugin: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("ipam.type {plugin:?} is not a plugin name"),
        ));
    }
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("ipam.type {plugin:?}: no such IPAM plugin in CNI_PATH"),
            )
            .details(format!("CNI_PATH={cni_path}"))
        })
}

/// Runs `plugin` with `CNI_COMMAND=command`; returns its parsed stdout (empty for DEL/CHECK/GC).
pub fn exec(plugin: &str, command: &str, env: &CniEnv, stdin: &[u8]) -> Result<Value, CniError> {
    let bin = find(plugin, &env.path)?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(code::IPAM_DELEGATE, format!("cannot run {}", bin.display()))
                .details(e.to_string())
        })?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(code::IPAM_DELEGATE, format!("{} failed", bin.display()))
            .details(e.to_string())
    })?;
    let parsed: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| {
            CniError::new(
                code::IPAM_DELEGATE,
                format!("IPAM plugin {plugin} printed no JSON"),
            )
            .details(e.to_string())
        })?
    };
    if !out.status.success() {
        let code = parsed
            .get("code")
            .and_then(Value::as_u64)
            .unwrap_or(u64::from(code::IPAM_DELEGATE)) as u32;
        let msg = parsed
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("failed");
        let details = parsed
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(
            CniError::new(code, format!("IPAM plugin {plugin} {command}: {msg}")).details(details),
        );
    }
    Ok(parsed)
}

/// Addresses and routes from an IPAM result of any spec version (IPv4 only).
pub fn to_fixed(result: &Value) -> Result<CniIpam, CniError> {
    let mut addrs = Vec::new();
    for ip in result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(a) = ip.get("address").and_then(Value::as_str) else {
            continue;
        };
        let Ok(net) = a.parse::<Ipv4Net>() else {
            continue;
        };
        addrs.push(CniAddr {
            ip: net.addr(),
            prefix: net.prefix_len(),
            gateway: ip
                .get("gateway")
                .and_then(Value::as_str)
                .and_then(|g| g.parse::<Ipv4Addr>().ok()),
        });
    }
    if addrs.is_empty() {
        return Err(
            CniError::new(code::IPAM_DELEGATE, "IPAM plugin returned no IPv4 address")
                .details(result.to_string()),
        );
    }
    let routes = crate::result::ipv4_routes(result);
    Ok(CniIpam::Fixed { addrs, routes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_result_versions() {
        let r031 = serde_json::json!({"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1"},
            {"version":"6","address":"fd00::5/64"}],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]});
        let CniIpam::Fixed { addrs, routes } = to_fixed(&r031).unwrap() else {
            panic!()
        };
        assert_eq!(
            addrs,
            vec![CniAddr {
                ip: "10.1.0.5".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.1.0.1".parse().unwrap())
            }]
        );
        assert_eq!(routes.len(), 1);
        assert!(to_fixed(&serde_json::json!({"ips":[]})).is_err());
    }

    #[test]
    fn missing_plugin_is_invalid_config() {
        let env = CniEnv {
            path: "/nonexistent".into(),
            ..Default::default()
        };
        assert_eq!(
            exec("nosuch", "ADD", &env, b"{}").unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            exec("../x", "ADD", &env, b"{}").unwrap_err().code,
            code::INVALID_CONFIG
        );
    }
}
