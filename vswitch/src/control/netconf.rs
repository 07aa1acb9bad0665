//! Interface plumbing for ports: create veths with their pod end in the pod namespace, set
//! names, MACs, MTUs, addresses and routes, observe them for CHECK, delete them. All in-process
//! over rtnetlink ([`super::netlink`]): the socket for a pod is opened by a short-lived thread
//! inside the pod's namespace (`sys::netns`), so no long-lived thread ever changes namespace
//! (netavark's rule) and no `ip`/`nsenter` child process runs on the ADD/DEL/CHECK path. Every
//! failure names its step and carries the kernel's errno.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use vswitch_config::{Ipv4Net, MacAddr, RouteSpec};

use super::netlink::{Netlink, NetlinkError};

/// A failed plumbing step.
#[derive(Debug, thiserror::Error)]
pub enum NetconfError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("link {0} not found")]
    NoLink(String),
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

fn index_of(nl: &mut Netlink, name: &str) -> Result<u32, NetconfError> {
    nl.link_index(name)?
        .ok_or_else(|| NetconfError::NoLink(name.to_string()))
}

/// Configures link `tmp_name`, created inside `netns`: final name, MAC and MTU in one request
/// (the link is still down), then addresses, up, routes. Stops at the first failing step.
pub fn configure_in(netns: &Path, c: &PodIfConfig<'_>) -> Result<(), NetconfError> {
    configure(&mut Netlink::open_in(netns)?, c)
}

/// [`configure_in`] on a netlink socket already open in the pod's namespace.
pub fn configure(nl: &mut Netlink, c: &PodIfConfig<'_>) -> Result<(), NetconfError> {
    let idx = index_of(nl, c.tmp_name)?;
    nl.set_link(
        idx,
        Some(c.ifname),
        Some(c.mac),
        Some(c.mtu),
        false,
        &format!("rename {} to {}, set address and mtu", c.tmp_name, c.ifname),
    )?;
    for a in c.ips {
        nl.add_addr(idx, *a, c.subnet.prefix_len())?;
    }
    nl.set_link(idx, None, None, None, true, &format!("set {} up", c.ifname))?;
    for r in c.routes {
        nl.add_route(idx, r.dst, r.via.unwrap_or(c.gateway))?;
    }
    Ok(())
}

impl NetconfError {
    /// The failure was a name that already exists (the interface name in the pod).
    pub fn is_exists(&self) -> bool {
        matches!(self, NetconfError::Netlink(e) if e.errno() == Some(libc::EEXIST))
    }
}

/// Deletes `ifname` inside `netns` if it is there: `Ok(true)` if it was, `Ok(false)` if not
/// (CNI DEL of an interface no record knows of: left behind by a crash).
pub fn remove_link_in(netns: &Path, ifname: &str) -> Result<bool, NetconfError> {
    let mut nl = Netlink::open_in(netns)?;
    let Some(idx) = nl.link_index(ifname)? else {
        return Ok(false);
    };
    match nl.del_link(idx, &format!("delete orphaned link {ifname}")) {
        Ok(()) => Ok(true),
        // Gone in between (the pod's end of a veth whose host end was just deleted).
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes `ifname` inside `netns`, ignoring "not found" (used for rollback and port removal).
pub fn delete_link_in(netns: &Path, ifname: &str) {
    if let Ok(mut nl) = Netlink::open_in(netns) {
        delete_with(&mut nl, ifname);
    }
}

fn delete_with(nl: &mut Netlink, name: &str) {
    if let Ok(Some(i)) = nl.link_index(name) {
        if let Err(e) = nl.del_link(i, &format!("delete link {name}")) {
            tracing::debug!("{e}");
        }
    }
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
    let mut nl = Netlink::open()?;
    nl.add_veth(host, peer, mtu, netns)?;
    let prepared = (|| {
        sysctl(&format!("net/ipv6/conf/{host}/disable_ipv6"), "1")?;
        sysctl(&format!("net/ipv4/conf/{host}/rp_filter"), "1")?;
        let idx = index_of(&mut nl, host)?;
        nl.set_link(idx, None, None, None, true, &format!("set {host} up"))?;
        Ok(())
    })();
    if prepared.is_err() {
        delete_with(&mut nl, host);
    }
    prepared
}

/// Deletes link `name` of the daemon's namespace, ignoring "not found".
pub fn delete_link(name: &str) {
    if let Ok(mut nl) = Netlink::open() {
        delete_with(&mut nl, name);
    }
}

/// Adds (or, with `present = false`, removes) a blackhole route in the daemon's namespace.
pub fn blackhole(dst: Ipv4Net, present: bool) -> Result<(), NetconfError> {
    Netlink::open()?.blackhole(dst, present)?;
    Ok(())
}

/// Reads what `ifname` in `netns` looks like now (MAC, IPv4 addresses, IPv4 routes), for CNI CHECK.
pub fn observe(netns: &Path, ifname: &str) -> vswitch_api::ObservedInterface {
    let mut o = vswitch_api::ObservedInterface::default();
    let Ok(mut nl) = Netlink::open_in(netns) else {
        return o;
    };
    let Ok(Some(idx)) = nl.link_index(ifname) else {
        return o;
    };
    o.exists = true;
    o.mac = nl.link_mac(idx).ok().flatten();
    o.addrs = nl.addrs(idx).unwrap_or_default();
    o.routes = nl
        .routes(idx)
        .unwrap_or_default()
        .into_iter()
        .map(|(dst, via)| RouteSpec { dst, via })
        .collect();
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
