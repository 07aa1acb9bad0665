//! Tap devices with the virtio-net header and offloads (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! `TUNSETOFFLOAD`), the way Firecracker and Cloud Hypervisor open theirs.
//!
//! With offloads on, the pod's kernel hands us TCP superframes of up to 64 KiB with a partial
//! checksum instead of 45 finished segments, and takes superframes from us the same way: the
//! 10-byte `struct virtio_net_hdr` in front of every frame says which. The offloads are probed:
//! `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`, plus `TUN_F_USO4 | TUN_F_USO6` where the kernel knows
//! them (6.2+); a kernel that refuses them all leaves the tap without offloads, and vswitch then
//! segments and checksums in software for it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt, cvt_isize};
use crate::packet::offload::{Caps, VNET_HDR_LEN};

/// Transmit queue of a pod's tap (its packets towards vswitch): deep enough to absorb a burst
/// while a worker is busy (the kernel default of 500 frames drops 64 B bursts).
pub const TX_QUEUE_LEN: i32 = 8192;

/// Why a tap could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("open /dev/net/tun: {0} (is the tun module loaded?)")]
    Open(#[source] io::Error),
    #[error("TUNGETFEATURES: {0}")]
    Features(#[source] io::Error),
    #[error("the kernel's tun driver lacks {0}")]
    Unsupported(&'static str),
    #[error("TUNSETIFF {name}: {source}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TUNSETVNETHDRSZ: {0}")]
    VnetHdr(#[source] io::Error),
    #[error("TUNSETOFFLOAD: {0}")]
    Offload(#[source] io::Error),
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("no interface {0:?} to reattach to")]
    Missing(String),
    #[error("TUNSETPERSIST: {0}")]
    Persist(#[source] io::Error),
}

impl TapError {
    /// The tap is still attached to another descriptor: typically the previous daemon's, whose
    /// io_uring the kernel tears down a little after the process has died.
    pub fn is_busy(&self) -> bool {
        matches!(self, TapError::SetIff { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
    }
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    caps: Caps,
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req
}

impl Tap {
    /// Creates tap `name` in the calling thread's network namespace, non-blocking, with offloads
    /// (`offloads = false`: none, so the pod's kernel finishes every checksum and segment).
    pub fn create(name: &str, offloads: bool) -> Result<Tap, TapError> {
        Self::attach(name, offloads)
    }

    /// Reattaches to the existing persistent tap `name` in the calling thread's namespace (a
    /// daemon restart): the device, its addresses and routes and the pod's sockets on it have
    /// lived on without us. Never creates one: a tap that is gone stays gone.
    pub fn reopen(name: &str, offloads: bool) -> Result<Tap, TapError> {
        let before = super::if_index(name).map_err(|_| TapError::Missing(name.to_string()))?;
        let tap = Self::attach(name, offloads)?;
        // TUNSETIFF would have created a new device had the old one vanished in between.
        if super::if_index(name).ok() != Some(before) {
            let _ = tap.set_persist(false);
            return Err(TapError::Missing(name.to_string()));
        }
        Ok(tap)
    }

    /// Whether the kernel has brought the tap's link up (IFF_RUNNING, set by the link watcher
    /// together with activating its queue discipline, some time after a reattach gave it its
    /// carrier back). A pod's packets sent before that are dropped, its first ARP request too.
    pub fn is_running(name: &str) -> io::Result<bool> {
        // SAFETY: plain syscall; the fd is checked and then owned.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq(name);
        // SAFETY: `req` is a valid ifreq naming the interface; the kernel writes its flags.
        cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        Ok(flags & libc::IFF_RUNNING as libc::c_short != 0)
    }

    /// Whether the device outlives its last open descriptor. Pod taps are persistent, so a
    /// daemon crash or restart leaves the pod its interface; removing a port clears it first.
    pub fn set_persist(&self, on: bool) -> Result<(), TapError> {
        // SAFETY: TUNSETPERSIST takes its argument by value.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(on),
            )
        })
        .map_err(TapError::Persist)?;
        Ok(())
    }

    /// TUNSETIFF on `name`: creates the tap, or attaches to a persistent one of that name.
    fn attach(name: &str, offloads: bool) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TapError::Name(name.to_string()));
        }
        let path = c"/dev/net/tun";
        // SAFETY: `path` is a valid C string; the returned fd is checked and then owned.
        let raw = cvt(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })
        .map_err(TapError::Open)?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut features: libc::c_uint = 0;
        // SAFETY: TUNGETFEATURES writes one unsigned int into `features`, which is valid and aligned.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETFEATURES, &mut features) })
            .map_err(TapError::Features)?;
        let needed = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_uint;
        if features & needed != needed {
            return Err(TapError::Unsupported("IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"));
        }

        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: `req` is a properly sized, initialised ifreq; the kernel reads it and may write
        // the final name back into it.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) }).map_err(
            |source| TapError::SetIff {
                name: name.to_string(),
                source,
            },
        )?;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from a valid pointer.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) })
            .map_err(TapError::VnetHdr)?;
        let caps = if offloads {
            set_offloads(&fd)?
        } else {
            set_offload_flags(&fd, 0).map_err(TapError::Offload)?;
            Caps::NONE
        };
        set_tx_queue_len(name, TX_QUEUE_LEN);
        Ok(Tap { fd, caps })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// What the tap takes from us (and what the pod's kernel may send us).
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Reads one frame, its virtio-net header first, into `buf`. `WouldBlock` when empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into the valid, writable `buf`.
        cvt_isize(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// Writes one frame behind its virtio-net header `hdr`.
    pub fn write(&self, hdr: &[u8], frame: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr().cast_mut().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point at live slices the kernel only reads during the call.
        cvt_isize(unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) })
    }
}

/// Tries the offload sets from most to least capable; returns what the kernel took.
fn set_offloads(fd: &OwnedFd) -> Result<Caps, TapError> {
    let tcp = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    let uso = libc::TUN_F_USO4 | libc::TUN_F_USO6;
    if set_offload_flags(fd, tcp | uso).is_ok() {
        return Ok(Caps::ALL);
    }
    match set_offload_flags(fd, tcp) {
        Ok(()) => Ok(Caps {
            uso: false,
            ..Caps::ALL
        }),
        Err(_) => match set_offload_flags(fd, libc::TUN_F_CSUM) {
            Ok(()) => Ok(Caps {
                csum: true,
                ..Caps::NONE
            }),
            Err(e) => Err(TapError::Offload(e)),
        },
    }
}

fn set_offload_flags(fd: &OwnedFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) })?;
    Ok(())
}

/// Best effort: a shorter queue only means earlier drops, which are counted.
fn set_tx_queue_len(name: &str, len: i32) {
    // SAFETY: plain syscall; the fd is checked and then owned.
    let Ok(raw) =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
    else {
        return;
    };
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ifreq(name);
    // `ifr_qlen` shares the union's int member.
    req.ifr_ifru.ifru_mtu = len;
    // SAFETY: `req` is a valid ifreq naming the interface; the kernel reads the queue length.
    let _ = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFTXQLEN, &mut req) };
}
