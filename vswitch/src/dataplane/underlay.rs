//! The underlay: the node's sockets towards other nodes, and one worker's queue of messages for
//! them. A message is a scatter-gather list of header slots (outer and per-segment headers we
//! wrote) and ranges of pool buffers (payload, never copied); a TCP superframe towards a VXLAN
//! peer is one message with `UDP_SEGMENT`. The queue is sent with `sendmmsg` at the end of a
//! batch (or when it fills up), grouped by socket.

use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::counters::{DropCounters, DropReason};
use super::pool::{BufIdx, BufferPool};
use crate::sys::inet::{self, InetSocket, Msg};
use crate::sys::packet::PacketSocket;

/// Bytes per header slot: VXLAN (8) + Ethernet + IPv4 with options + TCP with options, or an
/// outer IPv4 header + the inner IP/TCP headers.
pub const HDR_SLOT: usize = 192;
const HDR_SLOTS: usize = 1024;
const MAX_PIECES: usize = 4096;
const MAX_MSGS: usize = 256;
/// Scatter-gather entries one `sendmmsg` call may carry in total.
const IOV_PER_CALL: usize = 1024;

/// The node's underlay sockets, shared by all workers.
#[derive(Debug)]
pub struct Uplink {
    pub local_ip: Ipv4Addr,
    pub vxlan_port: u16,
    /// VXLAN senders, each pair bound to its own source port (flows are spread over them):
    /// single datagrams (zero UDP checksum) and `UDP_SEGMENT` trains (checksummed).
    pub vxlan_tx: Vec<(InetSocket, InetSocket)>,
    /// The source port of each `vxlan_tx` pair (traces show it).
    pub vxlan_ports: Vec<u16>,
    /// The kernel takes `UDP_SEGMENT` on the VXLAN senders.
    pub udp_gso: bool,
    /// VXLAN receivers, one per worker (`SO_REUSEPORT`: the kernel spreads outer flows, and
    /// with them inner flows, over the workers; one flow always lands on one worker).
    pub vxlan_rx: Vec<InetSocket>,
    /// IPIP and direct routing out (our own IPv4 headers).
    pub raw_tx: InetSocket,
    pub ipip_rx: InetSocket,
    /// Directly routed pod packets in (AF_PACKET on the underlay interface, filtered), and
    /// out to peers whose MAC is known: superframes leave whole with their virtio-net header,
    /// and the kernel segments them only if the NIC cannot.
    pub direct_rx: Option<PacketSocket>,
    /// MAC of the underlay interface (source of directly routed frames).
    pub local_mac: Option<vswitch_config::MacAddr>,
}

/// Which socket a message leaves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sock {
    Vxlan(u8),
    Raw,
}

#[derive(Debug, Clone, Copy)]
enum Piece {
    Hdr { slot: u16, len: u16 },
    Buf { buf: BufIdx, off: u32, len: u32 },
}

#[derive(Debug, Clone, Copy)]
struct UMsg {
    dst: Ipv4Addr,
    sock: Sock,
    gso: u16,
    first: u32,
    count: u32,
}

/// One worker's pending underlay messages.
pub struct UnderlayTx {
    pub up: Arc<Uplink>,
    msgs: Vec<UMsg>,
    pieces: Vec<Piece>,
    hdrs: Box<[[u8; HDR_SLOT]]>,
    hdr_used: usize,
    /// Buffer references the queued messages hold.
    held: Vec<BufIdx>,
    /// Whole Ethernet frames for the underlay's AF_PACKET socket (direct routing).
    pub frames: Vec<super::pool::TxItem>,
}

impl std::fmt::Debug for UnderlayTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnderlayTx")
            .field("msgs", &self.msgs.len())
            .finish()
    }
}

impl UnderlayTx {
    pub fn new(up: Arc<Uplink>) -> UnderlayTx {
        UnderlayTx {
            up,
            msgs: Vec::with_capacity(MAX_MSGS),
            pieces: Vec::with_capacity(MAX_PIECES),
            hdrs: vec![[0u8; HDR_SLOT]; HDR_SLOTS].into_boxed_slice(),
            hdr_used: 0,
            held: Vec::with_capacity(MAX_MSGS),
            frames: Vec::with_capacity(crate::sys::packet::BATCH),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty() && self.frames.is_empty()
    }

    /// Whether a message of up to `pieces` pieces and `hdrs` header slots still fits.
    pub fn has_room(&self, pieces: usize, hdrs: usize) -> bool {
        self.msgs.len() < MAX_MSGS
            && self.pieces.len() + pieces <= MAX_PIECES
            && self.hdr_used + hdrs <= HDR_SLOTS
    }

    /// Starts a message; pieces added next belong to it.
    pub fn begin(&mut self, dst: Ipv4Addr, sock: Sock, gso: u16) {
        self.msgs.push(UMsg {
            dst,
            sock,
            gso,
            first: self.pieces.len() as u32,
            count: 0,
        });
    }

    /// A fresh header slot for the current message; write up to [`HDR_SLOT`] bytes and call
    /// [`UnderlayTx::push_hdr`] with the length used.
    pub fn hdr_slot(&mut self) -> &mut [u8; HDR_SLOT] {
        &mut self.hdrs[self.hdr_used]
    }

    pub fn push_hdr(&mut self, len: usize) {
        self.pieces.push(Piece::Hdr {
            slot: self.hdr_used as u16,
            len: len as u16,
        });
        self.hdr_used += 1;
        if let Some(m) = self.msgs.last_mut() {
            m.count += 1;
        }
    }

    /// Adds a range of a pool buffer to the current message (no reference taken: see
    /// [`UnderlayTx::hold`]).
    pub fn push_buf(&mut self, buf: BufIdx, off: usize, len: usize) {
        self.pieces.push(Piece::Buf {
            buf,
            off: off as u32,
            len: len as u32,
        });
        if let Some(m) = self.msgs.last_mut() {
            m.count += 1;
        }
    }

    /// Keeps a reference to `buf` until the queue is sent (the caller retained it).
    pub fn hold(&mut self, buf: BufIdx) {
        self.held.push(buf);
    }

    /// Sends the queued whole frames on the underlay's AF_PACKET socket.
    fn send_frames(&mut self, pool: &mut BufferPool, drops: &DropCounters) {
        use crate::packet::offload::VNET_HDR_LEN;
        const B: usize = crate::sys::packet::BATCH;
        let n = self.frames.len();
        if let Some(sock) = self.up.direct_rx.as_ref() {
            let mut start = 0;
            while start < n {
                let end = (start + B).min(n);
                let mut hdrs = [[0u8; VNET_HDR_LEN]; B];
                for (h, it) in hdrs.iter_mut().zip(&self.frames[start..end]) {
                    *h = it.off.emit(0);
                }
                let mut f: [(&[u8; VNET_HDR_LEN], &[u8]); B] = [(&[0u8; VNET_HDR_LEN], &[]); B];
                for (i, it) in self.frames[start..end].iter().enumerate() {
                    f[i] = (&hdrs[i], pool.frame(it.desc));
                }
                let want = end - start;
                let mut sent = 0;
                while sent < want {
                    match sock.send_batch(&f[sent..want]) {
                        Ok(0) => break,
                        Ok(k) => sent += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::debug!("underlay frame send: {e}");
                            drops.inc(DropReason::TxFailed);
                            sent += 1;
                        }
                    }
                }
                start = end;
            }
        } else {
            for _ in 0..n {
                drops.inc(DropReason::NoRoute);
            }
        }
        for it in self.frames.drain(..) {
            pool.release(it.desc.buf);
        }
    }

    /// Sends everything with `sendmmsg`, grouped by socket; releases the held buffers.
    pub fn send_all(&mut self, pool: &mut BufferPool, drops: &DropCounters) {
        if !self.frames.is_empty() {
            self.send_frames(pool, drops);
        }
        let mut i = 0;
        while i < self.msgs.len() {
            let sock = self.msgs[i].sock;
            // One call: consecutive messages for one socket, within the iovec budget.
            let mut iov = [IoSlice::new(&[]); IOV_PER_CALL];
            let mut msgs = [Msg::default(); inet::BATCH];
            let mut used = 0;
            let mut k = 0;
            let mut j = i;
            let train = self.msgs[i].gso > 0;
            while j < self.msgs.len()
                && k < inet::BATCH
                && self.msgs[j].sock == sock
                && (self.msgs[j].gso > 0) == train
            {
                let m = self.msgs[j];
                let n = m.count as usize;
                // A message never has more than MAX_IOV (< IOV_PER_CALL) pieces (`begin`'s
                // callers check `has_room` against it), so the first one always fits.
                if used + n > IOV_PER_CALL {
                    break;
                }
                for (slot, p) in iov[used..used + n]
                    .iter_mut()
                    .zip(&self.pieces[m.first as usize..(m.first + m.count) as usize])
                {
                    *slot = match *p {
                        Piece::Hdr { slot, len } => {
                            IoSlice::new(&self.hdrs[usize::from(slot)][..usize::from(len)])
                        }
                        Piece::Buf { buf, off, len } => {
                            IoSlice::new(&pool.buf(buf)[off as usize..off as usize + len as usize])
                        }
                    };
                }
                msgs[k] = Msg {
                    dst: m.dst,
                    port: match sock {
                        Sock::Vxlan(_) => self.up.vxlan_port,
                        Sock::Raw => 0,
                    },
                    iov: &[],
                    gso_size: m.gso,
                };
                used += n;
                k += 1;
                j += 1;
            }
            if k == 0 {
                // Unreachable by construction; never spin.
                i += 1;
                continue;
            }
            // Point each message at its iovecs (after filling, so borrows stay simple).
            let mut at = 0;
            for (mm, m) in msgs[..k].iter_mut().zip(&self.msgs[i..j]) {
                let n = m.count as usize;
                mm.iov = &iov[at..at + n];
                at += n;
            }
            let s = match sock {
                Sock::Vxlan(n) => self
                    .up
                    .vxlan_tx
                    .get(usize::from(n))
                    .or(self.up.vxlan_tx.first())
                    .map(|(single, train)| if self.msgs[i].gso > 0 { train } else { single }),
                Sock::Raw => Some(&self.up.raw_tx),
            };
            let Some(s) = s else {
                for _ in 0..k {
                    drops.inc(DropReason::NoRoute);
                }
                i = j;
                continue;
            };
            let mut sent = 0;
            while sent < k {
                match s.send_batch(&msgs[sent..k]) {
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!("underlay send: {e}");
                        // Skip the message the kernel refused (EMSGSIZE, no route) and go on.
                        drops.inc(DropReason::TxFailed);
                        sent += 1;
                    }
                }
            }
            for _ in sent..k {
                drops.inc(DropReason::TxFailed);
            }
            i = j;
        }
        self.msgs.clear();
        self.pieces.clear();
        self.hdr_used = 0;
        for b in self.held.drain(..) {
            pool.release(b);
        }
    }
}
