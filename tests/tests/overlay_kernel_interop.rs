//! SPEC4 interop with the Linux kernel's VXLAN (flannel style). Node1 runs vswitchd with an L2
//! network (VNI 1, `vxlan_port = 8472`, static peer = node2). Node2 runs NO vswitchd: it is
//! built from kernel devices the way flannel's vxlan backend does it — `vxlan0` (id 1, dstport
//! 8472, nolearning) and a veth to the pod in a kernel bridge, static FDB entries (all-zeros and
//! the vswitch pod's MAC -> node1) and a static neighbour for the vswitch pod in the kernel
//! pod. The vswitch pod resolves the kernel pod with ARP (flooded to node2 over VXLAN).
//!
//! Pods ping each other both ways (also full-size 1450-byte packets with DF), then TCP with
//! iperf3 (3 s, both directions, MTU 1450 on both pods) and 16 MiB each way with the payload
//! verified (SHA-256). The underlay capture shows VXLAN with VNI 1 to UDP port 8472 in both
//! directions. Node2's underlay runs once with its offloads off (a physical NIC's wire) and once
//! with a veth's defaults (kind): superframes and partial checksums reach node1 as they are.

use std::time::{Duration, Instant};

use vswitch_lab::topo::{self, WirePkt};
use vswitch_lab::{require_root, Lab};

const MIN_BPS: f64 = 20e6;
const VS_MAC: &str = "02:00:00:42:00:10";
const VS_IP: &str = "10.42.0.10";
const K_MAC: &str = "02:00:00:42:00:20";
const K_IP: &str = "10.42.0.20";

/// Node2's underlay behaves like a physical NIC: it checksums and segments before the wire.
#[test]
fn overlay_vxlan_interop_with_kernel_flannel_style() {
    interop("overlay_vxlan_interop_with_kernel_flannel_style", false);
}

/// Node2's underlay veth keeps its default offloads, as in kind clusters: the kernel hands
/// node1 VXLAN superframes whole (one datagram holding an inner TCP superframe) with the inner
/// checksum left partial, which vswitchd must complete or carry on as partial, never drop.
#[test]
fn overlay_vxlan_interop_with_kernel_offloads_on() {
    interop("overlay_vxlan_interop_with_kernel_offloads_on", true);
}

/// As above, the vswitch pod on an AF_PACKET port: a superframe from the kernel must leave
/// through the pod's veth as a GSO frame, not as one oversized packet the veth refuses.
#[test]
fn overlay_vxlan_interop_with_kernel_offloads_on_af_packet() {
    interop_with(
        "overlay_vxlan_interop_with_kernel_offloads_on_af_packet",
        true,
        "af_packet",
    );
}

fn interop(test: &str, offloads: bool) {
    interop_with(test, offloads, "tap");
}

fn interop_with(test: &str, offloads: bool, attach: &str) {
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let t0 = Instant::now();
    let mut lab = Lab::new().unwrap();
    let rack = topo::rack(&mut lab, "rk", "10.1.5").unwrap();
    let n1 = topo::node(&mut lab, &rack, "n1", 11).unwrap();
    let n2 = topo::node(&mut lab, &rack, "n2", 12).unwrap();

    // Node1: vswitchd.
    let cfg = format!(
        "{}{}[[network]]\nname = \"flan\"\nkind = \"l2\"\nsubnet = \"10.42.0.0/24\"\nvni = 1\n\
         attach = \"{attach}\"\n",
        n1.node_toml(Some(8472)),
        n2.peer_toml(&[])
    );
    let d1 = lab.daemon(&n1.ns, &cfg).unwrap();
    let vs = topo::new_pod(&mut lab, &d1, "vp", "flan", "eth0", VS_MAC, VS_IP).unwrap();

    // Node2: the kernel's own devices, flannel style.
    let kp = lab.netns("kp").unwrap();
    let ip = |ns: &str, args: &str| {
        let mut full = vec!["-n", ns];
        full.extend(args.split_whitespace());
        vswitch_lab::run_ok(std::process::Command::new("ip").args(&full))
            .unwrap_or_else(|e| panic!("{test}: ip {args}: {e:#}"));
    };
    let n2ns = n2.ns.as_str();
    if !offloads {
        // A physical NIC checksums and segments before the wire; a veth would hand partial
        // checksums and GSO packets to node1 as they are.
        lab.exec_ok(
            n2ns,
            &[
                "ethtool", "-K", "ul0", "tx", "off", "tso", "off", "gso", "off",
            ],
        )
        .unwrap();
    }
    ip(
        n2ns,
        &format!(
            "link add vxlan0 type vxlan id 1 dstport 8472 local {} dev ul0 nolearning",
            n2.ip
        ),
    );
    ip(n2ns, "link add br0 type bridge");
    ip(n2ns, "link set vxlan0 master br0");
    ip(
        n2ns,
        &format!("link add vpod type veth peer name eth0 netns {kp}"),
    );
    ip(n2ns, "link set vpod mtu 1450 master br0 up");
    ip(n2ns, "link set vxlan0 up");
    ip(n2ns, "link set br0 up");
    ip(&kp, &format!("link set eth0 address {K_MAC} mtu 1450 up"));
    ip(&kp, &format!("addr add {K_IP}/24 dev eth0"));
    ip(
        &kp,
        &format!("neigh replace {VS_IP} lladdr {VS_MAC} dev eth0 nud permanent"),
    );
    for mac in ["00:00:00:00:00:00", VS_MAC] {
        lab.exec_ok(
            n2ns,
            &[
                "bridge", "fdb", "append", mac, "dev", "vxlan0", "dst", &n1.ip,
            ],
        )
        .unwrap();
    }

    let mut problems = Vec::new();
    // MTU of the vswitch pod: SPEC4 default for a VXLAN network = underlay 1500 - 50.
    let link = lab
        .exec_ok(&vs.ns, &["ip", "-o", "link", "show", "eth0"])
        .unwrap();
    if !link.contains("mtu 1450 ") {
        problems.push(format!("vswitch pod eth0 should have MTU 1450: {link}"));
    }

    let ul = lab.capture(&n1.ns, "ul0", "udp port 8472").unwrap();
    for (from, from_ns, to) in [("vswitch pod", &vs.ns, K_IP), ("kernel pod", &kp, VS_IP)] {
        if topo::ping_until(&lab, from_ns, to, None, Duration::from_secs(6)).is_none()
            || topo::ping_count(&lab, from_ns, to, None, 3) < 3
        {
            problems.push(format!("{from}: ping {to} failed"));
        }
        // Full-size packets: 1450 bytes of IP with DF.
        let (ok, out) = lab.exec_bounded(
            from_ns,
            10,
            &[
                "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-s", "1422", "-M", "do", to,
            ],
        );
        if !ok {
            problems.push(format!(
                "{from}: 1450-byte ping {to} with DF failed:\n{out}"
            ));
        }
    }
    topo::stop_capture(&mut lab, &ul);
    let (pkts, text) = topo::decode_wire(&ul.file, &[8472], "icmp")
        .unwrap_or_else(|e| panic!("{test}: tshark: {e:#}"));
    let want = topo::Wire::Vxlan { port: 8472, vni: 1 };
    for (src, dst, osrc, odst) in [(VS_IP, K_IP, &n1.ip, &n2.ip), (K_IP, VS_IP, &n2.ip, &n1.ip)] {
        let seen: Vec<&WirePkt> = pkts
            .iter()
            .filter(|p| p.inner == (src.to_string(), dst.to_string()))
            .collect();
        if seen.is_empty() {
            problems.push(format!(
                "no ICMP {src} -> {dst} in VXLAN on node1's underlay"
            ));
        }
        for p in seen {
            if p.wire != want || p.outer != Some((osrc.clone(), odst.clone())) {
                problems.push(format!(
                    "ICMP {src} -> {dst}: expected {want:?} {osrc} -> {odst}: {}",
                    p.raw
                ));
            }
        }
    }
    // vswitchd learned the kernel pod behind node2.
    match d1.fdb("flan") {
        Ok(fdb) => {
            let e = fdb
                .iter()
                .find(|e| e["mac"].as_str().map(str::to_ascii_lowercase).as_deref() == Some(K_MAC));
            match e {
                Some(e) if e["port"] == "peer:n2" => {}
                other => problems.push(format!(
                    "fdb show flan: {K_MAC} should be on port peer:n2, found {other:?} in {fdb:?}"
                )),
            }
        }
        Err(e) => problems.push(format!("fdb show flan: {e:#}")),
    }

    // TCP both ways.
    let kpod = vswitch_lab::Pod {
        ns: kp.clone(),
        network: "kernel".into(),
        id: "kp".into(),
        ifname: "eth0".into(),
        mac: K_MAC.into(),
        ip: K_IP.into(),
    };
    if problems.is_empty() {
        topo::iperf_server(&mut lab, &kpod, 5201).unwrap();
        for reverse in [false, true] {
            let dir = if reverse {
                "kernel -> vswitch"
            } else {
                "vswitch -> kernel"
            };
            match topo::iperf_client(&lab, &vs.ns, K_IP, 5201, 3, reverse) {
                Ok((bps, bytes)) => {
                    eprintln!("{test}: {dir}: {:.1} Mbit/s, {bytes} bytes", bps / 1e6);
                    if bps <= MIN_BPS {
                        problems.push(format!(
                            "{dir}: {:.1} Mbit/s, expected > {:.0}",
                            bps / 1e6,
                            MIN_BPS / 1e6
                        ));
                    }
                }
                Err(e) => problems.push(format!("{dir}: {e}")),
            }
        }
        // The payload itself, both ways: SHA-256 of what was sent against what arrived.
        for (k, (from, to)) in [(&vs, &kpod), (&kpod, &vs)].into_iter().enumerate() {
            if let Err(e) = lab.tcp_transfer(&to.ns, &to.ip, &from.ns, 9200 + k as u16, 16 << 20) {
                problems.push(format!("payload {} -> {}: {e:#}", from.ip, to.ip));
            }
        }
    }

    // UDP segmentation offload from the kernel pod: one 8000-byte send with UDP_SEGMENT 1000
    // leaves as a single GSO packet, which a veth underlay carries whole; the vswitch pod must
    // receive 8 datagrams of 1000 bytes each, with their contents, never one 8000-byte blob.
    if offloads && problems.is_empty() {
        if let Err(e) = udp_gso_from_kernel(&mut lab, &kp, &vs.ns) {
            problems.push(format!("UDP GSO kernel -> vswitch: {e:#}"));
        }
    }

    if !d1.is_alive() {
        problems.push("vswitchd died".into());
    }
    eprintln!("{test}: {:?}", t0.elapsed());
    if !problems.is_empty() {
        let fdb = lab
            .exec(n2ns, &["bridge", "fdb", "show"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "{test}: {} problem(s):\n{}\n--- tshark node1 ul0 (frame ip.src ip.dst ip.proto \
             udp.dstport udp.checksum vni) ---\n{}\n--- node2 bridge fdb ---\n{fdb}\n{}",
            problems.len(),
            problems.join("\n"),
            topo::head(&text, 40),
            topo::logs(&[&d1])
        );
    }
}

const UDP_RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((sys.argv[1], 9300)); s.settimeout(0.5)
print('listening', flush=True)
good = bad = 0
end = time.time() + 8
while time.time() < end:
    try:
        b, _ = s.recvfrom(65536)
    except socket.timeout:
        if good + bad: break
        continue
    k = b[0]
    if len(b) == 1000 and b == bytes([k]) * 1000: good += 1
    else: bad += 1
print(good, bad, flush=True)
"#;

const UDP_SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, 1000)  # UDP_SEGMENT
for i in range(40):
    s.sendto(b''.join(bytes([(i * 8 + j) % 256]) * 1000 for j in range(8)), (sys.argv[1], 9300))
    time.sleep(0.005)
"#;

/// Sends 40 UDP GSO packets of 8 x 1000 bytes from `from_ns` to the vswitch pod in `to_ns`;
/// at least 90 % of the 320 datagrams must arrive, each exactly 1000 bytes of its own byte.
fn udp_gso_from_kernel(lab: &mut Lab, from_ns: &str, to_ns: &str) -> anyhow::Result<()> {
    let rx = lab.dir.join("udp-gso-rx.py");
    let tx = lab.dir.join("udp-gso-tx.py");
    std::fs::write(&rx, UDP_RECEIVER)?;
    std::fs::write(&tx, UDP_SENDER)?;
    let out = lab.dir.join("udp-gso-rx.out");
    let outf = std::fs::File::create(&out)?;
    let pid = lab.spawn(
        std::process::Command::new("ip")
            .args(["netns", "exec", to_ns, "timeout", "20", "python3"])
            .arg(&rx)
            .arg(VS_IP)
            .stdout(outf.try_clone()?)
            .stderr(outf),
    )?;
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read().contains("listening") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "receiver did not start: {}",
            read()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.exec_ok(
        from_ns,
        &["timeout", "20", "python3", &tx.display().to_string(), VS_IP],
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        if let Some(l) = read().lines().nth(1) {
            break l.to_string();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "receiver gave no result: {}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    lab.stop(pid);
    let n: Vec<u32> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    anyhow::ensure!(n.len() == 2, "receiver said {line:?}");
    eprintln!(
        "UDP GSO kernel -> vswitch: {} good, {} bad datagrams of 320",
        n[0], n[1]
    );
    anyhow::ensure!(
        n[1] == 0 && n[0] >= 288,
        "{} of 320 datagrams arrived intact, {} malformed",
        n[0],
        n[1]
    );
    Ok(())
}
