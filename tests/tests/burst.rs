//! Every frame is accounted for: a 20 000-frame burst of small UDP datagrams from a tap pod
//! (faster than any switch drains one queue) ends up either delivered to the receiving pod or
//! counted as dropped — by vswitch's own reasons or by the kernel in front of it (the pod tap's
//! queue, reported as `kernel_tap_queue_full`). Nothing disappears silently.

use std::time::Duration;

use vswitch_lab::{require_root, Lab};

const BURST: u64 = 20_000;

const SENDER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 24)
n = 0
for i in range(int(sys.argv[2])):
    try:
        s.sendto(b'x' * 18, (sys.argv[1], 9999)); n += 1
    except BlockingIOError:
        pass
print(n)
"#;

fn stat(lab: &Lab, ns: &str, name: &str) -> u64 {
    lab.exec_ok(
        ns,
        &["cat", &format!("/sys/class/net/eth1/statistics/{name}")],
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

/// What a failure message needs to say where frames went: the node's interfaces (host ends of
/// the pods' veths) with their kernel counters, the ports' stats and the daemon's log.
fn diagnostics(lab: &Lab, d: &vswitch_lab::Daemon) -> String {
    format!(
        "{}\n{}\n{}",
        lab.exec(&d.node_ns, &["ip", "-s", "-s", "link"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default(),
        d.ctl(&["stats"]).unwrap_or_default(),
        d.log_tail(20)
    )
}

fn burst(attach: &str) {
    let mut lab = Lab::new().unwrap();
    let d = lab.node_with_network(attach, "").unwrap();
    let a = lab
        .add_pod(&d, "a", "net", "02:00:00:00:0b:01", "192.168.1.10")
        .unwrap();
    let b = lab
        .add_pod(&d, "b", "net", "02:00:00:00:0b:02", "192.168.1.11")
        .unwrap();
    assert!(lab.ping_until(&a.ns, &b.ip, Duration::from_secs(5)));
    // The receiver's stack must not be the bottleneck we measure: nothing listens; the frames
    // are counted at its interface.
    let (tx0, txd0, rx0) = (
        stat(&lab, &a.ns, "tx_packets"),
        stat(&lab, &a.ns, "tx_dropped"),
        stat(&lab, &b.ns, "rx_packets"),
    );
    let drops0: u64 = d.drops().unwrap().values().sum();
    let script = lab.dir.join("burst.py");
    std::fs::write(&script, SENDER).unwrap();
    let sent: u64 = lab
        .exec_ok(
            &a.ns,
            &[
                "python3",
                &script.display().to_string(),
                &b.ip,
                &BURST.to_string(),
            ],
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let out = stat(&lab, &a.ns, "tx_packets") - tx0 + stat(&lab, &a.ns, "tx_dropped") - txd0;
    let delivered = stat(&lab, &b.ns, "rx_packets") - rx0;
    let drops = d.drops().unwrap();
    let counted: u64 = drops.values().sum::<u64>() - drops0;
    println!(
        "{attach}: {sent} sent, {out} left the pod, {delivered} delivered, {counted} counted as \
         dropped ({:?})",
        drops.iter().filter(|(_, v)| **v > 0).collect::<Vec<_>>()
    );
    assert!(out >= sent, "the sender's interface saw {out} of {sent}");
    // The ARP/ND chatter around the burst is small; allow a few frames of slack either way.
    let accounted = delivered + counted;
    assert!(
        accounted + 10 >= out && accounted <= out + 10,
        "{attach}: {out} frames left the pod, {delivered} were delivered and {counted} counted \
         as dropped: {} unaccounted\n{}",
        out as i64 - accounted as i64,
        diagnostics(&lab, &d)
    );
}

#[test]
fn burst_is_accounted_tap() {
    if !require_root("burst_is_accounted_tap") {
        return;
    }
    burst("tap");
}

#[test]
fn burst_is_accounted_af_packet() {
    if !require_root("burst_is_accounted_af_packet") {
        return;
    }
    burst("af_packet");
}
