//! AF_PACKET ports: a TPACKET_V3 mmap rx ring (the kernel fills whole blocks of frames, we read
//! them with no syscall per frame) and batched `sendmmsg` tx.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::cvt;

const SOL_PACKET: libc::c_int = 263;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const ETH_P_ALL: u16 = 0x0003;

/// Ring geometry. Blocks must hold the largest frame (64 KiB GSO superframes later).
pub const BLOCK_SIZE: usize = 1 << 18;
pub const BLOCK_COUNT: usize = 16;
const FRAME_SIZE: usize = 2048;
/// How long the kernel keeps a partly filled block before handing it to us, in ms.
/// This bounds the latency an idle port adds; 1 ms is the smallest value the kernel takes.
const RETIRE_BLOCK_TIMEOUT_MS: u32 = 1;

// Offsets inside `struct tpacket_block_desc` (version, offset_to_priv, then tpacket_hdr_v1).
const BLK_STATUS: usize = 8;
const BLK_NUM_PKTS: usize = 12;
const BLK_FIRST_PKT: usize = 16;
// Offsets inside `struct tpacket3_hdr`.
const PKT_NEXT: usize = 0;
const PKT_SNAPLEN: usize = 12;
const PKT_STATUS: usize = 20;
const PKT_MAC: usize = 24;
const PKT_HDR_MIN: usize = 48;

#[repr(C)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

/// The mmap'ed rx ring. Only the worker that owns the port reads it.
struct Ring {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; `Ring` hands out no references that outlive a call,
// and block ownership is arbitrated with the kernel through the atomic block status word.
unsafe impl Send for Ring {}
// SAFETY: see `Send`; concurrent readers are excluded by design (one rx owner per port).
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned, and nothing borrows the ring any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// An AF_PACKET socket bound to one interface, with an rx ring.
pub struct PacketSocket {
    fd: OwnedFd,
    ring: Ring,
    ifindex: u32,
}

impl std::fmt::Debug for PacketSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketSocket")
            .field("fd", &self.fd)
            .field("ifindex", &self.ifindex)
            .finish()
    }
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

impl PacketSocket {
    /// Opens a packet socket on `ifindex` (in the calling thread's netns) with a TPACKET_V3 ring.
    pub fn open(ifindex: u32) -> io::Result<PacketSocket> {
        // Protocol 0 first: the socket receives nothing until it is bound to our interface, so no
        // frame of another interface can slip into the ring in between.
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
        setsockopt(raw, SOL_PACKET, PACKET_VERSION, &TPACKET_V3)?;
        let req = TpacketReq3 {
            block_size: BLOCK_SIZE as u32,
            block_nr: BLOCK_COUNT as u32,
            frame_size: FRAME_SIZE as u32,
            frame_nr: (BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT) as u32,
            retire_blk_tov: RETIRE_BLOCK_TIMEOUT_MS,
            sizeof_priv: 0,
            feature_req_word: 0,
        };
        setsockopt(raw, SOL_PACKET, PACKET_RX_RING, &req)?;
        let len = BLOCK_SIZE * BLOCK_COUNT;
        // SAFETY: maps the ring the kernel just allocated for this socket; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                raw,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = Ring {
            base: NonNull::new(base.cast())
                .ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        };
        // Our own transmissions must not come back into the ring; skip the qdisc on tx.
        setsockopt(raw, SOL_PACKET, PACKET_IGNORE_OUTGOING, &1 as &libc::c_int)?;
        setsockopt(raw, SOL_PACKET, PACKET_QDISC_BYPASS, &1 as &libc::c_int)?;
        setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &(4 << 20) as &libc::c_int,
        )?;

        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and the length passed matches it.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(PacketSocket { fd, ring, ifindex })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn block_ptr(&self, block: usize) -> *mut u8 {
        debug_assert!(block < BLOCK_COUNT);
        // SAFETY: block < BLOCK_COUNT, so the offset stays inside the mapping.
        unsafe { self.ring.base.as_ptr().add(block * BLOCK_SIZE) }
    }

    fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: the status word lies inside the block (offset 8, 4-byte aligned since blocks are
        // page aligned); the kernel and we only access it atomically.
        unsafe { &*(self.block_ptr(block).add(BLK_STATUS) as *const AtomicU32) }
    }

    /// Hands every frame of up to `max_blocks` ready blocks, starting at `*next_block`, to `f`
    /// (`f(frame, vlan_tag_stripped)`), returns each block to the kernel, and returns the number of
    /// frames seen. Never reads outside a block, whatever the descriptors say.
    pub fn rx_blocks(
        &self,
        next_block: &mut usize,
        max_blocks: usize,
        mut f: impl FnMut(&[u8], bool),
    ) -> usize {
        let mut frames = 0;
        for _ in 0..max_blocks {
            let b = *next_block % BLOCK_COUNT;
            let status = self.block_status(b);
            if status.load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the block is ours (TP_STATUS_USER) until we store TP_STATUS_KERNEL below, so
            // the kernel does not write it meanwhile; the slice covers exactly this block.
            let block = unsafe { std::slice::from_raw_parts(self.block_ptr(b), BLOCK_SIZE) };
            let num = read_u32(block, BLK_NUM_PKTS).unwrap_or(0);
            let mut off = read_u32(block, BLK_FIRST_PKT).unwrap_or(0) as usize;
            for _ in 0..num {
                if off + PKT_HDR_MIN > BLOCK_SIZE {
                    break;
                }
                let (Some(next), Some(snaplen), Some(pstatus), Some(mac)) = (
                    read_u32(block, off + PKT_NEXT),
                    read_u32(block, off + PKT_SNAPLEN),
                    read_u32(block, off + PKT_STATUS),
                    read_u16(block, off + PKT_MAC),
                ) else {
                    break;
                };
                let start = off + mac as usize;
                if let Some(frame) = block.get(start..start + snaplen as usize) {
                    frames += 1;
                    f(frame, pstatus & TP_STATUS_VLAN_VALID != 0);
                }
                if next == 0 {
                    break;
                }
                off += next as usize;
            }
            status.store(TP_STATUS_KERNEL, Ordering::Release);
            *next_block = (b + 1) % BLOCK_COUNT;
        }
        frames
    }

    /// Sends up to 64 frames in one `sendmmsg`; returns how many the kernel took.
    pub fn send_batch(&self, frames: &[IoSlice<'_>]) -> io::Result<usize> {
        const MAX: usize = 64;
        let n = frames.len().min(MAX);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: mmsghdr is plain data; all-zero (null name/control) is valid.
        let mut msgs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
        for (m, frame) in msgs.iter_mut().zip(&frames[..n]) {
            // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel only reads it.
            m.msg_hdr.msg_iov = (frame as *const IoSlice<'_>).cast_mut().cast();
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` point at iovecs borrowed from `frames`, all alive for the call.
        let sent = cvt(unsafe {
            libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0)
        })?;
        Ok(sent as usize)
    }
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
