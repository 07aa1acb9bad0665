//! In-process rtnetlink for pod plumbing (`netlink-packet-route` + `netlink-sys`, the crates
//! netavark uses): links, addresses, routes, one synchronous request at a time.
//!
//! A [`Netlink`] socket belongs to the network namespace it was opened in. [`Netlink::open_in`]
//! opens it on a short-lived thread that has joined the pod's namespace (`sys::netns`) and hands
//! it back: the socket stays bound to the pod's namespace while no long-lived thread ever
//! changes namespace. Every failure names the step and carries the kernel's errno.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use vswitch_config::{Ipv4Net, MacAddr};

/// A failed netlink step: what was being done, and the kernel's answer (errno included).
#[derive(Debug, thiserror::Error)]
#[error("netlink {step}: {source}")]
pub struct NetlinkError {
    pub step: String,
    #[source]
    pub source: io::Error,
}

impl NetlinkError {
    fn new(step: impl Into<String>, source: io::Error) -> NetlinkError {
        NetlinkError {
            step: step.into(),
            source,
        }
    }

    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// An rtnetlink socket bound to one network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        let step = "open socket";
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::new(step, e))?;
        sock.bind_auto().map_err(|e| NetlinkError::new(step, e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::new(step, e))?;
        Ok(Netlink {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// A socket in the network namespace at `netns`, opened by a thread that joins it only
    /// for that.
    pub fn open_in(netns: &Path) -> Result<Netlink> {
        crate::sys::netns::run_in_netns(netns, Netlink::open)
            .map_err(|e| NetlinkError::new(format!("enter netns {}", netns.display()), e))?
    }

    /// Sends one request and collects the replies (several for a dump) until the ACK/DONE.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        step: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        self.sock
            .send(&out, 0)
            .map_err(|e| NetlinkError::new(step, e))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| NetlinkError::new(step, e))?;
            let mut off = 0;
            while off < n {
                let bytes = &self.buf[off..n];
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| NetlinkError::new(step, io::Error::other(e.to_string())))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::new(step, io::Error::other("empty reply")));
                }
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(NetlinkError::new(step, e.to_io())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump {
                            // A non-dump request with NLM_F_ACK ends with the ACK.
                            continue;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The index of link `name`, or None if there is no such link.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            RouteNetlinkMessage::GetLink(m),
            NLM_F_ACK,
            &format!("find link {name}"),
        ) {
            Ok(r) => Ok(r.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The MAC address of link `index`.
    pub fn link_mac(&mut self, index: u32) -> Result<Option<MacAddr>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let r = self.request(
            RouteNetlinkMessage::GetLink(m),
            NLM_F_ACK,
            &format!("read link {index}"),
        )?;
        Ok(r.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Address(b) if b.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&b);
                    Some(MacAddr(mac))
                }
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Creates veth `host` here (no ARP) with its peer `peer` directly in the namespace at
    /// `peer_netns` (no device move afterwards), both with `mtu`.
    pub fn add_veth(&mut self, host: &str, peer: &str, mtu: u16, peer_netns: &Path) -> Result<()> {
        let step = format!("create veth {host}/{peer}");
        let ns = std::fs::File::open(peer_netns).map_err(|e| NetlinkError::new(&step, e))?;
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::Mtu(u32::from(mtu)));
        p.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Noarp;
        m.header.change_mask = LinkFlags::Noarp;
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Mtu(u32::from(mtu)));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &step,
        )?;
        drop(ns);
        Ok(())
    }

    /// Changes link `index`: new name, MAC, MTU (each if given) and up or not.
    pub fn set_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mac: Option<MacAddr>,
        mtu: Option<u16>,
        up: bool,
        step: &str,
    ) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        if let Some(n) = name {
            m.attributes.push(LinkAttribute::IfName(n.to_string()));
        }
        if let Some(a) = mac {
            m.attributes.push(LinkAttribute::Address(a.0.to_vec()));
        }
        if let Some(t) = mtu {
            m.attributes.push(LinkAttribute::Mtu(u32::from(t)));
        }
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_ACK, step)?;
        Ok(())
    }

    /// Deletes link `index`.
    pub fn del_link(&mut self, index: u32, step: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK, step)?;
        Ok(())
    }

    /// Adds `ip/prefix` on link `index`.
    pub fn add_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {ip}/{prefix}"),
        )?;
        Ok(())
    }

    fn route_msg(dst: Ipv4Net, kind: RouteType) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = kind;
        m.header.scope = RouteScope::Universe;
        if dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst.addr())));
        }
        m
    }

    /// Adds route `dst` via `via` out of link `index`.
    pub fn add_route(&mut self, index: u32, dst: Ipv4Net, via: Ipv4Addr) -> Result<()> {
        let mut m = Self::route_msg(dst, RouteType::Unicast);
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(via)));
        m.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {dst} via {via}"),
        )?;
        Ok(())
    }

    /// Adds (or replaces) a blackhole route for `dst`, or removes it.
    pub fn blackhole(&mut self, dst: Ipv4Net, present: bool) -> Result<()> {
        let m = Self::route_msg(dst, RouteType::BlackHole);
        if present {
            self.request(
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_ACK | NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
                &format!("blackhole route {dst}"),
            )?;
        } else {
            self.request(
                RouteNetlinkMessage::DelRoute(m),
                NLM_F_ACK,
                &format!("delete blackhole route {dst}"),
            )?;
        }
        Ok(())
    }

    /// IPv4 addresses on link `index`, as `a.b.c.d/len`.
    pub fn addrs(&mut self, index: u32) -> Result<Vec<String>> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let r = self.request(
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_DUMP,
            "list addresses",
        )?;
        Ok(r.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(IpAddr::V4(ip)) => {
                            Some(format!("{ip}/{}", a.header.prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// IPv4 routes of the main table out of link `index`: (destination, gateway).
    pub fn routes(&mut self, index: u32) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>)>> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let r = self.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP, "list routes")?;
        let mut out = Vec::new();
        for m in r {
            let RouteNetlinkMessage::NewRoute(rt) = m else {
                continue;
            };
            if rt.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let (mut dst, mut via, mut oif) = (Ipv4Addr::UNSPECIFIED, None, None);
            for a in &rt.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            if let Ok(net) = Ipv4Net::new(dst, rt.header.destination_prefix_length) {
                out.push((net, via));
            }
        }
        Ok(out)
    }

    /// Deletes the unresolved (incomplete or failed) neighbour entries on link `index`, so the
    /// next packet towards one of them resolves it at once instead of at its retransmit timer.
    /// Returns how many were removed.
    pub fn flush_unresolved_neighbours(&mut self, index: u32) -> Result<usize> {
        let r = self.request(
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
            "list neighbours",
        )?;
        let mut n = 0;
        for m in r {
            let RouteNetlinkMessage::NewNeighbour(nb) = m else {
                continue;
            };
            if nb.header.ifindex != index
                || !matches!(
                    nb.header.state,
                    NeighbourState::Incomplete | NeighbourState::Failed
                )
            {
                continue;
            }
            let mut del = NeighbourMessage::default();
            del.header = nb.header.clone();
            del.attributes = nb
                .attributes
                .into_iter()
                .filter(|a| {
                    matches!(
                        a,
                        netlink_packet_route::neighbour::NeighbourAttribute::Destination(_)
                    )
                })
                .collect();
            self.request(
                RouteNetlinkMessage::DelNeighbour(del),
                NLM_F_ACK,
                "delete unresolved neighbour",
            )?;
            n += 1;
        }
        Ok(n)
    }
}
