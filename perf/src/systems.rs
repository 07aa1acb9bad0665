//! The systems under test: every path joining two pods (client A, server B) that a user chooses
//! between, each built from scratch in its own [`Lab`] (unique prefix, removed on drop, also on
//! error and Ctrl-C since every wait checks the interrupt flag).

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use vswitch_lab::{Daemon, Lab};

use crate::procs::{check_interrupt, tail};
use crate::{build_kernel, build_ovs, build_vswitch};

/// Pod addresses on single-node and L2 systems (one /24).
pub const SUBNET: &str = "10.251.0.0/24";
pub const CLIENT_IP: &str = "10.251.0.2";
pub const SERVER_IP: &str = "10.251.0.3";

/// How the two pods are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A veth pair straight from pod A to pod B (the ceiling).
    Veth,
    /// Linux bridge in a node netns, pods on veth pairs.
    Bridge,
    /// Two nodes, each a Linux bridge with a kernel VXLAN device (flannel's path).
    KernelVxlan,
    /// Open vSwitch userspace datapath, tap ports.
    OvsTap,
    /// Open vSwitch userspace datapath, veth ports read with AF_PACKET.
    OvsAfPacket,
    /// Two OVS userspace instances joined by OVS's userspace VXLAN.
    OvsVxlan,
    /// vswitchd on one node; the two pods' attach kinds.
    Vswitch { client: Attach, server: Attach },
    /// vswitchd on two nodes; the network's overlay.
    VswitchOverlay(Overlay),
    /// vswitchd on one node, flannel's kernel path on the other, one L2 VXLAN network; the
    /// vswitch pod is the client (sender) when `vswitch_sends`.
    MixedVxlan { vswitch_sends: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    Tap,
    AfPacket,
}

impl Attach {
    pub fn as_str(self) -> &'static str {
        match self {
            Attach::Tap => "tap",
            Attach::AfPacket => "af_packet",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlay {
    /// L2 network over VXLAN.
    VxlanL2,
    /// L3 network, IPIP, mode always.
    IpipL3,
    /// L3 network, VXLAN, mode always.
    VxlanL3,
    /// L3 network, mode never (direct routing on one underlay subnet).
    DirectL3,
}

/// One named system.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    /// Offloads (tso gso gro tx rx) off on every veth / pod interface of the path.
    pub offloads_off: bool,
    /// vswitchd workers: 1, or 0 for "N" (the machine's cores).
    pub workers: usize,
    pub description: &'static str,
}

impl Spec {
    /// The Debian package this system needs, with the files of it the harness uses.
    pub fn needs(&self) -> Option<(&'static str, &'static [&'static str])> {
        match self.kind {
            Kind::OvsTap | Kind::OvsAfPacket | Kind::OvsVxlan => Some((
                "openvswitch-switch",
                &[
                    "/usr/sbin/ovs-vswitchd",
                    "/usr/sbin/ovsdb-server",
                    "/usr/bin/ovs-vsctl",
                    "/usr/bin/ovs-appctl",
                    "/usr/bin/ovsdb-tool",
                    crate::build_ovs::SCHEMA,
                ],
            )),
            _ => None,
        }
    }
}

const fn vs(
    name: &'static str,
    client: Attach,
    server: Attach,
    workers: usize,
    description: &'static str,
) -> Spec {
    Spec {
        name,
        kind: Kind::Vswitch { client, server },
        offloads_off: false,
        workers,
        description,
    }
}

const fn ov(name: &'static str, o: Overlay, workers: usize, description: &'static str) -> Spec {
    Spec {
        name,
        kind: Kind::VswitchOverlay(o),
        offloads_off: false,
        workers,
        description,
    }
}

const fn k(name: &'static str, kind: Kind, offloads_off: bool, description: &'static str) -> Spec {
    Spec {
        name,
        kind,
        offloads_off,
        workers: 1,
        description,
    }
}

pub const SPECS: &[Spec] = &[
    k("veth", Kind::Veth, false, "bare veth pair pod A <-> pod B (the ceiling)"),
    k("bridge", Kind::Bridge, false, "Linux bridge, pods on veth pairs, default offloads"),
    k("bridge-nooff", Kind::Bridge, true, "Linux bridge, tso/gso/gro/tx/rx off on all veth ends"),
    k("kvxlan", Kind::KernelVxlan, false,
        "2 nodes: Linux bridge + kernel VXLAN each, veth underlay (flannel's path), pod MTU 1450"),
    k("kvxlan-nooff", Kind::KernelVxlan, true, "as kvxlan, offloads off on pods, bridges' veths and underlay"),
    k("ovs-tap", Kind::OvsTap, false,
        "Open vSwitch userspace (datapath_type=netdev), tap ports, userspace-tso-enable=true"),
    k("ovs-afpacket", Kind::OvsAfPacket, true,
        "Open vSwitch userspace, veth ports read with AF_PACKET, offloads off"),
    k("ovs-vxlan", Kind::OvsVxlan, false,
        "2 nodes, each OVS userspace (tap port, TSO on) with userspace VXLAN over br-phy, pod MTU 1450"),
    vs("vs-tap", Attach::Tap, Attach::Tap, 1, "vswitchd, both pods attach=tap, 1 worker"),
    vs("vs-afpacket", Attach::AfPacket, Attach::AfPacket, 1, "vswitchd, both pods attach=af_packet (veth), 1 worker"),
    vs("vs-mixed", Attach::Tap, Attach::AfPacket, 1, "vswitchd, pod A tap, pod B af_packet, 1 worker"),
    vs("vs-tap-wN", Attach::Tap, Attach::Tap, 0, "as vs-tap, N workers (N = cores)"),
    vs("vs-afpacket-wN", Attach::AfPacket, Attach::AfPacket, 0, "as vs-afpacket, N workers"),
    ov("vs-vxlan", Overlay::VxlanL2, 1, "2 nodes, vswitchd each, L2 network over VXLAN, 1 worker"),
    ov("vs-ipip", Overlay::IpipL3, 1, "2 nodes, L3 network, IPIP (mode always), 1 worker"),
    ov("vs-vxlan-l3", Overlay::VxlanL3, 1, "2 nodes, L3 network, VXLAN (mode always), 1 worker"),
    ov("vs-direct", Overlay::DirectL3, 1, "2 nodes, L3 network, direct routing (mode never), 1 worker"),
    ov("vs-vxlan-wN", Overlay::VxlanL2, 0, "as vs-vxlan, N workers"),
    k("vs-to-kvxlan", Kind::MixedVxlan { vswitch_sends: true }, false,
        "2 nodes: vswitchd (tap pod A) and flannel's kernel path (pod B), one VXLAN network"),
    k("kvxlan-to-vs", Kind::MixedVxlan { vswitch_sends: false }, false,
        "as vs-to-kvxlan, pod A on the kernel node, pod B on vswitchd"),
];

/// Resolves a list of system names (`all` = every system; duplicates removed, order kept).
pub fn parse_specs(names: &[String]) -> Result<Vec<Spec>> {
    let mut out: Vec<Spec> = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let picked: Vec<Spec> = if n == "all" {
            SPECS.to_vec()
        } else if let Some(s) = SPECS.iter().find(|s| s.name == n) {
            vec![*s]
        } else {
            let known: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
            bail!("unknown system {n:?}; known: all, {}", known.join(", "));
        };
        for s in picked {
            if !out.iter().any(|o| o.name == s.name) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Why a system cannot be measured on this machine (a missing package), if so.
pub fn skip_reason(spec: &Spec) -> Option<String> {
    let (pkg, files) = spec.needs()?;
    let file = files.iter().find(|f| !std::path::Path::new(f).exists())?;
    Some(format!(
        "{} skipped: {file} not found (install the Debian package {pkg}: apt-get install {pkg})",
        spec.name
    ))
}

/// A built system, ready for traffic. Dropping it removes everything.
pub struct Pair {
    pub client_ns: String,
    pub server_ns: String,
    pub client_if: String,
    pub server_if: String,
    pub server_ip: String,
    /// The switch processes whose CPU and RSS are "the switch's" (vswitchd, ovs-vswitchd).
    pub switch_pids: Vec<u32>,
    pub daemons: Vec<Daemon>,
    /// Facts worth keeping with the results.
    pub notes: Vec<String>,
    /// Log files of the switch processes, for error messages.
    pub logs: Vec<std::path::PathBuf>,
    /// Last so that the processes are gone before the namespaces are removed.
    pub lab: Lab,
}

impl Pair {
    pub fn new(lab: Lab) -> Pair {
        Pair {
            client_ns: String::new(),
            server_ns: String::new(),
            client_if: String::new(),
            server_if: String::new(),
            server_ip: SERVER_IP.into(),
            switch_pids: Vec::new(),
            daemons: Vec::new(),
            notes: Vec::new(),
            logs: Vec::new(),
            lab,
        }
    }

    /// Tails of the switch logs so far (empty for kernel paths).
    pub fn log_tail(&self) -> String {
        self.logs
            .iter()
            .map(|p| {
                format!(
                    "--- {} ---\n{}",
                    p.display(),
                    tail(&std::fs::read_to_string(p).unwrap_or_default(), 2000)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Builds `spec` in a fresh lab and checks that A reaches B.
pub fn build(spec: Spec) -> Result<Pair> {
    let lab = Lab::new()?;
    let mut p = Pair::new(lab);
    check_interrupt()?;
    match spec.kind {
        Kind::Veth => build_kernel::veth_system(&mut p, spec)?,
        Kind::Bridge => build_kernel::bridge(&mut p, spec)?,
        Kind::KernelVxlan => build_kernel::vxlan(&mut p, spec)?,
        Kind::OvsTap | Kind::OvsAfPacket => build_ovs::single(&mut p, spec)?,
        Kind::OvsVxlan => build_ovs::vxlan(&mut p, spec)?,
        Kind::Vswitch { client, server } => build_vswitch::single(&mut p, spec, client, server)?,
        Kind::VswitchOverlay(o) => build_vswitch::overlay(&mut p, spec, o)?,
        Kind::MixedVxlan { vswitch_sends } => build_vswitch::mixed(&mut p, spec, vswitch_sends)?,
    }
    check_interrupt()?;
    // Warm-up: ARP, MAC learning, OVS's tunnel neighbour cache.
    if !p
        .lab
        .ping_until(&p.client_ns, &p.server_ip, Duration::from_secs(8))
    {
        check_interrupt()?;
        bail!(
            "{}: no ping from pod A to {} within 8 s\n{}",
            spec.name,
            p.server_ip,
            p.log_tail()
        );
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs_all_unknown_and_duplicates() {
        assert_eq!(parse_specs(&["all".into()]).unwrap().len(), SPECS.len());
        let v = parse_specs(&["vs-tap".into(), " bridge ".into(), "vs-tap".into()]).unwrap();
        let names: Vec<&str> = v.iter().map(|s| s.name).collect();
        assert_eq!(names, ["vs-tap", "bridge"]);
        let e = parse_specs(&["nope".into()]).unwrap_err().to_string();
        assert!(
            e.contains("unknown system \"nope\"") && e.contains("ovs-tap"),
            "{e}"
        );
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in SPECS.iter().enumerate() {
            assert!(
                SPECS[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
        }
    }
}
