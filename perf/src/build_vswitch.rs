//! vswitch systems: one node (pods tap, af_packet or one of each), and two nodes joined by a veth
//! underlay with the daemons configured the way tests/tests/overlay_tcp.rs does (static peers).

use anyhow::{bail, Context, Result};
use vswitch_lab::topo::Node;
use vswitch_lab::{Daemon, Lab};

use crate::build_kernel::{self, two_nodes, UNDERLAY};
use crate::procs::{alive, check_interrupt, tail};
use crate::systems::{Attach, Overlay, Pair, Spec, CLIENT_IP, SERVER_IP, SUBNET};

/// `workers = N` for the daemon config (0 in a spec means one per core).
/// Extra top-level daemon settings from `VSWITCH_PERF_DAEMON_TOML` (e.g. `io = "epoll"`), for
/// A/B runs of one knob; empty by default.
fn extra_toml() -> String {
    std::env::var("VSWITCH_PERF_DAEMON_TOML")
        .map(|s| format!("{s}\n"))
        .unwrap_or_default()
}

pub fn workers(spec_workers: usize) -> usize {
    if spec_workers == 0 {
        crate::cpu::ncpu().max(1)
    } else {
        spec_workers
    }
}

/// Starts vswitchd in `node` with `cfg`, checks it stayed up.
pub fn start(lab: &mut Lab, node: &str, cfg: &str) -> Result<Daemon> {
    let d = lab
        .daemon(node, cfg)
        .with_context(|| format!("start vswitchd in {node}"))?;
    if !alive(d.pid()) {
        bail!(
            "vswitchd exited right after start; log:\n{}",
            tail(&d.log_text(), 3000)
        );
    }
    Ok(d)
}

/// `vswitchctl port add` with the daemon log in the error.
#[allow(clippy::too_many_arguments)]
pub fn add_port(
    d: &Daemon,
    ns: &str,
    network: &str,
    ifname: &str,
    id: &str,
    ip: &str,
    attach: Option<Attach>,
) -> Result<()> {
    check_interrupt()?;
    let mut args = vec![
        "port",
        "add",
        "--netns",
        ns,
        "--network",
        network,
        "--ifname",
        ifname,
        "--id",
        id,
        "--ip",
        ip,
    ];
    if let Some(a) = attach {
        args.extend(["--attach", a.as_str()]);
    }
    d.ctl(&args).with_context(|| {
        format!(
            "vswitchctl port add {id} ({ns}); vswitchd alive: {}; log:\n{}",
            alive(d.pid()),
            tail(&d.log_text(), 2000)
        )
    })?;
    Ok(())
}

fn keep(p: &mut Pair, d: Daemon) {
    p.switch_pids.push(d.pid());
    p.logs.push(d.log.clone());
    if let Ok(s) = d.ctl(&["status"]) {
        p.notes.push(format!(
            "{}: vswitchctl status: {}",
            d.node_ns,
            s.trim().replace('\n', " | ")
        ));
    }
    p.daemons.push(d);
}

pub fn single(p: &mut Pair, spec: Spec, client: Attach, server: Attach) -> Result<()> {
    let node = p.lab.netns("n")?;
    p.client_ns = p.lab.netns("a")?;
    p.server_ns = p.lab.netns("b")?;
    p.client_if = "eth0".into();
    p.server_if = "eth0".into();
    let cfg = format!(
        "{}workers = {}\n\n[[network]]\nname = \"perf\"\nsubnet = \"{SUBNET}\"\nattach = \"tap\"\n",
        extra_toml(),
        workers(spec.workers)
    );
    let d = start(&mut p.lab, &node, &cfg)?;
    add_port(
        &d,
        &p.client_ns,
        "perf",
        "eth0",
        "a",
        CLIENT_IP,
        Some(client),
    )?;
    add_port(
        &d,
        &p.server_ns,
        "perf",
        "eth0",
        "b",
        SERVER_IP,
        Some(server),
    )?;
    keep(p, d);
    Ok(())
}

/// The `[[network]]` table and the two pod IPs of an overlay system; `BLOCK` is replaced by the
/// node's own block.
fn network(o: Overlay) -> (&'static str, [&'static str; 2]) {
    match o {
        Overlay::VxlanL2 => (
            "[[network]]\nname = \"net\"\nkind = \"l2\"\nsubnet = \"10.251.0.0/24\"\nvni = 500\n",
            [CLIENT_IP, SERVER_IP],
        ),
        Overlay::IpipL3 => (
            "[[network]]\nname = \"net\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
             blocks = [\"BLOCK\"]\nencapsulation = \"ipip\"\nmode = \"always\"\n",
            ["10.244.1.10", "10.244.2.10"],
        ),
        Overlay::VxlanL3 => (
            "[[network]]\nname = \"net\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
             blocks = [\"BLOCK\"]\nencapsulation = \"vxlan\"\nvni = 600\nmode = \"always\"\n",
            ["10.244.1.10", "10.244.2.10"],
        ),
        Overlay::DirectL3 => (
            "[[network]]\nname = \"net\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
             blocks = [\"BLOCK\"]\nencapsulation = \"ipip\"\nmode = \"never\"\n",
            ["10.244.1.10", "10.244.2.10"],
        ),
    }
}

pub fn overlay(p: &mut Pair, spec: Spec, o: Overlay) -> Result<()> {
    let (n1, n2) = two_nodes(p, false)?;
    let nodes = [
        Node {
            name: "n1".into(),
            ns: n1,
            ip: UNDERLAY[0].into(),
            subnet: "10.250.0.0/24".into(),
        },
        Node {
            name: "n2".into(),
            ns: n2,
            ip: UNDERLAY[1].into(),
            subnet: "10.250.0.0/24".into(),
        },
    ];
    let (net, ips) = network(o);
    let l3 = net.contains("kind = \"l3\"");
    p.client_ns = p.lab.netns("a")?;
    p.server_ns = p.lab.netns("b")?;
    p.client_if = "eth0".into();
    p.server_if = "eth0".into();
    p.server_ip = ips[1].into();
    let pods = [p.client_ns.clone(), p.server_ns.clone()];
    for k in 0..2 {
        let (me, peer) = (&nodes[k], &nodes[1 - k]);
        let peer_block = format!("10.244.{}.0/26", 2 - k);
        let blocks: Vec<(&str, &str)> = if l3 {
            vec![("net", peer_block.as_str())]
        } else {
            Vec::new()
        };
        let cfg = format!(
            "{}workers = {}\n\n{}{}{}",
            extra_toml(),
            workers(spec.workers),
            me.node_toml(None),
            peer.peer_toml(&blocks),
            net.replace("BLOCK", &format!("10.244.{}.0/26", k + 1))
        );
        let d = start(&mut p.lab, &me.ns, &cfg)?;
        add_port(
            &d,
            &pods[k],
            "net",
            "eth0",
            &format!("p{}", k + 1),
            ips[k],
            None,
        )?;
        keep(p, d);
    }
    Ok(())
}

/// A vswitch node and a kernel VXLAN node (flannel's path) in one L2 network, VNI 42 on port
/// 4789: the mixed cluster of a migration from flannel. Node 1 (vswitchd, tap pod) holds the
/// client when `vswitch_sends`, else the server; the kernel node's underlay veth keeps its
/// default offloads, so its GSO packets reach vswitchd whole.
pub fn mixed(p: &mut Pair, spec: Spec, vswitch_sends: bool) -> Result<()> {
    build_kernel::pods(p)?;
    let (n1, n2) = two_nodes(p, false)?;
    let nodes = [
        Node {
            name: "n1".into(),
            ns: n1.clone(),
            ip: UNDERLAY[0].into(),
            subnet: "10.250.0.0/24".into(),
        },
        Node {
            name: "n2".into(),
            ns: n2.clone(),
            ip: UNDERLAY[1].into(),
            subnet: "10.250.0.0/24".into(),
        },
    ];
    let (vs_pod, vs_ip, k_pod, k_ip) = if vswitch_sends {
        (
            p.client_ns.clone(),
            CLIENT_IP,
            p.server_ns.clone(),
            SERVER_IP,
        )
    } else {
        (
            p.server_ns.clone(),
            SERVER_IP,
            p.client_ns.clone(),
            CLIENT_IP,
        )
    };
    build_kernel::vxlan_node(&p.lab, &n2, &k_pod, k_ip, 1, false)?;
    build_kernel::bridge_nf_note(p, &n2);
    let cfg = format!(
        "{}workers = {}\n\n{}{}[[network]]\nname = \"net\"\nkind = \"l2\"\nsubnet = \"{SUBNET}\"\n\
         vni = {}\n",
        extra_toml(),
        workers(spec.workers),
        nodes[0].node_toml(Some(4789)),
        nodes[1].peer_toml(&[]),
        build_kernel::KERNEL_VNI,
    );
    let d = start(&mut p.lab, &n1, &cfg)?;
    add_port(&d, &vs_pod, "net", "eth0", "p1", vs_ip, None)?;
    keep(p, d);
    Ok(())
}
