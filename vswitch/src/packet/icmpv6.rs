//! ICMPv6 (RFC 4443) with the messages first-hop security looks at: neighbour discovery
//! (RFC 4861: router/neighbour solicitation and advertisement, redirect, and their options),
//! multicast listener discovery (MLDv1, RFC 2710; MLDv2, RFC 3810), and DHCPv6 server traffic
//! (RFC 8415, by UDP port). Views never panic: `new_checked` validates each message's fixed
//! length, options and records are walked with bounds checks and yield errors, not panics.

use std::net::Ipv6Addr;

use vswitch_config::MacAddr;

use super::{be16, set_be16, Field, ParseError};

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// NA flags (R, S, O) and RA flags share byte 4 / 5.
    pub const NA_FLAGS: usize = 4;
    /// NS, NA and redirect: the target address.
    pub const TARGET: Field = 8..24;
    /// Redirect: the destination it is about.
    pub const REDIRECT_DST: Field = 24..40;
    /// MLDv1 query/report/done and MLDv2 query: the multicast address.
    pub const MLD_GROUP: Field = 8..24;
    /// MLDv2 report: number of address records.
    pub const MLD2_RECORDS: Field = 6..8;
}

pub const HEADER_LEN: usize = 4;

pub const TYPE_ECHO_REQUEST: u8 = 128;
pub const TYPE_ECHO_REPLY: u8 = 129;
pub const TYPE_MLD_QUERY: u8 = 130;
pub const TYPE_MLD_REPORT: u8 = 131;
pub const TYPE_MLD_DONE: u8 = 132;
pub const TYPE_ROUTER_SOLICIT: u8 = 133;
pub const TYPE_ROUTER_ADVERT: u8 = 134;
pub const TYPE_NEIGHBOR_SOLICIT: u8 = 135;
pub const TYPE_NEIGHBOR_ADVERT: u8 = 136;
pub const TYPE_REDIRECT: u8 = 137;
pub const TYPE_MLD2_REPORT: u8 = 143;

/// Fixed part (before options) of each ND message.
pub const RS_LEN: usize = 8;
pub const RA_LEN: usize = 16;
pub const NS_LEN: usize = 24;
pub const NA_LEN: usize = 24;
pub const REDIRECT_LEN: usize = 40;
pub const MLD1_LEN: usize = 24;
pub const MLD2_QUERY_LEN: usize = 28;
pub const MLD2_REPORT_LEN: usize = 8;

/// NA flags.
pub const NA_ROUTER: u8 = 0x80;
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;

/// ND option kinds (RFC 4861 4.6).
pub const OPT_SOURCE_LLADDR: u8 = 1;
pub const OPT_TARGET_LLADDR: u8 = 2;
pub const OPT_PREFIX_INFO: u8 = 3;
/// Ethernet link-layer address option: type, length 1 (8 bytes), MAC.
pub const LLADDR_OPT_LEN: usize = 8;

/// MLDv2 record kinds (RFC 3810 5.2.12).
pub const MODE_IS_INCLUDE: u8 = 1;
pub const MODE_IS_EXCLUDE: u8 = 2;
pub const CHANGE_TO_INCLUDE: u8 = 3;
pub const CHANGE_TO_EXCLUDE: u8 = 4;
pub const ALLOW_NEW_SOURCES: u8 = 5;
pub const BLOCK_OLD_SOURCES: u8 = 6;

/// DHCPv6 ports (RFC 8415 7.2): clients listen on 546, servers and relays on 547.
pub const DHCPV6_CLIENT_PORT: u16 = 546;
pub const DHCPV6_SERVER_PORT: u16 = 547;

/// Running one's-complement sum (RFC 1071) over pieces, for pseudo-header checksums.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checksum(u32);

impl Checksum {
    /// Adds `data`; only the last piece may have an odd length.
    pub fn add(&mut self, data: &[u8]) -> &mut Self {
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            self.0 += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            self.0 += u32::from(*last) << 8;
        }
        self.0 = (self.0 & 0xffff) + (self.0 >> 16);
        self
    }
    /// The value to store in a header (the complement of the folded sum).
    pub fn finish(&self) -> u16 {
        let mut s = self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
}

/// The checksum of an upper-layer message `data` carried in IPv6 from `src` to `dst`
/// (RFC 8200 8.1 pseudo-header). 0 when `data` already holds its correct checksum.
pub fn pseudo_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, data: &[u8]) -> u16 {
    let len = (data.len() as u32).to_be_bytes();
    Checksum::default()
        .add(&src.octets())
        .add(&dst.octets())
        .add(&len)
        .add(&[0, 0, 0, next_header])
        .add(data)
        .finish()
}

/// An ICMPv6 message: type, code, checksum, body.
#[derive(Debug)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(Icmpv6Packet { buffer })
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        pseudo_checksum(src, dst, super::ipv6::NH_ICMPV6, self.buffer.as_ref()) == 0
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let b = self.buffer.as_mut();
        set_be16(b, field::CHECKSUM, 0);
        let c = pseudo_checksum(src, dst, super::ipv6::NH_ICMPV6, b);
        set_be16(b, field::CHECKSUM, c);
    }
}

/// A neighbour discovery message: RS, RA, NS, NA or redirect, with its options.
#[derive(Debug)]
pub struct NdMessage<T: AsRef<[u8]>> {
    buffer: T,
    fixed: usize,
}

impl<T: AsRef<[u8]>> NdMessage<T> {
    /// `buffer` is the whole ICMPv6 message; anything but an ND type is `Malformed`.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        let fixed = match b.first() {
            Some(&TYPE_ROUTER_SOLICIT) => RS_LEN,
            Some(&TYPE_ROUTER_ADVERT) => RA_LEN,
            Some(&TYPE_NEIGHBOR_SOLICIT) => NS_LEN,
            Some(&TYPE_NEIGHBOR_ADVERT) => NA_LEN,
            Some(&TYPE_REDIRECT) => REDIRECT_LEN,
            Some(_) => return Err(ParseError::Malformed),
            None => return Err(ParseError::Truncated),
        };
        if b.len() < fixed {
            return Err(ParseError::Truncated);
        }
        Ok(NdMessage { buffer, fixed })
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// NS, NA, redirect: the address asked about / advertised / redirected to.
    pub fn target(&self) -> Option<Ipv6Addr> {
        matches!(
            self.msg_type(),
            TYPE_NEIGHBOR_SOLICIT | TYPE_NEIGHBOR_ADVERT | TYPE_REDIRECT
        )
        .then(|| addr(self.buffer.as_ref(), field::TARGET))
    }
    /// Redirect: the destination whose next hop is `target`.
    pub fn redirect_dst(&self) -> Option<Ipv6Addr> {
        (self.msg_type() == TYPE_REDIRECT).then(|| addr(self.buffer.as_ref(), field::REDIRECT_DST))
    }
    /// NA: R/S/O flags ([`NA_ROUTER`], [`NA_SOLICITED`], [`NA_OVERRIDE`]).
    pub fn na_flags(&self) -> u8 {
        if self.msg_type() == TYPE_NEIGHBOR_ADVERT {
            self.buffer.as_ref()[field::NA_FLAGS]
        } else {
            0
        }
    }
    pub fn options(&self) -> NdOptions<'_> {
        NdOptions {
            rest: &self.buffer.as_ref()[self.fixed..],
        }
    }
}

/// One ND option: its kind and the bytes after the type/length octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdOption<'a> {
    pub kind: u8,
    pub data: &'a [u8],
}

impl NdOption<'_> {
    /// Source/target link-layer address options carry a MAC (Ethernet: length 1).
    pub fn lladdr(&self) -> Option<MacAddr> {
        matches!(self.kind, OPT_SOURCE_LLADDR | OPT_TARGET_LLADDR)
            .then(|| MacAddr::from_bytes(self.data))
            .flatten()
    }
}

/// Options of an ND message; an option of length 0 or past the end yields `Err` once and ends
/// the walk (RFC 4861 4.6: such packets must be discarded).
#[derive(Debug, Clone)]
pub struct NdOptions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for NdOptions<'a> {
    type Item = Result<NdOption<'a>, ParseError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.rest;
        let len = r.get(1).map_or(0, |l| usize::from(*l) * 8);
        if len == 0 || len > r.len() {
            self.rest = &[];
            return Some(Err(if len == 0 {
                ParseError::Malformed
            } else {
                ParseError::Truncated
            }));
        }
        self.rest = &r[len..];
        Some(Ok(NdOption {
            kind: r[0],
            data: &r[2..len],
        }))
    }
}

/// What the link-layer address options of kind `kind` say: every one must carry `expected`.
/// `Ok(false)` if one names another MAC (or is not an Ethernet address); `Err` if the options are
/// malformed.
pub fn lladdr_options_match(
    opts: NdOptions<'_>,
    kind: u8,
    expected: MacAddr,
) -> Result<bool, ParseError> {
    let mut ok = true;
    for o in opts {
        let o = o?;
        if o.kind == kind && (o.data.len() != 6 || o.lladdr() != Some(expected)) {
            ok = false;
        }
    }
    Ok(ok)
}

/// Whether any option of `kind` is present (malformed options count as absent; callers check
/// them first).
pub fn has_option(opts: NdOptions<'_>, kind: u8) -> bool {
    opts.flatten().any(|o| o.kind == kind)
}

fn addr(b: &[u8], f: Field) -> Ipv6Addr {
    let a: [u8; 16] = b[f].try_into().expect("16 bytes");
    Ipv6Addr::from(a)
}

/// An MLD message: v1 query/report/done (24 bytes), v2 query (28+) or v2 report (8+ records).
#[derive(Debug)]
pub struct MldMessage<T: AsRef<[u8]>> {
    buffer: T,
}

/// One MLDv2 address record: what it says about one group (sources are not tracked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MldRecord {
    pub kind: u8,
    pub group: Ipv6Addr,
    pub sources: u16,
}

impl<T: AsRef<[u8]>> MldMessage<T> {
    /// `buffer` is the whole ICMPv6 message; anything but an MLD type is `Malformed`.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        let min = match b.first() {
            Some(&TYPE_MLD_QUERY | &TYPE_MLD_REPORT | &TYPE_MLD_DONE) => MLD1_LEN,
            Some(&TYPE_MLD2_REPORT) => MLD2_REPORT_LEN,
            Some(_) => return Err(ParseError::Malformed),
            None => return Err(ParseError::Truncated),
        };
        if b.len() < min {
            return Err(ParseError::Truncated);
        }
        let m = MldMessage { buffer };
        if m.msg_type() == TYPE_MLD2_REPORT {
            // Validate every record once, so iteration later cannot fail.
            let mut n = 0usize;
            for r in m.walk_records() {
                r?;
                n += 1;
            }
            if n != usize::from(m.record_count()) {
                return Err(ParseError::Truncated);
            }
        }
        Ok(m)
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// v1 report/done, and queries: the group (`::` in a general query).
    pub fn group(&self) -> Option<Ipv6Addr> {
        (self.msg_type() != TYPE_MLD2_REPORT).then(|| addr(self.buffer.as_ref(), field::MLD_GROUP))
    }
    /// A query of at least 28 bytes is MLDv2 (RFC 3810 8.1).
    pub fn is_v2_query(&self) -> bool {
        self.msg_type() == TYPE_MLD_QUERY && self.buffer.as_ref().len() >= MLD2_QUERY_LEN
    }
    fn record_count(&self) -> u16 {
        if self.msg_type() == TYPE_MLD2_REPORT {
            be16(self.buffer.as_ref(), field::MLD2_RECORDS)
        } else {
            0
        }
    }
    fn walk_records(&self) -> Records<'_> {
        Records {
            rest: self
                .buffer
                .as_ref()
                .get(MLD2_REPORT_LEN..)
                .unwrap_or_default(),
            left: self.record_count(),
        }
    }
    /// MLDv2 report: its address records (validated by `new_checked`).
    pub fn records(&self) -> impl Iterator<Item = MldRecord> + '_ {
        self.walk_records().flatten()
    }
}

struct Records<'a> {
    rest: &'a [u8],
    left: u16,
}

impl Iterator for Records<'_> {
    type Item = Result<MldRecord, ParseError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = self.rest;
        if r.len() < 20 {
            self.left = 0;
            return Some(Err(ParseError::Truncated));
        }
        let sources = u16::from_be_bytes([r[2], r[3]]);
        let len = 20 + 16 * usize::from(sources) + 4 * usize::from(r[1]);
        if len > r.len() {
            self.left = 0;
            return Some(Err(ParseError::Truncated));
        }
        self.rest = &r[len..];
        Some(Ok(MldRecord {
            kind: r[0],
            group: addr(r, 4..20),
            sources,
        }))
    }
}

/// Whether a UDP datagram (its header at the start of `udp`) is DHCPv6 traffic only a server or
/// relay sends: anything to the client port 546, or from the server port 547 (RFC 7610, DHCPv6
/// shield). `None` if the UDP header is incomplete.
pub fn is_dhcpv6_server_message(udp: &[u8]) -> Option<bool> {
    let h = udp.get(..8)?;
    let (sport, dport) = (be16(h, 0..2), be16(h, 2..4));
    Some(dport == DHCPV6_CLIENT_PORT || sport == DHCPV6_SERVER_PORT)
}

/// Writes a neighbour advertisement for `target` (flags from `NA_*`), with a target link-layer
/// address option if `tlla` is given, into `b` (the ICMPv6 message area). Returns its length;
/// the checksum is left to [`Icmpv6Packet::fill_checksum`].
pub fn emit_neighbor_advert(
    b: &mut [u8],
    flags: u8,
    target: Ipv6Addr,
    tlla: Option<MacAddr>,
) -> usize {
    let len = NA_LEN + if tlla.is_some() { LLADDR_OPT_LEN } else { 0 };
    b[..len].fill(0);
    b[field::TYPE] = TYPE_NEIGHBOR_ADVERT;
    b[field::NA_FLAGS] = flags;
    b[field::TARGET].copy_from_slice(&target.octets());
    if let Some(m) = tlla {
        b[NA_LEN] = OPT_TARGET_LLADDR;
        b[NA_LEN + 1] = 1;
        b[NA_LEN + 2..NA_LEN + 8].copy_from_slice(&m.0);
    }
    len
}

/// Writes an MLDv2 general query (RFC 3810 5.1: max response `max_resp_ms`, robustness `qrv`,
/// query interval `qqic_secs`) into `b`; returns its length (28).
pub fn emit_mld2_general_query(b: &mut [u8], max_resp_ms: u16, qrv: u8, qqic_secs: u8) -> usize {
    b[..MLD2_QUERY_LEN].fill(0);
    b[field::TYPE] = TYPE_MLD_QUERY;
    set_be16(b, 4..6, max_resp_ms);
    b[24] = qrv & 7;
    b[25] = qqic_secs;
    MLD2_QUERY_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ll(n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n)
    }

    #[test]
    fn checksum_known_vector() {
        // An echo request fe80::1 → fe80::2, id 1 seq 1, no data. Sum computed by hand:
        // pseudo header 0xfe80*2 + 1 + 2 + 8 + 58 + message 0x8000 + 1 + 1.
        let mut m = [128u8, 0, 0, 0, 0, 1, 0, 1];
        let mut p = Icmpv6Packet::new_checked(&mut m[..]).unwrap();
        p.fill_checksum(ll(1), ll(2));
        let mut s: u32 = 0xfe80 * 2 + 1 + 2 + 8 + 58 + 0x8000 + 1 + 1;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        assert_eq!(p.checksum(), !(s as u16));
        assert!(p.verify_checksum(ll(1), ll(2)));
        assert!(!p.verify_checksum(ll(1), ll(3)));
    }

    #[test]
    fn neighbor_advert_round_trip() {
        let mut b = [0u8; 64];
        let mac = MacAddr([2, 0, 0, 0, 0, 7]);
        let n = emit_neighbor_advert(&mut b, NA_SOLICITED | NA_OVERRIDE, ll(7), Some(mac));
        assert_eq!(n, 32);
        let m = NdMessage::new_checked(&b[..n]).unwrap();
        assert_eq!(m.target(), Some(ll(7)));
        assert_eq!(m.na_flags(), NA_SOLICITED | NA_OVERRIDE);
        let opts: Vec<_> = m.options().collect();
        assert_eq!(opts.len(), 1);
        assert_eq!(opts[0].unwrap().lladdr(), Some(mac));
        assert_eq!(
            lladdr_options_match(m.options(), OPT_TARGET_LLADDR, mac),
            Ok(true)
        );
        assert_eq!(
            lladdr_options_match(m.options(), OPT_TARGET_LLADDR, MacAddr([2, 0, 0, 0, 0, 8])),
            Ok(false)
        );
        // Source options are not looked at for the target kind.
        assert_eq!(
            lladdr_options_match(m.options(), OPT_SOURCE_LLADDR, MacAddr::ZERO),
            Ok(true)
        );
    }

    #[test]
    fn nd_options_reject_zero_length_and_overrun() {
        let mut b = vec![TYPE_NEIGHBOR_SOLICIT; 1];
        b.extend_from_slice(&[0; NS_LEN - 1]);
        let mut zero = b.clone();
        zero.extend_from_slice(&[OPT_SOURCE_LLADDR, 0, 0, 0, 0, 0, 0, 0]);
        let m = NdMessage::new_checked(&zero[..]).unwrap();
        assert_eq!(
            m.options().collect::<Vec<_>>(),
            vec![Err(ParseError::Malformed)]
        );
        let mut over = b.clone();
        over.extend_from_slice(&[OPT_SOURCE_LLADDR, 2, 0, 0, 0, 0, 0, 0]);
        let m = NdMessage::new_checked(&over[..]).unwrap();
        assert_eq!(
            m.options().collect::<Vec<_>>(),
            vec![Err(ParseError::Truncated)]
        );
        assert!(lladdr_options_match(m.options(), OPT_SOURCE_LLADDR, MacAddr::ZERO).is_err());
        assert_eq!(
            NdMessage::new_checked(&b[..NS_LEN - 1]).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            NdMessage::new_checked(&[128u8, 0, 0, 0][..]).unwrap_err(),
            ParseError::Malformed
        );
    }

    #[test]
    fn mld_messages() {
        // MLDv1 report for ff02::1:ff00:7.
        let g: Ipv6Addr = "ff02::1:ff00:7".parse().unwrap();
        let mut v1 = [0u8; 24];
        v1[0] = TYPE_MLD_REPORT;
        v1[8..24].copy_from_slice(&g.octets());
        let m = MldMessage::new_checked(&v1[..]).unwrap();
        assert_eq!(m.group(), Some(g));
        assert_eq!(
            MldMessage::new_checked(&v1[..23]).unwrap_err(),
            ParseError::Truncated
        );
        // MLDv2 report: two records, the first with one source and one aux word.
        let mut v2 = vec![TYPE_MLD2_REPORT, 0, 0, 0, 0, 0, 0, 2];
        v2.extend_from_slice(&[MODE_IS_EXCLUDE, 1, 0, 1]);
        v2.extend_from_slice(&g.octets());
        v2.extend_from_slice(&ll(1).octets());
        v2.extend_from_slice(&[0; 4]);
        v2.extend_from_slice(&[CHANGE_TO_INCLUDE, 0, 0, 0]);
        v2.extend_from_slice(&"ff05::9".parse::<Ipv6Addr>().unwrap().octets());
        let m = MldMessage::new_checked(&v2[..]).unwrap();
        let r: Vec<_> = m.records().collect();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].kind, r[0].group, r[0].sources),
            (MODE_IS_EXCLUDE, g, 1)
        );
        assert_eq!(r[1].kind, CHANGE_TO_INCLUDE);
        // Claiming more records than present, or a record cut short, is refused.
        v2[7] = 3;
        assert!(MldMessage::new_checked(&v2[..]).is_err());
        v2[7] = 2;
        assert!(MldMessage::new_checked(&v2[..v2.len() - 1]).is_err());
        // Query emission: v2 general query.
        let mut q = [0u8; 28];
        let n = emit_mld2_general_query(&mut q, 10_000, 2, 125);
        let m = MldMessage::new_checked(&q[..n]).unwrap();
        assert!(m.is_v2_query());
        assert_eq!(m.group(), Some(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn dhcpv6_server_ports() {
        let udp = |s: u16, d: u16| {
            let mut u = [0u8; 8];
            u[0..2].copy_from_slice(&s.to_be_bytes());
            u[2..4].copy_from_slice(&d.to_be_bytes());
            u
        };
        assert_eq!(is_dhcpv6_server_message(&udp(547, 546)), Some(true));
        assert_eq!(is_dhcpv6_server_message(&udp(547, 547)), Some(true));
        assert_eq!(is_dhcpv6_server_message(&udp(1234, 546)), Some(true));
        // A client's solicit (546 → 547) and unrelated traffic pass.
        assert_eq!(is_dhcpv6_server_message(&udp(546, 547)), Some(false));
        assert_eq!(is_dhcpv6_server_message(&udp(5353, 5353)), Some(false));
        assert_eq!(is_dhcpv6_server_message(&[0u8; 7]), None);
    }

    proptest! {
        /// No view panics on any bytes, and every accessor stays in bounds.
        #[test]
        fn views_never_panic(data in proptest::collection::vec(any::<u8>(), 0..160), ty in prop::sample::select(vec![130u8, 131, 132, 133, 134, 135, 136, 137, 143, 0])) {
            let mut data = data;
            if let Some(b) = data.first_mut() { *b = ty; }
            if let Ok(p) = Icmpv6Packet::new_checked(&data[..]) {
                let _ = (p.msg_type(), p.code(), p.checksum(), p.verify_checksum(Ipv6Addr::UNSPECIFIED, Ipv6Addr::LOCALHOST));
            }
            if let Ok(m) = NdMessage::new_checked(&data[..]) {
                let _ = (m.target(), m.redirect_dst(), m.na_flags());
                for o in m.options().flatten() { let _ = o.lladdr(); }
                let _ = lladdr_options_match(m.options(), OPT_SOURCE_LLADDR, MacAddr::ZERO);
            }
            if let Ok(m) = MldMessage::new_checked(&data[..]) {
                let _ = (m.group(), m.is_v2_query(), m.records().count());
            }
            let _ = is_dhcpv6_server_message(&data);
        }
    }
}
