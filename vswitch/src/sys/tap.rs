//! Tap devices with the virtio-net header (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
//!
//! Like Firecracker and Cloud Hypervisor we keep the 12-byte `virtio_net_hdr_v1` in front of every
//! frame: offloads are off for now (the kernel hands us complete checksums and no GSO), but the
//! header path is what later carries 64 KiB GSO superframes without a copy.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt, cvt_isize};

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), set with `TUNSETVNETHDRSZ`.
pub const VNET_HDR_LEN: usize = 12;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETFEATURES: libc::c_ulong = 0x8004_54cf;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// `struct ifreq` with the flags member of the union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

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
}

/// An open tap device. Closing the last fd removes the device (it is not persistent).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
}

impl Tap {
    /// Creates tap `name` in the calling thread's network namespace, non-blocking.
    pub fn create(name: &str) -> Result<Tap, TapError> {
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
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETFEATURES, &mut features) })
            .map_err(TapError::Features)?;
        let needed = (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) as libc::c_uint;
        if features & needed != needed {
            return Err(TapError::Unsupported("IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"));
        }

        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a properly sized, initialised ifreq; the kernel reads it and may write
        // the final name back into it.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) }).map_err(|source| {
            TapError::SetIff {
                name: name.to_string(),
                source,
            }
        })?;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from a valid pointer.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) })
            .map_err(TapError::VnetHdr)?;
        // No checksum/TSO offload yet: the kernel finishes checksums before handing frames to us.
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_ulong) })
            .map_err(TapError::Offload)?;

        Ok(Tap { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one frame (vnet header first) into `buf`. `WouldBlock` when the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into the valid, writable `buf`.
        cvt_isize(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// Writes one frame that starts with its vnet header.
    pub fn write(&self, frame_with_hdr: &[u8]) -> io::Result<usize> {
        // SAFETY: the kernel reads `len` bytes from the valid slice.
        cvt_isize(unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                frame_with_hdr.as_ptr().cast(),
                frame_with_hdr.len(),
            )
        })
    }
}
