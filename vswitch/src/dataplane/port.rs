//! Ports as a worker sees them, and the seam to the I/O backends.
//!
//! A port is its device (a tap, an AF_PACKET socket on a veth's host end, or an in-memory fake
//! for tests), what that device's egress takes ([`Caps`]), its counters, and the frames queued
//! for it in the current batch. The switching code only queues ([`Port::queue`]); a [`TxIo`]
//! backend turns a queue into syscalls at the end of the batch (`writev`/`sendmmsg` in the epoll
//! backend, io_uring writes in the io_uring backend, a `Vec` in tests).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use super::counters::{DropCounters, PortCounters};
use super::fdb::PortIdx;
use super::pool::{BufferPool, TxItem};
use super::underlay::UnderlayTx;
use crate::packet::offload::{Caps, Offload};
use crate::sys::packet::PacketSocket;
use crate::sys::tap::Tap;

/// Frames queued for one port before the backend is asked to send them.
pub const TX_BATCH: usize = 64;

/// Frames a [`PortDev::Fake`] port received, with their offload metadata.
#[derive(Debug, Default)]
pub struct FakeWire {
    pub frames: Mutex<Vec<(Offload, Vec<u8>)>>,
    /// When set, the fake counts frames without keeping them (allocation-free tests).
    pub count_only: bool,
    pub count: std::sync::atomic::AtomicU64,
}

/// The device behind a port. Shared by every worker (any worker may send to any port).
#[derive(Debug, Clone)]
pub enum PortDev {
    Tap(Arc<Tap>),
    Packet(Arc<PacketSocket>),
    /// Test double: records what is sent to it.
    Fake {
        wire: Arc<FakeWire>,
        caps: Caps,
    },
}

impl PortDev {
    pub fn caps(&self) -> Caps {
        match self {
            PortDev::Tap(t) => t.caps(),
            // With PACKET_VNET_HDR the kernel takes superframes and partial checksums and
            // segments itself if the veth cannot carry them.
            PortDev::Packet(_) => Caps::ALL,
            PortDev::Fake { caps, .. } => *caps,
        }
    }

    /// The descriptor a worker polls for this port's rx.
    pub fn rx_fd(&self) -> Option<RawFd> {
        match self {
            PortDev::Tap(t) => Some(t.raw_fd()),
            PortDev::Packet(s) => Some(s.raw_fd()),
            PortDev::Fake { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PortDev::Tap(_) => "tap",
            PortDev::Packet(_) => "af_packet",
            PortDev::Fake { .. } => "fake",
        }
    }
}

/// A port in one worker.
#[derive(Debug)]
pub struct Port {
    pub dev: PortDev,
    pub caps: Caps,
    /// This worker's counters for the port (summed over workers by the control plane).
    pub counters: Arc<PortCounters>,
    /// This worker receives from the port.
    pub polled: bool,
    pub txq: Vec<TxItem>,
}

impl Port {
    pub fn new(dev: PortDev, counters: Arc<PortCounters>, polled: bool) -> Port {
        Port {
            caps: dev.caps(),
            dev,
            counters,
            polled,
            txq: Vec::with_capacity(TX_BATCH),
        }
    }

    /// Queues a frame (the item carries one buffer reference). True when the queue is full and
    /// should be sent now.
    #[inline]
    pub fn queue(&mut self, item: TxItem) -> bool {
        self.txq.push(item);
        self.txq.len() >= TX_BATCH
    }
}

/// Turns queued frames into I/O.
pub trait TxIo {
    /// Sends (or submits) every frame queued on `port`, emptying the queue. Each item's buffer
    /// reference is released here, or when its asynchronous write completes.
    fn send_port(
        &mut self,
        pool: &mut BufferPool,
        idx: PortIdx,
        port: &mut Port,
        drops: &DropCounters,
    );

    /// Sends the underlay messages queued in `up`, emptying it.
    fn send_underlay(&mut self, pool: &mut BufferPool, up: &mut UnderlayTx, drops: &DropCounters);
}
