//! `vswitch`: the CNI plugin (CNI `"type": "vswitch"`), spec versions 0.3.0 to 1.1.0.
//!
//! Small and synchronous, with no state of its own: it reads the CNI environment and the network
//! configuration on stdin, asks vswitchd over its control socket, and prints the result (or a
//! CNI error object) on stdout. IPAM is either vswitchd's built-in allocator (`ipam.type:
//! "vswitch"`) or any other IPAM plugin, executed from `CNI_PATH` as the CNI conventions say.
#![deny(unsafe_code)]

mod delegate;
mod env;
mod pools;
mod result;

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use vswitch_api::{
    ApiError, Call, ClientError, CniAdd, CniAddr, CniAttachment, CniAttachmentId, CniCheck, CniDel,
    CniGc, CniIpam, ErrorKind, Ping, PodRef,
};
use vswitch_config::cni::{parse_mac, IpamConf, NetConf, BUILTIN_IPAM, SUPPORTED_VERSIONS};
use vswitch_config::{Ipv4Net, MacAddr, RouteSpec, DEFAULT_SOCKET};

use env::CniEnv;

/// CNI error codes (spec section "Error") and ours (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// vswitchd failed the request for a reason of its own.
    pub const DAEMON: u32 = 100;
    /// A requested address is outside the ranges, taken, or the gateway.
    pub const ADDRESS_UNAVAILABLE: u32 = 101;
    /// No free address left.
    pub const ADDRESS_EXHAUSTED: u32 = 102;
    /// CHECK found the interface different from prevResult.
    pub const CHECK_MISMATCH: u32 = 103;
    /// The delegated IPAM plugin failed.
    pub const IPAM_DELEGATE: u32 = 104;
}

/// A CNI error: printed as `{cniVersion, code, msg, details}` with a non-zero exit.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
}

fn api_error(e: ClientError) -> CniError {
    match e {
        ClientError::Connect { .. } => {
            CniError::new(code::TRY_AGAIN, "vswitchd is not reachable").details(e.to_string())
        }
        ClientError::Api(ApiError { kind, message }) => {
            let c = match kind {
                ErrorKind::BadRequest | ErrorKind::InvalidConfig | ErrorKind::UnknownNetwork => {
                    code::INVALID_CONFIG
                }
                ErrorKind::AddressConflict => code::ADDRESS_UNAVAILABLE,
                ErrorKind::AddressExhausted => code::ADDRESS_EXHAUSTED,
                ErrorKind::NetnsNotFound => code::UNKNOWN_CONTAINER,
                ErrorKind::UnknownPort => code::CHECK_MISMATCH,
                // Too many control connections or shutting down: the runtime should retry.
                ErrorKind::Unavailable => code::TRY_AGAIN,
                _ => code::DAEMON,
            };
            CniError::new(c, message)
        }
        // The daemon went away mid-request (restart, crash): the runtime should retry.
        ClientError::Io(e) => {
            CniError::new(code::TRY_AGAIN, "vswitchd did not answer").details(e.to_string())
        }
        other => CniError::new(code::IO, "talking to vswitchd failed").details(other.to_string()),
    }
}

struct Plugin {
    env: CniEnv,
    conf: NetConf,
    raw: Vec<u8>,
    socket: PathBuf,
}

impl Plugin {
    /// One request; while vswitchd refuses it as busy (connection cap reached: the request was
    /// not taken), retried for a few seconds before the runtime is told to try again.
    fn call<C: Call + Clone>(&self, req: C) -> Result<C::Reply, CniError> {
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        let mut pause = Duration::from_millis(20);
        loop {
            match vswitch_api::call(&self.socket, req.clone(), Duration::from_secs(60)) {
                Err(ClientError::Api(ApiError {
                    kind: ErrorKind::Unavailable,
                    ..
                })) if std::time::Instant::now() + pause < give_up => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                r => return r.map_err(api_error),
            }
        }
    }

    /// vswitchd does IPAM itself: host-local style (`vswitch`) or IP pools (`vswitch-pools`).
    fn builtin_ipam(&self) -> bool {
        matches!(
            self.conf.ipam_type(),
            Some(BUILTIN_IPAM | pools::POOLS_IPAM)
        )
    }

    /// Static IPs from every source, most specific first: runtimeConfig (capability `ips`, as
    /// Multus passes them), `args.cni.ips`, then `CNI_ARGS` `IP=`.
    fn requested_ips(&self) -> Result<Vec<std::net::Ipv4Addr>, CniError> {
        let from_args: Vec<String> = self
            .conf
            .args
            .as_ref()
            .and_then(|a| a.pointer("/cni/ips"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let (list, field): (Vec<String>, &str) = if !self.conf.runtime_config.ips.is_empty() {
            (self.conf.runtime_config.ips.clone(), "runtimeConfig.ips")
        } else if !from_args.is_empty() {
            (from_args, "args.cni.ips")
        } else if let Some(ips) = self.env.arg("IP") {
            (ips.split(',').map(str::to_string).collect(), "CNI_ARGS IP")
        } else {
            (Vec::new(), "")
        };
        list.iter()
            .map(|s| {
                vswitch_config::cni::parse_ip_request(s, field)
                    .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))
            })
            .collect()
    }

    fn requested_mac(&self) -> Result<Option<MacAddr>, CniError> {
        let from_args = self
            .conf
            .args
            .as_ref()
            .and_then(|a| a.pointer("/cni/mac"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let candidates = [
            (self.conf.runtime_config.mac.clone(), "runtimeConfig.mac"),
            (from_args, "args.cni.mac"),
            (self.env.arg("MAC").map(str::to_string), "CNI_ARGS MAC"),
            (self.conf.mac.clone(), "mac"),
        ];
        for (m, field) in candidates {
            if let Some(m) = m {
                return parse_mac(&m, field)
                    .map(Some)
                    .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()));
            }
        }
        Ok(None)
    }

    fn attachment(&self) -> CniAttachment {
        CniAttachment {
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
            network: self.conf.name.clone(),
            netns: self.env.netns.clone(),
            domain: self.conf.domain(),
            builtin_ipam: self.builtin_ipam(),
        }
    }

    /// The Kubernetes pod, when the runtime says (Multus and the kubelet's runtimes set both).
    fn pod(&self) -> Option<PodRef> {
        Some(PodRef {
            namespace: self.env.arg("K8S_POD_NAMESPACE")?.to_string(),
            name: self.env.arg("K8S_POD_NAME")?.to_string(),
        })
        .filter(|p| !p.namespace.is_empty() && !p.name.is_empty())
    }

    fn add(&self) -> Result<Value, CniError> {
        self.env
            .require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])?;
        let mac = self.requested_mac()?;
        let requested = self.requested_ips()?;
        let (ipam, delegated) = if self.conf.ipam_type() == Some(pools::POOLS_IPAM) {
            let raw: Value = serde_json::from_slice(&self.raw).unwrap_or_default();
            let mut request = pools::request(&raw, &self.env)?;
            if request.ip_addrs.is_empty() {
                // The `ips` capability / IP= work as with the built-in IPAM.
                request.ip_addrs = requested;
            }
            (CniIpam::Pools { request }, false)
        } else if self.builtin_ipam() {
            let ic = IpamConf::from_value(self.conf.ipam.clone().unwrap_or_default())
                .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
            let mut plan = ic
                .plan()
                .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
            if self.conf.is_default_gateway && !plan.routes.iter().any(|(d, _)| d.prefix_len() == 0)
            {
                // No next hop: vswitchd uses the range's gateway, as for any route without `gw`.
                plan.routes.push((Ipv4Net::default(), None));
            }
            (CniIpam::Builtin { plan, requested }, false)
        } else {
            let t = self.conf.ipam_type().unwrap_or_default().to_string();
            let res = delegate::exec(&t, "ADD", &self.env, &self.raw)?;
            let mut fixed = delegate::to_fixed(&res)?;
            if self.conf.is_default_gateway {
                if let CniIpam::Fixed { addrs, routes } = &mut fixed {
                    default_route_via_gateway(addrs, routes);
                }
            }
            (fixed, true)
        };
        let req = CniAdd {
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
            netns: self.env.netns.clone(),
            network: self.conf.name.clone(),
            pod: self.pod(),
            domain: self.conf.domain(),
            attach: self.conf.attach,
            mtu: self.conf.mtu,
            mac,
            ipam,
        };
        match self.call(req) {
            Ok(reply) => Ok(result::add_result(
                &self.conf.cni_version,
                &self.env.netns,
                &reply,
            )),
            Err(e) => {
                if delegated {
                    // Give the delegated address back: nothing half-applied.
                    let t = self.conf.ipam_type().unwrap_or_default().to_string();
                    let _ = delegate::exec(&t, "DEL", &self.env, &self.raw);
                }
                Err(e)
            }
        }
    }

    fn del(&self) -> Result<(), CniError> {
        self.env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
        // Keep going after a failure: the delegated IPAM release must happen in any case.
        let daemon = self.call(CniDel(self.attachment())).map(|_| ());
        let ipam = if self.builtin_ipam() {
            Ok(())
        } else {
            let t = self.conf.ipam_type().unwrap_or_default().to_string();
            delegate::exec(&t, "DEL", &self.env, &self.raw).map(|_| ())
        };
        daemon.and(ipam)
    }

    fn check(&self) -> Result<(), CniError> {
        self.env
            .require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])?;
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
        let reply = self.call(CniCheck(self.attachment()))?;
        result::check(prev, &self.env.ifname, &reply)?;
        if !self.builtin_ipam() {
            let t = self.conf.ipam_type().unwrap_or_default().to_string();
            delegate::exec(&t, "CHECK", &self.env, &self.raw)?;
        }
        Ok(())
    }

    fn gc(&self) -> Result<(), CniError> {
        let raw: Value = serde_json::from_slice(&self.raw).unwrap_or_default();
        let valid: Vec<CniAttachmentId> = raw
            .get("cni.dev/valid-attachments")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| {
                        Some(CniAttachmentId {
                            container_id: v.get("containerID")?.as_str()?.to_string(),
                            ifname: v.get("ifname")?.as_str()?.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let unique: HashSet<_> = valid.iter().cloned().collect();
        let reply = self.call(CniGc {
            network: self.conf.name.clone(),
            domain: self.conf.domain(),
            valid: unique.into_iter().collect(),
        })?;
        log(
            self.conf.log_file.as_deref(),
            &format!(
                "vswitch CNI GC: removed {} port(s), released {} allocation(s)",
                reply.removed_ports.len(),
                reply.released.len()
            ),
        );
        if !self.builtin_ipam() {
            let t = self.conf.ipam_type().unwrap_or_default().to_string();
            if let Err(e) = delegate::exec(&t, "GC", &self.env, &self.raw) {
                log(
                    self.conf.log_file.as_deref(),
                    &format!(
                        "vswitch CNI GC: IPAM plugin {t} GC: {} ({})",
                        e.msg, e.details
                    ),
                );
            }
        }
        Ok(())
    }

    fn status(&self) -> Result<(), CniError> {
        self.call(Ping {}).map(|_| ()).map_err(|e| {
            CniError::new(code::NOT_AVAILABLE, "vswitchd is not available")
                .details(format!("{} ({})", e.msg, e.details))
        })
    }
}

/// `isDefaultGateway` with a delegated IPAM result: the bridge plugin's behaviour, a default
/// route via the first address's gateway (the switch answers for it), unless IPAM gave one.
fn default_route_via_gateway(addrs: &[CniAddr], routes: &mut Vec<RouteSpec>) {
    if routes.iter().any(|r| r.dst.prefix_len() == 0) {
        return;
    }
    if let Some(gw) = addrs.iter().find_map(|a| a.gateway) {
        routes.push(RouteSpec {
            dst: Ipv4Net::default(),
            via: Some(gw),
        });
    }
}

/// Writes a log line to stderr (runtimes collect it) and, if the config names one, to `logFile`.
fn log(log_file: Option<&std::path::Path>, line: &str) {
    eprintln!("{line}");
    if let Some(p) = log_file {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let _ = writeln!(f, "{ts} {line}");
        }
    }
}

fn version_at_least(v: &str, min: (u32, u32, u32)) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let got = (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    );
    got >= min
}

fn run(cmd: &str, stdin: Vec<u8>) -> Result<Option<Value>, CniError> {
    if cmd == "VERSION" {
        let v = serde_json::from_slice::<Value>(&stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "1.1.0".to_string());
        return Ok(Some(
            json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS }),
        ));
    }
    let env = CniEnv::from_process()?;
    let conf = NetConf::parse(&stdin).map_err(|m| CniError::new(code::DECODE, m))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {:?} is not supported", conf.cni_version),
        )
        .details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
    }
    conf.validate()
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let p = Plugin {
        env,
        conf,
        raw: stdin,
        socket,
    };
    match cmd {
        "ADD" => p.add().map(Some),
        "DEL" => p.del().map(|_| None),
        "CHECK" => {
            if !version_at_least(&p.conf.cni_version, (0, 4, 0)) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "CHECK needs cniVersion 0.4.0 or later",
                ));
            }
            p.check().map(|_| None)
        }
        "GC" | "STATUS" => {
            if !version_at_least(&p.conf.cni_version, (1, 1, 0)) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("{cmd} needs cniVersion 1.1.0"),
                ));
            }
            if cmd == "GC" { p.gc() } else { p.status() }.map(|_| None)
        }
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not a CNI command"),
        )),
    }
}

fn main() -> ExitCode {
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let out = json!({"cniVersion": "1.1.0", "code": code::IO, "msg": "cannot read stdin", "details": e.to_string()});
        println!("{out}");
        return ExitCode::FAILURE;
    }
    let parsed = serde_json::from_slice::<Value>(&stdin).ok();
    let version = parsed
        .as_ref()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    let log_file = parsed
        .as_ref()
        .and_then(|v| v.get("logFile")?.as_str().map(PathBuf::from));
    let who = format!(
        "vswitch CNI {cmd} container={} ifname={}",
        std::env::var("CNI_CONTAINERID").unwrap_or_default(),
        std::env::var("CNI_IFNAME").unwrap_or_default()
    );
    match run(&cmd, stdin) {
        Ok(Some(v)) => {
            if cmd == "ADD" {
                let ips: Vec<&str> = v["ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["address"].as_str())
                    .collect();
                log(log_file.as_deref(), &format!("{who}: ok {}", ips.join(",")));
            }
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "vswitch CNI {cmd}: error {}: {} {}",
                e.code, e.msg, e.details
            );
            let out =
                json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details});
            println!("{out}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateway_route_for_delegated_ipam() {
        let addrs = [CniAddr {
            ip: "10.1.0.5".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.1.0.1".parse().unwrap()),
        }];
        let mut routes = Vec::new();
        default_route_via_gateway(&addrs, &mut routes);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].dst.prefix_len(), 0);
        assert_eq!(routes[0].via, addrs[0].gateway);
        // An IPAM-given default route wins.
        default_route_via_gateway(&addrs, &mut routes);
        assert_eq!(routes.len(), 1);
    }

    #[test]
    fn versions() {
        assert!(version_at_least("1.1.0", (1, 1, 0)));
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
        assert!(!version_at_least("1.0.0", (1, 1, 0)));
    }

    #[test]
    fn unknown_version_and_bad_json_codes() {
        // VERSION works with no environment at all.
        assert!(run("VERSION", b"{}".to_vec()).unwrap().is_some());
        std::env::set_var("CNI_CONTAINERID", "c");
        std::env::set_var("CNI_IFNAME", "eth0");
        let e = run("DEL", b"{not json".to_vec()).unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = run(
            "DEL",
            br#"{"cniVersion":"9.9.9","name":"n","type":"vswitch","ipam":{"type":"vswitch"}}"#
                .to_vec(),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = run(
            "DEL",
            br#"{"cniVersion":"1.0.0","name":"n","type":"vswitch"}"#.to_vec(),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }
}
