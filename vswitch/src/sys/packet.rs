//! AF_PACKET sockets on the host end of a pod's veth (and on the underlay interface for directly
//! routed traffic), with `PACKET_VNET_HDR`: every frame in either direction carries the 10-byte
//! virtio-net header, so the veth keeps its offloads and 64 KiB superframes cross the socket whole.
//!
//! Receiving is per frame (`recvmmsg`, or an io_uring multishot receive on the same socket), so a
//! lone packet is handed over at once instead of waiting for a TPACKET_V3 block to retire (the
//! 1 ms block timer was most of our old ping time). Sending bypasses the qdisc. Drops in front of
//! us (receive buffer full) are read with `PACKET_STATISTICS`.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;
use crate::packet::offload::VNET_HDR_LEN;

/// Frames per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 64;
/// Receive buffer: room for bursts while the worker is busy.
const RCVBUF: libc::c_int = 8 << 20;
const SNDBUF: libc::c_int = 4 << 20;

/// An AF_PACKET socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a valid T of the given size for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A classic BPF program for `SO_ATTACH_FILTER`.
pub type Bpf = [libc::sock_filter];

impl PacketSocket {
    /// Opens a packet socket on `ifindex` (in the calling thread's netns). `filter` (classic BPF)
    /// is attached before the socket is bound, so nothing else ever enters its queue.
    pub fn open(ifindex: u32, filter: Option<&Bpf>) -> io::Result<PacketSocket> {
        // Protocol 0 first: the socket receives nothing until it is bound to our interface.
        // SAFETY: plain syscall; the fd is checked and then owned.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            &1 as &libc::c_int,
        )?;
        // The VLAN tag a veth strips into metadata is only visible in the auxiliary data.
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            &1 as &libc::c_int,
        )?;
        // Our own transmissions must not come back; skip the qdisc on tx.
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &1 as &libc::c_int,
        )?;
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &1 as &libc::c_int,
        )?;
        // As root the forced variants lift the sysctl caps; fall back to the plain ones.
        if setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF).is_err() {
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF)?;
        }
        if setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &SNDBUF).is_err() {
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, &SNDBUF)?;
        }
        if let Some(prog) = filter {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr().cast_mut(),
            };
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and the length passed matches it.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(PacketSocket { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receives up to [`BATCH`] frames (each with its virtio-net header first) into `bufs`;
    /// `out[i]` gets frame `i`'s length and whether the kernel stripped a VLAN tag from it.
    /// Returns how many arrived (0 when none are waiting).
    pub fn recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        out: &mut [(usize, bool)],
    ) -> io::Result<usize> {
        const CMSG_WORDS: usize = 8;
        let n = bufs.len().min(BATCH).min(out.len());
        if n == 0 {
            return Ok(0);
        }
        let mut cmsgs = [[0u64; CMSG_WORDS]; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero (no name, no control) is valid.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((h, b), c) in hdrs.iter_mut().zip(bufs.iter_mut()).zip(cmsgs.iter_mut()) {
            // IoSliceMut is ABI-compatible with iovec on Unix.
            h.msg_hdr.msg_iov = (b as *mut IoSliceMut<'_>).cast();
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = c.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_WORDS * 8;
        }
        // SAFETY: every header points at one iovec borrowed mutably from `bufs` and a control
        // buffer on this stack frame, for the duration of the call.
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
        for (o, h) in out.iter_mut().zip(&hdrs[..got as usize]) {
            let mut vlan = false;
            // SAFETY: the kernel filled at most `msg_controllen` bytes of our control buffer;
            // CMSG_FIRSTHDR/NXTHDR stay within it, and PACKET_AUXDATA carries a tpacket_auxdata.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA
                    {
                        let aux: libc::tpacket_auxdata =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        vlan = aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0;
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            *o = (h.msg_len as usize, vlan);
        }
        Ok(got as usize)
    }

    /// Sends each `(virtio-net header, frame)` in one `sendmmsg` (at most [`BATCH`]); returns
    /// how many the kernel took.
    pub fn send_batch(&self, frames: &[(&[u8; VNET_HDR_LEN], &[u8])]) -> io::Result<usize> {
        let n = frames.len().min(BATCH);
        if n == 0 {
            return Ok(0);
        }
        let mut iovs = [[libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2]; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((h, iov), (vh, f)) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(frames) {
            iov[0] = libc::iovec {
                iov_base: vh.as_ptr().cast_mut().cast(),
                iov_len: VNET_HDR_LEN,
            };
            iov[1] = libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            };
            h.msg_hdr.msg_iov = iov.as_mut_ptr();
            h.msg_hdr.msg_iovlen = 2;
        }
        // SAFETY: every header points at iovecs on this stack frame, which point at slices
        // borrowed from `frames`; the kernel only reads them during the call.
        let sent = cvt(unsafe {
            libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0)
        })?;
        Ok(sent as usize)
    }

    /// Frames the kernel dropped in front of this socket since the last call (the counter
    /// resets on read).
    pub fn take_drops(&self) -> io::Result<u64> {
        // SAFETY: tpacket_stats is plain data; all-zero is valid.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `st`.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        })?;
        Ok(u64::from(st.tp_drops))
    }
}

/// A BPF program accepting untagged IPv4 frames whose destination is not `local` (pod traffic
/// routed to this node without encapsulation); everything else never reaches the socket.
pub fn direct_routed_filter(local: std::net::Ipv4Addr) -> Vec<libc::sock_filter> {
    const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        ins(LD_H_ABS, 0, 0, 12),                 // ethertype
        ins(JEQ_K, 0, 3, libc::ETH_P_IP as u32), // not IPv4 -> drop
        ins(LD_W_ABS, 0, 0, 30),                 // IPv4 destination
        ins(JEQ_K, 1, 0, u32::from(local)),      // ours -> drop
        ins(RET_K, 0, 0, 0x0004_0000),           // accept whole frame
        ins(RET_K, 0, 0, 0),                     // drop
    ]
}
