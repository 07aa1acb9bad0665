//! The fast path allocates nothing: a counting global allocator watches while a worker's engine
//! switches 10 000 frames between fake ports (unicast, floods, GSO superframes segmented in
//! software for a port without offloads, ARP answered by the switch). Needs no root.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vswitch::dataplane::counters::{DropCounters, PortCounters};
use vswitch::dataplane::engine::Engine;
use vswitch::dataplane::pipeline::{DomainConf, PortConf, Switch};
use vswitch::dataplane::pool::{BufferPool, HEADROOM};
use vswitch::dataplane::port::{FakeWire, Port, PortDev};
use vswitch::dataplane::worker::SyncTx;
use vswitch::packet::offload::{Caps, Csum, Gso, Offload, VNET_HDR_LEN};
use vswitch_config::MacAddr;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Counting is on for this thread only: the test harness allocates on its own threads.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GW: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const GW_MAC: MacAddr = MacAddr([2, 0xaa, 0, 0, 0, 1]);

fn mac(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, n])
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, n)
}

/// An Ethernet/IPv4/TCP frame from port `from` to port `to` with `payload` bytes.
fn tcp_frame(from: u8, to: u8, payload: usize, out: &mut [u8]) -> usize {
    let l4 = 20 + payload;
    let f = &mut out[..14 + 20 + l4];
    f.fill(0);
    f[0..6].copy_from_slice(&mac(to).0);
    f[6..12].copy_from_slice(&mac(from).0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ipb = &mut f[14..34];
    ipb[0] = 0x45;
    ipb[2..4].copy_from_slice(&((20 + l4) as u16).to_be_bytes());
    ipb[8] = 64;
    ipb[9] = 6;
    ipb[12..16].copy_from_slice(&ip(from).octets());
    ipb[16..20].copy_from_slice(&ip(to).octets());
    let c = vswitch::packet::checksum::checksum(ipb);
    ipb[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    let sum = vswitch::packet::checksum::pseudo_v4(ip(from), ip(to), 6, l4).fold();
    f[34 + 16..34 + 18].copy_from_slice(&sum.to_be_bytes());
    f.len()
}

fn arp_request(from: u8, target: Ipv4Addr, out: &mut [u8]) -> usize {
    let f = &mut out[..42];
    f[..6].copy_from_slice(&MacAddr::BROADCAST.0);
    f[6..12].copy_from_slice(&mac(from).0);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    vswitch::packet::arp::emit(
        &mut f[14..],
        vswitch::packet::arp::OP_REQUEST,
        mac(from),
        ip(from),
        MacAddr::ZERO,
        target,
    );
    42
}

#[test]
fn switching_10000_frames_allocates_nothing() {
    let mut switch = Switch::new(300, 1000);
    switch.add_domain(
        0,
        DomainConf::l2(GW, GW_MAC, "10.9.0.0/24".parse().unwrap()),
    );
    let pool = BufferPool::new(512).unwrap();
    let mut e = Engine::new(0, switch, pool, Arc::new(DropCounters::default()));
    let wires: Vec<Arc<FakeWire>> = (0..3)
        .map(|_| {
            Arc::new(FakeWire {
                count_only: true,
                ..FakeWire::default()
            })
        })
        .collect();
    for (i, w) in wires.iter().enumerate() {
        let n = i as u8 + 1;
        // Port 2 (the third) has no offloads: superframes are segmented for it.
        let caps = if i == 2 { Caps::NONE } else { Caps::ALL };
        e.switch.add_port(
            i as u32,
            PortConf {
                domain: 0,
                mac: mac(n),
                ips: vec![ip(n)],
                ips6: vec![],
                router: false,
                max_frame: 1514,
            },
        );
        e.add_port(
            i as u32,
            Port::new(
                PortDev::Fake {
                    wire: w.clone(),
                    caps,
                },
                Arc::new(PortCounters::default()),
                true,
            ),
        );
    }
    let mut io = SyncTx;
    let mut frame = vec![0u8; 70000];
    let gso = Offload {
        gso: Gso::Tcp4,
        gso_size: 1448,
        ecn: false,
        csum: Csum::Partial {
            start: 34,
            offset: 16,
        },
    };
    let mut send = |e: &mut Engine, io: &mut SyncTx, k: usize| {
        let (port, len, off) = match k % 10 {
            // ARP for a neighbour: answered by the switch.
            0 => (0u32, arp_request(1, ip(2), &mut frame), Offload::NONE),
            // A 14 KiB superframe for the port without offloads: cut into 10 segments.
            1 => (0, tcp_frame(1, 3, 14480, &mut frame), gso),
            // A 64 KiB superframe between offload-capable ports: one buffer end to end.
            2 => (1, tcp_frame(2, 1, 64000, &mut frame), gso),
            // Broadcast: flooded to the two other ports.
            3 => {
                let n = tcp_frame(1, 2, 100, &mut frame);
                frame[..6].copy_from_slice(&MacAddr::BROADCAST.0);
                (0, n, Offload::NONE)
            }
            _ => (0, tcp_frame(1, 2, 1400, &mut frame), Offload::NONE),
        };
        let b = e.pool.alloc().expect("buffer");
        let buf = e.pool.buf_mut(b);
        buf[HEADROOM - VNET_HDR_LEN..HEADROOM].copy_from_slice(&off.emit(54));
        buf[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
        e.rx_port(io, port, b, VNET_HDR_LEN + len);
        if k % 16 == 15 {
            e.flush(io);
        }
    };
    // Warm up: FDB learning and first-use growth happen here.
    for k in 0..100 {
        send(&mut e, &mut io, k);
    }
    e.flush(&mut io);
    let free_before = e.pool.available();
    COUNTING.with(|c| c.set(true));
    for k in 0..10_000 {
        send(&mut e, &mut io, k);
    }
    e.flush(&mut io);
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        0,
        "allocations on the fast path"
    );
    assert_eq!(e.pool.available(), free_before, "every buffer returned");
    // What the ports saw, per 10 frames: port 0 an ARP reply and a 64 KiB superframe; port 1
    // six 1400 B frames and a broadcast; port 2 ten segments of the 14 KiB superframe and the
    // broadcast. 1010 such cycles with the warm-up.
    let got: Vec<u64> = wires
        .iter()
        .map(|w| w.count.load(Ordering::Relaxed))
        .collect();
    assert_eq!(got, vec![2 * 1010, 7 * 1010, 11 * 1010]);
}
