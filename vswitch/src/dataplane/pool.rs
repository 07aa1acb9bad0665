//! Preallocated packet buffers with headroom, addressed by index.
//!
//! One pool per worker, allocated once at start: the fast path never allocates. Each buffer is
//! large enough for a 64 KiB GSO superframe plus headroom, so outer headers (VXLAN, IPIP) and the
//! virtio-net header are prepended in place instead of copying the payload. Pages are only touched
//! when a buffer is first used, so the hot set stays small (buffers are reused LIFO).

/// Space reserved in front of every frame for outer headers and the 12-byte vnet header.
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

pub struct BufferPool {
    mem: Vec<u8>,
    free: Vec<BufIdx>,
    refs: Vec<u16>,
}

impl BufferPool {
    pub fn new(count: usize) -> BufferPool {
        BufferPool {
            // calloc-backed: the kernel maps zero pages lazily.
            mem: vec![0u8; count * BUF_SIZE],
            free: (0..count as BufIdx).rev().collect(),
            refs: vec![0; count],
        }
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

    /// The whole buffer `i` (headroom included).
    #[inline]
    pub fn buf(&self, i: BufIdx) -> &[u8] {
        let s = i as usize * BUF_SIZE;
        &self.mem[s..s + BUF_SIZE]
    }

    #[inline]
    pub fn buf_mut(&mut self, i: BufIdx) -> &mut [u8] {
        let s = i as usize * BUF_SIZE;
        &mut self.mem[s..s + BUF_SIZE]
    }

    /// All buffers as one slice (to hand several distinct buffers to one `recvmmsg`).
    pub fn all_mut(&mut self) -> &mut [u8] {
        &mut self.mem
    }

    #[inline]
    pub fn frame(&self, d: Desc) -> &[u8] {
        &self.buf(d.buf)[d.off as usize..(d.off + d.len) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_refcount() {
        let mut p = BufferPool::new(2);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_ne!(a, b);
        assert!(p.alloc().is_none());
        p.retain(a);
        p.release(a);
        assert_eq!(p.available(), 0);
        p.release(a);
        assert_eq!(p.available(), 1);
        assert_eq!(p.alloc(), Some(a));
        p.buf_mut(b)[HEADROOM] = 7;
        assert_eq!(
            p.frame(Desc {
                buf: b,
                off: HEADROOM as u32,
                len: 1
            }),
            &[7]
        );
    }
}
