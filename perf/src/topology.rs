//! The configurations under test: two pods (client A, server B) joined by a Linux bridge or
//! by vswitchd, each built from scratch in its own [`Lab`] (unique prefix, removed on drop).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use vswitch_lab::{Daemon, Lab};

use crate::procs::{alive, check_interrupt, in_netns, quick_ok, tail};

pub const SUBNET: &str = "10.251.0.0/24";
pub const PREFIX_LEN: u8 = 24;
pub const CLIENT_IP: &str = "10.251.0.2";
pub const SERVER_IP: &str = "10.251.0.3";
const NETWORK: &str = "perf";

/// How the two pods are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Linux bridge in a node netns, pods on veth pairs.
    Bridge,
    /// vswitchd in a node netns, pods attached with tap devices.
    VswitchTap,
    /// vswitchd in a node netns, pods attached with veth pairs read through AF_PACKET.
    VswitchAfPacket,
}

impl Kind {
    pub fn is_vswitch(self) -> bool {
        !matches!(self, Kind::Bridge)
    }
}

/// One named configuration.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    /// Offloads (tso gso gro tx rx) turned off on every veth end / pod interface.
    pub offloads_off: bool,
    pub description: &'static str,
}

pub const SPECS: &[Spec] = &[
    Spec {
        name: "bridge",
        kind: Kind::Bridge,
        offloads_off: false,
        description: "Linux bridge in a node netns, pods on veth pairs, default offloads",
    },
    Spec {
        name: "bridge-nooff",
        kind: Kind::Bridge,
        offloads_off: true,
        description: "Linux bridge, tso/gso/gro/tx/rx off on all four veth ends",
    },
    Spec {
        name: "vswitch-tap",
        kind: Kind::VswitchTap,
        offloads_off: false,
        description: "vswitchd in a node netns, pods attached with attach=tap",
    },
    Spec {
        name: "vswitch-afpacket",
        kind: Kind::VswitchAfPacket,
        offloads_off: false,
        description:
            "vswitchd in a node netns, pods attached with attach=af_packet (veth), default offloads",
    },
    Spec {
        name: "vswitch-tap-nooff",
        kind: Kind::VswitchTap,
        offloads_off: true,
        description: "as vswitch-tap, offloads off on the pod interfaces",
    },
    Spec {
        name: "vswitch-afpacket-nooff",
        kind: Kind::VswitchAfPacket,
        offloads_off: true,
        description: "as vswitch-afpacket, offloads off on both veth ends",
    },
];

/// The configurations measured when `--configs` is not given.
pub const DEFAULT_CONFIGS: &str = "bridge,bridge-nooff,vswitch-tap,vswitch-afpacket";

/// Resolves a list of configuration names (duplicates removed, order kept).
pub fn parse_specs(names: &[String]) -> Result<Vec<Spec>> {
    let mut out: Vec<Spec> = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let Some(s) = SPECS.iter().find(|s| s.name == n) else {
            let known: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
            bail!("unknown configuration {n:?}; known: {}", known.join(", "));
        };
        if !out.iter().any(|o| o.name == s.name) {
            out.push(*s);
        }
    }
    if out.is_empty() {
        bail!("no configuration selected");
    }
    Ok(out)
}

/// A built configuration, ready for traffic. Dropping it removes everything.
pub struct Topology {
    pub client_ns: String,
    pub server_ns: String,
    pub client_if: String,
    pub server_if: String,
    pub daemon: Option<Daemon>,
    /// Facts worth keeping with the results (bridge-nf setting, host interface names, ...).
    pub notes: Vec<String>,
    /// Last so that the daemon handle is gone before the namespaces are removed.
    pub lab: Lab,
}

impl Topology {
    pub fn switch_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.pid())
    }

    /// Log of vswitchd so far (empty for the bridge), for error messages.
    pub fn daemon_log_tail(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| tail(&d.log_text(), 3000))
            .unwrap_or_default()
    }
}

/// Builds `spec` in a fresh lab and checks that A reaches B.
pub fn build(spec: Spec, workers: usize) -> Result<Topology> {
    let mut lab = Lab::new().context("create lab")?;
    let node = lab.netns("n")?;
    let client_ns = lab.netns("a")?;
    let server_ns = lab.netns("b")?;
    let client_if = lab.name("a0");
    let server_if = lab.name("b0");
    let mut notes = Vec::new();
    check_interrupt()?;

    let daemon = match spec.kind {
        Kind::Bridge => {
            build_bridge(
                &lab, &node, &client_ns, &client_if, &server_ns, &server_if, spec, &mut notes,
            )?;
            None
        }
        Kind::VswitchTap | Kind::VswitchAfPacket => {
            let d = build_vswitch(
                &mut lab, &node, &client_ns, &client_if, &server_ns, &server_if, spec, workers,
                &mut notes,
            )?;
            Some(d)
        }
    };
    check_interrupt()?;

    let topo = Topology {
        client_ns,
        server_ns,
        client_if,
        server_if,
        daemon,
        notes,
        lab,
    };
    // Warm-up: ARP and MAC learning.
    if !topo
        .lab
        .ping_until(&topo.client_ns, SERVER_IP, Duration::from_secs(5))
    {
        check_interrupt()?;
        let mut msg = format!(
            "{}: no ping from pod A to {SERVER_IP} within 5 s",
            spec.name
        );
        if let Some(d) = &topo.daemon {
            if let Ok(p) = d.ctl(&["port", "list"]) {
                msg.push_str(&format!("\nport list: {}", p.trim()));
            }
            if let Ok(f) = d.ctl(&["fdb", "show", NETWORK]) {
                msg.push_str(&format!("\nfdb: {}", f.trim()));
            }
            msg.push_str(&format!("\nvswitchd log:\n{}", topo.daemon_log_tail()));
        }
        bail!(msg);
    }
    Ok(topo)
}

fn ip(args: &[&str], lab: &Lab, tag: &str) -> Result<String> {
    quick_ok(Command::new("ip").args(args), &lab.dir, tag)
}

/// `ethtool -K IF tso off gso off gro off tx off rx off` inside `ns`.
fn offloads_off(lab: &Lab, ns: &str, ifname: &str) -> Result<()> {
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

#[allow(clippy::too_many_arguments)]
fn build_bridge(
    lab: &Lab,
    node: &str,
    client_ns: &str,
    client_if: &str,
    server_ns: &str,
    server_if: &str,
    spec: Spec,
    notes: &mut Vec<String>,
) -> Result<()> {
    let br = lab.name("br");
    ip(
        &["-n", node, "link", "add", &br, "type", "bridge"],
        lab,
        "ip",
    )?;
    ip(&["-n", node, "link", "set", &br, "up"], lab, "ip")?;
    for (pod, pod_if, host_short, addr) in [
        (client_ns, client_if, "a1", CLIENT_IP),
        (server_ns, server_if, "b1", SERVER_IP),
    ] {
        let host_if = lab.name(host_short);
        ip(
            &[
                "link", "add", &host_if, "netns", node, "type", "veth", "peer", "name", pod_if,
                "netns", pod,
            ],
            lab,
            "ip",
        )
        .with_context(|| format!("create veth {host_if}/{pod_if}"))?;
        let cidr = format!("{addr}/{PREFIX_LEN}");
        ip(&["-n", pod, "addr", "add", &cidr, "dev", pod_if], lab, "ip")?;
        ip(
            &["-n", node, "link", "set", &host_if, "master", &br],
            lab,
            "ip",
        )?;
        if spec.offloads_off {
            offloads_off(lab, pod, pod_if)?;
            offloads_off(lab, node, &host_if)?;
        }
        ip(&["-n", pod, "link", "set", pod_if, "up"], lab, "ip")?;
        ip(&["-n", node, "link", "set", &host_if, "up"], lab, "ip")?;
    }
    // Read inside the node netns: the setting is per network namespace on recent kernels.
    let nf = quick_ok(
        &mut in_netns(
            node,
            &["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
        ),
        &lab.dir,
        "sysctl",
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "n/a (br_netfilter not loaded)".into());
    notes.push(format!("bridge-nf-call-iptables={nf}"));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn build_vswitch(
    lab: &mut Lab,
    node: &str,
    client_ns: &str,
    client_if: &str,
    server_ns: &str,
    server_if: &str,
    spec: Spec,
    workers: usize,
    notes: &mut Vec<String>,
) -> Result<Daemon> {
    let attach = match spec.kind {
        Kind::VswitchAfPacket => "af_packet",
        _ => "tap",
    };
    let cfg = format!(
        "workers = {workers}\n\n[[network]]\nname = \"{NETWORK}\"\nsubnet = \"{SUBNET}\"\nattach = \"{attach}\"\n"
    );
    let daemon = lab
        .daemon(node, &cfg)
        .with_context(|| format!("start vswitchd in {node}"))?;
    if !alive(daemon.pid()) {
        bail!(
            "vswitchd exited right after start (a `vswitchctl status` answered, though); log:\n{}",
            tail(&daemon.log_text(), 3000)
        );
    }
    let mut run = || -> Result<()> {
        for (pod, pod_if, addr) in [
            (client_ns, client_if, CLIENT_IP),
            (server_ns, server_if, SERVER_IP),
        ] {
            check_interrupt()?;
            daemon
                .ctl(&[
                    "port",
                    "add",
                    "--netns",
                    pod,
                    "--network",
                    NETWORK,
                    "--ifname",
                    pod_if,
                    "--ip",
                    addr,
                ])
                .with_context(|| format!("vswitchctl port add {pod_if} in {pod}"))?;
        }
        let ports = daemon
            .ctl_json(&["port", "list"])
            .context("vswitchctl port list")?;
        for p in ports.as_array().map(|a| a.as_slice()).unwrap_or_default() {
            let id = p["id"].as_str().unwrap_or("?");
            let host = p["host_ifname"].as_str().unwrap_or("");
            let worker = &p["worker"];
            notes.push(format!(
                "port {id}: attach={} host_if={host} worker={worker}",
                p["attach"]
            ));
            if spec.offloads_off {
                let (ns, ifname) = (
                    p["netns"].as_str().unwrap_or(""),
                    p["ifname"].as_str().unwrap_or(""),
                );
                let pod_ns = if ns == client_ns || ns.ends_with(&format!("/{client_ns}")) {
                    client_ns
                } else {
                    server_ns
                };
                offloads_off(lab, pod_ns, ifname)?;
                if spec.kind == Kind::VswitchAfPacket && !host.is_empty() {
                    offloads_off(lab, node, host)?;
                }
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        if e.is::<crate::procs::Interrupted>() {
            return Err(e);
        }
        bail!(
            "{e:#}\nvswitchd alive: {}; vswitchd log:\n{}",
            alive(daemon.pid()),
            tail(&daemon.log_text(), 3000)
        );
    }
    let pid = daemon.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    notes.push(format!(
        "switch CPU from /proc/{pid}/stat (comm {}, {threads} threads)",
        comm.trim()
    ));
    if let Ok(s) = daemon.ctl(&["status"]) {
        notes.push(format!("vswitchctl status: {}", s.trim()));
    }
    Ok(daemon)
}
