//! The only place with `unsafe`: thin, checked wrappers over the syscalls the dataplane needs.
//!
//! - [`tap`]: tap devices with the virtio-net header (`/dev/net/tun` ioctls).
//! - [`packet`]: AF_PACKET sockets with a TPACKET_V3 mmap rx ring and batched `sendmmsg` tx.
//! - [`poll`]: epoll and eventfd for the worker loop.
//!
//! Every `unsafe` block states why it is sound (`// SAFETY:`), enforced by
//! `clippy::undocumented_unsafe_blocks`.
#![allow(unsafe_code)]

pub mod bufmem;
pub mod inet;
pub mod netns;
pub mod packet;
pub mod poll;
pub mod tap;
pub mod uring;

use std::io;

/// Converts a `-1` libc return into the thread's `errno` as an `io::Error`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn cvt_isize(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Resolves an interface name in the calling thread's network namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}
