//! IPv4 headers (RFC 791). `new_checked` validates version, IHL and total length against the
//! buffer, so accessors never read out of bounds.

use std::net::Ipv4Addr;

use super::{be16, internet_checksum, set_be16, Field, ParseError};

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Field = 2..4;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

pub const MIN_HEADER_LEN: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(ParseError::Malformed);
        }
        let ihl = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        if ihl < MIN_HEADER_LEN {
            return Err(ParseError::Malformed);
        }
        let total = usize::from(be16(b, field::TOTAL_LEN));
        if total < ihl {
            return Err(ParseError::Malformed);
        }
        if ihl > b.len() || total > b.len() {
            return Err(ParseError::Truncated);
        }
        Ok(Ipv4Packet { buffer })
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::TOTAL_LEN))
    }
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    /// More-fragments flag or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & 0x3fff != 0
    }
    pub fn src(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    pub fn dst(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    pub fn verify_checksum(&self) -> bool {
        internet_checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }
    /// The payload as bounded by the total length (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_src(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }
    pub fn set_ttl(&mut self, t: u8) {
        self.buffer.as_mut()[field::TTL] = t;
    }
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        set_be16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let c = internet_checksum(&self.buffer.as_ref()[..hl]);
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len());
        &mut self.buffer.as_mut()[h..t]
    }
}

/// Writes a 20-byte header (no options) into `b`. Test and tool helper.
pub fn emit(b: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) {
    b[..MIN_HEADER_LEN].fill(0);
    b[field::VER_IHL] = 0x45;
    set_be16(b, field::TOTAL_LEN, (MIN_HEADER_LEN + payload_len) as u16);
    b[field::TTL] = 64;
    b[field::PROTOCOL] = protocol;
    b[field::SRC].copy_from_slice(&src.octets());
    b[field::DST].copy_from_slice(&dst.octets());
    let c = internet_checksum(&b[..MIN_HEADER_LEN]);
    set_be16(b, field::CHECKSUM, c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_header() {
        let mut b = [0u8; 28];
        emit(
            &mut b,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            PROTO_ICMP,
            8,
        );
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 8);
        assert_eq!(p.dst(), "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert!(!p.is_fragment());
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut b = [0u8; 28];
        emit(
            &mut b,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            PROTO_UDP,
            8,
        );
        assert_eq!(
            Ipv4Packet::new_checked(&b[..19]).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            Ipv4Packet::new_checked(&b[..27]).unwrap_err(),
            ParseError::Truncated
        );
        let mut c = b;
        c[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&c[..]).unwrap_err(),
            ParseError::Malformed
        );
        let mut c = b;
        c[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&c[..]).unwrap_err(),
            ParseError::Malformed
        );
        let mut c = b;
        c[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&c[..]).unwrap_err(),
            ParseError::Malformed
        );
        let mut c = b;
        c[0] = 0x4f; // 60-byte header and total length in a 28-byte buffer
        c[2..4].copy_from_slice(&60u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&c[..]).unwrap_err(),
            ParseError::Truncated
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = Ipv4Packet::new_checked(&data[..]) {
                let _ = (p.src(), p.dst(), p.payload().len(), p.verify_checksum(), p.is_fragment());
            }
        }
    }
}
