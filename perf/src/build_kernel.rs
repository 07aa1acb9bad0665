//! Kernel paths: a bare veth pair, a Linux bridge, and two "nodes" each with a Linux bridge and a
//! kernel VXLAN device (what flannel builds), joined by a veth underlay.

use std::process::Command;

use anyhow::{Context, Result};
use vswitch_lab::Lab;

use crate::procs::{in_netns, quick_ok};
use crate::systems::{Pair, Spec, CLIENT_IP, SERVER_IP};

/// `ip ARGS...`, bounded, must succeed.
pub fn ip(lab: &Lab, args: &[&str]) -> Result<String> {
    quick_ok(Command::new("ip").args(args), &lab.dir, "ip")
}

/// `ethtool -K IF tso off gso off gro off tx off rx off` inside `ns`.
pub fn offloads_off(lab: &Lab, ns: &str, ifname: &str) -> Result<()> {
    quick_ok(
        &mut in_netns(
            ns,
            &[
                "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", "tx", "off",
                "rx", "off",
            ],
        ),
        &lab.dir,
        "ethtool",
    )
    .with_context(|| format!("turn offloads off on {ifname} in {ns}"))?;
    Ok(())
}

/// Veth `a` in `ns_a` <-> `b` in `ns_b`, both up (created in `ns_a`, so no name ever lives in the
/// root namespace).
pub fn veth(lab: &Lab, ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
    ip(
        lab,
        &[
            "-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ],
    )
    .with_context(|| format!("veth {a} ({ns_a}) / {b} ({ns_b})"))?;
    ip(lab, &["-n", ns_a, "link", "set", a, "up"])?;
    ip(lab, &["-n", ns_b, "link", "set", b, "up"])?;
    Ok(())
}

/// Address (and optional MTU) on a pod interface.
pub fn pod_addr(lab: &Lab, ns: &str, ifname: &str, cidr: &str, mtu: Option<u32>) -> Result<()> {
    ip(lab, &["-n", ns, "addr", "add", cidr, "dev", ifname])?;
    if let Some(m) = mtu {
        ip(
            lab,
            &["-n", ns, "link", "set", ifname, "mtu", &m.to_string()],
        )?;
    }
    Ok(())
}

/// Pod namespaces `a` (client) and `b` (server), each with `eth0` to come.
pub fn pods(p: &mut Pair) -> Result<()> {
    p.client_ns = p.lab.netns("a")?;
    p.server_ns = p.lab.netns("b")?;
    p.client_if = "eth0".into();
    p.server_if = "eth0".into();
    Ok(())
}

pub fn veth_system(p: &mut Pair, spec: Spec) -> Result<()> {
    pods(p)?;
    veth(&p.lab, &p.client_ns, "eth0", &p.server_ns, "eth0")?;
    pod_addr(
        &p.lab,
        &p.client_ns,
        "eth0",
        &format!("{CLIENT_IP}/24"),
        None,
    )?;
    pod_addr(
        &p.lab,
        &p.server_ns,
        "eth0",
        &format!("{SERVER_IP}/24"),
        None,
    )?;
    if spec.offloads_off {
        offloads_off(&p.lab, &p.client_ns, "eth0")?;
        offloads_off(&p.lab, &p.server_ns, "eth0")?;
    }
    Ok(())
}

/// A bridge `br0` in `node` with one veth per pod (`h<i>` on the bridge, `eth0` in the pod).
fn bridge_node(
    lab: &Lab,
    node: &str,
    pods: &[(&str, &str)],
    off: bool,
    mtu: Option<u32>,
) -> Result<()> {
    ip(lab, &["-n", node, "link", "add", "br0", "type", "bridge"])?;
    ip(lab, &["-n", node, "link", "set", "br0", "up"])?;
    for (i, (ns, addr)) in pods.iter().enumerate() {
        let h = format!("h{i}");
        veth(lab, node, &h, ns, "eth0")?;
        ip(lab, &["-n", node, "link", "set", &h, "master", "br0"])?;
        pod_addr(lab, ns, "eth0", &format!("{addr}/24"), mtu)?;
        if off {
            offloads_off(lab, ns, "eth0")?;
            offloads_off(lab, node, &h)?;
        }
    }
    Ok(())
}

pub fn bridge_nf_note(p: &mut Pair, node: &str) {
    // Per network namespace on recent kernels; "n/a" when br_netfilter is not loaded.
    let nf = quick_ok(
        &mut in_netns(
            node,
            &["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
        ),
        &p.lab.dir,
        "sysctl",
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "n/a (br_netfilter not loaded)".into());
    p.notes.push(format!("bridge-nf-call-iptables={nf}"));
}

pub fn bridge(p: &mut Pair, spec: Spec) -> Result<()> {
    pods(p)?;
    let node = p.lab.netns("n")?;
    let (a, b) = (p.client_ns.clone(), p.server_ns.clone());
    bridge_node(
        &p.lab,
        &node,
        &[(&a, CLIENT_IP), (&b, SERVER_IP)],
        spec.offloads_off,
        None,
    )?;
    bridge_nf_note(p, &node);
    Ok(())
}

/// Underlay addresses of the two-node systems (a veth `ul0` between the node namespaces).
pub const UNDERLAY: [&str; 2] = ["10.250.0.11", "10.250.0.12"];

/// Two node namespaces joined by `ul0` (10.250.0.11/24 <-> .12/24).
pub fn two_nodes(p: &mut Pair, off: bool) -> Result<(String, String)> {
    let n1 = p.lab.netns("n1")?;
    let n2 = p.lab.netns("n2")?;
    veth(&p.lab, &n1, "ul0", &n2, "ul0")?;
    for (ns, addr) in [(&n1, UNDERLAY[0]), (&n2, UNDERLAY[1])] {
        ip(
            &p.lab,
            &["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "ul0"],
        )?;
        if off {
            offloads_off(&p.lab, ns, "ul0")?;
        }
    }
    Ok((n1, n2))
}

/// Flannel's path: per node a bridge with the pod and a kernel VXLAN device (VNI 42, port 4789,
/// static remote) on the underlay; pod MTU 1450 as flannel sets it.
pub fn vxlan(p: &mut Pair, spec: Spec) -> Result<()> {
    pods(p)?;
    let (n1, n2) = two_nodes(p, spec.offloads_off)?;
    let (a, b) = (p.client_ns.clone(), p.server_ns.clone());
    for (k, (node, pod, addr)) in [(&n1, &a, CLIENT_IP), (&n2, &b, SERVER_IP)]
        .into_iter()
        .enumerate()
    {
        vxlan_node(&p.lab, node, pod, addr, k, spec.offloads_off)?;
    }
    bridge_nf_note(p, &n1);
    Ok(())
}

/// VNI of the kernel VXLAN nodes (their UDP port is 4789).
pub const KERNEL_VNI: u32 = 42;

/// Node `k` (underlay address `UNDERLAY[k]`) of flannel's path: a bridge with the pod's veth
/// (`eth0` in `pod` with `addr`/24, MTU 1450) and a kernel VXLAN device `vx0` (VNI 42, port
/// 4789, static remote: the other node).
pub fn vxlan_node(lab: &Lab, node: &str, pod: &str, addr: &str, k: usize, off: bool) -> Result<()> {
    bridge_node(lab, node, &[(pod, addr)], off, Some(1450))?;
    let (local, remote) = (UNDERLAY[k], UNDERLAY[1 - k]);
    let vni = KERNEL_VNI.to_string();
    ip(
        lab,
        &[
            "-n", node, "link", "add", "vx0", "type", "vxlan", "id", &vni, "local", local,
            "remote", remote, "dstport", "4789", "dev", "ul0",
        ],
    )?;
    ip(
        lab,
        &["-n", node, "link", "set", "vx0", "master", "br0", "up"],
    )?;
    if off {
        offloads_off(lab, node, "vx0")?;
    }
    Ok(())
}
