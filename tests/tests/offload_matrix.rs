//! Offloads end to end with the pods' default settings: every attach pair (tap→tap,
//! tap→af_packet, af_packet→tap, af_packet→af_packet) carries a TCP transfer whose payload hash
//! must match, on both dataplane backends (io_uring and the epoll fallback). The receiving pod's
//! capture must show superframes (frames longer than the MTU), which proves the switch passed
//! GSO frames whole rather than segments. A tap without offloads behind an af_packet sender
//! makes the switch segment and checksum in software; tshark, an independent decoder, checks
//! every segment's checksum and size.

use std::time::Duration;

use vswitch_lab::{require_root, Daemon, Lab};

const BYTES: u64 = 24 << 20;

fn pod(lab: &mut Lab, d: &Daemon, short: &str, attach: &str, network: &str, ip: &str) -> String {
    let ns = lab.netns(short).unwrap();
    d.ctl(&[
        "port",
        "add",
        "--netns",
        &ns,
        "--network",
        network,
        "--ifname",
        "eth1",
        "--id",
        short,
        "--ip",
        ip,
        "--attach",
        attach,
    ])
    .unwrap_or_else(|e| panic!("port add {short}: {e:#}\n{}", d.log_tail(40)));
    ns
}

/// Largest frame tcpdump saw on `iface` in `ns` while `f` ran.
fn max_frame_seen(lab: &mut Lab, ns: &str, f: impl FnOnce(&mut Lab)) -> usize {
    let cap = lab.capture(ns, "eth1", "tcp").unwrap();
    f(lab);
    std::thread::sleep(Duration::from_millis(300));
    let lines = lab.finish_capture(cap).unwrap();
    lines
        .iter()
        .filter_map(|l| {
            l.rsplit("length ")
                .next()
                .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok())
        })
        .max()
        .unwrap_or(0)
}

fn matrix(io: &str) {
    let mut lab = Lab::new().unwrap();
    let d = lab
        .node_with_network("tap", &format!("io = \"{io}\""))
        .unwrap();
    let status = d.ctl(&["status"]).unwrap();
    assert!(
        status.contains(if io == "epoll" { "epoll" } else { "io_uring" }),
        "status must name the active backend: {status}"
    );
    let kinds = ["tap", "af_packet"];
    let mut n = 10;
    for a in kinds {
        for b in kinds {
            n += 2;
            let (ip_a, ip_b) = (format!("192.168.1.{n}"), format!("192.168.1.{}", n + 1));
            let ns_a = pod(&mut lab, &d, &format!("a{n}"), a, "net", &ip_a);
            let ns_b = pod(&mut lab, &d, &format!("b{n}"), b, "net", &ip_b);
            assert!(
                lab.ping_until(&ns_a, &ip_b, Duration::from_secs(5)),
                "{a}->{b} ping"
            );
            let mut result = None;
            let biggest = max_frame_seen(&mut lab, &ns_b, |lab| {
                result = Some(lab.tcp_transfer(&ns_b, &ip_b, &ns_a, 7000 + n as u16, BYTES));
            });
            let t = result
                .unwrap()
                .unwrap_or_else(|e| panic!("{io} {a}->{b}: {e:#}\n{}", d.log_tail(40)));
            println!(
                "{io} {a}->{b}: {} MB in {:.2} s, largest frame at the receiver {biggest} B",
                t.bytes >> 20,
                t.secs
            );
            assert!(
                biggest > 1514,
                "{io} {a}->{b}: the receiver saw no superframe (largest {biggest} B): offloads \
                 did not make it end to end"
            );
            // And back.
            lab.tcp_transfer(&ns_a, &ip_a, &ns_b, 8000 + n as u16, BYTES)
                .unwrap_or_else(|e| panic!("{io} {b}->{a}: {e:#}"));
        }
    }
}

#[test]
fn offload_matrix_io_uring() {
    if !require_root("offload_matrix_io_uring") {
        return;
    }
    matrix("io_uring");
}

#[test]
fn offload_matrix_epoll() {
    if !require_root("offload_matrix_epoll") {
        return;
    }
    matrix("epoll");
}

#[test]
fn software_segmentation_for_a_tap_without_offloads() {
    if !require_root("software_segmentation_for_a_tap_without_offloads") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab
        .daemon(
            &node,
            "[[network]]\nname = \"net\"\nsubnet = \"192.168.1.0/24\"\noffloads = false\n",
        )
        .unwrap();
    // The sender's veth keeps its offloads: its superframes reach the switch whole.
    let ns_a = pod(&mut lab, &d, "a", "af_packet", "net", "192.168.1.10");
    let ns_b = pod(&mut lab, &d, "b", "tap", "net", "192.168.1.11");
    assert!(lab.ping_until(&ns_a, "192.168.1.11", Duration::from_secs(5)));
    let pcap = lab.dir.join("noofl.pcap");
    let pcap_s = pcap.display().to_string();
    let cap = lab
        .spawn(
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns_b, "tcpdump", "-n", "-p", "-U", "-i", "eth1",
                ])
                .args(["-w", &pcap_s, "-s", "128", "tcp"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.tcp_transfer(&ns_b, "192.168.1.11", &ns_a, 7100, 8 << 20)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log_tail(40)));
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(cap);
    // tshark verifies the checksums itself and flags malformed segments.
    let rows = checked_segments(&pcap, "ip.src == 192.168.1.10 && tcp.len > 0");
    assert!(
        rows.len() > 1000,
        "only {} data segments captured",
        rows.len()
    );
    for r in &rows {
        let len: usize = r[0].parse().unwrap_or(0);
        assert!(
            len <= 1514,
            "a {len} B frame reached the tap without offloads: {r:?}"
        );
        assert_eq!(
            r[1], "2",
            "TCP checksum not good (tshark status {}): {r:?}",
            r[1]
        );
        assert_eq!(r[2], "2", "IPv4 checksum not good: {r:?}");
        assert!(r[3].is_empty(), "malformed: {r:?}");
    }
    println!(
        "{} segments cut in software, all checksums good",
        rows.len()
    );
}

/// Per captured frame matching `filter`: length, TCP and IPv4 checksum status (tshark's own
/// verification: 2 = good), and the malformed marker.
pub fn checked_segments(pcap: &std::path::Path, filter: &str) -> Vec<Vec<String>> {
    let out = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
        ])
        .args(["-Y", filter, "-T", "fields", "-E", "separator=/t"])
        .args(["-e", "frame.len", "-e", "tcp.checksum.status"])
        .args(["-e", "ip.checksum.status", "-e", "_ws.malformed"])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut v: Vec<String> = l.split('\t').map(str::to_string).collect();
            v.resize(4, String::new());
            v
        })
        .collect()
}
