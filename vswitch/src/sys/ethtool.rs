//! Turning off transmit offloads of an interface with the legacy `SIOCETHTOOL` ioctls
//! (`ETHTOOL_STXCSUM`, `ETHTOOL_STSO`, `ETHTOOL_SGSO`), in the calling thread's namespace.
//!
//! Needed for the pod end of an AF_PACKET port's veth: without `PACKET_VNET_HDR` the ring would
//! hand us TCP frames with unfinished checksums and 64 KiB GSO superframes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` pointer member (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// Turns off checksum offload, TSO and GSO on transmit for `ifname`.
pub fn disable_tx_offloads(ifname: &str) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: plain syscall; the fd is checked and then owned.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    for cmd in [ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO] {
        let mut value = EthtoolValue { cmd, data: 0 };
        let mut req = IfReqData {
            name: [0; libc::IFNAMSIZ],
            data: &mut value,
            _pad: [0; 16],
        };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: `req` is a valid ifreq whose data pointer refers to `value`, both alive for
        // the call; the kernel reads the command and value from them.
        let r = cvt(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) });
        match r {
            Ok(_) => {}
            // A device without the feature at all has nothing to turn off.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
