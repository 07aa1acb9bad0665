//! `vswitchctl` commands for IP pools: `apply -f`, `get ippool`, `delete ippool`,
//! `namespace annotate`, `node label`, `ipam show|check|release` (calicoctl-like output).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vswitch_api::{
    Call, ClientError, NamespaceAnnotate, NodeLabel, PoolApply, PoolDelete, PoolGet, PoolIpamCheck,
    PoolIpamRelease, PoolIpamShow,
};

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// File with IPPool / IPAMConfig(uration) objects (YAML or JSON, `---` between documents;
    /// `-` reads stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Wide,
    Yaml,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Resource kind: ippool (ippools) or ipamconfig.
    pub kind: String,
    /// Only this pool.
    pub name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Output>,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Resource kind: ippool.
    pub kind: String,
    pub name: String,
    /// Delete even if addresses are in use (they are released).
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum NamespaceCmd {
    /// Set (`ipv4pools=a,b` or `ipv4pools=["a","b"]`) or remove (`ipv4pools-`) the pools a
    /// namespace's pods take addresses from.
    Annotate {
        namespace: String,
        annotation: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeCmd {
    /// Set (`key=value`) or remove (`key-`) labels of a node (default: this node); pools'
    /// nodeSelector matches them.
    Label {
        #[arg(long)]
        node: Option<String>,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Show a node's labels.
    Labels {
        #[arg(long)]
        node: Option<String>,
    },
}

fn call<C: Call>(socket: &Path, req: C) -> Result<C::Reply, ClientError> {
    vswitch_api::call(socket, req, Duration::from_secs(60))
}

fn bad(msg: impl Into<String>) -> ClientError {
    ClientError::Api(vswitch_api::ApiError::new(
        vswitch_api::ErrorKind::BadRequest,
        msg,
    ))
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let sep: String = w
        .iter()
        .map(|n| format!("+{}", "-".repeat(n + 2)))
        .collect::<String>()
        + "+";
    let line = |cells: Vec<&str>| {
        let s: String = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("| {c:<w$} ", w = w[i]))
            .collect();
        println!("{s}|");
    };
    println!("{sep}");
    line(headers.to_vec());
    println!("{sep}");
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    println!("{sep}");
}

pub fn apply(socket: &Path, json: bool, a: &ApplyArgs) -> Result<(), ClientError> {
    let text = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(&a.file)?
    };
    let r = call(socket, PoolApply { text })?;
    if json {
        print_json(&r);
    } else {
        for l in r.applied {
            println!("{l}");
        }
    }
    Ok(())
}

pub fn get(socket: &Path, json: bool, a: &GetArgs) -> Result<(), ClientError> {
    let r = call(socket, PoolGet {})?;
    match a.kind.to_ascii_lowercase().as_str() {
        "ippool" | "ippools" | "pool" | "pools" => {}
        "ipamconfig" | "ipamconfiguration" => {
            print_json(&serde_json::json!({
                "apiVersion": vswitch_config::ippool::API_V3,
                "kind": "IPAMConfiguration",
                "metadata": {"name": "default"},
                "spec": r.config,
            }));
            return Ok(());
        }
        k => {
            return Err(bad(format!(
                "unknown resource kind {k:?} (ippool, ipamconfig)"
            )))
        }
    }
    let pools: Vec<_> = r
        .pools
        .into_iter()
        .filter(|p| a.name.as_ref().is_none_or(|n| *n == p.pool.name))
        .collect();
    if let Some(n) = &a.name {
        if pools.is_empty() {
            return Err(bad(format!("no IP pool {n:?}")));
        }
    }
    let objs: Vec<serde_json::Value> = pools.iter().map(|p| p.pool.to_calico()).collect();
    match (json, a.output) {
        (true, _) | (_, Some(Output::Json)) => print_json(&objs),
        (_, Some(Output::Yaml)) => {
            for (i, o) in objs.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", serde_norway::to_string(o).unwrap_or_default());
            }
        }
        (_, Some(Output::Wide)) => table(
            &[
                "NAME",
                "CIDR",
                "BLOCKSIZE",
                "NAT",
                "IPIPMODE",
                "VXLANMODE",
                "DISABLED",
                "SELECTOR",
                "BLOCKS",
                "IN USE",
            ],
            pools
                .iter()
                .map(|p| {
                    let q = &p.pool;
                    vec![
                        q.name.clone(),
                        q.cidr.to_string(),
                        q.block_size.to_string(),
                        q.nat_outgoing.to_string(),
                        format!("{:?}", q.ipip_mode),
                        format!("{:?}", q.vxlan_mode),
                        q.disabled.to_string(),
                        selector_text(&q.node_selector),
                        p.blocks.to_string(),
                        p.in_use.to_string(),
                    ]
                })
                .collect(),
        ),
        (_, None) => table(
            &["NAME", "CIDR", "SELECTOR"],
            pools
                .iter()
                .map(|p| {
                    vec![
                        p.pool.name.clone(),
                        p.pool.cidr.to_string(),
                        selector_text(&p.pool.node_selector),
                    ]
                })
                .collect(),
        ),
    }
    Ok(())
}

fn selector_text(s: &str) -> String {
    if s.is_empty() {
        "all()".into()
    } else {
        s.to_string()
    }
}

pub fn delete(socket: &Path, json: bool, a: &DeleteArgs) -> Result<(), ClientError> {
    if !matches!(a.kind.to_ascii_lowercase().as_str(), "ippool" | "ippools") {
        return Err(bad(format!("unknown resource kind {:?} (ippool)", a.kind)));
    }
    let r = call(
        socket,
        PoolDelete {
            name: a.name.clone(),
            force: a.force,
        },
    )?;
    if json {
        print_json(&r);
    } else {
        println!(
            "ippool/{} deleted{}",
            a.name,
            if r.released.is_empty() {
                String::new()
            } else {
                format!(" ({} addresses released)", r.released.len())
            }
        );
    }
    Ok(())
}

/// `a,b`, `["a","b"]` or `[a, b]`: the list form Calico's annotations use, or a plain one.
pub fn parse_list(v: &str) -> Vec<String> {
    if let Ok(l) = serde_json::from_str::<Vec<String>>(v) {
        return l;
    }
    v.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn namespace(socket: &Path, json: bool, c: &NamespaceCmd) -> Result<(), ClientError> {
    let NamespaceCmd::Annotate {
        namespace,
        annotation,
    } = c;
    let key = |k: &str| {
        k.strip_prefix("cni.projectcalico.org/")
            .unwrap_or(k)
            .to_string()
    };
    let ipv4pools = if let Some(k) = annotation.strip_suffix('-') {
        if key(k) != "ipv4pools" {
            return Err(bad(format!("unknown annotation {k:?} (ipv4pools)")));
        }
        None
    } else {
        let Some((k, v)) = annotation.split_once('=') else {
            return Err(bad("annotation: ipv4pools=POOL[,POOL…] or ipv4pools-"));
        };
        if key(k) != "ipv4pools" {
            return Err(bad(format!("unknown annotation {k:?} (ipv4pools)")));
        }
        Some(parse_list(v))
    };
    call(
        socket,
        NamespaceAnnotate {
            namespace: namespace.clone(),
            ipv4pools: ipv4pools.clone(),
        },
    )?;
    if json {
        print_json(&serde_json::json!({"namespace": namespace, "ipv4pools": ipv4pools}));
    } else {
        println!("namespace/{namespace} annotated");
    }
    Ok(())
}

pub fn node(socket: &Path, json: bool, c: &NodeCmd) -> Result<(), ClientError> {
    let (node, labels) = match c {
        NodeCmd::Label { node, labels } => (node, labels.as_slice()),
        NodeCmd::Labels { node } => (node, &[][..]),
    };
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for l in labels {
        if let Some((k, v)) = l.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = l.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            return Err(bad(format!("label {l:?}: key=value or key-")));
        }
    }
    let r = call(
        socket,
        NodeLabel {
            node: node.clone(),
            set,
            remove,
        },
    )?;
    if json {
        print_json(&r);
    } else {
        let l: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("node/{} labels: {}", r.node, l.join(","));
    }
    Ok(())
}

fn pct(n: u64, total: u64) -> String {
    format!("{}%", (n * 100).checked_div(total).unwrap_or(0))
}

pub fn ipam_show(
    socket: &Path,
    json: bool,
    show_blocks: bool,
    ip: Option<Ipv4Addr>,
) -> Result<(), ClientError> {
    let r = call(socket, PoolIpamShow { ip })?;
    if json {
        print_json(&r);
        return Ok(());
    }
    if let Some(ip) = ip {
        match &r.holder {
            Some(h) => {
                println!("IP {ip} is in use");
                println!("  handle: {}", h.handle);
                println!("  node: {}", h.node);
                if !h.note.is_empty() {
                    println!("  attributes: {}", h.note);
                }
                println!(
                    "  block: {} (affinity {})",
                    h.block,
                    h.affinity.as_deref().unwrap_or("none")
                );
            }
            None => println!("IP {ip} is not assigned"),
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for p in &r.pools {
        let free = p.total.saturating_sub(p.in_use);
        rows.push(vec![
            format!("IP Pool{}", if p.disabled { " (disabled)" } else { "" }),
            p.cidr.to_string(),
            p.total.to_string(),
            format!("{} ({})", p.in_use, pct(p.in_use, p.total)),
            format!("{free} ({})", pct(free, p.total)),
            String::new(),
        ]);
        if show_blocks {
            for b in r.blocks.iter().filter(|b| b.pool == p.name) {
                let free = b.total.saturating_sub(b.in_use);
                rows.push(vec![
                    "Block".into(),
                    b.cidr.to_string(),
                    b.total.to_string(),
                    format!("{} ({})", b.in_use, pct(b.in_use, b.total)),
                    format!("{free} ({})", pct(free, b.total)),
                    format!(
                        "{}{}",
                        b.affinity.as_deref().unwrap_or("-"),
                        if b.borrowed > 0 {
                            format!(" ({} borrowed)", b.borrowed)
                        } else {
                            String::new()
                        }
                    ),
                ]);
            }
        }
    }
    let mut headers = vec!["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"];
    if show_blocks {
        headers.push("AFFINITY");
    } else {
        for r in &mut rows {
            r.pop();
        }
    }
    table(&headers, rows);
    Ok(())
}

pub fn ipam_check(socket: &Path, json: bool) -> Result<(), ClientError> {
    let r = call(socket, PoolIpamCheck {})?;
    if json {
        print_json(&r);
        return Ok(());
    }
    println!(
        "Checked {} addresses of {} handles: {} leaked, {} inconsistencies",
        r.addresses,
        r.handles,
        r.leaked.len(),
        r.problems.len()
    );
    for l in &r.leaked {
        println!("  leaked {} ({} on {}): {}", l.ip, l.handle, l.node, l.why);
    }
    for p in &r.problems {
        println!("  inconsistent: {p}");
    }
    if !r.leaked.is_empty() {
        println!("Run `vswitchctl ipam release --leaked` to free the leaked addresses.");
    }
    Ok(())
}

pub fn ipam_release(
    socket: &Path,
    json: bool,
    ips: &[Ipv4Addr],
    leaked: bool,
) -> Result<(), ClientError> {
    if ips.is_empty() && !leaked {
        return Err(bad("ipam release: give --ip IP (repeatable) or --leaked"));
    }
    let r = call(
        socket,
        PoolIpamRelease {
            ips: ips.to_vec(),
            leaked,
        },
    )?;
    if json {
        print_json(&r);
    } else {
        println!("released {} addresses", r.released.len());
        for ip in &r.released {
            println!("  {ip}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn annotation_lists() {
        assert_eq!(super::parse_list(r#"["a","b"]"#), vec!["a", "b"]);
        assert_eq!(super::parse_list("a, b"), vec!["a", "b"]);
        assert_eq!(super::parse_list("[a]"), vec!["a"]);
        assert!(super::parse_list("").is_empty());
    }
}
