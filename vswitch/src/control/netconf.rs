//! Interface plumbing for ports: create veths with their pod end in the pod namespace, set
//! names, MACs, MTUs, addresses and routes. Done with iproute2 (`ip`) and `nsenter` as child
//! processes, plus a short-lived thread that joins the pod namespace only to open a tap or change
//! offloads (`sys::netns`): no long-lived thread ever changes namespace (netavark's rule), and
//! every step's failure is reported with the command that failed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use vswitch_config::{Ipv4Net, MacAddr, RouteSpec};

/// A failed plumbing step.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a pod's network namespace lives: a name under /run/netns, or a path.
pub fn netns_path(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    }
}

fn run(cmd: &mut Command) -> Result<String, NetconfError> {
    let text = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| NetconfError::Spawn {
        cmd: text.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetconfError::Command {
            cmd: text,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` in the daemon's namespace.
pub fn ip(args: &[&str]) -> Result<String, NetconfError> {
    run(Command::new("ip").args(args))
}

/// `ip ARGS` inside the namespace at `netns`.
pub fn ip_in(netns: &Path, args: &[&str]) -> Result<String, NetconfError> {
    let mut net = std::ffi::OsString::from("--net=");
    net.push(netns);
    run(Command::new("nsenter")
        .arg(net)
        .arg("--")
        .arg("ip")
        .args(args))
}

/// Writes a sysctl of the daemon's namespace, e.g. `net/ipv6/conf/X/disable_ipv6`.
pub fn sysctl(key: &str, value: &str) -> Result<(), NetconfError> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|source| NetconfError::Sysctl { path, source })
}

/// How a pod interface is set up once it is inside the pod namespace.
pub struct PodIfConfig<'a> {
    pub tmp_name: &'a str,
    pub ifname: &'a str,
    pub mac: MacAddr,
    pub mtu: u16,
    pub subnet: Ipv4Net,
    pub ips: &'a [Ipv4Addr],
    pub gateway: Ipv4Addr,
    pub routes: &'a [RouteSpec],
}

/// Configures link `tmp_name`, created inside `netns`: one child process (`ip -batch` inside the
/// namespace, stopping at the first failing command), since process start-up dominates a CNI ADD.
pub fn configure_in(netns: &Path, c: &PodIfConfig<'_>) -> Result<(), NetconfError> {
    let mut batch = format!(
        "link set dev {} name {} address {} mtu {}\n",
        c.tmp_name, c.ifname, c.mac, c.mtu
    );
    for a in c.ips {
        batch += &format!("addr add {a}/{} dev {}\n", c.subnet.prefix_len(), c.ifname);
    }
    batch += &format!("link set dev {} up\n", c.ifname);
    for r in c.routes {
        batch += &format!(
            "route add {} via {} dev {}\n",
            r.dst,
            r.via.unwrap_or(c.gateway),
            c.ifname
        );
    }
    let mut net = std::ffi::OsString::from("--net=");
    net.push(netns);
    let mut cmd = Command::new("nsenter");
    cmd.arg(net).args(["--", "ip", "-batch", "-"]);
    run_with_stdin(&mut cmd, &batch)
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<(), NetconfError> {
    use std::io::Write;
    let text = format!("{cmd:?} <<< {input:?}").replace('"', "");
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| NetconfError::Spawn {
            cmd: text.clone(),
            source,
        })?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetconfError::Spawn {
            cmd: text.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetconfError::Command {
            cmd: text,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl NetconfError {
    /// The failure was a name that already exists (the interface name in the pod).
    pub fn is_exists(&self) -> bool {
        matches!(self, NetconfError::Command { stderr, .. } if stderr.contains("File exists"))
    }
}

/// Deletes `ifname` inside `netns` if it is there: `Ok(true)` if it was, `Ok(false)` if not
/// (CNI DEL of an interface no record knows of: left behind by a crash).
pub fn remove_link_in(netns: &Path, ifname: &str) -> Result<bool, NetconfError> {
    match ip_in(netns, &["link", "del", "dev", ifname]) {
        Ok(_) => Ok(true),
        Err(NetconfError::Command { stderr, .. }) if stderr.contains("Cannot find device") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Deletes `ifname` inside `netns`, ignoring "not found" (used for rollback and port removal).
pub fn delete_link_in(netns: &Path, ifname: &str) {
    let _ = ip_in(netns, &["link", "del", "dev", ifname]);
}

/// Creates a veth pair: the host end in the daemon's namespace, the pod end (`peer`) directly in
/// `netns` (no device move). The host end is prepared so the node's own stack never acts on pod
/// frames: no IPv6 (no autoconf, no link-local), no ARP replies (IFF_NOARP), strict reverse-path
/// filtering (pod sources are never routable via it).
///
/// Both ends keep their offloads: the AF_PACKET socket carries the virtio-net header, so TCP
/// superframes and partial checksums cross it whole.
pub fn create_host_veth(
    host: &str,
    peer: &str,
    mtu: u16,
    netns: &Path,
) -> Result<(), NetconfError> {
    let mtu = mtu.to_string();
    let ns = netns.to_string_lossy();
    ip(&[
        "link", "add", host, "mtu", &mtu, "arp", "off", "type", "veth", "peer", "name", peer,
        "mtu", &mtu, "netns", &ns,
    ])?;
    let prepared = (|| {
        sysctl(&format!("net/ipv6/conf/{host}/disable_ipv6"), "1")?;
        sysctl(&format!("net/ipv4/conf/{host}/rp_filter"), "1")?;
        ip(&["link", "set", "dev", host, "up"])?;
        Ok(())
    })();
    if prepared.is_err() {
        let _ = ip(&["link", "del", "dev", host]);
    }
    prepared
}

pub fn delete_link(name: &str) {
    let _ = ip(&["link", "del", "dev", name]);
}

/// Reads what `ifname` in `netns` looks like now (MAC, IPv4 addresses, IPv4 routes), for CNI CHECK.
pub fn observe(netns: &Path, ifname: &str) -> vswitch_api::ObservedInterface {
    let mut o = vswitch_api::ObservedInterface::default();
    let Ok(addr) = ip_in(netns, &["-j", "addr", "show", "dev", ifname]) else {
        return o;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&addr) else {
        return o;
    };
    let Some(link) = v.as_array().and_then(|a| a.first()) else {
        return o;
    };
    o.exists = true;
    o.mac = link["address"].as_str().and_then(|m| m.parse().ok());
    for a in link["addr_info"].as_array().into_iter().flatten() {
        if a["family"] == "inet" {
            if let (Some(l), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                o.addrs.push(format!("{l}/{p}"));
            }
        }
    }
    if let Ok(routes) = ip_in(netns, &["-j", "-4", "route", "show", "dev", ifname]) {
        if let Ok(serde_json::Value::Array(rs)) = serde_json::from_str::<serde_json::Value>(&routes)
        {
            for r in rs {
                let dst = match r["dst"].as_str() {
                    Some("default") => Some(Ipv4Net::default()),
                    Some(d) if d.contains('/') => d.parse().ok(),
                    Some(d) => d
                        .parse::<Ipv4Addr>()
                        .ok()
                        .and_then(|a| Ipv4Net::new(a, 32).ok()),
                    None => None,
                };
                let via = r["gateway"].as_str().and_then(|g| g.parse().ok());
                if let Some(dst) = dst {
                    o.routes.push(RouteSpec { dst, via });
                }
            }
        }
    }
    o
}

/// Frames the kernel dropped on the pod's interface `ifname` in `netns`, as (receive,
/// transmit): receive drops are frames vswitch handed over that the pod's backlog refused;
/// transmit drops are frames the pod sent while the queue towards vswitch was full (a tap's
/// queue, a veth's backlog). From the namespace's `/proc/net/dev`.
pub fn pod_drops(netns: &Path, ifname: &str) -> std::io::Result<(u64, u64)> {
    let name = ifname.to_string();
    crate::sys::netns::run_in_netns(netns, move || {
        // /proc/thread-self/net shows the network namespace of this thread.
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        parse_drops(&text, &name)
            .ok_or_else(|| std::io::Error::other(format!("{name} not in /proc/net/dev")))
    })?
}

fn parse_drops(text: &str, ifname: &str) -> Option<(u64, u64)> {
    text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some((f.get(3)?.parse().ok()?, f.get(11)?.parse().ok()?))
    })
}

#[cfg(test)]
mod dev_tests {
    #[test]
    fn tx_dropped_column() {
        let t = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  eth1:  100 2 0 0 0 0 0 0 200 3 0 917 0 0 0 0\n";
        assert_eq!(super::parse_drops(t, "eth1"), Some((0, 917)));
        assert_eq!(super::parse_drops(t, "eth2"), None);
    }
}
