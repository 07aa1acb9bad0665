//! ARP for IPv4 over Ethernet (RFC 826). Other hardware/protocol kinds are `Malformed` for us.

use std::net::Ipv4Addr;

use vswitch_config::MacAddr;

use super::{be16, set_be16, Field, ParseError};

mod field {
    use super::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

pub const PACKET_LEN: usize = 28;
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

#[derive(Debug)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn ip(b: &[u8], f: Field) -> Ipv4Addr {
    Ipv4Addr::new(b[f.start], b[f.start + 1], b[f.start + 2], b[f.start + 3])
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Accepts only Ethernet/IPv4 ARP with a full 28-byte body.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < PACKET_LEN {
            return Err(ParseError::Truncated);
        }
        if be16(b, field::HTYPE) != 1
            || be16(b, field::PTYPE) != 0x0800
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(ParseError::Malformed);
        }
        Ok(ArpPacket { buffer })
    }

    pub fn operation(&self) -> u16 {
        be16(self.buffer.as_ref(), field::OPER)
    }
    pub fn sender_mac(&self) -> MacAddr {
        MacAddr(
            self.buffer.as_ref()[field::SHA]
                .try_into()
                .expect("6 bytes"),
        )
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip(self.buffer.as_ref(), field::SPA)
    }
    pub fn target_mac(&self) -> MacAddr {
        MacAddr(
            self.buffer.as_ref()[field::THA]
                .try_into()
                .expect("6 bytes"),
        )
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        ip(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Turns a request into the reply `answer_mac` is at `target_ip`, in place.
    pub fn make_reply(&mut self, answer_mac: MacAddr) {
        let b = self.buffer.as_mut();
        let (sha, spa): ([u8; 6], [u8; 4]) = (
            b[field::SHA].try_into().expect("6"),
            b[field::SPA].try_into().expect("4"),
        );
        let tpa: [u8; 4] = b[field::TPA].try_into().expect("4");
        set_be16(b, field::OPER, OP_REPLY);
        b[field::SHA].copy_from_slice(&answer_mac.0);
        b[field::SPA].copy_from_slice(&tpa);
        b[field::THA].copy_from_slice(&sha);
        b[field::TPA].copy_from_slice(&spa);
    }
}

/// Writes a complete ARP request/reply body into `b` (at least 28 bytes). Test and tool helper.
pub fn emit(b: &mut [u8], op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) {
    set_be16(b, field::HTYPE, 1);
    set_be16(b, field::PTYPE, 0x0800);
    b[field::HLEN] = 6;
    b[field::PLEN] = 4;
    set_be16(b, field::OPER, op);
    b[field::SHA].copy_from_slice(&sha.0);
    b[field::SPA].copy_from_slice(&spa.octets());
    b[field::THA].copy_from_slice(&tha.0);
    b[field::TPA].copy_from_slice(&tpa.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_to_reply() {
        let mut b = [0u8; 28];
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let g = MacAddr([2, 0, 0, 0, 0, 9]);
        emit(
            &mut b,
            OP_REQUEST,
            a,
            "10.0.0.2".parse().unwrap(),
            MacAddr::ZERO,
            "10.0.0.1".parse().unwrap(),
        );
        let mut p = ArpPacket::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.operation(), OP_REQUEST);
        p.make_reply(g);
        assert_eq!(p.operation(), OP_REPLY);
        assert_eq!(p.sender_mac(), g);
        assert_eq!(p.sender_ip(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p.target_mac(), a);
        assert_eq!(p.target_ip(), "10.0.0.2".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn rejects_short_and_foreign() {
        assert_eq!(
            ArpPacket::new_checked(&[0u8; 27][..]).unwrap_err(),
            ParseError::Truncated
        );
        let mut b = [0u8; 28];
        emit(
            &mut b,
            1,
            MacAddr::ZERO,
            Ipv4Addr::UNSPECIFIED,
            MacAddr::ZERO,
            Ipv4Addr::UNSPECIFIED,
        );
        b[4] = 8; // hlen
        assert_eq!(
            ArpPacket::new_checked(&b[..]).unwrap_err(),
            ParseError::Malformed
        );
    }
}
