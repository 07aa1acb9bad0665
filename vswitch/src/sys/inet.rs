//! IPv4 sockets for the underlay: a raw `IPPROTO_RAW` socket that sends packets whose IPv4
//! header we built ourselves (VXLAN, IPIP, direct routing), a raw `IPPROTO_IPIP` socket that
//! receives IPIP, and a UDP socket that receives VXLAN. Batched with `sendmmsg`/`recvmmsg`.
//!
//! Sending with our own header means the kernel neither adds nor changes headers (no kernel
//! vxlan/ipip device needed): it only routes by the destination in the socket address (the peer's
//! underlay IP) and resolves the next hop's MAC. For direct routing that destination differs from
//! the IP header's (a pod IP), which is exactly what carries a pod packet to a peer node without
//! any kernel route.

use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// Messages per `sendmmsg`/`recvmmsg` call.
pub const BATCH: usize = 32;

#[derive(Debug)]
pub struct InetSocket {
    fd: OwnedFd,
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

impl InetSocket {
    fn new(ty: libc::c_int, proto: libc::c_int) -> io::Result<InetSocket> {
        // SAFETY: plain syscall; the fd is checked and then owned.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_INET,
                ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(InetSocket { fd })
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: passes a pointer to a live c_int with its exact size.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    /// A raw socket for sending complete IPv4 packets (`IP_HDRINCL` is implied by IPPROTO_RAW).
    pub fn raw_sender() -> io::Result<InetSocket> {
        let s = Self::new(libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        s.set_int(libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20)?;
        Ok(s)
    }

    /// A raw socket receiving every IPv4 packet of `protocol` addressed to this node, outer header
    /// included (used for IPIP, protocol 4).
    pub fn raw_receiver(protocol: u8) -> io::Result<InetSocket> {
        let s = Self::new(libc::SOCK_RAW, libc::c_int::from(protocol))?;
        s.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20)?;
        Ok(s)
    }

    /// A UDP socket bound to `0.0.0.0:port` (VXLAN receive).
    pub fn udp_bound(port: u16) -> io::Result<InetSocket> {
        let s = Self::new(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        s.set_int(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        s.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20)?;
        let sa = sockaddr(Ipv4Addr::UNSPECIFIED, port);
        // SAFETY: `sa` is a valid sockaddr_in and the length matches it.
        cvt(unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        Ok(s)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends each `(packet, destination)` in one `sendmmsg` (at most [`BATCH`]); returns how
    /// many the kernel took.
    pub fn send_batch(&self, msgs: &[(IoSlice<'_>, Ipv4Addr)]) -> io::Result<usize> {
        let n = msgs.len().min(BATCH);
        if n == 0 {
            return Ok(0);
        }
        let mut addrs = [sockaddr(Ipv4Addr::UNSPECIFIED, 0); BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            addrs[i] = sockaddr(msgs[i].1, 0);
            hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // IoSlice is ABI-compatible with iovec; the kernel only reads it.
            hdrs[i].msg_hdr.msg_iov = (&msgs[i].0 as *const IoSlice<'_>).cast_mut().cast();
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at an address and an iovec that live until the call returns.
        let sent = cvt(unsafe {
            libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0)
        })?;
        Ok(sent as usize)
    }

    /// Receives up to [`BATCH`] datagrams straight into `mem` (a packet-buffer pool), datagram
    /// `i` into `mem[ranges[i].0..ranges[i].0 + ranges[i].1]`; fills `out[i]` with (length, source
    /// IP) and returns how many arrived. Ranges must lie inside `mem` and not overlap (checked).
    pub fn recv_into(
        &self,
        mem: &mut [u8],
        ranges: &[(usize, usize)],
        out: &mut [(usize, Ipv4Addr)],
    ) -> io::Result<usize> {
        let n = ranges.len().min(BATCH).min(out.len());
        for (i, &(start, len)) in ranges[..n].iter().enumerate() {
            let end = start.checked_add(len).filter(|e| *e <= mem.len());
            let disjoint = ranges[..i]
                .iter()
                .all(|&(s2, l2)| start + len <= s2 || s2 + l2 <= start);
            if end.is_none() || !disjoint {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "receive ranges overlap or exceed the buffer",
                ));
            }
        }
        if n == 0 {
            return Ok(0);
        }
        let base = mem.as_mut_ptr();
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        for (iov, &(start, len)) in iovs.iter_mut().zip(&ranges[..n]) {
            // SAFETY: `start + len <= mem.len()` was checked above, so the pointer stays in `mem`.
            iov.iov_base = unsafe { base.add(start) }.cast();
            iov.iov_len = len;
        }
        let mut addrs = [sockaddr(Ipv4Addr::UNSPECIFIED, 0); BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the iovecs cover disjoint, in-bounds parts of `mem`, which is exclusively
        // borrowed for the call; names and headers live on this stack frame.
        let got = cvt(unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        })? as usize;
        for i in 0..got {
            out[i] = (
                hdrs[i].msg_len as usize,
                Ipv4Addr::from(u32::from_be(addrs[i].sin_addr.s_addr)),
            );
        }
        Ok(got)
    }
}

/// The MTU of interface `name` in the calling thread's namespace, from sysfs.
pub fn interface_mtu(name: &str) -> io::Result<u16> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    s.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("bad MTU {s:?} for {name}")))
}
