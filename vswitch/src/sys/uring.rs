//! io_uring for a worker: multishot reads (taps) and receives (AF_PACKET sockets) into a
//! provided-buffer ring backed by the worker's [`BufMem`], writes of frames with their virtio-net
//! header, multishot poll for the other file descriptors, and one `io_uring_enter` per loop turn
//! that submits everything queued and waits for the next completion.
//!
//! Soundness: every buffer the kernel may write is marked lent in [`BufMem`] before its address
//! enters the buffer ring and reclaimed only when a completion names it; every buffer a queued
//! write reads is marked read-only until that write's completion. Header bytes and iovecs of
//! in-flight writes live in slots of a boxed slice that never moves. On drop, every operation is
//! cancelled and waited for; if the kernel does not confirm in time, the memory is leaked rather
//! than freed under it.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufmem::{BufMem, Region};

/// Kinds of operations, in the top byte of `user_data`.
const K_READ: u64 = 1;
const K_RECV: u64 = 2;
const K_WRITE: u64 = 3;
const K_POLL: u64 = 4;
const K_CANCEL: u64 = 5;
const KIND_SHIFT: u32 = 56;
const TOKEN_MASK: u64 = (1 << KIND_SHIFT) - 1;
const BUF_GROUP: u16 = 0;

/// What a completion reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// `len` bytes arrived in buffer `buf` at the offset it was provided with.
    Rx { token: u64, buf: u32, len: usize },
    /// A multishot read/receive ended (error or cancellation); re-arm it unless the port is gone.
    RxStopped { token: u64, err: i32 },
    /// A write finished (`res` bytes or `-errno`); buffer `buf` is ours again.
    TxDone { token: u64, buf: u32, res: i32 },
    /// The fd registered with `token` is readable.
    Ready { token: u64 },
    /// A multishot poll ended; re-arm it.
    PollStopped { token: u64 },
}

/// The io_uring features a worker needs, probed once.
pub fn supported() -> io::Result<()> {
    let ring: IoUring = IoUring::new(8)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (op, name) in [
        (opcode::ReadMulti::CODE, "READ_MULTISHOT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(op) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    Ok(())
}

/// The provided-buffer ring's own memory (page aligned, as the kernel requires).
struct RingMem {
    base: NonNull<io_uring::types::BufRingEntry>,
    len: usize,
}

impl Drop for RingMem {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `Uring::new`; the ring was unregistered or the
        // io_uring instance closed (field order in `Uring`), so the kernel no longer reads it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Storage of one in-flight write.
struct Slot {
    iov: [libc::iovec; 2],
    hdr: [u8; 16],
    buf: u32,
    token: u64,
}

pub struct Uring {
    // Dropped by hand in `Drop`: the ring (and with it every kernel reference) first, then the
    // buffer ring's memory, unless the kernel did not confirm it is done with it.
    ring: ManuallyDrop<IoUring>,
    ring_mem: ManuallyDrop<RingMem>,
    region: Arc<Region>,
    lent: usize,
    entries: u16,
    tail: u16,
    /// Where each buffer was provided (offset into the buffer).
    provided: usize,
    slots: Box<[Slot]>,
    free_slots: Vec<u32>,
    /// Operations the kernel still holds (multishot reads/polls count until their final CQE).
    in_flight: usize,
    /// The kernel flags pending task work in the SQ ring (`IORING_SETUP_TASKRUN_FLAG`), so a
    /// zero-timeout poll with nothing to submit can skip `io_uring_enter` when it is clear.
    taskrun_flag: bool,
}

// SAFETY: the raw pointers inside (buffer ring, slot iovecs) point into memory owned by this
// value; moving it to another thread moves that ownership along. (A worker creates its ring on
// its own thread; `Send` only lets it be built elsewhere first.)
unsafe impl Send for Uring {}

impl Uring {
    /// A ring with `buf_entries` provided buffers (a power of two) whose data starts `offset`
    /// bytes into each buffer of `mem`, and `write_slots` concurrent writes.
    pub fn new(
        mem: &BufMem,
        buf_entries: u16,
        offset: usize,
        write_slots: usize,
    ) -> io::Result<Uring> {
        if !buf_entries.is_power_of_two() || offset >= mem.buf_size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring entries must be a power of two",
            ));
        }
        let (ring, taskrun_flag): (IoUring, bool) = match IoUring::builder()
            .setup_cqsize(8192)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .build(1024)
        {
            Ok(r) => (r, true),
            // Kernels before 5.19 lack these flags.
            Err(_) => (IoUring::builder().setup_cqsize(8192).build(1024)?, false),
        };
        let len = usize::from(buf_entries) * std::mem::size_of::<types::BufRingEntry>();
        let len = len.next_multiple_of(4096);
        // SAFETY: anonymous mapping, result checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring_mem = RingMem {
            base: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        };
        // SAFETY: the mapping is page aligned, `buf_entries` entries long, zeroed (tail 0), and
        // lives as long as the ring (`ring_mem` is dropped after `ring`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                ring_mem.base.as_ptr() as u64,
                buf_entries,
                BUF_GROUP,
                0,
            )?;
        }
        let slots = (0..write_slots)
            .map(|_| Slot {
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; 2],
                hdr: [0; 16],
                buf: 0,
                token: 0,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(Uring {
            ring: ManuallyDrop::new(ring),
            ring_mem: ManuallyDrop::new(ring_mem),
            region: mem.region(),
            lent: 0,
            entries: buf_entries,
            tail: 0,
            provided: offset,
            slots,
            free_slots: (0..write_slots as u32).rev().collect(),
            in_flight: 0,
            taskrun_flag,
        })
    }

    /// Hands buffer `i` of `mem` to the kernel for receiving. Returns false when the ring is
    /// full (the caller keeps the buffer).
    pub fn provide(&mut self, mem: &mut BufMem, i: u32) -> bool {
        if self.lent_count() >= usize::from(self.entries) || i > u32::from(u16::MAX) {
            return false;
        }
        let addr = mem.addr(i, self.provided) as u64;
        let len = (mem.buf_size() - self.provided) as u32;
        // SAFETY: the buffer goes into the ring right below and comes back only through a
        // completion naming it (`drain`), where it is reclaimed.
        unsafe { mem.lend(i) };
        let idx = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `idx < entries`, inside the ring mapping; the kernel does not read entries past
        // the published tail, and this one is past it until the store below.
        unsafe {
            let e = &mut *self.ring_mem.base.as_ptr().add(idx);
            e.set_addr(addr);
            e.set_len(len);
            e.set_bid(i as u16);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail lives in the first entry's reserved field; a release store publishes
        // the entry written above to the kernel.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring_mem.base.as_ptr());
            (*(tail as *const std::sync::atomic::AtomicU16))
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
        self.lent += 1;
        true
    }

    /// Buffers currently in the ring.
    pub fn lent_count(&self) -> usize {
        self.lent
    }

    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry built in this module points only at memory that stays valid until
        // its completion (see the module docs).
        if unsafe { self.ring.submission().push(e) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(e) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    /// Starts a multishot read of `fd` (a tap) into provided buffers.
    pub fn read_multishot(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let e = opcode::ReadMulti::new(types::Fd(fd), 0, BUF_GROUP)
            .build()
            .user_data(K_READ << KIND_SHIFT | (token & TOKEN_MASK));
        self.push(&e)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Starts a multishot receive on socket `fd` into provided buffers.
    pub fn recv_multishot(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let e = opcode::RecvMulti::new(types::Fd(fd), BUF_GROUP)
            .build()
            .user_data(K_RECV << KIND_SHIFT | (token & TOKEN_MASK));
        self.push(&e)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Reports readability of `fd` until cancelled.
    pub fn poll_multishot(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(K_POLL << KIND_SHIFT | (token & TOKEN_MASK));
        self.push(&e)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Cancels every operation on `fd` (a removed port); their final completions follow.
    pub fn cancel_fd(&mut self, fd: RawFd) -> io::Result<()> {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(K_CANCEL << KIND_SHIFT);
        self.push(&e)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Free write slots.
    pub fn write_room(&self) -> usize {
        self.free_slots.len()
    }

    /// Queues a write of `hdr` followed by `mem[buf][off..off + len]` to `fd`. The buffer stays
    /// read-only until the completion. Err(WouldBlock) when no slot is free.
    #[allow(clippy::too_many_arguments)]
    pub fn writev(
        &mut self,
        mem: &mut BufMem,
        fd: RawFd,
        hdr: &[u8],
        buf: u32,
        off: usize,
        len: usize,
        token: u64,
    ) -> io::Result<()> {
        if hdr.len() > 16 || off + len > mem.buf_size() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let Some(s) = self.free_slots.pop() else {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        };
        let data = mem.addr(buf, off);
        let slot = &mut self.slots[s as usize];
        slot.hdr[..hdr.len()].copy_from_slice(hdr);
        slot.iov[0] = libc::iovec {
            iov_base: slot.hdr.as_mut_ptr().cast(),
            iov_len: hdr.len(),
        };
        slot.iov[1] = libc::iovec {
            iov_base: data.cast(),
            iov_len: len,
        };
        slot.buf = buf;
        slot.token = token;
        let iov = slot.iov.as_ptr();
        let n = if hdr.is_empty() { 1 } else { 2 };
        let iov = if hdr.is_empty() {
            iov.wrapping_add(1)
        } else {
            iov
        };
        let e = opcode::Writev::new(types::Fd(fd), iov, n)
            .build()
            .user_data(K_WRITE << KIND_SHIFT | u64::from(s));
        // SAFETY: the kernel reads the buffer until the write's completion, which ends the read
        // in `drain`.
        unsafe { mem.begin_read(buf) };
        if let Err(e) = self.push(&e) {
            // SAFETY: the entry was not queued, so the kernel never saw the buffer.
            unsafe { mem.end_read(buf) };
            self.free_slots.push(s);
            return Err(e);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Submits what is queued and waits up to `timeout` for at least one completion (`None`:
    /// do not wait).
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // A busy-polling worker asks with a zero timeout on every turn. With cooperative task
        // running, completions of armed reads only reach the CQ when the task enters the kernel,
        // and the kernel says so with the TASKRUN flag; with that clear and nothing to submit,
        // entering would only arm and cancel a timer (profiled: 44 % of the worker's CPU went
        // to the wait's timer and lock under load). When it must enter, a plain submit (no
        // GETEVENTS, no timer) does: pending task work runs on the way back to user space.
        let poll = matches!(timeout, None | Some(Duration::ZERO));
        if poll && self.taskrun_flag {
            let mut sq = self.ring.submission();
            sq.sync();
            if sq.is_empty() && !sq.taskrun() && !sq.cq_overflow() {
                return Ok(());
            }
        }
        let r = match timeout {
            None | Some(Duration::ZERO) => self.ring.submit().map(|_| ()),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args).map(|_| ())
            }
        };
        match r {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Completions already posted (no syscall).
    pub fn ready(&mut self) -> usize {
        self.ring.completion().len()
    }

    /// Hands every posted completion to `f`, after updating buffer states in `mem`.
    pub fn drain(&mut self, mem: &mut BufMem, mut f: impl FnMut(Completion)) {
        let mut cq = self.ring.completion();
        cq.sync();
        let mut done = 0usize;
        let mut unlent = 0usize;
        for cqe in &mut cq {
            let ud = cqe.user_data();
            let (kind, token) = (ud >> KIND_SHIFT, ud & TOKEN_MASK);
            let res = cqe.result();
            let more = cqueue::more(cqe.flags());
            match kind {
                K_READ | K_RECV => {
                    if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                        // SAFETY: the completion names buffer `bid`: the kernel is done with it.
                        unsafe { mem.reclaim(u32::from(bid)) };
                        unlent += 1;
                        if res >= 0 {
                            f(Completion::Rx {
                                token,
                                buf: u32::from(bid),
                                len: res as usize,
                            });
                        }
                    }
                    if !more {
                        done += 1;
                        f(Completion::RxStopped {
                            token,
                            err: if res < 0 { -res } else { 0 },
                        });
                    }
                }
                K_WRITE => {
                    let s = token as usize;
                    if let Some(slot) = self.slots.get(s) {
                        let (buf, t) = (slot.buf, slot.token);
                        // SAFETY: the write completed: the kernel no longer reads the buffer.
                        unsafe { mem.end_read(buf) };
                        self.free_slots.push(s as u32);
                        f(Completion::TxDone { token: t, buf, res });
                    }
                    done += 1;
                }
                K_POLL => {
                    if res >= 0 {
                        f(Completion::Ready { token });
                    }
                    if !more {
                        done += 1;
                        f(Completion::PollStopped { token });
                    }
                }
                _ => done += 1,
            }
        }
        self.in_flight = self.in_flight.saturating_sub(done);
        self.lent = self.lent.saturating_sub(unlent);
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Cancel everything, then wait (bounded) until the kernel confirms each operation ended.
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(K_CANCEL << KIND_SHIFT);
        // SAFETY: a cancel request references no memory.
        let _ = unsafe { self.ring.submission().push(&cancel) };
        self.in_flight += 1;
        let mut tries = 0;
        while self.in_flight > 0 && tries < 100 {
            let _ = self.submit_and_wait(Some(Duration::from_millis(10)));
            let mut cq = self.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                let more = cqueue::more(cqe.flags());
                let kind = cqe.user_data() >> KIND_SHIFT;
                if !more || kind == K_WRITE || kind == K_CANCEL {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
            }
            tries += 1;
        }
        // SAFETY: `ring` is not used after this point; closing it ends the kernel's references.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        if self.in_flight > 0 {
            // The kernel may still touch our memory: never unmap it.
            std::mem::forget(self.region.clone());
            tracing::warn!(
                in_flight = self.in_flight,
                "io_uring operations did not finish; leaking their buffers"
            );
        } else {
            // SAFETY: not used after this point; the ring that referenced it is closed.
            unsafe { ManuallyDrop::drop(&mut self.ring_mem) };
        }
    }
}
