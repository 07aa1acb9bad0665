//! IPv6 inside an L2 VXLAN network: two pods on two nodes reach each other over their IPv6
//! link-local addresses (neighbour discovery is multicast, so it travels by head-end
//! replication), and the underlay capture shows ICMPv6 inside VXLAN with the network's VNI.

use std::time::{Duration, Instant};

use vswitch_lab::topo::{self, Node};
use vswitch_lab::{require_root, Lab};

fn node_cfg(n: &Node, peer: &Node) -> String {
    format!(
        "{}{}[[network]]\nname = \"v6\"\nsubnet = \"192.168.7.0/24\"\nvni = 600\n",
        n.node_toml(None),
        peer.peer_toml(&[])
    )
}

/// The pod's IPv6 link-local address on `ifname` once duplicate address detection is done.
fn link_local(lab: &Lab, ns: &str, ifname: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab
            .exec_ok(
                ns,
                &[
                    "ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link",
                ],
            )
            .unwrap();
        if !out.contains("tentative") {
            if let Some(addr) = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1) {
                return addr.split('/').next().unwrap().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no usable link-local address in {ns}: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn overlay_ipv6_link_local_over_vxlan() {
    if !require_root("overlay_ipv6_link_local_over_vxlan") {
        return;
    }
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let rack = topo::rack(&mut lab, "rk", "10.1.6").unwrap();
    let n1 = topo::node(&mut lab, &rack, "n1", 11).unwrap();
    let n2 = topo::node(&mut lab, &rack, "n2", 12).unwrap();
    let d1 = lab.daemon(&n1.ns, &node_cfg(&n1, &n2)).unwrap();
    let d2 = lab.daemon(&n2.ns, &node_cfg(&n2, &n1)).unwrap();
    let a = topo::new_pod(
        &mut lab,
        &d1,
        "a6",
        "v6",
        "eth0",
        "02:00:00:06:00:01",
        "192.168.7.10",
    )
    .unwrap();
    let b = topo::new_pod(
        &mut lab,
        &d2,
        "b6",
        "v6",
        "eth0",
        "02:00:00:06:00:02",
        "192.168.7.20",
    )
    .unwrap();
    let b_ll = link_local(&lab, &b.ns, "eth0");
    link_local(&lab, &a.ns, "eth0");

    let cap = lab.capture(&n1.ns, "ul0", "udp port 4789").unwrap();
    let target = format!("{b_ll}%eth0");
    let mut ok = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok && Instant::now() < deadline {
        ok = lab
            .exec(&a.ns, &["ping", "-6", "-n", "-c", "1", "-W", "1", &target])
            .map(|o| o.status.success())
            .unwrap_or(false);
    }
    topo::stop_capture(&mut lab, &cap);
    assert!(
        ok,
        "pod a cannot ping6 {target} across nodes\n{}",
        topo::logs(&[&d1, &d2])
    );

    let out = vswitch_lab::run_ok(
        std::process::Command::new("tshark")
            .args(["-r"])
            .arg(&cap.file)
            .args([
                "-Y",
                "vxlan && icmpv6.type == 128",
                "-T",
                "fields",
                "-e",
                "vxlan.vni",
                "-e",
                "ipv6.dst",
            ]),
    )
    .unwrap();
    let rows: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !rows.is_empty(),
        "no ICMPv6 echo inside VXLAN on the underlay"
    );
    for r in &rows {
        assert!(r.starts_with("600\t"), "echo request outside VNI 600: {r}");
        assert!(
            r.ends_with(&b_ll),
            "echo request not to pod b's link-local address: {r}"
        );
    }
}
