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

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

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

    /// Starts `vswitchd` inside `node_ns` with its own socket and state dir, `config_toml`
    /// appended to its config file, and waits until the control socket answers.
    pub fn daemon(&mut self, node_ns: &str, config_toml: &str) -> Result<Daemon> {
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
        let logf = std::fs::File::create(&log)?;
        let pid = self.spawn(
            Command::new("ip")
                .args(["netns", "exec", node_ns])
                .arg(bin("vswitchd"))
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
        let file = self
            .dir
            .join(format!("{}-{iface}-{}.pcap", ns, self.children.len()));
        let errf = self
            .dir
            .join(format!("{}-{iface}-{}.err", ns, self.children.len()));
        let mut args = vec![
            "netns", "exec", ns, "tcpdump", "-n", "-U", "-p", "-i", iface, "-w",
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
