//! IPv4 sockets for the underlay.
//!
//! - VXLAN goes out through UDP sockets: the kernel writes the outer IPv4/UDP headers, and a TCP
//!   superframe leaves as one `sendmsg` with `UDP_SEGMENT` (UDP GSO): equal-size VXLAN datagrams
//!   laid out as a scatter-gather list of our per-segment headers and the superframe's payload
//!   chunks, which the kernel segments (or, over a veth, passes on whole). Several sockets bound
//!   to distinct source ports keep per-flow entropy for the underlay's ECMP.
//! - VXLAN arrives on a UDP socket with `UDP_GRO`: consecutive datagrams of one outer flow come
//!   up as one buffer with their segment size in a control message.
//! - IPIP and direct routing go out through one raw `IPPROTO_RAW` socket with headers we built
//!   (the kernel only routes by the destination in the socket address, so a pod packet reaches a
//!   peer node with no kernel route or tunnel device); IPIP arrives on a raw protocol-4 socket.
//!   Batched with `sendmmsg`/`recvmmsg`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// Messages per `sendmmsg`/`recvmmsg` call.
pub const BATCH: usize = 32;
/// Scatter-gather entries per message (a 64 KiB superframe in 45 segments needs 90).
pub const MAX_IOV: usize = 256;

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

/// One datagram (or, with `gso_size`, a train of equal datagrams) to send.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub dst: Ipv4Addr,
    pub port: u16,
    pub iov: &'a [IoSlice<'a>],
    /// `UDP_SEGMENT`: the payload is cut into datagrams of this many bytes (0: one datagram).
    pub gso_size: u16,
}

/// What arrived in one receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub src: Ipv4Addr,
    /// The sender's UDP port (0 for raw sockets).
    pub port: u16,
    /// With `UDP_GRO`: the size of each coalesced datagram (0: a single datagram).
    pub gro_size: u16,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            len: 0,
            src: Ipv4Addr::UNSPECIFIED,
            port: 0,
            gro_size: 0,
        }
    }
}

impl Default for Msg<'_> {
    fn default() -> Self {
        Msg {
            dst: Ipv4Addr::UNSPECIFIED,
            port: 0,
            iov: &[],
            gso_size: 0,
        }
    }
}

const CMSG_LEN: usize = 32;

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

    fn buffers(&self, rcv: bool, snd: bool) -> io::Result<()> {
        let size = 8 << 20;
        if rcv
            && self
                .set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
                .is_err()
        {
            self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
        }
        if snd
            && self
                .set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size)
                .is_err()
        {
            self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUF, size)?;
        }
        Ok(())
    }

    fn bind(&self, ip: Ipv4Addr, port: u16) -> io::Result<()> {
        let sa = sockaddr(ip, port);
        // SAFETY: `sa` is a valid sockaddr_in and the length matches it.
        cvt(unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    /// A raw socket for sending complete IPv4 packets (`IP_HDRINCL` is implied by IPPROTO_RAW).
    pub fn raw_sender() -> io::Result<InetSocket> {
        let s = Self::new(libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        s.buffers(false, true)?;
        Ok(s)
    }

    /// A raw socket receiving every IPv4 packet of `protocol` addressed to this node, outer header
    /// included (used for IPIP, protocol 4).
    pub fn raw_receiver(protocol: u8) -> io::Result<InetSocket> {
        let s = Self::new(libc::SOCK_RAW, libc::c_int::from(protocol))?;
        s.buffers(true, false)?;
        Ok(s)
    }

    /// A UDP socket bound to `0.0.0.0:port` receiving VXLAN, with `UDP_GRO`; several may share
    /// the port (`SO_REUSEPORT`, one per worker).
    pub fn udp_receiver(port: u16) -> io::Result<InetSocket> {
        let s = Self::new(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        s.set_int(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        s.set_int(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        s.buffers(true, false)?;
        // Older kernels lack UDP_GRO: datagrams then simply arrive one by one.
        let _ = s.set_int(libc::SOL_UDP, libc::UDP_GRO, 1);
        s.bind(Ipv4Addr::UNSPECIFIED, port)?;
        Ok(s)
    }

    /// Two UDP sockets for sending VXLAN from `local`, sharing one kernel-chosen source port:
    /// the first sends single datagrams with a zero UDP checksum (RFC 7348 5, as the kernel's
    /// vxlan does by default), the second `UDP_SEGMENT` trains, which need checksums.
    pub fn udp_sender_pair(local: Ipv4Addr) -> io::Result<(InetSocket, InetSocket)> {
        let single = Self::new(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        single.buffers(false, true)?;
        single.set_int(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        single.set_int(libc::SOL_SOCKET, libc::SO_NO_CHECK, 1)?;
        single.bind(local, 0)?;
        let port = single.local_port()?;
        let train = Self::new(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        train.buffers(false, true)?;
        train.set_int(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        train.bind(local, port)?;
        Ok((single, train))
    }

    /// The local UDP port this socket is bound to.
    pub fn local_port(&self) -> io::Result<u16> {
        // SAFETY: sockaddr_in is plain data; all-zero is valid.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `sa`.
        cvt(unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        })?;
        Ok(u16::from_be(sa.sin_port))
    }

    /// Whether the kernel takes `UDP_SEGMENT` on this socket (4.18+).
    pub fn supports_gso(&self) -> bool {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `v`.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        r == 0
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends each message in one `sendmmsg` (at most [`BATCH`]); returns how many the kernel
    /// took. A message with `gso_size` carries a `UDP_SEGMENT` control message.
    pub fn send_batch(&self, msgs: &[Msg<'_>]) -> io::Result<usize> {
        let n = msgs.len().min(BATCH);
        if n == 0 {
            return Ok(0);
        }
        let mut addrs = [sockaddr(Ipv4Addr::UNSPECIFIED, 0); BATCH];
        let mut cmsgs = [[0u64; CMSG_LEN / 8]; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let m = &msgs[i];
            if m.iov.len() > MAX_IOV {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "too many iovecs",
                ));
            }
            addrs[i] = sockaddr(m.dst, m.port);
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // IoSlice is ABI-compatible with iovec; the kernel only reads them.
            h.msg_iov = m.iov.as_ptr().cast_mut().cast();
            h.msg_iovlen = m.iov.len();
            if m.gso_size > 0 {
                let buf = &mut cmsgs[i];
                h.msg_control = buf.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
                // SAFETY: `h` has a control buffer of CMSG_LEN (>= CMSG_SPACE(2)) bytes, so the
                // first header and its 2 data bytes lie inside it.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.gso_size);
                }
            }
        }
        // SAFETY: every header points at an address, iovecs and a control buffer that live
        // until the call returns.
        let sent = cvt(unsafe {
            libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0)
        })?;
        Ok(sent as usize)
    }

    /// Receives up to [`BATCH`] datagrams, datagram `i` into `bufs[i]`; fills `out[i]` and
    /// returns how many arrived (0 when none are waiting).
    pub fn recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        out: &mut [Received],
    ) -> io::Result<usize> {
        let n = bufs.len().min(BATCH).min(out.len());
        if n == 0 {
            return Ok(0);
        }
        let mut addrs = [sockaddr(Ipv4Addr::UNSPECIFIED, 0); BATCH];
        let mut cmsgs = [[0u64; CMSG_LEN / 8]; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = (&mut bufs[i] as *mut IoSliceMut<'_>).cast();
            h.msg_iovlen = 1;
            h.msg_control = cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_LEN;
        }
        // SAFETY: each header points at one iovec borrowed mutably from `bufs`, and at a name
        // and control buffer on this stack frame, for the duration of the call.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        for i in 0..got as usize {
            let h = &hdrs[i].msg_hdr;
            let mut gro = 0u16;
            // SAFETY: the kernel filled at most `msg_controllen` bytes of our control buffer;
            // CMSG_FIRSTHDR/NXTHDR stay within it.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        gro = u16::try_from(v).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
            out[i] = Received {
                len: hdrs[i].msg_len as usize,
                src: Ipv4Addr::from(u32::from_be(addrs[i].sin_addr.s_addr)),
                port: u16::from_be(addrs[i].sin_port),
                gro_size: gro,
            };
        }
        Ok(got as usize)
    }

    /// Datagrams the kernel dropped in front of this socket (receive buffer full), cumulative.
    pub fn drops(&self) -> io::Result<u64> {
        let mut info = [0u32; 16];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        })?;
        Ok(u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
    }
}

/// The MTU of interface `name` in the calling thread's namespace, from sysfs.
pub fn interface_mtu(name: &str) -> io::Result<u16> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    s.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("bad MTU {s:?} for {name}")))
}
