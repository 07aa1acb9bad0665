//! Outer headers for traffic between nodes, written into the headroom in front of the inner
//! packet (no payload copy): VXLAN (RFC 7348: IPv4 + UDP + 8-byte VXLAN header + inner Ethernet
//! frame) and IPIP (RFC 2003: IPv4 + inner IPv4 packet). Also the decap side and the flow hash that
//! picks the VXLAN UDP source port, so that the underlay's ECMP/RSS spreads flows.

use std::net::Ipv4Addr;

use super::{
    be16, internet_checksum, ipv4, set_be16, EtherType, EthernetFrame, Ipv4Packet, ParseError,
};

pub const VXLAN_HDR_LEN: usize = 8;
pub const UDP_HDR_LEN: usize = 8;
/// Bytes in front of the inner Ethernet frame: IPv4 + UDP + VXLAN.
pub const VXLAN_PUSH: usize = ipv4::MIN_HEADER_LEN + UDP_HDR_LEN + VXLAN_HDR_LEN;
/// Bytes in front of the inner IPv4 packet.
pub const IPIP_PUSH: usize = ipv4::MIN_HEADER_LEN;
const VXLAN_FLAG_VNI: u8 = 0x08;

fn write_ipv4(b: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total: usize, tos: u8) {
    b[0] = 0x45;
    b[1] = tos;
    set_be16(b, 2..4, total as u16);
    set_be16(b, 4..6, 0); // the kernel picks an IP ID for us
    set_be16(b, 6..8, 0); // DF clear, like the kernel's vxlan/ipip default
    b[8] = 64;
    b[9] = proto;
    set_be16(b, 10..12, 0);
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.octets());
    let c = internet_checksum(&b[..20]);
    set_be16(b, 10..12, c);
}

/// Prepends IPv4/UDP/VXLAN headers to the inner frame at `buf[off..off + len]`; returns the offset
/// of the outer IPv4 header. `off` must leave [`VXLAN_PUSH`] bytes of headroom.
#[allow(clippy::too_many_arguments)]
pub fn push_vxlan(
    buf: &mut [u8],
    off: usize,
    len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    vni: u32,
) -> usize {
    let start = off - VXLAN_PUSH;
    let total = VXLAN_PUSH + len;
    let h = &mut buf[start..off];
    write_ipv4(h, src, dst, ipv4::PROTO_UDP, total, 0);
    let udp = &mut h[20..28];
    set_be16(udp, 0..2, src_port);
    set_be16(udp, 2..4, dst_port);
    set_be16(udp, 4..6, (total - 20) as u16);
    set_be16(udp, 6..8, 0); // zero UDP checksum: allowed for VXLAN over IPv4 (RFC 7348 5)
    let vx = &mut h[28..36];
    vx.fill(0);
    vx[0] = VXLAN_FLAG_VNI;
    vx[4..7].copy_from_slice(&vni.to_be_bytes()[1..4]);
    start
}

/// Prepends an outer IPv4 header (protocol 4) to the inner IPv4 packet at `buf[off..off + len]`;
/// returns the outer header's offset.
pub fn push_ipip(
    buf: &mut [u8],
    off: usize,
    len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tos: u8,
) -> usize {
    let start = off - IPIP_PUSH;
    write_ipv4(
        &mut buf[start..off],
        src,
        dst,
        ipv4::PROTO_IPIP,
        IPIP_PUSH + len,
        tos,
    );
    start
}

/// Parses a VXLAN header (the UDP payload); returns the VNI. The inner frame follows at
/// [`VXLAN_HDR_LEN`].
pub fn parse_vxlan(payload: &[u8]) -> Result<u32, ParseError> {
    if payload.len() < VXLAN_HDR_LEN + super::ethernet::HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    if payload[0] & VXLAN_FLAG_VNI == 0 {
        return Err(ParseError::Malformed);
    }
    Ok(u32::from_be_bytes([0, payload[4], payload[5], payload[6]]))
}

/// A hash of the inner flow (MACs, IPs, protocol, L4 ports) — stable for a flow.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        mix(frame);
        return h;
    };
    if eth.ethertype() == EtherType::Ipv4 {
        if let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) {
            mix(&ip.src().octets());
            mix(&ip.dst().octets());
            mix(&[ip.protocol()]);
            let p = ip.payload();
            if matches!(ip.protocol(), ipv4::PROTO_TCP | ipv4::PROTO_UDP)
                && p.len() >= 4
                && !ip.is_fragment()
            {
                mix(&p[..4]);
            }
            return h;
        }
    }
    mix(&frame[..12]);
    h
}

/// VXLAN UDP source port for a flow hash: in the dynamic range 49152..=65535 (RFC 7348 5).
pub fn vxlan_src_port(hash: u32) -> u16 {
    49152 + (hash % 16384) as u16
}

/// Outer fields of a received IPv4 packet: (source, header length, total length).
pub fn outer_ipv4(b: &[u8]) -> Result<(Ipv4Addr, usize, usize), ParseError> {
    let p = Ipv4Packet::new_checked(b)?;
    Ok((p.src(), p.header_len(), p.total_len()))
}

/// Builds, in `out`, an ICMP "fragmentation needed" (type 3 code 4, RFC 1191) from `gw_ip`/`gw_mac`
/// to the sender of `orig` (an Ethernet frame carrying IPv4), quoting its IP header and 8 bytes.
/// Returns the frame length, or `None` if `orig` is not IPv4.
pub fn frag_needed(
    out: &mut [u8],
    orig: &[u8],
    gw_ip: Ipv4Addr,
    gw_mac: vswitch_config::MacAddr,
    mtu: u16,
) -> Option<usize> {
    let eth = EthernetFrame::new_checked(orig).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let quote_len = (ip.header_len() + 8).min(ip.total_len());
    let quote = &eth.payload()[..quote_len];
    let icmp_len = 8 + quote_len;
    let total = 14 + 20 + icmp_len;
    if out.len() < total {
        return None;
    }
    out[0..6].copy_from_slice(&eth.src().0);
    out[6..12].copy_from_slice(&gw_mac.0);
    set_be16(out, 12..14, 0x0800);
    ipv4::emit(&mut out[14..], gw_ip, ip.src(), ipv4::PROTO_ICMP, icmp_len);
    let icmp = &mut out[34..34 + icmp_len];
    icmp[0] = 3;
    icmp[1] = 4;
    set_be16(icmp, 2..4, 0);
    set_be16(icmp, 4..6, 0);
    set_be16(icmp, 6..8, mtu);
    icmp[8..].copy_from_slice(quote);
    let c = internet_checksum(icmp);
    set_be16(icmp, 2..4, c);
    Some(total)
}

/// Decrements the TTL of the IPv4 header at `b` and patches its checksum incrementally (RFC 1624).
pub fn decrement_ttl(b: &mut [u8]) {
    if b.len() < 20 || b[8] == 0 {
        return;
    }
    b[8] -= 1;
    // TTL is the high byte of the 16-bit word at offset 8: the checksum grows by 0x0100.
    let sum = u32::from(be16(b, 10..12)) + 0x0100;
    let folded = (sum & 0xffff) + (sum >> 16);
    set_be16(b, 10..12, folded as u16);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_config::MacAddr;

    fn ttl(b: &[u8]) -> u8 {
        Ipv4Packet::new_checked(b).map(|p| p.ttl()).unwrap_or(0)
    }

    fn inner_frame() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 28];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        ipv4::emit(
            &mut f[14..],
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 2, 3),
            ipv4::PROTO_UDP,
            8,
        );
        f[34..38].copy_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        f
    }

    #[test]
    fn vxlan_layout() {
        let inner = inner_frame();
        let mut buf = vec![0u8; 256 + inner.len()];
        buf[256..].copy_from_slice(&inner);
        let start = push_vxlan(
            &mut buf,
            256,
            inner.len(),
            Ipv4Addr::new(10, 1, 5, 11),
            Ipv4Addr::new(10, 1, 8, 21),
            50000,
            4789,
            0x12_3456,
        );
        let outer = &buf[start..];
        let ip = Ipv4Packet::new_checked(outer).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.protocol(), ipv4::PROTO_UDP);
        assert_eq!(ip.total_len(), outer.len());
        let udp = ip.payload();
        assert_eq!(be16(udp, 0..2), 50000);
        assert_eq!(be16(udp, 2..4), 4789);
        assert_eq!(usize::from(be16(udp, 4..6)), udp.len());
        assert_eq!(parse_vxlan(&udp[8..]).unwrap(), 0x12_3456);
        assert_eq!(&udp[16..], &inner[..]);
    }

    #[test]
    fn ipip_layout_and_ttl() {
        let inner = inner_frame();
        let mut buf = vec![0u8; 256 + inner.len()];
        buf[256..].copy_from_slice(&inner);
        let ip_off = 256 + 14;
        decrement_ttl(&mut buf[ip_off..]);
        assert!(
            Ipv4Packet::new_checked(&buf[ip_off..])
                .unwrap()
                .verify_checksum(),
            "incremental checksum"
        );
        assert_eq!(ttl(&buf[ip_off..]), 63);
        let start = push_ipip(
            &mut buf,
            ip_off,
            inner.len() - 14,
            Ipv4Addr::new(10, 1, 5, 11),
            Ipv4Addr::new(10, 1, 8, 21),
            0,
        );
        let (src, hl, total) = outer_ipv4(&buf[start..]).unwrap();
        assert_eq!(
            (src, hl, total),
            (Ipv4Addr::new(10, 1, 5, 11), 20, 20 + inner.len() - 14)
        );
        assert_eq!(buf[start + 9], 4);
    }

    #[test]
    fn flow_hash_is_per_flow() {
        let a = inner_frame();
        let mut b = a.clone();
        b[34] ^= 1; // other source port
        assert_eq!(flow_hash(&a), flow_hash(&a.clone()));
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert!(vxlan_src_port(flow_hash(&a)) >= 49152);
        assert!(flow_hash(&[]) != 0 || flow_hash(&[1]) != 0);
    }

    #[test]
    fn frag_needed_quotes_header() {
        let orig = inner_frame();
        let mut out = [0u8; 128];
        let n = frag_needed(
            &mut out,
            &orig,
            Ipv4Addr::new(10, 244, 0, 1),
            MacAddr([2, 0xaa, 0, 0, 0, 1]),
            1430,
        )
        .unwrap();
        let ip = Ipv4Packet::new_checked(&out[14..n]).unwrap();
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 244, 1, 2));
        let icmp = ip.payload();
        assert_eq!((icmp[0], icmp[1], be16(icmp, 6..8)), (3, 4, 1430));
        assert_eq!(internet_checksum(icmp), 0);
        assert_eq!(&icmp[8..], &orig[14..14 + 28]);
    }
}
