//! Internet checksum arithmetic (RFC 1071) fast enough for 64 KiB superframes: words are summed
//! 8 bytes at a time in native byte order (the one's complement sum is byte-order independent,
//! RFC 1071 section 2(B)), and pieces of a packet that start at odd offsets are handled by
//! [`Sum`], so a checksum can be built over headers and scattered payload chunks without copying.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Sum of native-endian 16-bit words of `data`, as if it started at an even offset; not folded.
#[inline]
fn raw_sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Two 32-bit halves into a 64-bit accumulator cannot overflow for any packet size.
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        let w = u64::from_ne_bytes(last);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    acc
}

#[inline]
fn fold_ne(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A running one's complement sum over consecutive pieces of one packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum {
    /// Folded partial sum in big-endian (network) word order.
    acc: u32,
    /// The next piece starts at an odd offset of the packet.
    odd: bool,
}

impl Sum {
    pub const ZERO: Sum = Sum { acc: 0, odd: false };

    /// Starts from a 16-bit value already in network order (e.g. a pseudo-header sum).
    pub fn from_be16(v: u16) -> Sum {
        Sum {
            acc: u32::from(v),
            odd: false,
        }
    }

    /// Adds the bytes of the next piece.
    #[inline]
    pub fn bytes(mut self, data: &[u8]) -> Sum {
        let mut v = u16::from_be(fold_ne(raw_sum(data)));
        if self.odd {
            v = v.swap_bytes();
        }
        self.acc += u32::from(v);
        self.odd ^= data.len() % 2 == 1;
        self
    }

    /// Adds a 16-bit big-endian word at an even position (header fields).
    #[inline]
    pub fn add_u16(mut self, v: u16) -> Sum {
        debug_assert!(!self.odd);
        self.acc += u32::from(v);
        self
    }

    /// The folded sum (not complemented), in network order.
    #[inline]
    pub fn fold(self) -> u16 {
        let mut s = self.acc;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// The value to store in a checksum field.
    #[inline]
    pub fn finish(self) -> u16 {
        !self.fold()
    }
}

/// Checksum of `data` (the value to store in the header).
pub fn checksum(data: &[u8]) -> u16 {
    Sum::ZERO.bytes(data).finish()
}

/// Sum of the IPv4 pseudo-header for an L4 segment of `len` bytes.
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Sum {
    let (s, d) = (src.octets(), dst.octets());
    Sum::ZERO
        .add_u16(u16::from_be_bytes([s[0], s[1]]))
        .add_u16(u16::from_be_bytes([s[2], s[3]]))
        .add_u16(u16::from_be_bytes([d[0], d[1]]))
        .add_u16(u16::from_be_bytes([d[2], d[3]]))
        .add_u16(u16::from(proto))
        .add_u16((len & 0xffff) as u16)
        .add_u16((len >> 16) as u16)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1).
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> Sum {
    let mut s = Sum::ZERO.bytes(&src.octets()).bytes(&dst.octets());
    s = s.add_u16((len >> 16) as u16).add_u16((len & 0xffff) as u16);
    s.add_u16(u16::from(next))
}

/// Updates a checksum for one 16-bit field changing from `old` to `new` (RFC 1624 eqn. 3).
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!check) + u32::from(!old) + u32::from(new);
    let s = (s & 0xffff) + (s >> 16);
    !(((s & 0xffff) + (s >> 16)) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook definition, 16 bits at a time.
    fn reference(data: &[u8]) -> u16 {
        crate::packet::internet_checksum(data)
    }

    #[test]
    fn rfc1071_example_and_odd_lengths() {
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&d), !0xddf2);
        assert_eq!(checksum(&[0xff]), !0xff00);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn update16_matches_recompute() {
        let mut h = [
            0x45u8, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] = 63;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let c2 = update16(c, old, new);
        h[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c2, checksum(&h));
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn pieces_sum_like_the_whole(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(0usize..2000, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut s = Sum::ZERO;
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                s = s.bytes(&data[at..c]);
                at = c;
            }
            prop_assert_eq!(s.finish(), reference(&data));
        }
    }
}
