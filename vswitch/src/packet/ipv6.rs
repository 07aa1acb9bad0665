//! IPv6 fixed header (RFC 8200): enough for anti-spoofing and forwarding.

use std::net::Ipv6Addr;

use super::{be16, Field, ParseError};

mod field {
    use super::Field;
    pub const VERSION: usize = 0;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

pub const HEADER_LEN: usize = 40;

#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
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
    pub fn src(&self) -> Ipv6Addr {
        let a: [u8; 16] = self.buffer.as_ref()[field::SRC]
            .try_into()
            .expect("16 bytes");
        Ipv6Addr::from(a)
    }
    pub fn dst(&self) -> Ipv6Addr {
        let a: [u8; 16] = self.buffer.as_ref()[field::DST]
            .try_into()
            .expect("16 bytes");
        Ipv6Addr::from(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
