//! The overlay as pure logic: which domain and peer a packet from the underlay belongs to
//! (decapsulation demux), and how a frame leaves for a peer (outer headers, segment sizes, the
//! socket that gives a flow its VXLAN source port). The worker only moves the bytes.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::counters::DropReason;
use super::pipeline::{DomainIdx, PeerIdx};
use crate::packet::{encap, ethernet, ipv4};

/// VNI → domain and underlay IP → peer, as one worker knows them.
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    vni_domains: HashMap<u32, DomainIdx>,
    peer_by_ip: HashMap<Ipv4Addr, PeerIdx>,
}

impl Overlay {
    pub fn set_vni(&mut self, vni: u32, domain: DomainIdx) {
        self.vni_domains.insert(vni, domain);
    }

    pub fn remove_domain(&mut self, domain: DomainIdx) {
        self.vni_domains.retain(|_, d| *d != domain);
    }

    pub fn set_peer(&mut self, ip: Ipv4Addr, peer: PeerIdx) {
        self.peer_by_ip.retain(|_, p| *p != peer);
        self.peer_by_ip.insert(ip, peer);
    }

    pub fn remove_peer(&mut self, peer: PeerIdx) {
        self.peer_by_ip.retain(|_, p| *p != peer);
    }

    pub fn peer(&self, src: Ipv4Addr) -> Option<PeerIdx> {
        self.peer_by_ip.get(&src).copied()
    }

    /// A VXLAN datagram (UDP payload) from `src`: its peer, domain and where the inner frame
    /// starts. Hostile input: never panics, every refusal names its drop reason.
    pub fn demux_vxlan(
        &self,
        src: Ipv4Addr,
        payload: &[u8],
    ) -> Result<(PeerIdx, DomainIdx), DropReason> {
        let vni = encap::parse_vxlan(payload).map_err(|_| DropReason::MalformedTunnel)?;
        let peer = self.peer(src).ok_or(DropReason::UnknownPeer)?;
        let dom = *self.vni_domains.get(&vni).ok_or(DropReason::UnknownVni)?;
        Ok((peer, dom))
    }

    /// An IPIP packet (outer IPv4 header first) from `src`: the peer and the inner packet's
    /// offset and length.
    pub fn demux_ipip(
        &self,
        src: Ipv4Addr,
        pkt: &[u8],
    ) -> Result<(PeerIdx, usize, usize), DropReason> {
        let (_, hl, total) = encap::outer_ipv4(pkt).map_err(|_| DropReason::MalformedTunnel)?;
        let peer = self.peer(src).ok_or(DropReason::UnknownPeer)?;
        let inner = total.min(pkt.len()).saturating_sub(hl);
        if inner < ipv4::MIN_HEADER_LEN {
            return Err(DropReason::MalformedTunnel);
        }
        Ok((peer, hl, inner))
    }
}

/// The 8-byte VXLAN header for `vni` (RFC 7348: I flag, 24-bit VNI).
pub fn vxlan_header(vni: u32) -> [u8; encap::VXLAN_HDR_LEN] {
    let v = vni.to_be_bytes();
    [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// An outer IPv4 header (protocol 4) for an inner packet of `inner_len` bytes. The kernel
/// fills in the ID; the checksum is ours (the raw socket recomputes it anyway).
pub fn ipip_header(src: Ipv4Addr, dst: Ipv4Addr, tos: u8, inner_len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    let total = 20 + inner_len;
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[8] = 64;
    h[9] = ipv4::PROTO_IPIP;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = crate::packet::checksum::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Bytes an encapsulation adds in front of the inner Ethernet frame's IP packet (VXLAN carries
/// the Ethernet header too).
pub fn overhead(vxlan: bool) -> usize {
    if vxlan {
        encap::VXLAN_PUSH + ethernet::HEADER_LEN
    } else {
        encap::IPIP_PUSH
    }
}

/// Payload bytes per segment when a superframe with headers of `hdr_len` (Ethernet included)
/// and the sender's `gso_size` leaves through an underlay of `mtu` with `outer` bytes of
/// encapsulation in front of the IP packet: the sender's size unless it would not fit.
pub fn segment_payload(gso_size: u16, hdr_len: usize, outer: usize, mtu: u16) -> usize {
    let ip_hdrs = hdr_len.saturating_sub(ethernet::HEADER_LEN);
    let fits = usize::from(mtu).saturating_sub(outer + ip_hdrs);
    usize::from(gso_size).min(fits).max(1)
}

/// Which of `n` VXLAN sockets (distinct source ports) carries a flow.
pub fn vxlan_socket(flow_hash: u32, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (flow_hash as usize) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn overlay() -> Overlay {
        let mut o = Overlay::default();
        o.set_vni(100, 3);
        o.set_peer(Ipv4Addr::new(10, 0, 0, 2), 7);
        o
    }

    #[test]
    fn demux_known_unknown() {
        let o = overlay();
        let mut p = vxlan_header(100).to_vec();
        p.extend_from_slice(&[0u8; 14]);
        assert_eq!(o.demux_vxlan(Ipv4Addr::new(10, 0, 0, 2), &p), Ok((7, 3)));
        assert_eq!(
            o.demux_vxlan(Ipv4Addr::new(10, 0, 0, 9), &p),
            Err(DropReason::UnknownPeer)
        );
        let mut q = vxlan_header(200).to_vec();
        q.extend_from_slice(&[0u8; 14]);
        assert_eq!(
            o.demux_vxlan(Ipv4Addr::new(10, 0, 0, 2), &q),
            Err(DropReason::UnknownVni)
        );
        assert_eq!(
            o.demux_vxlan(Ipv4Addr::new(10, 0, 0, 2), &p[..10]),
            Err(DropReason::MalformedTunnel)
        );
        let mut r = o.clone();
        r.remove_domain(3);
        assert_eq!(
            r.demux_vxlan(Ipv4Addr::new(10, 0, 0, 2), &p),
            Err(DropReason::UnknownVni)
        );
        r.remove_peer(7);
        assert_eq!(r.peer(Ipv4Addr::new(10, 0, 0, 2)), None);
    }

    #[test]
    fn headers_and_sizes() {
        let h = ipip_header(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            0,
            1480,
        );
        assert_eq!(crate::packet::checksum::checksum(&h), 0);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 1500);
        // 1500 underlay, VXLAN: 50 outer + 14 inner Ethernet; TCP/IPv4 with timestamps.
        assert_eq!(segment_payload(1398, 14 + 20 + 32, 50, 1500), 1398);
        assert_eq!(segment_payload(1448, 14 + 20 + 32, 50, 1500), 1398);
        assert_eq!(vxlan_socket(7, 4), 3);
        assert_eq!(vxlan_socket(7, 0), 0);
    }

    proptest! {
        #[test]
        fn demux_never_panics(src in any::<u32>(), b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let o = overlay();
            let _ = o.demux_vxlan(Ipv4Addr::from(src), &b);
            if let Ok((_, hl, n)) = o.demux_ipip(Ipv4Addr::from(src), &b) {
                prop_assert!(hl + n <= b.len());
            }
        }
    }
}
