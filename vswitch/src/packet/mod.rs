//! Typed views over packet bytes, in the style of smoltcp: `new_checked` validates lengths once,
//! accessors then read fixed offsets (declared in each module's `field`), setters exist only for
//! mutable buffers, and nothing copies the payload. Parsing never panics on any input.

pub mod arp;
pub mod checksum;
pub mod encap;
pub mod ethernet;
pub mod gro;
pub mod gso;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod offload;

pub use arp::ArpPacket;
pub use ethernet::{EtherType, EthernetFrame};
pub use icmp::IcmpPacket;
pub use icmpv6::Icmpv6Packet;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;

/// Why bytes are not a valid packet of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the header or than the length fields claim.
    Truncated,
    /// Header fields with impossible values (wrong version, IHL < 5, unsupported ARP kind...).
    Malformed,
}

/// Byte range of a field.
pub(crate) type Field = std::ops::Range<usize>;

pub(crate) fn be16(b: &[u8], f: Field) -> u16 {
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

pub(crate) fn set_be16(b: &mut [u8], f: Field, v: u16) {
    b[f].copy_from_slice(&v.to_be_bytes());
}

/// The Internet checksum (RFC 1071) of `data`: returns the value to store in the header.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2, checksum = !0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&d), !0xddf2);
        // A buffer including its own correct checksum sums to zero.
        let mut v = d.to_vec();
        let c = internet_checksum(&v);
        v.extend_from_slice(&c.to_be_bytes());
        assert_eq!(internet_checksum(&v), 0);
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }
}
