//! Offload metadata that travels with a buffer: what the virtio-net header (`struct
//! virtio_net_hdr`, the same 10 bytes for taps with `IFF_VNET_HDR` and AF_PACKET sockets with
//! `PACKET_VNET_HDR`) says about a frame: a GSO superframe to be cut into `gso_size` segments,
//! and/or an L4 checksum left for someone downstream to complete (`NEEDS_CSUM`), or a checksum
//! the sender already verified (`DATA_VALID`).
//!
//! The header's fields are in the host's byte order (legacy virtio; the kernel's
//! `virtio_legacy_is_little_endian()`), which is what both taps and packet sockets use.

use virtio_bindings::virtio_net as vn;

/// Size of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// What kind of superframe a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gso {
    #[default]
    None,
    Tcp4,
    Tcp6,
    /// UDP segmentation offload (`UDP_L4`, `UDP_SEGMENT` style), IPv4 or IPv6.
    Udp,
}

/// The checksum state of a frame's L4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Csum {
    /// Complete in the packet (or none needed); the receiver verifies it.
    #[default]
    Complete,
    /// The field at `start + offset` holds the pseudo-header sum; the sum over
    /// `frame[start..]` must still be folded in (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    Partial { start: u16, offset: u16 },
    /// Complete and already verified upstream (`VIRTIO_NET_HDR_F_DATA_VALID`).
    Valid,
}

/// Offload metadata of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    pub gso: Gso,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// ECN: the segments keep CWR on the first one only (`VIRTIO_NET_HDR_GSO_ECN`).
    pub ecn: bool,
    pub csum: Csum,
}

/// Why a virtio-net header cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// Shorter than the header.
    Truncated,
    /// Unknown GSO type, GSO without a size, or a checksum position outside the frame.
    Invalid,
}

impl Offload {
    pub const NONE: Offload = Offload {
        gso: Gso::None,
        gso_size: 0,
        ecn: false,
        csum: Csum::Complete,
    };

    pub fn is_gso(&self) -> bool {
        self.gso != Gso::None
    }

    /// Parses the virtio-net header in front of a frame of `frame_len` bytes. Hostile input:
    /// every position is checked against the frame.
    pub fn parse(hdr: &[u8], frame_len: usize) -> Result<Offload, OffloadError> {
        let h: &[u8; VNET_HDR_LEN] = hdr
            .get(..VNET_HDR_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(OffloadError::Truncated)?;
        let flags = u32::from(h[0]);
        let gso_type = u32::from(h[1]);
        let gso_size = u16::from_ne_bytes([h[4], h[5]]);
        let csum_start = u16::from_ne_bytes([h[6], h[7]]);
        let csum_offset = u16::from_ne_bytes([h[8], h[9]]);
        let ecn = gso_type & vn::VIRTIO_NET_HDR_GSO_ECN != 0;
        let gso = match gso_type & !vn::VIRTIO_NET_HDR_GSO_ECN {
            vn::VIRTIO_NET_HDR_GSO_NONE => Gso::None,
            vn::VIRTIO_NET_HDR_GSO_TCPV4 => Gso::Tcp4,
            vn::VIRTIO_NET_HDR_GSO_TCPV6 => Gso::Tcp6,
            vn::VIRTIO_NET_HDR_GSO_UDP_L4 => Gso::Udp,
            _ => return Err(OffloadError::Invalid),
        };
        if gso != Gso::None && gso_size == 0 {
            return Err(OffloadError::Invalid);
        }
        let csum = if flags & vn::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            let field_end = usize::from(csum_start) + usize::from(csum_offset) + 2;
            if field_end > frame_len {
                return Err(OffloadError::Invalid);
            }
            Csum::Partial {
                start: csum_start,
                offset: csum_offset,
            }
        } else if flags & vn::VIRTIO_NET_HDR_F_DATA_VALID != 0 {
            Csum::Valid
        } else {
            Csum::Complete
        };
        Ok(Offload {
            gso,
            gso_size: if gso == Gso::None { 0 } else { gso_size },
            ecn,
            csum,
        })
    }

    /// Writes the virtio-net header for this metadata. `hdr_len` is the length of the headers
    /// in front of the payload (a hint for the kernel).
    pub fn emit(&self, hdr_len: u16) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        let (flags, start, offset) = match self.csum {
            Csum::Complete => (0, 0, 0),
            Csum::Valid => (vn::VIRTIO_NET_HDR_F_DATA_VALID, 0, 0),
            Csum::Partial { start, offset } => (vn::VIRTIO_NET_HDR_F_NEEDS_CSUM, start, offset),
        };
        let mut gso_type = match self.gso {
            Gso::None => vn::VIRTIO_NET_HDR_GSO_NONE,
            Gso::Tcp4 => vn::VIRTIO_NET_HDR_GSO_TCPV4,
            Gso::Tcp6 => vn::VIRTIO_NET_HDR_GSO_TCPV6,
            Gso::Udp => vn::VIRTIO_NET_HDR_GSO_UDP_L4,
        };
        if self.ecn && self.gso != Gso::None {
            gso_type |= vn::VIRTIO_NET_HDR_GSO_ECN;
        }
        h[0] = flags as u8;
        h[1] = gso_type as u8;
        h[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
        if self.gso != Gso::None {
            h[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        }
        h[6..8].copy_from_slice(&start.to_ne_bytes());
        h[8..10].copy_from_slice(&offset.to_ne_bytes());
        h
    }
}

/// What an egress can take without software help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// Partial checksums (`NEEDS_CSUM`).
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub uso: bool,
}

impl Caps {
    pub const NONE: Caps = Caps {
        csum: false,
        tso4: false,
        tso6: false,
        uso: false,
    };
    pub const ALL: Caps = Caps {
        csum: true,
        tso4: true,
        tso6: true,
        uso: true,
    };

    /// Whether a frame with `o` can be handed over as is.
    pub fn accepts(&self, o: &Offload) -> bool {
        let gso_ok = match o.gso {
            Gso::None => true,
            Gso::Tcp4 => self.tso4,
            Gso::Tcp6 => self.tso6,
            Gso::Udp => self.uso,
        };
        let csum_ok = !matches!(o.csum, Csum::Partial { .. }) || self.csum;
        gso_ok && csum_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let o = Offload {
            gso: Gso::Tcp4,
            gso_size: 1448,
            ecn: false,
            csum: Csum::Partial {
                start: 34,
                offset: 16,
            },
        };
        let h = o.emit(66);
        assert_eq!(Offload::parse(&h, 65000), Ok(o));
        assert_eq!(Offload::parse(&h, 40), Err(OffloadError::Invalid));
        assert_eq!(Offload::parse(&h[..9], 100), Err(OffloadError::Truncated));
        assert_eq!(Offload::parse(&[0; 10], 60), Ok(Offload::NONE));
        assert!(Caps::ALL.accepts(&o));
        assert!(!Caps::NONE.accepts(&o));
        assert!(Caps::NONE.accepts(&Offload::NONE));
    }

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..16), len in 0usize..70000) {
            let _ = Offload::parse(&b, len);
        }
    }
}
