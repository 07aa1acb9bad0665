//! Software segmentation and checksum completion, for the one egress that cannot take a
//! superframe or a partial checksum (a port without offloads, the IPIP/direct underlay, a VXLAN
//! segment that goes out through `UDP_SEGMENT`).
//!
//! Segmentation follows what the kernel's TCP/UDP GSO does: every segment gets the original
//! headers with its own IPv4 total length and an IPv4 ID counting up from the original
//! (IPv6: payload length), TCP sequence numbers advancing by the segment size, FIN and PSH only on
//! the last segment and CWR only on the first, and a complete L4 checksum — or, when the egress
//! takes partial checksums, the pseudo-header sum and the position of the field. Headers are
//! written into a caller's scratch buffer and the payload is returned as a range of the
//! superframe, so callers can hand both to the kernel as a scatter-gather list (no payload copy).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use super::checksum::{pseudo_v4, pseudo_v6, Sum};
use super::ethernet;
use super::offload::{Csum, Gso, Offload};
use super::{be16, ipv4, set_be16};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HDR_LEN: usize = 40;
const TCP_MIN: usize = 20;
const UDP_LEN: usize = 8;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Largest header block (Ethernet + IPv4 with options + TCP with options) we segment.
pub const MAX_HDR: usize = ethernet::HEADER_LEN + 60 + 60;

/// Where the headers of an Ethernet + IPv4/IPv6 + TCP/UDP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub v6: bool,
    pub l3: usize,
    pub l4: usize,
    /// Start of the payload (end of the L4 header).
    pub payload: usize,
    pub proto: u8,
}

impl Layout {
    /// Finds the headers of `frame`; `None` for anything but untagged IPv4/IPv6 (no extension
    /// headers) carrying TCP or UDP, unfragmented, with headers inside the frame.
    pub fn of(frame: &[u8]) -> Option<Layout> {
        let l3 = ethernet::HEADER_LEN;
        if frame.len() < l3 {
            return None;
        }
        let (v6, l4, proto) = match be16(frame, 12..14) {
            ETH_P_IP => {
                let ip = frame.get(l3..l3 + ipv4::MIN_HEADER_LEN)?;
                if ip[0] >> 4 != 4 {
                    return None;
                }
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                if ihl < ipv4::MIN_HEADER_LEN || be16(ip, 6..8) & 0x3fff != 0 {
                    return None; // bad IHL or a fragment
                }
                (false, l3 + ihl, ip[9])
            }
            ETH_P_IPV6 => {
                let ip = frame.get(l3..l3 + IPV6_HDR_LEN)?;
                if ip[0] >> 4 != 6 {
                    return None;
                }
                (true, l3 + IPV6_HDR_LEN, ip[6])
            }
            _ => return None,
        };
        let l4_len = match proto {
            ipv4::PROTO_TCP => {
                let off = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
                if off < TCP_MIN {
                    return None;
                }
                off
            }
            ipv4::PROTO_UDP => UDP_LEN,
            _ => return None,
        };
        let payload = l4 + l4_len;
        if payload > frame.len() {
            return None;
        }
        Some(Layout {
            v6,
            l3,
            l4,
            payload,
            proto,
        })
    }

    pub fn is_tcp(&self) -> bool {
        self.proto == ipv4::PROTO_TCP
    }

    /// Offset of the L4 checksum field.
    pub fn csum_field(&self) -> usize {
        self.l4 + if self.is_tcp() { 16 } else { 6 }
    }

    fn pseudo(&self, frame: &[u8], l4_len: usize) -> Sum {
        if self.v6 {
            let ip = &frame[self.l3..];
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap_or([0; 16]));
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap_or([0; 16]));
            pseudo_v6(src, dst, self.proto, l4_len)
        } else {
            let ip = &frame[self.l3..];
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            pseudo_v4(src, dst, self.proto, l4_len)
        }
    }
}

/// The checksum state a receiver would find in a complete frame's L4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Good,
    /// The field holds only the pseudo-header sum: a sender with checksum offload left it for
    /// its NIC (a kernel VXLAN/IPIP node on a veth underlay does this); completing it is safe.
    Partial,
    Bad,
}

/// Checks the L4 checksum of a non-superframe with layout `lay`.
pub fn verify(frame: &[u8], lay: &Layout) -> Verified {
    let l4_len = l4_length(frame, lay);
    if l4_len < lay.payload - lay.l4 {
        return Verified::Bad;
    }
    let Some(seg) = frame.get(lay.l4..lay.l4 + l4_len) else {
        return Verified::Bad;
    };
    let pseudo = lay.pseudo(frame, l4_len);
    if !lay.v6 && !lay.is_tcp() && be16(seg, 6..8) == 0 {
        return Verified::Good; // UDP over IPv4 without checksum
    }
    // The partial form first: it costs no pass over the payload. A complete checksum that
    // happens to equal the pseudo-header sum is classed partial, which is harmless: completing
    // it writes the same value back (`complete_partial` of a good field is the identity).
    let field = lay.csum_field() - lay.l4;
    if be16(seg, field..field + 2) == pseudo.fold() {
        return Verified::Partial;
    }
    if pseudo.bytes(seg).fold() == 0xffff {
        return Verified::Good;
    }
    Verified::Bad
}

/// Length of the L4 segment according to the IP header (never beyond the frame).
fn l4_length(frame: &[u8], lay: &Layout) -> usize {
    let ip_end = if lay.v6 {
        lay.l3 + IPV6_HDR_LEN + usize::from(be16(frame, lay.l3 + 4..lay.l3 + 6))
    } else {
        lay.l3 + usize::from(be16(frame, lay.l3 + 2..lay.l3 + 4))
    };
    ip_end.min(frame.len()).saturating_sub(lay.l4)
}

/// Completes a partial checksum in place: the field at `start + offset` holds the pseudo-header
/// sum; folds in the sum over `frame[start..]`. False if the positions do not fit the frame.
pub fn complete_partial(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start + offset;
    if field + 2 > frame.len() || start > frame.len() {
        return false;
    }
    let mut c = Sum::ZERO.bytes(&frame[start..]).finish();
    // UDP (checksum at offset 6) transmits a computed zero as all ones (RFC 768).
    if offset == 6 && c == 0 {
        c = 0xffff;
    }
    set_be16(frame, field..field + 2, c);
    true
}

/// Recomputes the full L4 checksum of a non-superframe (used when a frame marked partial leaves
/// through an egress without checksum offload and its metadata was lost, or was a lie).
pub fn fill_l4_checksum(frame: &mut [u8], lay: &Layout) {
    let l4_len = l4_length(frame, lay);
    let field = lay.csum_field();
    if field + 2 > frame.len() {
        return;
    }
    set_be16(frame, field..field + 2, 0);
    let end = (lay.l4 + l4_len).min(frame.len());
    let mut c = lay
        .pseudo(frame, l4_len)
        .bytes(&frame[lay.l4..end])
        .finish();
    if !lay.is_tcp() && c == 0 {
        c = 0xffff;
    }
    set_be16(frame, field..field + 2, c);
}

/// Why a superframe cannot be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// Headers are not TCP/UDP over IPv4/IPv6, or do not match the GSO type.
    Headers,
    /// Segment size zero or larger than the payload allows.
    Size,
}

/// A superframe cut into segments.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub lay: Layout,
    pub mss: usize,
    pub count: usize,
    payload_len: usize,
    ip_id: u16,
    seq: u32,
    tcp_flags: u8,
    ecn: bool,
}

impl Plan {
    /// Plans the segmentation of `frame` (a superframe described by `off`) into segments of
    /// `off.gso_size` payload bytes; `max_count` bounds the number of segments.
    pub fn new(frame: &[u8], off: &Offload) -> Result<Plan, SegmentError> {
        let lay = Layout::of(frame).ok_or(SegmentError::Headers)?;
        let want_tcp = matches!(off.gso, Gso::Tcp4 | Gso::Tcp6);
        let ok = match off.gso {
            Gso::Tcp4 => lay.is_tcp() && !lay.v6,
            Gso::Tcp6 => lay.is_tcp() && lay.v6,
            Gso::Udp => !lay.is_tcp(),
            Gso::None => false,
        };
        if !ok || (want_tcp != lay.is_tcp()) {
            return Err(SegmentError::Headers);
        }
        let mss = usize::from(off.gso_size);
        if mss == 0 {
            return Err(SegmentError::Size);
        }
        let payload_len = frame.len() - lay.payload;
        let count = payload_len.div_ceil(mss).max(1);
        let (ip_id, seq, tcp_flags) = (
            if lay.v6 {
                0
            } else {
                be16(frame, lay.l3 + 4..lay.l3 + 6)
            },
            if lay.is_tcp() {
                u32::from_be_bytes([
                    frame[lay.l4 + 4],
                    frame[lay.l4 + 5],
                    frame[lay.l4 + 6],
                    frame[lay.l4 + 7],
                ])
            } else {
                0
            },
            if lay.is_tcp() { frame[lay.l4 + 13] } else { 0 },
        );
        Ok(Plan {
            lay,
            mss,
            count,
            payload_len,
            ip_id,
            seq,
            tcp_flags,
            ecn: off.ecn,
        })
    }

    /// Length of the header block of every segment.
    pub fn hdr_len(&self) -> usize {
        self.lay.payload
    }

    /// Payload range of segment `k` within the superframe.
    pub fn payload(&self, k: usize) -> Range<usize> {
        let start = self.lay.payload + k * self.mss;
        let end = (start + self.mss).min(self.lay.payload + self.payload_len);
        start..end
    }

    /// Writes segment `k`'s headers into `hdr` (at least [`Plan::hdr_len`] bytes) and returns
    /// the checksum state of the segment: complete, or (with `partial_ok`) left partial.
    pub fn write_header(
        &self,
        frame: &[u8],
        k: usize,
        hdr: &mut [u8],
        partial_ok: bool,
    ) -> Result<Csum, SegmentError> {
        let lay = &self.lay;
        let h = hdr.get_mut(..lay.payload).ok_or(SegmentError::Size)?;
        h.copy_from_slice(&frame[..lay.payload]);
        let pl = self.payload(k);
        let l4_len = lay.payload - lay.l4 + pl.len();
        let last = k + 1 == self.count;
        if lay.v6 {
            set_be16(
                h,
                lay.l3 + 4..lay.l3 + 6,
                (lay.payload - lay.l3 - IPV6_HDR_LEN + pl.len()) as u16,
            );
        } else {
            let ihl = lay.l4 - lay.l3;
            set_be16(h, lay.l3 + 2..lay.l3 + 4, (ihl + l4_len) as u16);
            set_be16(h, lay.l3 + 4..lay.l3 + 6, self.ip_id.wrapping_add(k as u16));
            set_be16(h, lay.l3 + 10..lay.l3 + 12, 0);
            let c = Sum::ZERO.bytes(&h[lay.l3..lay.l4]).finish();
            set_be16(h, lay.l3 + 10..lay.l3 + 12, c);
        }
        if lay.is_tcp() {
            let seq = self.seq.wrapping_add((k * self.mss) as u32);
            h[lay.l4 + 4..lay.l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let mut flags = self.tcp_flags;
            if !last {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if k > 0 && self.ecn {
                flags &= !TCP_CWR;
            }
            h[lay.l4 + 13] = flags;
        } else {
            set_be16(h, lay.l4 + 4..lay.l4 + 6, l4_len as u16);
        }
        let field = lay.csum_field();
        let pseudo = lay.pseudo(h, l4_len);
        if partial_ok {
            set_be16(h, field..field + 2, pseudo.fold());
            return Ok(Csum::Partial {
                start: lay.l4 as u16,
                offset: (field - lay.l4) as u16,
            });
        }
        set_be16(h, field..field + 2, 0);
        let mut c = pseudo
            .bytes(&h[lay.l4..lay.payload])
            .bytes(&frame[pl.clone()])
            .finish();
        if !lay.is_tcp() && c == 0 {
            c = 0xffff;
        }
        set_be16(h, field..field + 2, c);
        Ok(Csum::Complete)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    /// An Ethernet + IPv4/IPv6 + TCP superframe with `payload` bytes, checksum partial as a
    /// kernel with TSO would hand it to us.
    pub fn tcp_superframe(v6: bool, payload: &[u8], flags: u8, opts: usize) -> (Vec<u8>, Offload) {
        let tcp_hl = 20 + opts;
        let mut f = vec![0u8; 14];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let l4_len = tcp_hl + payload.len();
        if v6 {
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8] = 0xfe;
            ip[9] = 0x80;
            ip[23] = 1;
            ip[24] = 0xfe;
            ip[25] = 0x80;
            ip[39] = 2;
            f.extend_from_slice(&ip);
        } else {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let mut ip = [0u8; 20];
            ipv4::emit(
                &mut ip,
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                6,
                l4_len,
            );
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            ip[6] = 0x40;
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = super::super::checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        let mut tcp = vec![0u8; tcp_hl];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = ((tcp_hl / 4) as u8) << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = if i % 4 == 0 { 1 } else { i as u8 }; // NOPs and junk option bytes
        }
        f.extend_from_slice(&tcp);
        f.extend_from_slice(payload);
        let lay = Layout::of(&f).unwrap();
        let pseudo = lay.pseudo(&f, l4_len).fold();
        let field = lay.csum_field();
        f[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        let off = Offload {
            gso: if v6 { Gso::Tcp6 } else { Gso::Tcp4 },
            gso_size: 1000,
            ecn: false,
            csum: Csum::Partial {
                start: lay.l4 as u16,
                offset: 16,
            },
        };
        (f, off)
    }

    /// Cuts with the plan and returns the segments as whole frames.
    fn cut(f: &[u8], off: &Offload, partial: bool) -> Vec<Vec<u8>> {
        let plan = Plan::new(f, off).unwrap();
        (0..plan.count)
            .map(|k| {
                let mut h = [0u8; MAX_HDR];
                plan.write_header(f, k, &mut h, partial).unwrap();
                let mut s = h[..plan.hdr_len()].to_vec();
                s.extend_from_slice(&f[plan.payload(k)]);
                s
            })
            .collect()
    }

    #[test]
    fn tcp4_segments_decode_and_checksum_with_etherparse() {
        let payload: Vec<u8> = (0..4500u32).map(|i| (i * 7) as u8).collect();
        let (f, off) = tcp_superframe(false, &payload, 0x18 | TCP_FIN, 12);
        let segs = cut(&f, &off, false);
        assert_eq!(segs.len(), 5);
        let mut data = Vec::new();
        for (k, s) in segs.iter().enumerate() {
            let p = SlicedPacket::from_ethernet(s).expect("etherparse decodes");
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!("ipv4")
            };
            let h = ip.header();
            assert_eq!(usize::from(h.total_len()), s.len() - 14);
            assert_eq!(h.identification(), 0x1234 + k as u16);
            assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
            let Some(TransportSlice::Tcp(t)) = p.transport else {
                panic!("tcp")
            };
            let hdr = t.to_header();
            let src = h.source();
            let dst = h.destination();
            assert_eq!(
                hdr.checksum,
                hdr.calc_checksum_ipv4_raw(src, dst, t.payload()).unwrap(),
                "segment {k} checksum"
            );
            assert_eq!(
                t.sequence_number(),
                0xffff_fff0u32.wrapping_add(k as u32 * 1000)
            );
            let last = k == segs.len() - 1;
            assert_eq!(t.fin(), last);
            assert_eq!(t.psh(), last);
            assert!(t.ack());
            data.extend_from_slice(t.payload());
        }
        assert_eq!(data, payload);
    }

    #[test]
    fn tcp6_segments_and_partial_mode() {
        let payload = vec![0xabu8; 2500];
        let (f, off) = tcp_superframe(true, &payload, 0x10, 0);
        for partial in [false, true] {
            let segs = cut(&f, &off, partial);
            assert_eq!(segs.len(), 3);
            for s in &segs {
                let p = SlicedPacket::from_ethernet(s).unwrap();
                let Some(NetSlice::Ipv6(ip)) = p.net else {
                    panic!("ipv6")
                };
                let Some(TransportSlice::Tcp(t)) = p.transport else {
                    panic!("tcp")
                };
                let mut s2 = s.clone();
                if partial {
                    let lay = Layout::of(&s2).unwrap();
                    assert_eq!(verify(&s2, &lay), Verified::Partial);
                    assert!(complete_partial(&mut s2, lay.l4, 16));
                }
                let lay = Layout::of(&s2).unwrap();
                assert_eq!(verify(&s2, &lay), Verified::Good);
                let _ = (ip, t);
            }
        }
    }

    #[test]
    fn verify_detects_bad() {
        let (mut f, off) = tcp_superframe(false, &[1, 2, 3], 0x18, 0);
        let lay = Layout::of(&f).unwrap();
        let Csum::Partial { start, offset } = off.csum else {
            unreachable!()
        };
        assert_eq!(verify(&f, &lay), Verified::Partial);
        assert!(complete_partial(&mut f, start.into(), offset.into()));
        assert_eq!(verify(&f, &lay), Verified::Good);
        let n = f.len();
        f[n - 1] ^= 0x55;
        assert_eq!(verify(&f, &lay), Verified::Bad);
        fill_l4_checksum(&mut f, &lay);
        assert_eq!(verify(&f, &lay), Verified::Good);
    }

    proptest! {
        #[test]
        fn segments_reassemble(len in 1usize..9000, mss in 1u16..3000, v6 in any::<bool>()) {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (f, mut off) = tcp_superframe(v6, &payload, 0x18, 0);
            off.gso_size = mss;
            let segs = cut(&f, &off, false);
            prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)));
            let mut data = Vec::new();
            for s in &segs {
                let lay = Layout::of(s).unwrap();
                prop_assert_eq!(verify(s, &lay), Verified::Good);
                data.extend_from_slice(&s[lay.payload..]);
            }
            prop_assert_eq!(data, payload);
        }

        #[test]
        fn hostile_frames_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200), size in 0u16..2000) {
            let off = Offload { gso: Gso::Tcp4, gso_size: size, ecn: false, csum: Csum::Complete };
            if let Ok(plan) = Plan::new(&b, &off) {
                let mut h = [0u8; MAX_HDR];
                for k in 0..plan.count.min(4) {
                    let _ = plan.write_header(&b, k, &mut h, false);
                }
            }
            if let Some(lay) = Layout::of(&b) {
                let _ = verify(&b, &lay);
                let mut c = b.clone();
                fill_l4_checksum(&mut c, &lay);
            }
            let mut c = b.clone();
            let _ = complete_partial(&mut c, usize::from(size) % 300, 16);
        }
    }
}
