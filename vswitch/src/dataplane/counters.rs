//! Counters: one per drop reason (shown by `vswitchctl stats` and the metrics), and per port.
//!
//! Each worker has its own set and is its only writer, so an increment is a plain load and store
//! on a cache line no other core writes (no locked instruction); the control thread sums the
//! workers' sets when it reads them.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal : $doc:literal,)*) => {
        /// Why a frame was dropped. Every drop point in the dataplane names one of these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $(#[doc = $doc] $variant,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();
            /// The stable name used in stats, metrics and traces.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    FrameTooShort => "frame_too_short": "shorter than an Ethernet header",
    FrameTooLong => "frame_too_long": "longer than the network MTU plus the Ethernet header",
    InvalidSrcMac => "invalid_src_mac": "source MAC is multicast or zero",
    SpoofedSrcMac => "spoofed_src_mac": "source MAC is not the port's MAC",
    SpoofedSrcIp => "spoofed_src_ip": "IPv4 source address is not one of the port's addresses",
    SpoofedArp => "spoofed_arp": "ARP sender MAC/IP is not the port's",
    MalformedArp => "malformed_arp": "ARP body truncated or not Ethernet/IPv4 ARP",
    MalformedIpv4 => "malformed_ipv4": "IPv4 header truncated, bad version/IHL, or total length beyond the frame",
    MalformedIpv6 => "malformed_ipv6": "IPv6 header truncated or bad version",
    MalformedIcmp => "malformed_icmp": "ICMP to the gateway truncated or with a bad checksum",
    VlanTagged => "vlan_tagged": "802.1Q/802.1ad tagged frame on an access port",
    UnsupportedEthertype => "unsupported_ethertype": "EtherType other than IPv4, ARP or IPv6",
    NotForGateway => "not_for_gateway": "sent to the gateway MAC but not to the gateway IP (no routing in an L2 network)",
    Hairpin => "hairpin": "destination is the port the frame came from",
    PortGone => "port_gone": "destination port was removed",
    TxFailed => "tx_failed": "the destination device refused the frame (queue full or down)",
    BufferPoolEmpty => "buffer_pool_empty": "no free packet buffer",
    NoRoute => "no_route": "no local port or peer block for the destination",
    TtlExpired => "ttl_expired": "IPv4 TTL would reach zero while routing",
    L3NotRouted => "l3_not_routed": "an L3 network only routes IPv4 via the gateway; other frames stop here",
    MtuExceeded => "mtu_exceeded": "too big for the underlay after encapsulation and not IPv4 (no ICMP possible)",
    UnknownVni => "unknown_vni": "VXLAN with a VNI that no network here uses",
    UnknownPeer => "unknown_peer": "encapsulated traffic from an address that is not a known peer",
    MalformedTunnel => "malformed_tunnel": "VXLAN/IPIP/direct packet from the underlay too short or malformed",
    BadOffload => "bad_offload": "virtio-net header with an unknown GSO type, a GSO without segment size, or a checksum position outside the frame",
    Unsegmentable => "unsegmentable": "a superframe for an egress without offloads that is not TCP/UDP over IPv4/IPv6 (cannot be cut in software)",
    // IPv6 first-hop security (dataplane/ipv6.rs).
    SpoofedSrcIpv6 => "spoofed_src_ipv6": "IPv6 source is not the port's link-local (EUI-64 of its MAC) or an assigned address (:: only for DAD, MLD reports, RS)",
    NdSpoofedTarget => "nd_spoofed_target": "neighbour advertisement or DAD probe for an address the port does not own",
    NdSpoofedLladdr => "nd_spoofed_lladdr": "ND source/target link-layer address option is not the port's MAC",
    RogueRa => "rogue_ra": "router advertisement from a port not marked router (RA guard)",
    RogueRedirect => "rogue_redirect": "ICMPv6 redirect from a port not marked router",
    RogueDhcpv6 => "rogue_dhcpv6": "DHCPv6 server/relay message (to UDP 546 or from 547) from a port not marked router",
    RogueMldQuery => "rogue_mld_query": "MLD query from a port not marked router",
    MalformedNd => "malformed_nd": "ND message truncated, bad checksum/options/code, hop limit not 255, or fragmented",
    MalformedMld => "malformed_mld": "MLD report/done truncated, bad checksum, hop limit not 1, no router alert, source not link-local, or fragmented",
    Ipv6HeaderChain => "ipv6_header_chain": "IPv6 extension headers truncated, too many, or the upper-layer header not in the first fragment (RFC 7112)",
}

macro_rules! absorbed_kinds {
    ($($variant:ident => $name:literal : $doc:literal,)*) => {
        /// Frames the switch consumed as the protocol's peer: counted, not drops (nothing was
        /// lost; nobody else needed them).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Absorbed { $(#[doc = $doc] $variant,)* }

        impl Absorbed {
            pub const ALL: &'static [Absorbed] = &[$(Absorbed::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();
            /// The stable name used in stats and metrics.
            pub fn name(self) -> &'static str {
                match self { $(Absorbed::$variant => $name,)* }
            }
        }
    };
}

absorbed_kinds! {
    MldReport => "mld_report": "MLD report or done: used for snooping, not sent to other pods",
    RouterSolicit => "router_solicit": "router solicitation in a network without a router port (the switch routes no IPv6)",
    McastNoListener => "mcast_no_listener": "IPv6 multicast no other port listens to (DAD probes, NS for unknown targets)",
}

/// Drop counters by reason, and absorbed-frame counters, of one worker.
#[derive(Debug)]
pub struct DropCounters([AtomicU64; DropReason::COUNT], [AtomicU64; Absorbed::COUNT]);

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters(
            std::array::from_fn(|_| AtomicU64::new(0)),
            std::array::from_fn(|_| AtomicU64::new(0)),
        )
    }
}

impl DropCounters {
    /// Counts one drop. Only the owning worker calls this.
    #[inline]
    pub fn inc(&self, r: DropReason) {
        bump(&self.0[r as usize], 1);
    }
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize].load(Ordering::Relaxed)
    }
    pub fn snapshot(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r))).collect()
    }
    #[inline]
    pub fn absorb(&self, a: Absorbed) {
        bump(&self.1[a as usize], 1);
    }
    pub fn absorbed(&self) -> Vec<(Absorbed, u64)> {
        Absorbed::ALL
            .iter()
            .map(|a| (*a, self.1[*a as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Per-port counters of one worker (Firecracker style: one struct per device, a counter at every
/// exit). Packets count frames as the switch handled them: a superframe counts once.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_errors: AtomicU64,
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl PortCounters {
    #[inline]
    pub fn rx(&self, bytes: usize) {
        bump(&self.rx_packets, 1);
        bump(&self.rx_bytes, bytes as u64);
    }
    #[inline]
    pub fn tx(&self, bytes: usize) {
        bump(&self.tx_packets, 1);
        bump(&self.tx_bytes, bytes as u64);
    }
    #[inline]
    pub fn tx_error(&self, n: u64) {
        bump(&self.tx_errors, n);
    }
    #[inline]
    pub fn rx_drop(&self) {
        bump(&self.rx_dropped, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_snake_case() {
        let names: HashSet<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
        let absorbed: HashSet<_> = Absorbed::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(absorbed.len(), Absorbed::COUNT);
        let names: HashSet<_> = names.union(&absorbed).copied().collect();
        for n in names {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
                "{n}"
            );
        }
        let c = DropCounters::default();
        c.inc(DropReason::Hairpin);
        assert_eq!(c.get(DropReason::Hairpin), 1);
        c.absorb(Absorbed::MldReport);
        assert_eq!(c.absorbed()[Absorbed::MldReport as usize].1, 1);
    }
}
