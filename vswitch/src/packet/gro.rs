//! Receive coalescing: consecutive TCP segments of one flow that arrived from the underlay one by
//! one are merged into a single superframe, written to the pod's tap with a GSO virtio-net header,
//! so the pod's stack sees one 64 KiB packet instead of 45 (wireguard-go does the same for TUN).
//!
//! The rules follow the kernel's TCP GRO: same addresses, ports, ACK number, IP TOS/TTL/DF and
//! TCP options byte for byte; only ACK (and PSH on the last segment) among the flags; every
//! segment but the last exactly the size of the first; sequence numbers contiguous; IPv4 IDs
//! counting up by one (or all equal). Every segment's checksum must have been verified before it
//! is merged, since the superframe goes on with a partial checksum the pod will not check again.

use super::checksum::Sum;
use super::gso::Layout;
use super::offload::{Csum, Gso, Offload};
use super::{be16, set_be16};

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const IPV6_HDR_LEN: usize = 40;
/// Largest IP packet a superframe may become.
const MAX_IP_LEN: usize = 65535;

/// A TCP segment that may take part in coalescing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSeg {
    pub lay: Layout,
    pub seq: u32,
    pub payload_len: usize,
    pub psh: bool,
    ip_id: u16,
}

impl TcpSeg {
    /// The segment in `frame`, if it is a data-carrying TCP segment with only ACK/PSH set and
    /// an IP length that matches the frame exactly.
    pub fn of(frame: &[u8]) -> Option<TcpSeg> {
        let lay = Layout::of(frame)?;
        if !lay.is_tcp() {
            return None;
        }
        let ip_len = if lay.v6 {
            IPV6_HDR_LEN + usize::from(be16(frame, lay.l3 + 4..lay.l3 + 6))
        } else {
            usize::from(be16(frame, lay.l3 + 2..lay.l3 + 4))
        };
        if lay.l3 + ip_len != frame.len() {
            return None; // padded or truncated: not worth the risk
        }
        let flags = frame[lay.l4 + 13];
        if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
            return None;
        }
        let payload_len = frame.len() - lay.payload;
        if payload_len == 0 {
            return None;
        }
        Some(TcpSeg {
            lay,
            seq: u32::from_be_bytes([
                frame[lay.l4 + 4],
                frame[lay.l4 + 5],
                frame[lay.l4 + 6],
                frame[lay.l4 + 7],
            ]),
            payload_len,
            psh: flags & TCP_PSH != 0,
            ip_id: if lay.v6 {
                0
            } else {
                be16(frame, lay.l3 + 4..lay.l3 + 6)
            },
        })
    }
}

/// A run of coalesced segments, headed by the first one.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub head: TcpSeg,
    pub count: usize,
    /// Payload bytes of all segments so far.
    pub payload: usize,
    next_seq: u32,
    last_id: u16,
    /// A segment shorter than the first (or with PSH) ended the run.
    closed: bool,
    psh: bool,
    /// TCP window of the newest segment (the kernel keeps the latest).
    window: u16,
}

impl Run {
    pub fn start(head_frame: &[u8], head: TcpSeg) -> Run {
        Run {
            head,
            count: 1,
            payload: head.payload_len,
            next_seq: head.seq.wrapping_add(head.payload_len as u32),
            last_id: head.ip_id,
            closed: head.psh,
            psh: head.psh,
            window: be16(head_frame, head.lay.l4 + 14..head.lay.l4 + 16),
        }
    }

    /// Whether `seg` (in `frame`) continues this run (headed by `head_frame`).
    pub fn accepts(&self, head_frame: &[u8], frame: &[u8], seg: &TcpSeg) -> bool {
        let h = &self.head;
        if self.closed || seg.lay != h.lay || seg.seq != self.next_seq {
            return false;
        }
        if seg.payload_len > h.payload_len
            || h.lay.payload + self.payload + seg.payload_len - h.lay.l3 > MAX_IP_LEN
        {
            return false;
        }
        let l3 = h.lay.l3;
        // Ethernet header and the IP fields that must match.
        if head_frame[..l3] != frame[..l3] {
            return false;
        }
        if h.lay.v6 {
            // Version/traffic class/flow label, next header, hop limit, addresses.
            if head_frame[l3..l3 + 4] != frame[l3..l3 + 4]
                || head_frame[l3 + 6..l3 + IPV6_HDR_LEN] != frame[l3 + 6..l3 + IPV6_HDR_LEN]
            {
                return false;
            }
        } else {
            let id_ok = seg.ip_id == self.last_id.wrapping_add(1) || seg.ip_id == self.last_id;
            if !id_ok
                || head_frame[l3..l3 + 2] != frame[l3..l3 + 2]
                || head_frame[l3 + 6..l3 + 10] != frame[l3 + 6..l3 + 10]
                || head_frame[l3 + 12..h.lay.l4] != frame[l3 + 12..h.lay.l4]
            {
                return false;
            }
        }
        let l4 = h.lay.l4;
        // Ports, ACK number, data offset; then the options.
        head_frame[l4..l4 + 4] == frame[l4..l4 + 4]
            && head_frame[l4 + 8..l4 + 13] == frame[l4 + 8..l4 + 13]
            && head_frame[l4 + 20..h.lay.payload] == frame[l4 + 20..h.lay.payload]
    }

    /// Adds `seg` (accepted by [`Run::accepts`]) whose payload the caller appended.
    pub fn push(&mut self, frame: &[u8], seg: &TcpSeg) {
        self.count += 1;
        self.payload += seg.payload_len;
        self.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        self.last_id = seg.ip_id;
        self.closed = seg.payload_len < self.head.payload_len || seg.psh;
        self.psh |= seg.psh;
        self.window = be16(frame, seg.lay.l4 + 14..seg.lay.l4 + 16);
    }

    /// Rewrites the head's headers for the whole run (the payloads follow it contiguously in
    /// `frame`) and returns the offload metadata to send it with: a GSO superframe with a
    /// partial checksum, or, for a run of one, a frame whose checksum is known good.
    ///
    /// `max_payload` is the most TCP payload one packet of the path may carry. A run of one
    /// larger than that is a superframe too: a kernel peer on a veth underlay hands its GSO
    /// packets over whole (one datagram holding 64 KiB of inner TCP), and an egress that takes
    /// no superframe must then cut it into segments of at most `max_payload` bytes.
    pub fn finish(&self, frame: &mut [u8], max_payload: usize) -> Offload {
        let h = &self.head;
        if self.count == 1 && h.payload_len <= max_payload.max(1) {
            return Offload {
                csum: Csum::Valid,
                ..Offload::NONE
            };
        }
        let lay = &h.lay;
        let l4_len = lay.payload - lay.l4 + self.payload;
        if lay.v6 {
            set_be16(frame, lay.l3 + 4..lay.l3 + 6, l4_len as u16);
        } else {
            let total = lay.l4 - lay.l3 + l4_len;
            set_be16(frame, lay.l3 + 2..lay.l3 + 4, total as u16);
            set_be16(frame, lay.l3 + 10..lay.l3 + 12, 0);
            let c = Sum::ZERO.bytes(&frame[lay.l3..lay.l4]).finish();
            set_be16(frame, lay.l3 + 10..lay.l3 + 12, c);
        }
        if self.psh {
            frame[lay.l4 + 13] |= TCP_PSH;
        }
        set_be16(frame, lay.l4 + 14..lay.l4 + 16, self.window);
        let field = lay.csum_field();
        let pseudo = pseudo_of(frame, lay, l4_len);
        set_be16(frame, field..field + 2, pseudo);
        Offload {
            gso: if lay.v6 { Gso::Tcp6 } else { Gso::Tcp4 },
            gso_size: h.payload_len.min(max_payload.max(1)) as u16,
            ecn: false,
            csum: Csum::Partial {
                start: lay.l4 as u16,
                offset: 16,
            },
        }
    }
}

fn pseudo_of(frame: &[u8], lay: &Layout, l4_len: usize) -> u16 {
    use super::checksum::{pseudo_v4, pseudo_v6};
    let ip = &frame[lay.l3..];
    if lay.v6 {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&ip[8..24]);
        d.copy_from_slice(&ip[24..40]);
        pseudo_v6(s.into(), d.into(), lay.proto, l4_len).fold()
    } else {
        pseudo_v4(
            [ip[12], ip[13], ip[14], ip[15]].into(),
            [ip[16], ip[17], ip[18], ip[19]].into(),
            lay.proto,
            l4_len,
        )
        .fold()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::gso::tests::tcp_superframe;
    use crate::packet::gso::{complete_partial, verify, Plan, Verified, MAX_HDR};

    /// Segments a superframe (complete checksums), then coalesces the segments again.
    fn roundtrip(v6: bool, len: usize, mss: u16) {
        let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let (f, mut off) = tcp_superframe(v6, &payload, 0x18, 12);
        off.gso_size = mss;
        let plan = Plan::new(&f, &off).unwrap();
        let segs: Vec<Vec<u8>> = (0..plan.count)
            .map(|k| {
                let mut h = [0u8; MAX_HDR];
                plan.write_header(&f, k, &mut h, false).unwrap();
                let mut s = h[..plan.hdr_len()].to_vec();
                s.extend_from_slice(&f[plan.payload(k)]);
                s
            })
            .collect();
        let mut out = segs[0].clone();
        let head = TcpSeg::of(&out).unwrap();
        let mut run = Run::start(&out, head);
        for s in &segs[1..] {
            let seg = TcpSeg::of(s).unwrap();
            assert!(run.accepts(&out, s, &seg));
            out.extend_from_slice(&s[seg.lay.payload..]);
            run.push(s, &seg);
        }
        let o = run.finish(&mut out, usize::MAX);
        assert_eq!(run.count, plan.count);
        if plan.count > 1 {
            assert_eq!(o.gso_size, mss);
            let Csum::Partial { start, offset } = o.csum else {
                panic!("partial")
            };
            complete_partial(&mut out, start.into(), offset.into());
        }
        // The coalesced frame is the original superframe with a complete checksum.
        let lay = Layout::of(&out).unwrap();
        assert_eq!(verify(&out, &lay), Verified::Good);
        assert_eq!(&out[lay.payload..], &payload[..]);
        assert_eq!(out.len(), f.len());
        assert_eq!(out[..lay.l4 + 16], f[..lay.l4 + 16]);
    }

    #[test]
    fn segment_then_coalesce_is_identity() {
        for (v6, len, mss) in [(false, 4000, 1000), (true, 3001, 1000), (false, 800, 1000)] {
            roundtrip(v6, len, mss);
        }
        roundtrip(false, 60000, 1448);
    }

    #[test]
    fn a_run_of_one_larger_than_the_path_is_a_superframe() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..20000u32).map(|i| (i * 7) as u8).collect();
            let (mut f, _) = tcp_superframe(v6, &payload, 0x18, 12);
            let run = Run::start(&f, TcpSeg::of(&f).unwrap());
            let o = run.finish(&mut f, 1398);
            assert_eq!(o.gso, if v6 { Gso::Tcp6 } else { Gso::Tcp4 });
            assert_eq!(o.gso_size, 1398);
            assert!(matches!(o.csum, Csum::Partial { offset: 16, .. }));
            // An egress without TSO cuts it into good segments of at most 1398 bytes.
            let plan = Plan::new(&f, &o).unwrap();
            assert_eq!(plan.count, payload.len().div_ceil(1398));
            let mut got = Vec::new();
            for k in 0..plan.count {
                let mut h = [0u8; MAX_HDR];
                plan.write_header(&f, k, &mut h, false).unwrap();
                let mut seg = h[..plan.hdr_len()].to_vec();
                seg.extend_from_slice(&f[plan.payload(k)]);
                let lay = Layout::of(&seg).unwrap();
                assert_eq!(verify(&seg, &lay), Verified::Good);
                assert!(seg.len() - lay.payload <= 1398);
                got.extend_from_slice(&seg[lay.payload..]);
            }
            assert_eq!(got, payload);
            // A frame that fits the path stays a plain frame.
            let (mut small, _) = tcp_superframe(v6, &payload[..1000], 0x10, 0);
            let run = Run::start(&small, TcpSeg::of(&small).unwrap());
            assert_eq!(run.finish(&mut small, 1398).gso, Gso::None);
        }
    }

    #[test]
    fn refuses_other_flows_gaps_and_flags() {
        let (a, _) = tcp_superframe(false, &[1; 100], 0x10, 0);
        let head = TcpSeg::of(&a).unwrap();
        let run = Run::start(&a, head);
        // Next segment of the same flow.
        let mut b = a.clone();
        let seq = head.seq.wrapping_add(100);
        let l4 = head.lay.l4;
        b[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        b[18..20].copy_from_slice(&0x1235u16.to_be_bytes());
        let sb = TcpSeg::of(&b).unwrap();
        assert!(run.accepts(&a, &b, &sb));
        // Gap in the sequence.
        let mut c = b.clone();
        c[l4 + 7] ^= 1;
        let sc = TcpSeg::of(&c).unwrap();
        assert!(!run.accepts(&a, &c, &sc));
        // Other port.
        let mut d = b.clone();
        d[l4 + 1] ^= 1;
        assert!(!run.accepts(&a, &d, &TcpSeg::of(&d).unwrap()));
        // SYN or FIN never coalesce.
        let mut e = b.clone();
        e[l4 + 13] = 0x11;
        assert!(TcpSeg::of(&e).is_none());
        // A pure ACK has nothing to coalesce.
        let (ack, _) = tcp_superframe(false, &[], 0x10, 0);
        assert!(TcpSeg::of(&ack).is_none());
    }
}
