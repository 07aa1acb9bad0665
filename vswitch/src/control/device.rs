//! The one place where the control plane opens dataplane devices and starts workers: pod taps
//! (with offloads), AF_PACKET sockets on host veths, the underlay sockets. Everything else in
//! the control plane talks to workers through [`Command`](crate::dataplane::worker::Command)s.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vswitch_config::{DaemonConfig, IoBackend, MacAddr};

use crate::dataplane::port::PortDev;
use crate::dataplane::underlay::Uplink;
use crate::dataplane::worker::{self, IoMode, WorkerConfig, WorkerHandle};
use crate::sys::inet::InetSocket;
use crate::sys::packet::{self, PacketSocket};
use crate::sys::tap::{Tap, TapError};

/// VXLAN sender sockets per node: flows are spread over their source ports.
const VXLAN_SOURCE_PORTS: usize = 8;

/// Starts the configured number of workers, joined by learn rings.
pub fn spawn_workers(
    cfg: &DaemonConfig,
    trace: &Arc<crate::observe::hub::TraceHub>,
) -> io::Result<Vec<WorkerHandle>> {
    let wc = WorkerConfig {
        trace: Some(trace.clone()),
        aging_secs: cfg.fdb_aging_secs,
        io: match cfg.io {
            IoBackend::Auto => IoMode::Auto,
            IoBackend::IoUring => IoMode::Uring,
            IoBackend::Epoll => IoMode::Epoll,
        },
        busy_poll: Duration::from_micros(cfg.busy_poll_us),
    };
    worker::learn_rings(cfg.workers)
        .into_iter()
        .enumerate()
        .map(|(id, rings)| worker::spawn(id, wc.clone(), rings))
        .collect()
}

/// A tap created inside a pod's namespace, and a netlink socket of that namespace to configure
/// it with, opened by the same short-lived thread (one namespace entry per ADD, not two).
pub struct PodTap {
    pub dev: Result<PortDev, TapError>,
    pub netlink: Result<crate::control::netlink::Netlink, crate::control::netlink::NetlinkError>,
}

/// Creates tap `name` inside the network namespace at `netns` (no device move needed later).
pub fn open_tap(netns: &Path, name: &str, offloads: bool) -> io::Result<PodTap> {
    let name = name.to_string();
    crate::sys::netns::run_in_netns(netns, move || {
        let dev = Tap::create(&name, offloads).map(|t| PortDev::Tap(Arc::new(t)));
        let netlink = crate::control::netlink::Netlink::open();
        PodTap { dev, netlink }
    })
}

/// Reattaches to the persistent tap `ifname` inside `netns` (after a daemon restart).
pub fn reopen_tap(
    netns: &Path,
    ifname: &str,
    offloads: bool,
) -> io::Result<Result<PortDev, TapError>> {
    let name = ifname.to_string();
    crate::sys::netns::run_in_netns(netns, move || {
        let tap = Tap::reopen(&name, offloads)?;
        // Hand the port to the workers only once the pod can send on it again, so the pod's
        // first ARP request after the restart is not lost (it would retry only a second later).
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while !Tap::is_running(&name).unwrap_or(true) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Entries the pod tried to resolve while the link was down wait for their retransmit
        // timer (1 s) before asking again: removed, they are asked for on the next packet.
        let flushed = crate::control::netlink::Netlink::open().and_then(|mut nl| {
            match nl.link_index(&name)? {
                Some(i) => nl.flush_unresolved_neighbours(i),
                None => Ok(0),
            }
        });
        match flushed {
            Ok(n) if n > 0 => tracing::debug!(ifname = %name, n, "unresolved neighbours flushed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(ifname = %name, "{e}"),
        }
        Ok(PortDev::Tap(Arc::new(tap)))
    })
}

/// Whether interface `ifname` exists inside `netns`.
pub fn exists_in(netns: &Path, ifname: &str) -> bool {
    let name = ifname.to_string();
    crate::sys::netns::run_in_netns(netns, move || crate::sys::if_index(&name).is_ok())
        .unwrap_or(false)
}

/// Opens the AF_PACKET socket on a pod veth's host end.
pub fn open_packet(host_ifname: &str) -> io::Result<PortDev> {
    let idx = crate::sys::if_index(host_ifname)?;
    Ok(PortDev::Packet(Arc::new(PacketSocket::open(
        idx, None, true,
    )?)))
}

/// Opens the underlay sockets of a node at `local_ip` (and, for direct routing, a filtered
/// AF_PACKET socket on `interface`).
pub fn open_uplink(
    local_ip: Ipv4Addr,
    vxlan_port: u16,
    interface: Option<&str>,
    workers: usize,
) -> anyhow::Result<Uplink> {
    use anyhow::Context;
    let direct_rx = match interface {
        Some(i) => {
            let idx = crate::sys::if_index(i).with_context(|| format!("underlay interface {i}"))?;
            let filter = packet::direct_routed_filter(local_ip);
            Some(
                PacketSocket::open(idx, Some(&filter), false)
                    .with_context(|| format!("AF_PACKET socket on {i}"))?,
            )
        }
        None => None,
    };
    let vxlan_tx = (0..VXLAN_SOURCE_PORTS)
        .map(|_| InetSocket::udp_sender_pair(local_ip))
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("VXLAN sender sockets on {local_ip}"))?;
    let udp_gso = vxlan_tx.first().is_some_and(|(_, t)| t.supports_gso());
    let vxlan_ports = vxlan_tx
        .iter()
        .map(|(s, _)| s.local_port().unwrap_or(0))
        .collect();
    // The receivers share the port with SO_REUSEPORT; make sure nobody else (another vswitchd,
    // a kernel vxlan device) holds it, since a second group member would take half the flows.
    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, vxlan_port))
        .with_context(|| format!("VXLAN UDP port {vxlan_port} is already in use on this node"))?;
    Ok(Uplink {
        local_ip,
        vxlan_port,
        udp_gso,
        vxlan_tx,
        vxlan_ports,
        vxlan_rx: (0..workers.max(1))
            .map(|_| InetSocket::udp_receiver(vxlan_port))
            .collect::<io::Result<Vec<_>>>()
            .with_context(|| format!("bind VXLAN UDP port {vxlan_port}"))?,
        raw_tx: InetSocket::raw_sender().context("raw IPv4 socket for the underlay")?,
        ipip_rx: InetSocket::raw_receiver(crate::packet::ipv4::PROTO_IPIP)
            .context("raw IPIP socket")?,
        local_mac: interface.and_then(|i| interface_mac(i).ok()),
        direct_rx,
    })
}

/// The MAC address of interface `name` in the daemon's namespace (sysfs).
pub fn interface_mac(name: &str) -> io::Result<MacAddr> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("bad MAC {text:?} for {name}")))
}

/// The kernel's resolved MAC for `ip` on the underlay (the neighbour table, `/proc/net/arp`).
pub fn neighbour_mac(ip: Ipv4Addr) -> Option<MacAddr> {
    let text = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp_table(&text, ip)
}

fn parse_arp_table(text: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device; flag 0x2 = complete.
        let complete = f
            .get(2)
            .and_then(|x| u32::from_str_radix(x.trim_start_matches("0x"), 16).ok())
            .is_some_and(|fl| fl & 0x2 != 0);
        (f.first()?.parse::<Ipv4Addr>().ok()? == ip && complete)
            .then(|| f.get(3)?.parse().ok())
            .flatten()
    })
}

/// Makes the kernel resolve `ip` (one UDP datagram to the discard port; ARP follows).
pub fn probe_neighbour(local: Ipv4Addr, ip: Ipv4Addr) {
    if let Ok(s) = std::net::UdpSocket::bind((local, 0)) {
        let _ = s.send_to(&[0], (ip, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_table() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.1.0.2         0x1         0x2         02:00:00:00:00:02     *        eth0\n\
                 10.1.0.3         0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        assert_eq!(
            parse_arp_table(t, Ipv4Addr::new(10, 1, 0, 2)),
            Some(MacAddr([2, 0, 0, 0, 0, 2]))
        );
        assert_eq!(parse_arp_table(t, Ipv4Addr::new(10, 1, 0, 3)), None);
    }
}
