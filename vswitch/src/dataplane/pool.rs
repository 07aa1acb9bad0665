//! Preallocated packet buffers with headroom, addressed by index, reference counted.
//!
//! One pool per worker, allocated once at start: the fast path never allocates. Each buffer holds
//! a 64 KiB GSO superframe plus headroom, so the virtio-net header and outer headers fit in front
//! of a frame without moving it. The memory is a [`BufMem`], which the io_uring layer lends to the
//! kernel buffer by buffer; access checks there make sharing it with the kernel sound. Pages are
//! only backed once touched, so the resident set follows the traffic.

use std::io;

use crate::packet::offload::Offload;
use crate::sys::bufmem::BufMem;

/// Space reserved in front of every frame for outer headers and the virtio-net header.
pub const HEADROOM: usize = 256;
/// Largest frame a buffer holds (a 64 KiB GSO superframe with its Ethernet header).
pub const MAX_FRAME: usize = 65536;
pub const BUF_SIZE: usize = HEADROOM + MAX_FRAME;

/// Index of a buffer in its pool.
pub type BufIdx = u32;

/// A frame in a pool buffer: `len` bytes starting at `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub buf: BufIdx,
    pub off: u32,
    pub len: u32,
}

impl Desc {
    pub fn at(buf: BufIdx, off: usize, len: usize) -> Desc {
        Desc {
            buf,
            off: off as u32,
            len: len as u32,
        }
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.off as usize..(self.off + self.len) as usize
    }
}

/// A frame queued for transmission, with its offload metadata (a buffer reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxItem {
    pub desc: Desc,
    pub off: Offload,
}

pub struct BufferPool {
    mem: BufMem,
    free: Vec<BufIdx>,
    refs: Vec<u16>,
}

impl BufferPool {
    pub fn new(count: usize) -> io::Result<BufferPool> {
        Ok(BufferPool {
            mem: BufMem::new(count, BUF_SIZE)?,
            free: (0..count as BufIdx).rev().collect(),
            refs: vec![0; count],
        })
    }

    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Takes a buffer (reference count 1), or `None` when all are in flight.
    #[inline]
    pub fn alloc(&mut self) -> Option<BufIdx> {
        let i = self.free.pop()?;
        self.refs[i as usize] = 1;
        Some(i)
    }

    /// One more holder of `i` (a frame queued to several ports).
    #[inline]
    pub fn retain(&mut self, i: BufIdx) {
        self.refs[i as usize] += 1;
    }

    /// Drops one holder; the buffer returns to the pool with the last one.
    #[inline]
    pub fn release(&mut self, i: BufIdx) {
        let r = &mut self.refs[i as usize];
        debug_assert!(*r > 0, "double release of buffer {i}");
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push(i);
        }
    }

    /// Whether `i` has exactly one holder and the kernel does not use it: it may be rewritten.
    #[inline]
    pub fn exclusive(&self, i: BufIdx) -> bool {
        self.refs[i as usize] == 1 && self.mem.writable(i)
    }

    /// The whole buffer `i` (headroom included).
    #[inline]
    pub fn buf(&self, i: BufIdx) -> &[u8] {
        self.mem.get(i)
    }

    /// The whole buffer `i` for writing; panics if the kernel uses it.
    #[inline]
    pub fn buf_mut(&mut self, i: BufIdx) -> &mut [u8] {
        self.mem.get_mut(i)
    }

    #[inline]
    pub fn frame(&self, d: Desc) -> &[u8] {
        &self.mem.get(d.buf)[d.range()]
    }

    #[inline]
    pub fn frame_mut(&mut self, d: Desc) -> &mut [u8] {
        &mut self.mem.get_mut(d.buf)[d.range()]
    }

    /// Copies frame `d` into a fresh buffer at [`HEADROOM`] (copy-on-write for a shared frame).
    pub fn copy(&mut self, d: Desc) -> Option<Desc> {
        let n = self.alloc()?;
        self.mem.copy_between(d.buf, d.range(), n, HEADROOM);
        Some(Desc::at(n, HEADROOM, d.len as usize))
    }

    /// Appends `src` (a range of buffer `from`) at `at` in buffer `to` (`to` must be ours).
    pub fn append(&mut self, from: BufIdx, src: std::ops::Range<usize>, to: BufIdx, at: usize) {
        if from == to {
            self.mem.get_mut(to).copy_within(src, at);
        } else {
            self.mem.copy_between(from, src, to, at);
        }
    }

    /// The memory, for the I/O layer.
    pub fn mem(&self) -> &BufMem {
        &self.mem
    }

    pub fn mem_mut(&mut self) -> &mut BufMem {
        &mut self.mem
    }
}
