//! A lab of network namespaces for vswitch integration tests and benchmarks.
//!
//! Everything a [`Lab`] creates carries its unique prefix (`vt<pid><n>-`), and everything is
//! removed when the lab is dropped, also when a test panics: processes it started are killed by
//! PID, namespaces deleted. Traffic only ever flows between namespaces of the lab.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod cni;
pub mod runtimes;
pub mod topo;
pub mod transfer;

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);
static CAPTURE_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// True when running as root (uid of /proc/self is the effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Root-only tests call this first. Without root they are skipped with a message, unless
/// `VSWITCH_REQUIRE_ROOT_TESTS=1` (set by CI), where skipping would hide a failure.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("VSWITCH_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{test}: needs root (VSWITCH_REQUIRE_ROOT_TESTS=1)");
    }
    eprintln!("{test}: skipped, needs root");
    false
}

/// Directory holding vswitchd / vswitchctl: `VSWITCH_BIN_DIR`, else the cargo target dir of the
/// running test or benchmark binary.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VSWITCH_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` first or set VSWITCH_BIN_DIR",
        p.display()
    );
    p
}

/// Runs a command, returning its output whatever the exit status.
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))
}

/// Runs a command and fails unless it exits 0; returns stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sh -c SCRIPT` and require success.
pub fn sh(script: &str) -> Result<String> {
    run_ok(Command::new("sh").arg("-c").arg(script))
}

/// A `vswitchd` started by the lab inside a node namespace.
pub struct Daemon {
    pub node_ns: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pid: u32,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `vswitchctl --socket S ARGS...`; fails with the CLI's stderr if it exits non-zero.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        run_ok(
            Command::new(bin("vswitchctl"))
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
        )
    }

    /// Like [`Daemon::ctl`] but returns the raw output (to test failures).
    pub fn ctl_output(&self, args: &[&str]) -> Result<Output> {
        run(Command::new(bin("vswitchctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args))
    }

    /// `vswitchctl --json ARGS...` parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ctl(&a)?;
        serde_json::from_str(&out)
            .with_context(|| format!("vswitchctl {args:?} printed non-JSON: {out}"))
    }

    /// Drop counter for `reason` from `vswitchctl --json stats`.
    pub fn drop_count(&self, reason: &str) -> Result<u64> {
        let v = self.ctl_json(&["stats"])?;
        v["drops"][reason]
            .as_u64()
            .with_context(|| format!("no drop reason {reason:?} in stats: {v}"))
    }

    /// The build id `vswitchctl status` reports (empty from a daemon without one).
    pub fn build_id(&self) -> Result<String> {
        let v = self.ctl_json(&["status"])?;
        Ok(v["build"].as_str().unwrap_or_default().to_string())
    }

    /// The daemon's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A set of namespaces and processes that is torn down on drop.
pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    /// A new lab with a unique prefix `vt<pid-hex><n>-`.
    pub fn new() -> Result<Lab> {
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("vt{:x}{n}-", std::process::id());
        let dir =
            std::env::temp_dir().join(format!("vswitch-lab-{}", prefix.trim_end_matches('-')));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Lab {
            prefix,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
        })
    }

    /// Full name of a lab object: prefix + short name.
    pub fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Creates namespace `<prefix><short>` with loopback up; returns its full name.
    pub fn netns(&mut self, short: &str) -> Result<String> {
        let name = self.name(short);
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        Ok(name)
    }

    /// Starts a background process and keeps it for cleanup (killed by PID on drop).
    pub fn spawn(&mut self, cmd: &mut Command) -> Result<u32> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Stops a process the lab started (SIGTERM, then SIGKILL after 3 s) and reaps it.
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            terminate(&mut c);
        }
    }

    /// Kills a process the lab started with SIGKILL (a crash: no cleanup of its own) and reaps it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts `vswitchd` inside `node_ns` with its own socket and state dir, `config_toml`
    /// appended to its config file, and waits until the control socket answers.
    pub fn daemon(&mut self, node_ns: &str, config_toml: &str) -> Result<Daemon> {
        self.daemon_with(&bin("vswitchd"), node_ns, config_toml)
    }

    /// Like [`Lab::daemon`] with another vswitchd binary (an upgrade test's second build).
    pub fn daemon_with(
        &mut self,
        vswitchd: &Path,
        node_ns: &str,
        config_toml: &str,
    ) -> Result<Daemon> {
        let tag = node_ns.trim_start_matches(&self.prefix).to_string();
        let base = self.dir.join(format!("node-{tag}"));
        std::fs::create_dir_all(&base)?;
        let socket = base.join("vswitchd.sock");
        let state_dir = base.join("state");
        let log = base.join("vswitchd.log");
        let cfg = base.join("vswitchd.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = {:?}\nsocket = {:?}\n{config_toml}\n",
                state_dir.display().to_string(),
                socket.display().to_string()
            ),
        )?;
        // Appended to: a restarted daemon (same node namespace) continues the same log.
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let pid = self.spawn(
            Command::new("ip")
                .args(["netns", "exec", node_ns])
                .arg(vswitchd)
                .arg("--config")
                .arg(&cfg)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(logf.try_clone()?)
                .stderr(logf),
        )?;
        let d = Daemon {
            node_ns: node_ns.to_string(),
            socket,
            state_dir,
            log,
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if d.ctl(&["status"]).is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "vswitchd in {node_ns} did not come up in 10 s; log:\n{}",
                    d.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A node namespace running vswitchd with one network `net` (192.168.1.0/24) whose pods
    /// attach as `attach`; `extra` is more daemon config (e.g. `workers = 2`).
    pub fn node_with_network(&mut self, attach: &str, extra: &str) -> Result<Daemon> {
        let node = self.netns("node")?;
        self.daemon(
            &node,
            &format!("{extra}\n[[network]]\nname = \"net\"\nsubnet = \"192.168.1.0/24\"\nattach = \"{attach}\"\n"),
        )
    }

    /// `ip netns exec NS CMD...` with output, whatever the exit status.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(cmd))
    }

    /// `ip netns exec NS CMD...`, required to succeed; returns stdout.
    pub fn exec_ok(&self, ns: &str, cmd: &[&str]) -> Result<String> {
        run_ok(Command::new("ip").args(["netns", "exec", ns]).args(cmd))
    }

    /// True if `ping -c COUNT -W 1` from `ns` to `dst` gets any reply.
    pub fn ping(&self, ns: &str, dst: &str, count: u32) -> bool {
        self.exec(
            ns,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                dst,
            ],
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
    }

    /// Pings until the first reply or `timeout` (ARP and learning settle); true on success.
    pub fn ping_until(&self, ns: &str, dst: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.ping(ns, dst, 1) {
                return true;
            }
        }
        false
    }

    /// Starts `tcpdump -i IFACE -w FILE` in `ns` and waits until it is capturing.
    pub fn capture(&mut self, ns: &str, iface: &str, filter: &str) -> Result<Capture> {
        // A process-wide counter: `children.len()` repeats once captures have been stopped.
        let n = CAPTURE_COUNTER.fetch_add(1, Ordering::SeqCst);
        let file = self.dir.join(format!("{ns}-{iface}-{n}.pcap"));
        let errf = self.dir.join(format!("{ns}-{iface}-{n}.err"));
        let mut args = vec![
            "netns",
            "exec",
            ns,
            "tcpdump",
            "-n",
            "-U",
            "-p",
            // Without it libpcap hands packets over up to 1 s late, and the last second of a
            // capture would be lost when it is stopped.
            "--immediate-mode",
            "-i",
            iface,
            "-w",
        ];
        let fs = file.display().to_string();
        args.push(&fs);
        if !filter.is_empty() {
            args.push(filter);
        }
        let pid = self.spawn(
            Command::new("ip")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&errf)?),
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&errf)
                .unwrap_or_default()
                .contains("listening on")
            {
                return Ok(Capture { pid, file });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "tcpdump in {ns} on {iface} did not start: {}",
            std::fs::read_to_string(&errf).unwrap_or_default()
        )
    }

    /// Stops a capture and returns its packets decoded by tcpdump, one line each.
    pub fn finish_capture(&mut self, cap: Capture) -> Result<Vec<String>> {
        std::thread::sleep(Duration::from_millis(200));
        self.stop(cap.pid);
        read_pcap(&cap.file)
    }
}

/// A running tcpdump.
pub struct Capture {
    pub pid: u32,
    pub file: PathBuf,
}

/// Decodes a pcap with tcpdump (`-e`: with MAC addresses), one packet per line.
pub fn read_pcap(file: &Path) -> Result<Vec<String>> {
    let out = run_ok(Command::new("tcpdump").args(["-n", "-e", "-r"]).arg(file))?;
    Ok(out.lines().map(str::to_string).collect())
}

fn terminate(c: &mut Child) {
    let pid = c.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut c in std::mem::take(&mut self.children).into_iter().rev() {
            terminate(&mut c);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        if std::env::var("VSWITCH_KEEP_LAB").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the integration tests: pods, daemon queries, scapy, capture analysis.
// ---------------------------------------------------------------------------------------------

/// A pod: its own namespace with one interface attached to a vswitch network.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Full namespace name (with the lab prefix).
    pub ns: String,
    pub network: String,
    /// Port id in the daemon.
    pub id: String,
    pub ifname: String,
    /// Lowercase `aa:bb:cc:dd:ee:ff`, as tcpdump prints it.
    pub mac: String,
    pub ip: String,
}

/// A JSON value that must be an array (the list commands of `vswitchctl --json`).
fn json_array(v: serde_json::Value, what: &str) -> Result<Vec<serde_json::Value>> {
    match v {
        serde_json::Value::Array(a) => Ok(a),
        other => bail!("{what}: expected a JSON array, got {other}"),
    }
}

impl Daemon {
    /// `vswitchctl port add --netns NS --network NET --ifname IF --id ID [--mac MAC] [--ip IP]...`;
    /// returns the CLI's stdout.
    pub fn port_add(
        &self,
        ns: &str,
        network: &str,
        ifname: &str,
        id: &str,
        mac: Option<&str>,
        ips: &[&str],
    ) -> Result<String> {
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
        ];
        if let Some(m) = mac {
            args.push("--mac");
            args.push(m);
        }
        for ip in ips {
            args.push("--ip");
            args.push(ip);
        }
        self.ctl(&args)
    }

    /// `port list` as JSON objects.
    pub fn ports(&self) -> Result<Vec<serde_json::Value>> {
        json_array(self.ctl_json(&["port", "list"])?, "port list")
    }

    /// `network list` as JSON objects.
    pub fn networks(&self) -> Result<Vec<serde_json::Value>> {
        json_array(self.ctl_json(&["network", "list"])?, "network list")
    }

    /// The `gateway_mac` of a network (lowercase).
    pub fn gateway_mac(&self, network: &str) -> Result<String> {
        let nets = self.networks()?;
        let n = nets
            .iter()
            .find(|n| n["name"] == network)
            .with_context(|| format!("network {network} not in `network list`: {nets:?}"))?;
        Ok(n["gateway_mac"]
            .as_str()
            .with_context(|| format!("network {network} has no gateway_mac: {n}"))?
            .to_ascii_lowercase())
    }

    /// `fdb show NETWORK` as JSON objects.
    pub fn fdb(&self, network: &str) -> Result<Vec<serde_json::Value>> {
        json_array(self.ctl_json(&["fdb", "show", network])?, "fdb show")
    }

    /// The MACs (lowercase) of `fdb show NETWORK`.
    pub fn fdb_macs(&self, network: &str) -> Result<std::collections::BTreeSet<String>> {
        Ok(self
            .fdb(network)?
            .iter()
            .filter_map(|e| e["mac"].as_str().map(str::to_ascii_lowercase))
            .collect())
    }

    /// All drop counters from `vswitchctl --json stats`.
    pub fn drops(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let v = self.ctl_json(&["stats"])?;
        let m = v["drops"]
            .as_object()
            .with_context(|| format!("stats has no drops object: {v}"))?;
        Ok(m.iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect())
    }

    /// The stats entry of one port.
    pub fn port_stats(&self, id: &str) -> Result<serde_json::Value> {
        let v = self.ctl_json(&["stats"])?;
        v["ports"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["id"] == id).cloned())
            .with_context(|| format!("no port {id} in stats: {v}"))
    }

    /// Polls the drop counter `reason` until it reaches `at_least` or `timeout` passes; returns
    /// the last value read.
    pub fn wait_drops(&self, reason: &str, at_least: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.drop_count(reason)?;
            if v >= at_least || Instant::now() >= deadline {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the vswitchd process exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // Format: `pid (comm) S ...`; comm may contain spaces, so look after the last ')'.
            Ok(s) => s
                .rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    /// The last `n` lines of the daemon log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_text(), n)
    }
}

impl Lab {
    /// Creates namespace `<prefix><short>` and attaches it to `network` as port id `short`
    /// with interface `eth1`, `mac` and `ip`.
    pub fn add_pod(
        &mut self,
        d: &Daemon,
        short: &str,
        network: &str,
        mac: &str,
        ip: &str,
    ) -> Result<Pod> {
        let ns = self.netns(short)?;
        d.port_add(&ns, network, "eth1", short, Some(mac), &[ip])
            .with_context(|| format!("port add {short}; daemon log:\n{}", d.log_tail(40)))?;
        Ok(Pod {
            ns,
            network: network.to_string(),
            id: short.to_string(),
            ifname: "eth1".to_string(),
            mac: mac.to_ascii_lowercase(),
            ip: ip.to_string(),
        })
    }

    /// `sysctl -qw KEY=VALUE` inside `ns`.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        self.exec_ok(ns, &["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs a Python script with scapy (`/usr/bin/python3`, `from scapy.all import *` already
    /// done, `conf.verb = 0`) inside `ns`, bounded to 60 s; returns stdout.
    pub fn scapy(&self, ns: &str, script: &str) -> Result<String> {
        let n = CAPTURE_COUNTER.fetch_add(1, Ordering::SeqCst);
        let file = self.dir.join(format!("scapy-{n}.py"));
        std::fs::write(
            &file,
            format!(
                "import logging\nlogging.getLogger('scapy.runtime').setLevel(logging.ERROR)\n\
                 from scapy.all import *\nconf.verb = 0\n{script}\n"
            ),
        )?;
        let f = file.display().to_string();
        self.exec_ok(ns, &["timeout", "60", "/usr/bin/python3", &f])
    }

    /// Names of the links in `ns` (`ip -o link show`).
    pub fn link_names(&self, ns: &str) -> Result<Vec<String>> {
        let out = run_ok(Command::new("ip").args(["-n", ns, "-o", "link", "show"]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }

    /// `ip -o addr show` inside `ns`, for comparisons.
    pub fn addrs(&self, ns: &str) -> Result<String> {
        run_ok(Command::new("ip").args(["-n", ns, "-o", "addr", "show"]))
    }

    /// Runs `timeout SECS CMD...` inside `ns`; returns (exit 0?, stdout + stderr).
    pub fn exec_bounded(&self, ns: &str, secs: u32, cmd: &[&str]) -> (bool, String) {
        let secs = secs.to_string();
        let mut full = vec!["timeout", secs.as_str()];
        full.extend_from_slice(cmd);
        match self.exec(ns, &full) {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("{e:#}")),
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Up to `max` capture lines for a failure message.
pub fn show_lines<S: AsRef<str>>(lines: &[S], max: usize) -> String {
    let mut s: Vec<&str> = lines.iter().take(max).map(|l| l.as_ref()).collect();
    if lines.len() > max {
        s.push("...");
    }
    format!("({} lines)\n{}", lines.len(), s.join("\n"))
}

/// Source MAC of a `tcpdump -e -n` line (`TIME SRC > DST, ethertype ...`).
pub fn frame_src_mac(line: &str) -> Option<&str> {
    let mut t = line.split_whitespace();
    t.next()?;
    let src = t.next()?;
    (t.next()? == ">").then_some(src)
}

/// Destination MAC of a `tcpdump -e -n` line.
pub fn frame_dst_mac(line: &str) -> Option<&str> {
    let mut t = line.split_whitespace();
    t.next()?;
    t.next()?;
    if t.next()? != ">" {
        return None;
    }
    Some(t.next()?.trim_end_matches(','))
}

/// True if `line` mentions IPv4 address `ip` as a whole address (also `IP.port`).
pub fn mentions_ip(line: &str, ip: &str) -> bool {
    let b = line.as_bytes();
    let mut from = 0;
    while let Some(i) = line[from..].find(ip) {
        let start = from + i;
        let end = start + ip.len();
        let before_ok = start == 0 || !(b[start - 1].is_ascii_digit() || b[start - 1] == b'.');
        let after_ok = end >= b.len() || !b[end].is_ascii_digit();
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
    }
    false
}

/// The sender IPv4 address of a decoded frame: the source of an IPv4 packet, or the sender of an
/// ARP request (`tell S`) / reply (`S is-at`).
pub fn frame_sender_ip(line: &str) -> Option<String> {
    if let Some(i) = line.find("ethertype IPv4") {
        // `..., length N: SRC > DST: ...`
        let rest = &line[i..];
        let body = rest.split_once(": ")?.1;
        let src = body.split_whitespace().next()?;
        let parts: Vec<&str> = src.split('.').collect();
        if parts.len() >= 4 && parts[..4].iter().all(|p| p.parse::<u8>().is_ok()) {
            return Some(parts[..4].join("."));
        }
        return None;
    }
    if line.contains("ethertype ARP") {
        if let Some(i) = line.find(" tell ") {
            let s = line[i + 6..].split([',', ' ']).next()?;
            return Some(s.to_string());
        }
        if let Some(i) = line.find(" is-at ") {
            let s = line[..i].rsplit(' ').next()?;
            return Some(s.to_string());
        }
    }
    None
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn parses_tcpdump_lines() {
        let arp = "12:00:00.000001 02:00:00:0a:00:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 192.168.1.77 tell 192.168.1.11, length 28";
        assert_eq!(frame_src_mac(arp), Some("02:00:00:0a:00:01"));
        assert_eq!(frame_dst_mac(arp), Some("ff:ff:ff:ff:ff:ff"));
        assert_eq!(frame_sender_ip(arp).as_deref(), Some("192.168.1.11"));
        let rep = "12:00:00.000001 02:00:00:0a:00:01 > 02:00:00:0a:00:02, ethertype ARP (0x0806), length 42: Reply 192.168.1.205 is-at 02:00:00:0a:00:01, length 28";
        assert_eq!(frame_sender_ip(rep).as_deref(), Some("192.168.1.205"));
        let ip = "12:00:00.000001 02:00:00:0a:00:01 > 02:00:00:0a:00:02, ethertype IPv4 (0x0800), length 98: 192.168.1.11 > 192.168.1.205: ICMP echo request, id 1, seq 1, length 64";
        assert_eq!(frame_sender_ip(ip).as_deref(), Some("192.168.1.11"));
        let udp = "12:00:00.000001 02:00:00:0a:00:01 > 02:00:00:0a:00:02, ethertype IPv4 (0x0800), length 98: 192.168.1.11.5353 > 192.168.1.205.53: UDP";
        assert_eq!(frame_sender_ip(udp).as_deref(), Some("192.168.1.11"));
        assert!(mentions_ip(arp, "192.168.1.11"));
        assert!(!mentions_ip(arp, "192.168.1.1"));
        assert!(!mentions_ip(arp, "192.168.1.7"));
        assert!(mentions_ip(udp, "192.168.1.205"));
        assert!(!mentions_ip("10.192.168.1.11", "192.168.1.11"));
    }
}
