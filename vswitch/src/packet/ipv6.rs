//! IPv6 fixed header (RFC 8200) and its extension-header chain: enough for anti-spoofing,
//! first-hop security (which upper-layer protocol a packet really carries, RFC 7112/7113) and
//! forwarding.

use std::net::Ipv6Addr;

use super::{be16, set_be16, Field, ParseError};

mod field {
    use super::Field;
    pub const VERSION: usize = 0;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

pub const HEADER_LEN: usize = 40;

/// Next-header values this crate looks at.
pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_TCP: u8 = 6;
pub const NH_UDP: u8 = 17;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_ESP: u8 = 50;
pub const NH_AH: u8 = 51;
pub const NH_ICMPV6: u8 = 58;
pub const NH_NONE: u8 = 59;
pub const NH_DEST_OPTS: u8 = 60;

/// More extension headers than this and the chain is refused (RFC 7113 asks RA guard to drop
/// what it cannot inspect; legitimate traffic carries one or two).
pub const MAX_EXT_HEADERS: usize = 8;

/// Hop-by-hop option "router alert" (RFC 2711); value 0 = MLD.
pub const OPT_ROUTER_ALERT: u8 = 5;
pub const ROUTER_ALERT_MLD: u16 = 0;

#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn addr(b: &[u8], f: Field) -> Ipv6Addr {
    let a: [u8; 16] = b[f].try_into().expect("16 bytes");
    Ipv6Addr::from(a)
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if b[field::VERSION] >> 4 != 6 {
            return Err(ParseError::Malformed);
        }
        if HEADER_LEN + usize::from(be16(b, field::PAYLOAD_LEN)) > b.len() {
            return Err(ParseError::Truncated);
        }
        Ok(Ipv6Packet { buffer })
    }
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }
    pub fn src(&self) -> Ipv6Addr {
        addr(self.buffer.as_ref(), field::SRC)
    }
    pub fn dst(&self) -> Ipv6Addr {
        addr(self.buffer.as_ref(), field::DST)
    }
    /// The payload as the length field gives it (Ethernet padding after it excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len()]
    }
    /// Walks the extension headers to the upper-layer header.
    pub fn chain(&self) -> Result<HeaderChain, ChainError> {
        HeaderChain::walk(self.next_header(), self.payload())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    pub fn set_src(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }
    pub fn set_dst(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let n = self.payload_len();
        &mut self.buffer.as_mut()[HEADER_LEN..HEADER_LEN + n]
    }
}

/// Writes a fixed IPv6 header (traffic class and flow label 0) into `b[..40]`.
pub fn emit(
    b: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload_len: usize,
    hop_limit: u8,
) {
    b[..HEADER_LEN].fill(0);
    b[field::VERSION] = 0x60;
    set_be16(b, field::PAYLOAD_LEN, payload_len as u16);
    b[field::NEXT_HEADER] = next_header;
    b[field::HOP_LIMIT] = hop_limit;
    b[field::SRC].copy_from_slice(&src.octets());
    b[field::DST].copy_from_slice(&dst.octets());
}

/// A fragment header's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Offset in 8-byte units; 0 for the first fragment.
    pub offset: u16,
    pub more: bool,
}

/// What the extension-header chain of a packet leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderChain {
    /// The upper-layer protocol (or [`NH_NONE`]); `None` in a non-first fragment, where only the
    /// first fragment can tell.
    pub upper: Option<u8>,
    /// Where the upper-layer header starts in the IPv6 payload.
    pub upper_offset: usize,
    /// The hop-by-hop router-alert option's value, if present.
    pub router_alert: Option<u16>,
    pub fragment: Option<Fragment>,
    /// Number of extension headers walked.
    pub ext_headers: usize,
}

/// Why the upper layer of a packet cannot be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// An extension header runs past the payload (in a first fragment: the chain is split
    /// across fragments, which RFC 7112 forbids).
    Truncated,
    /// More than [`MAX_EXT_HEADERS`], a hop-by-hop header that is not first, or a bad option.
    Malformed,
}

impl HeaderChain {
    /// Walks from `next_header` (the fixed header's) through `payload`.
    pub fn walk(mut next_header: u8, payload: &[u8]) -> Result<HeaderChain, ChainError> {
        let mut off = 0usize;
        let mut chain = HeaderChain {
            upper: None,
            upper_offset: 0,
            router_alert: None,
            fragment: None,
            ext_headers: 0,
        };
        loop {
            let len = match next_header {
                NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {
                    let h = payload.get(off..off + 2).ok_or(ChainError::Truncated)?;
                    (usize::from(h[1]) + 1) * 8
                }
                NH_AH => {
                    let h = payload.get(off..off + 2).ok_or(ChainError::Truncated)?;
                    (usize::from(h[1]) + 2) * 4
                }
                NH_FRAGMENT => 8,
                upper => {
                    chain.upper = Some(upper);
                    chain.upper_offset = off;
                    return Ok(chain);
                }
            };
            if chain.ext_headers == MAX_EXT_HEADERS {
                return Err(ChainError::Malformed);
            }
            if next_header == NH_HOP_BY_HOP && chain.ext_headers != 0 {
                return Err(ChainError::Malformed);
            }
            let h = payload.get(off..off + len).ok_or(ChainError::Truncated)?;
            chain.ext_headers += 1;
            match next_header {
                NH_HOP_BY_HOP => chain.router_alert = router_alert(&h[2..])?,
                NH_FRAGMENT => {
                    let v = u16::from_be_bytes([h[2], h[3]]);
                    let frag = Fragment {
                        offset: v >> 3,
                        more: v & 1 == 1,
                    };
                    chain.fragment = Some(frag);
                    if frag.offset != 0 {
                        chain.upper_offset = off + len;
                        return Ok(chain);
                    }
                }
                _ => {}
            }
            next_header = h[0];
            off += len;
        }
    }
}

/// The router-alert value among hop-by-hop options (type-length-value, Pad1 = a single 0).
fn router_alert(mut opts: &[u8]) -> Result<Option<u16>, ChainError> {
    let mut found = None;
    while let Some((&kind, rest)) = opts.split_first() {
        if kind == 0 {
            opts = rest;
            continue;
        }
        let (&len, rest) = rest.split_first().ok_or(ChainError::Malformed)?;
        let data = rest.get(..usize::from(len)).ok_or(ChainError::Malformed)?;
        if kind == OPT_ROUTER_ALERT {
            if data.len() != 2 {
                return Err(ChainError::Malformed);
            }
            found = Some(u16::from_be_bytes([data[0], data[1]]));
        }
        opts = &rest[usize::from(len)..];
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn checks() {
        let mut b = [0u8; 48];
        b[0] = 0x60;
        b[5] = 8;
        b[8] = 0xfe;
        b[9] = 0x80;
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert!(p.src().is_unicast_link_local());
        assert_eq!(
            Ipv6Packet::new_checked(&b[..47]).unwrap_err(),
            ParseError::Truncated
        );
        b[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).unwrap_err(),
            ParseError::Malformed
        );
    }

    #[test]
    fn emit_round_trips() {
        let mut b = [0u8; 48];
        let (s, d) = ("fe80::1".parse().unwrap(), "ff02::1".parse().unwrap());
        emit(&mut b, s, d, NH_ICMPV6, 8, 255);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src(), p.dst(), p.next_header()), (s, d, NH_ICMPV6));
        assert_eq!((p.hop_limit(), p.payload_len()), (255, 8));
    }

    #[test]
    fn chain_finds_upper_layer_and_router_alert() {
        // Hop-by-hop with router alert (MLD) then ICMPv6.
        let hbh = [NH_ICMPV6, 0, OPT_ROUTER_ALERT, 2, 0, 0, 1, 0];
        let mut p = hbh.to_vec();
        p.extend_from_slice(&[143, 0, 0, 0]);
        let c = HeaderChain::walk(NH_HOP_BY_HOP, &p).unwrap();
        assert_eq!(c.upper, Some(NH_ICMPV6));
        assert_eq!(c.upper_offset, 8);
        assert_eq!(c.router_alert, Some(ROUTER_ALERT_MLD));
        // Destination options then a first fragment then ICMPv6: found.
        let mut p = vec![NH_FRAGMENT, 0, 1, 4, 0, 0, 0, 0];
        p.extend_from_slice(&[NH_ICMPV6, 0, 0, 1, 0, 0, 0, 1]);
        p.extend_from_slice(&[134, 0, 0, 0]);
        let c = HeaderChain::walk(NH_DEST_OPTS, &p).unwrap();
        assert_eq!((c.upper, c.upper_offset, c.ext_headers), (Some(58), 16, 2));
        assert_eq!(
            c.fragment,
            Some(Fragment {
                offset: 0,
                more: true
            })
        );
        // A chain cut short (split across fragments) is refused.
        assert_eq!(
            HeaderChain::walk(NH_DEST_OPTS, &p[..12]).unwrap_err(),
            ChainError::Truncated
        );
        // Non-first fragment: no upper layer to see.
        let p = [NH_ICMPV6, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3];
        let c = HeaderChain::walk(NH_FRAGMENT, &p).unwrap();
        assert_eq!(c.upper, None);
        // Hop-by-hop anywhere but first is malformed; so are endless chains.
        let p = [
            NH_HOP_BY_HOP,
            0,
            1,
            4,
            0,
            0,
            0,
            0,
            NH_ICMPV6,
            0,
            1,
            4,
            0,
            0,
            0,
            0,
        ];
        assert_eq!(
            HeaderChain::walk(NH_DEST_OPTS, &p).unwrap_err(),
            ChainError::Malformed
        );
        let p: Vec<u8> = (0..10)
            .flat_map(|_| [NH_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0])
            .collect();
        assert_eq!(
            HeaderChain::walk(NH_DEST_OPTS, &p).unwrap_err(),
            ChainError::Malformed
        );
    }

    proptest! {
        #[test]
        fn chain_never_panics(nh in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(c) = HeaderChain::walk(nh, &data) {
                prop_assert!(c.upper_offset <= data.len());
            }
        }
    }
}
