//! vswitchctl: operator CLI for vswitchd. Tables for people, `--json` for scripts.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;
use vswitch::control::pools::cli as pools;
use vswitch_api::{
    Call, ClientError, FdbShow, IpamShow, NetworkAdd, NetworkDel, NetworkList, PeerList, Ping,
    PortAdd, PortDel, PortList, Stats,
};
use vswitch_config::{
    AttachKind, EncapMode, Encapsulation, Ipv4Net, MacAddr, NetworkConfig, NetworkKind, RouteSpec,
    DEFAULT_SOCKET,
};

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}
fn parse_kind(s: &str) -> Result<NetworkKind, String> {
    parse_enum(s)
}
fn parse_encap(s: &str) -> Result<Encapsulation, String> {
    parse_enum(s)
}
fn parse_mode(s: &str) -> Result<EncapMode, String> {
    parse_enum(s)
}

#[derive(Parser, Debug)]
#[command(version, about = "Control a running vswitchd")]
struct Cli {
    /// vswitchd control socket.
    #[arg(long, global = true, env = "VSWITCH_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check that the daemon answers; print its version.
    Status,
    /// Networks (isolated L2 domains).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Pod ports.
    #[command(subcommand)]
    Port(PortCmd),
    /// Forwarding database.
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// Counters: ports, drops by reason, networks, peers, workers (the metrics endpoint's numbers).
    Stats,
    /// Show each pipeline stage and its verdict for matching packets (live), or for a packet you
    /// describe (--inject*, nothing sent or changed).
    Trace(vswitch::observe::cli::TraceArgs),
    /// Write matching packets to a pcapng file, each with its verdict as the packet comment.
    Capture(vswitch::observe::cli::CaptureArgs),
    /// IPAM: IP pool usage (calicoctl style), leaks; or a network's built-in IPAM allocations.
    #[command(subcommand)]
    Ipam(IpamCmd),
    /// Create or update IPPool / IPAMConfig objects from Calico YAML (several documents per file).
    Apply(pools::ApplyArgs),
    /// Show IP pools: `get ippool [NAME] [-o wide|yaml|json]`, or `get ipamconfig`.
    Get(pools::GetArgs),
    /// Delete an IP pool: `delete ippool NAME [--force]` (refused while addresses are in use).
    Delete(pools::DeleteArgs),
    /// Namespace annotations used by IP pool choice.
    #[command(subcommand)]
    Namespace(pools::NamespaceCmd),
    /// Node labels used by IP pools' nodeSelector.
    #[command(subcommand)]
    Node(pools::NodeCmd),
    /// Peer nodes (static config or etcd) and what they serve.
    Peers,
}

#[derive(Subcommand, Debug)]
enum IpamCmd {
    /// IP pool usage (per pool, with --show-blocks per block and its affinity), who holds
    /// --ip; with a NETWORK (CNI domain: `domain`, `bridge` or `name`, with `.vlan<N>` for a
    /// VLAN), that network's built-in IPAM allocations, with the CNI network and pod holding each.
    Show {
        network: Option<String>,
        #[arg(long)]
        show_blocks: bool,
        #[arg(long)]
        ip: Option<Ipv4Addr>,
    },
    /// Report pool addresses allocated without a live attachment, and store inconsistencies.
    Check,
    /// Release pool addresses: --ip (repeatable), or every leaked one (--leaked).
    Release {
        #[arg(long)]
        ip: Vec<Ipv4Addr>,
        #[arg(long)]
        leaked: bool,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkCmd {
    /// List networks.
    List,
    /// Add a network (kept in the state dir across restarts).
    Add {
        name: String,
        /// IPv4 subnet, e.g. 192.168.1.0/24.
        #[arg(long)]
        subnet: Ipv4Net,
        /// Gateway IP the switch answers ARP and ping for (default: first host).
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// Gateway MAC (default: derived from the name).
        #[arg(long)]
        gateway_mac: Option<MacAddr>,
        /// Port kind for pods: tap or af_packet.
        #[arg(long, default_value = "tap")]
        attach: AttachKind,
        /// MTU of pod interfaces (default 1500, or underlay MTU minus overhead for overlays).
        #[arg(long)]
        mtu: Option<u16>,
        /// l2 (switched) or l3 (routed, Calico style).
        #[arg(long, default_value = "l2", value_parser = parse_kind)]
        kind: NetworkKind,
        /// VXLAN network identifier (an L2 network with a VNI spans nodes).
        #[arg(long)]
        vni: Option<u32>,
        /// L3: ipip or vxlan.
        #[arg(long, default_value = "ipip", value_parser = parse_encap)]
        encapsulation: Encapsulation,
        /// L3: always, cross-subnet or never.
        #[arg(long, default_value = "always", value_parser = parse_mode)]
        mode: EncapMode,
        /// L3: this node's pod block (repeatable).
        #[arg(long = "block")]
        blocks: Vec<Ipv4Net>,
        /// Turn checksum/segmentation offloads off on this network's pod taps.
        #[arg(long)]
        no_offloads: bool,
    },
    /// Delete a network that has no ports.
    Del { name: String },
}

#[derive(Subcommand, Debug)]
enum PortCmd {
    /// Attach a pod: create its interface in NETNS, configured and up.
    Add {
        /// Pod network namespace: a name under /run/netns, or a path such as /proc/PID/ns/net.
        #[arg(long)]
        netns: String,
        #[arg(long)]
        network: String,
        /// Interface name inside the pod (eth1, net1, ...).
        #[arg(long)]
        ifname: String,
        /// Port id (default NETNS:IFNAME).
        #[arg(long)]
        id: Option<String>,
        /// MAC address (default: random, locally administered).
        #[arg(long)]
        mac: Option<MacAddr>,
        /// Pod IP inside the network's subnet (repeatable).
        #[arg(long = "ip")]
        ips: Vec<Ipv4Addr>,
        /// Route to install: CIDR or `default`, optionally `=NEXTHOP` (default: the gateway). Repeatable.
        #[arg(long = "route")]
        routes: Vec<RouteSpec>,
        /// Port kind for this pod (tap or af_packet); default: the network's.
        #[arg(long)]
        attach: Option<AttachKind>,
        /// Mark the pod as a router: it may send IPv6 router advertisements, redirects, DHCPv6
        /// server messages and MLD queries (dropped from other ports).
        #[arg(long)]
        router: bool,
    },
    /// Detach a pod: remove its interface and FDB entries.
    Del { id: String },
    /// List ports.
    List,
}

#[derive(Subcommand, Debug)]
enum FdbCmd {
    /// Show a network's forwarding database.
    Show { network: String },
}

fn call<C: Call>(cli: &Cli, req: C) -> Result<C::Reply, ClientError> {
    vswitch_api::call(&cli.socket, req, Duration::from_secs(30))
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn join_ips(ips: &[Ipv4Addr]) -> String {
    if ips.is_empty() {
        "-".into()
    } else {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn run(cli: &Cli) -> Result<(), ClientError> {
    match &cli.cmd {
        Cmd::Status => {
            let v = call(cli, Ping {})?;
            if cli.json {
                print_json(&v);
            } else {
                // An old daemon sends no build id.
                let build = if v.build.is_empty() {
                    String::new()
                } else {
                    format!(" (build {})", v.build)
                };
                println!(
                    "vswitchd {}{build} is running ({}); dataplane: {} worker(s), {} I/O",
                    v.version,
                    cli.socket.display(),
                    v.workers,
                    v.io,
                );
            }
        }
        Cmd::Network(NetworkCmd::List) => {
            let nets = call(cli, NetworkList {})?;
            if cli.json {
                print_json(&nets);
                return Ok(());
            }
            table(
                &[
                    "NETWORK",
                    "SUBNET",
                    "GATEWAY",
                    "GATEWAY MAC",
                    "ATTACH",
                    "MTU",
                    "PORTS",
                ],
                nets.iter()
                    .map(|n| {
                        vec![
                            n.name.clone(),
                            n.subnet.to_string(),
                            n.gateway.to_string(),
                            n.gateway_mac.to_string(),
                            n.attach.to_string(),
                            n.mtu.to_string(),
                            n.ports.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Network(NetworkCmd::Add {
            name,
            subnet,
            gateway,
            gateway_mac,
            attach,
            mtu,
            kind,
            vni,
            encapsulation,
            mode,
            blocks,
            no_offloads,
        }) => {
            let network = NetworkConfig {
                name: name.clone(),
                subnet: *subnet,
                gateway: *gateway,
                gateway_mac: *gateway_mac,
                attach: *attach,
                mtu: *mtu,
                kind: *kind,
                vni: *vni,
                encapsulation: *encapsulation,
                mode: *mode,
                blocks: blocks.clone(),
                offloads: !*no_offloads,
            };
            let n = call(cli, NetworkAdd { network })?;
            if cli.json {
                print_json(&n);
            } else {
                println!("{}", n.name);
            }
        }
        Cmd::Network(NetworkCmd::Del { name }) => {
            call(cli, NetworkDel { name: name.clone() })?;
        }
        Cmd::Port(PortCmd::Add {
            netns,
            network,
            ifname,
            id,
            mac,
            ips,
            routes,
            attach,
            router,
        }) => {
            let req = PortAdd {
                id: id.clone(),
                netns: netns.clone(),
                network: network.clone(),
                ifname: ifname.clone(),
                mac: *mac,
                ips: ips.clone(),
                routes: routes.clone(),
                attach: *attach,
                router: *router,
            };
            let p = call(cli, req)?;
            if cli.json {
                print_json(&p);
            } else {
                println!("{}", p.id);
            }
        }
        Cmd::Port(PortCmd::Del { id }) => {
            call(cli, PortDel { id: id.clone() })?;
        }
        Cmd::Port(PortCmd::List) => {
            let ports = call(cli, PortList {})?;
            if cli.json {
                print_json(&ports);
                return Ok(());
            }
            table(
                &[
                    "PORT", "NETWORK", "NETNS", "IFNAME", "ATTACH", "DEVICE", "MAC", "IPS", "MTU",
                    "WORKER", "STATE", "POD",
                ],
                ports
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.clone(),
                            p.network.clone(),
                            p.netns.clone(),
                            p.ifname.clone(),
                            p.attach.to_string(),
                            p.host_ifname.clone(),
                            p.mac.to_string(),
                            join_ips(&p.ips),
                            p.mtu.to_string(),
                            p.worker.to_string(),
                            p.state.to_string(),
                            p.pod.as_ref().map_or("-".into(), |p| p.to_string()),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Fdb(FdbCmd::Show { network }) => {
            let rows = call(
                cli,
                FdbShow {
                    network: network.clone(),
                },
            )?;
            if cli.json {
                print_json(&rows);
                return Ok(());
            }
            println!("network {network}");
            table(
                &["MAC", "PORT", "TYPE", "SOURCE", "IPS", "AGE"],
                rows.iter()
                    .map(|r| {
                        vec![
                            r.mac.to_string(),
                            r.port.clone(),
                            format!("{:?}", r.kind).to_lowercase(),
                            format!("{:?}", r.source).to_lowercase(),
                            join_ips(&r.ips),
                            r.age_secs.map_or("-".into(), |a| format!("{a}s")),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Ipam(IpamCmd::Show {
            network: None,
            show_blocks,
            ip,
        }) => pools::ipam_show(&cli.socket, cli.json, *show_blocks, *ip)?,
        Cmd::Ipam(IpamCmd::Check) => pools::ipam_check(&cli.socket, cli.json)?,
        Cmd::Ipam(IpamCmd::Release { ip, leaked }) => {
            pools::ipam_release(&cli.socket, cli.json, ip, *leaked)?
        }
        Cmd::Apply(a) => pools::apply(&cli.socket, cli.json, a)?,
        Cmd::Get(a) => pools::get(&cli.socket, cli.json, a)?,
        Cmd::Delete(a) => pools::delete(&cli.socket, cli.json, a)?,
        Cmd::Namespace(c) => pools::namespace(&cli.socket, cli.json, c)?,
        Cmd::Node(c) => pools::node(&cli.socket, cli.json, c)?,
        Cmd::Ipam(IpamCmd::Show {
            network: Some(network),
            ..
        }) => {
            let rows = call(
                cli,
                IpamShow {
                    domain: network.clone(),
                },
            )?;
            if cli.json {
                print_json(&rows);
                return Ok(());
            }
            table(
                &["CONTAINER", "IFNAME", "IPS", "NETWORK", "POD"],
                rows.iter()
                    .map(|r| {
                        vec![
                            r.container_id.clone(),
                            r.ifname.clone(),
                            join_ips(&r.ips),
                            r.network.clone().unwrap_or_else(|| "-".into()),
                            r.pod.as_ref().map_or("-".into(), |p| p.to_string()),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Peers => {
            let peers = call(cli, PeerList {})?;
            if cli.json {
                print_json(&peers);
                return Ok(());
            }
            table(
                &[
                    "PEER",
                    "UNDERLAY IP",
                    "SAME SUBNET",
                    "SOURCE",
                    "BLOCKS",
                    "ENDPOINTS",
                ],
                peers
                    .iter()
                    .map(|p| {
                        let blocks: Vec<String> = p
                            .blocks
                            .iter()
                            .flat_map(|(n, bs)| bs.iter().map(move |b| format!("{n}:{b}")))
                            .collect();
                        vec![
                            p.name.clone(),
                            p.underlay_ip.to_string(),
                            if p.same_subnet { "yes" } else { "no" }.into(),
                            p.source.clone(),
                            if blocks.is_empty() {
                                "-".into()
                            } else {
                                blocks.join(",")
                            },
                            p.endpoints.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Stats => {
            let s = call(cli, Stats {})?;
            if cli.json {
                print_json(&s);
                return Ok(());
            }
            print!("{}", vswitch::observe::cli::stats_tables(&s));
        }
        // Streaming commands: handled in main.
        Cmd::Trace(_) | Cmd::Capture(_) => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let streamed = match &cli.cmd {
        Cmd::Trace(a) => Some(vswitch::observe::cli::trace(&cli.socket, cli.json, a)),
        Cmd::Capture(a) => Some(vswitch::observe::cli::capture(&cli.socket, a)),
        _ => None,
    };
    if let Some(r) = streamed {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vswitchctl: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Api(e)) => {
            let kind = serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            eprintln!("vswitchctl: {kind}: {}", e.message);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vswitchctl: {e}");
            ExitCode::FAILURE
        }
    }
}
