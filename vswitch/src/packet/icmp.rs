//! ICMPv4 (RFC 792): just enough for echo and "fragmentation needed".

use super::{internet_checksum, set_be16, Field, ParseError};

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
}

pub const HEADER_LEN: usize = 8;
pub const TYPE_ECHO_REPLY: u8 = 0;
pub const TYPE_ECHO_REQUEST: u8 = 8;

#[derive(Debug)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    pub fn verify_checksum(&self) -> bool {
        internet_checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Turns an echo request into an echo reply in place (identifier, sequence, data kept).
    pub fn make_echo_reply(&mut self) {
        let b = self.buffer.as_mut();
        b[field::TYPE] = TYPE_ECHO_REPLY;
        b[field::CODE] = 0;
        set_be16(b, field::CHECKSUM, 0);
        let c = internet_checksum(b);
        set_be16(b, field::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_reply_has_valid_checksum() {
        let mut b = [8u8, 0, 0, 0, 0, 1, 0, 7, 1, 2, 3];
        let c = internet_checksum(&b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
        let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
        assert!(p.verify_checksum());
        p.make_echo_reply();
        assert_eq!(p.msg_type(), TYPE_ECHO_REPLY);
        assert!(p.verify_checksum());
        assert_eq!(
            IcmpPacket::new_checked(&b[..7]).unwrap_err(),
            ParseError::Truncated
        );
    }
}
