//! `vswitch-perf-udp`: the 64-byte UDP generator of vswitch-perf. Sends 18-byte datagrams (a
//! 64-byte Ethernet frame on the wire) to DST:PORT as fast as one core allows, 32 per `sendmmsg`
//! (through vswitch's own safe socket wrapper), for SECS seconds, and prints what it sent as one
//! JSON line. iperf3 `-u -b 0` sends one datagram per syscall and, on 2 cores, cannot outrun a
//! switch; this one can, so the receiving pod's NIC counter measures the switch.
#![deny(unsafe_code)]

use std::io::IoSlice;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use vswitch::sys::inet::{InetSocket, Msg, BATCH};

#[derive(Parser, Debug)]
#[command(
    about = "Send small UDP datagrams with sendmmsg for a fixed time (vswitch-perf's generator)"
)]
struct Args {
    /// Destination IPv4 address.
    #[arg(long)]
    dst: Ipv4Addr,
    /// Destination UDP port.
    #[arg(long, default_value_t = 9)]
    port: u16,
    /// Seconds to send.
    #[arg(long, default_value_t = 4.0)]
    secs: f64,
    /// UDP payload bytes (18 gives a 64-byte Ethernet frame).
    #[arg(long, default_value_t = 18)]
    payload: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if !(0.05..=3600.0).contains(&a.secs) {
        anyhow::bail!("--secs must be within 0.05..=3600");
    }
    if a.payload > 1472 {
        anyhow::bail!("--payload must be at most 1472 bytes");
    }
    let (sock, _train) =
        InetSocket::udp_sender_pair(Ipv4Addr::UNSPECIFIED).context("UDP socket")?;
    let payload = vec![0x5au8; a.payload];
    let iov = [IoSlice::new(&payload)];
    let msg = Msg {
        dst: a.dst,
        port: a.port,
        iov: &iov,
        gso_size: 0,
    };
    let batch = [msg; BATCH];
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(a.secs);
    let (mut sent, mut errors, mut calls) = (0u64, 0u64, 0u64);
    while Instant::now() < end {
        // Check the clock every 64 calls only: Instant::now costs more than a sendmmsg of 32.
        for _ in 0..64 {
            calls += 1;
            match sock.send_batch(&batch) {
                Ok(n) => sent += n as u64,
                // ENOBUFS / EAGAIN / ECONNREFUSED (an ICMP port unreachable): go on sending.
                Err(_) => errors += 1,
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"sent": sent, "secs": secs, "calls": calls, "errors": errors})
    );
    Ok(())
}
