//! Counters: one per drop reason (shown by `vswitchctl stats` and the metrics), and per port.

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
    SpoofedSrcIp => "spoofed_src_ip": "IPv4/IPv6 source address is not one of the port's addresses",
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
}

/// Drop counters by reason, shared by all workers.
#[derive(Debug)]
pub struct DropCounters([AtomicU64; DropReason::COUNT]);

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl DropCounters {
    #[inline]
    pub fn inc(&self, r: DropReason) {
        self.0[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize].load(Ordering::Relaxed)
    }
    pub fn snapshot(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r))).collect()
    }
}

/// Per-port counters (Firecracker style: one struct per device, a counter at every exit).
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_errors: AtomicU64,
}

impl PortCounters {
    #[inline]
    pub fn rx(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    #[inline]
    pub fn tx(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
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
    }
}
