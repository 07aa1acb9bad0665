//! The memory behind a worker's packet buffers, shared with the kernel.
//!
//! io_uring reads land in buffers the worker *lends* to the kernel (a provided-buffer ring), and
//! io_uring writes read buffers *after* the syscall that submitted them returned. Rust code must
//! therefore never hold a reference to a buffer the kernel may be writing, nor write a buffer the
//! kernel may be reading. This type enforces that on every access, so no safe code anywhere can
//! break it: each buffer has a state (free for us, lent to the kernel for writing, or read by `n`
//! in-flight kernel operations), [`BufMem::get`]/[`BufMem::get_mut`] check it (and panic rather
//! than hand out an aliasing reference), and only the `unsafe` methods used by the io_uring layer
//! in this module tree change it.
//!
//! The mapping itself is reference counted: an io_uring instance keeps it alive until every
//! operation it started has completed, even if the worker drops its pool first.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

/// An anonymous private mapping (pages are only backed once touched).
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory; all access to it goes through `BufMem`, which enforces
// exclusive/shared access per buffer, or through the kernel under `BufMem`'s state tracking.
unsafe impl Send for Region {}
// SAFETY: `Region` itself exposes no access to the memory (only `BufMem` does, through `&self`
// and `&mut self` of a single owner), so sharing the handle between threads is harmless.
unsafe impl Sync for Region {}

impl Region {
    fn new(len: usize) -> io::Result<Region> {
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Huge pages where the kernel has them (THP in madvise mode is the common default): a
        // 64 KiB superframe then spans one TLB entry instead of sixteen. Advice only.
        // SAFETY: advice on the mapping just made; it changes no memory contents.
        let _ = unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        let base = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Region { base, len })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are what mmap returned; the last handle is gone, so neither safe
        // code (through BufMem) nor the kernel (io_uring keeps a handle while it has operations in
        // flight) uses the memory any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// State of one buffer with respect to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KState {
    /// Only Rust code uses it.
    Ours,
    /// In a provided-buffer ring: the kernel may write it at any time.
    Lent,
    /// This many in-flight kernel operations read it.
    Reading(u16),
}

/// `count` buffers of `size` bytes.
#[derive(Debug)]
pub struct BufMem {
    region: Arc<Region>,
    size: usize,
    state: Vec<KState>,
}

impl BufMem {
    pub fn new(count: usize, size: usize) -> io::Result<BufMem> {
        let len = count
            .checked_mul(size)
            .filter(|l| *l > 0)
            .ok_or_else(|| io::Error::other("buffer pool size overflows"))?;
        Ok(BufMem {
            region: Arc::new(Region::new(len)?),
            size,
            state: vec![KState::Ours; count],
        })
    }

    pub fn count(&self) -> usize {
        self.state.len()
    }

    /// Faults in the pages of the first `count` buffers from a short-lived background thread,
    /// so that the first packets into them do not pay for it. A huge-page first touch (zeroing,
    /// compaction, and on a VM the host's own faults) measured 7 ms here, once per 2 MiB: every
    /// 16th ping of a fresh daemon took that long until the receive ring's buffers had all been
    /// used once. `MADV_POPULATE_WRITE` (Linux 5.14) maps pages without touching their contents,
    /// so it is harmless while the dataplane already uses the buffers; on older kernels the
    /// memory stays lazily faulted, as before.
    pub fn prefault_in_background(&self, count: usize) {
        let len = count.min(self.count()) * self.size;
        if len == 0 {
            return;
        }
        let region = Arc::clone(&self.region);
        let spawned = std::thread::Builder::new()
            .name("vswitch-prefault".into())
            .spawn(move || {
                // SAFETY: `region` (kept alive by this Arc) is our own anonymous mapping and `len`
                // lies inside it; MADV_POPULATE_WRITE only populates page tables and changes no
                // memory contents, so it cannot race with readers or writers of the buffers.
                let r =
                    unsafe { libc::madvise(region.base().cast(), len, libc::MADV_POPULATE_WRITE) };
                if r != 0 {
                    tracing::debug!("buffer prefault skipped: {}", io::Error::last_os_error());
                }
            });
        if let Err(e) = spawned {
            tracing::debug!("buffer prefault thread: {e}");
        }
    }

    pub fn buf_size(&self) -> usize {
        self.size
    }

    /// Buffer `i` for reading. Panics if the kernel may be writing it (a bug, never UB).
    #[inline]
    pub fn get(&self, i: u32) -> &[u8] {
        let i = i as usize;
        assert!(
            self.state[i] != KState::Lent,
            "buffer {i} read while lent to the kernel"
        );
        // SAFETY: `i < count` (checked by the index above); the buffer is not lent, so the kernel
        // does not write it while this shared borrow of `self` lives (lending needs `&mut self`).
        unsafe { std::slice::from_raw_parts(self.region.base().add(i * self.size), self.size) }
    }

    /// Buffer `i` for writing. Panics if the kernel may use it.
    #[inline]
    pub fn get_mut(&mut self, i: u32) -> &mut [u8] {
        let i = i as usize;
        assert!(
            self.state[i] == KState::Ours,
            "buffer {i} written while the kernel uses it"
        );
        // SAFETY: `i < count`; the kernel neither reads nor writes the buffer (state `Ours`), and
        // `&mut self` excludes every other Rust reference into the region.
        unsafe { std::slice::from_raw_parts_mut(self.region.base().add(i * self.size), self.size) }
    }

    /// Calls `f` with mutable slices `[off..]` of the distinct buffers `idx` (at most 64), for
    /// one vectored receive. Panics if an index repeats or a buffer is not ours.
    pub fn with_slices_mut<R>(
        &mut self,
        idx: &[u32],
        off: usize,
        f: impl FnOnce(&mut [std::io::IoSliceMut<'_>]) -> R,
    ) -> R {
        const MAX: usize = 64;
        assert!(idx.len() <= MAX && off <= self.size);
        for (k, &i) in idx.iter().enumerate() {
            assert!(
                self.state[i as usize] == KState::Ours,
                "buffer {i} is used by the kernel"
            );
            assert!(!idx[..k].contains(&i), "buffer {i} given twice");
        }
        let mut slices: [std::io::IoSliceMut<'_>; MAX] =
            std::array::from_fn(|_| std::io::IoSliceMut::new(&mut []));
        for (s, &i) in slices.iter_mut().zip(idx) {
            // SAFETY: `i < count`; the buffers are distinct (checked), not used by the kernel
            // (checked), and `&mut self` excludes every other reference into the region for as
            // long as the slices live (they cannot outlive `f`).
            let b = unsafe {
                std::slice::from_raw_parts_mut(
                    self.region.base().add(i as usize * self.size + off),
                    self.size - off,
                )
            };
            *s = std::io::IoSliceMut::new(b);
        }
        f(&mut slices[..idx.len()])
    }

    /// Copies `src` of buffer `from` to offset `at` of buffer `to` (two distinct buffers).
    /// Panics on overlap, bounds, or a buffer the kernel uses in a conflicting way.
    pub fn copy_between(&mut self, from: u32, src: std::ops::Range<usize>, to: u32, at: usize) {
        assert_ne!(from, to, "copy_between needs two buffers");
        assert!(src.start <= src.end && src.end <= self.size && at + src.len() <= self.size);
        assert!(
            self.state[from as usize] != KState::Lent,
            "source lent to the kernel"
        );
        assert!(
            self.state[to as usize] == KState::Ours,
            "destination used by the kernel"
        );
        let base = self.region.base();
        // SAFETY: both ranges are in bounds of their own buffers (asserted), the buffers are
        // distinct so the ranges do not overlap, the kernel does not write the source nor use
        // the destination, and `&mut self` excludes other references into the region.
        unsafe {
            std::ptr::copy_nonoverlapping(
                base.add(from as usize * self.size + src.start),
                base.add(to as usize * self.size + at),
                src.len(),
            );
        }
    }

    /// Whether Rust code may write buffer `i` now.
    #[inline]
    pub fn writable(&self, i: u32) -> bool {
        self.state[i as usize] == KState::Ours
    }

    /// Whether buffer `i` is in use by the kernel at all.
    pub fn in_kernel(&self, i: u32) -> bool {
        self.state[i as usize] != KState::Ours
    }

    pub(crate) fn region(&self) -> Arc<Region> {
        self.region.clone()
    }

    /// Address of byte `off` of buffer `i`, for the kernel.
    pub(crate) fn addr(&self, i: u32, off: usize) -> *mut u8 {
        let i = i as usize;
        assert!(i < self.state.len() && off <= self.size);
        // SAFETY: in bounds of the mapping, as asserted.
        unsafe { self.region.base().add(i * self.size + off) }
    }

    /// Marks buffer `i` as lent to the kernel for writing.
    ///
    /// # Safety
    /// The caller hands the buffer to the kernel right after (provided-buffer ring) and calls
    /// [`BufMem::reclaim`] only once the kernel has given it back.
    pub(crate) unsafe fn lend(&mut self, i: u32) {
        let s = &mut self.state[i as usize];
        assert_eq!(*s, KState::Ours, "lending a buffer the kernel uses");
        *s = KState::Lent;
    }

    /// The kernel returned lent buffer `i` (a completion named it).
    ///
    /// # Safety
    /// The kernel no longer writes the buffer.
    pub(crate) unsafe fn reclaim(&mut self, i: u32) {
        let s = &mut self.state[i as usize];
        assert_eq!(*s, KState::Lent, "reclaiming a buffer that was not lent");
        *s = KState::Ours;
    }

    /// One more in-flight kernel operation reads buffer `i`.
    ///
    /// # Safety
    /// The caller calls [`BufMem::end_read`] once that operation completed.
    pub(crate) unsafe fn begin_read(&mut self, i: u32) {
        let s = &mut self.state[i as usize];
        *s = match *s {
            KState::Ours => KState::Reading(1),
            KState::Reading(n) => KState::Reading(n.checked_add(1).expect("read count")),
            KState::Lent => panic!("buffer {i} submitted for reading while lent"),
        };
    }

    /// An operation started by [`BufMem::begin_read`] completed.
    ///
    /// # Safety
    /// The kernel no longer reads the buffer for that operation.
    pub(crate) unsafe fn end_read(&mut self, i: u32) {
        let s = &mut self.state[i as usize];
        *s = match *s {
            KState::Reading(1) => KState::Ours,
            KState::Reading(n) => KState::Reading(n - 1),
            other => panic!("end_read on buffer {i} in state {other:?}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_guard_access() {
        let mut m = BufMem::new(2, 4096).unwrap();
        m.get_mut(0)[0] = 7;
        assert_eq!(m.get(0)[0], 7);
        // SAFETY: test: no kernel involved; the state machine alone is exercised.
        unsafe { m.begin_read(1) };
        assert!(!m.writable(1));
        assert_eq!(m.get(1)[0], 0);
        // SAFETY: as above.
        unsafe { m.end_read(1) };
        assert!(m.writable(1));
        // SAFETY: as above.
        unsafe { m.lend(1) };
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.get(1).len())).is_err());
    }
}
