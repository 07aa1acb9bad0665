//! Bounded execution of helper commands (iperf3, ping, ss, ...) and the Ctrl-C flag.
//!
//! Every wait in this crate is bounded by a deadline and also gives up as soon as the user
//! pressed Ctrl-C, so that the caller returns an error and the [`vswitch_lab::Lab`] holding
//! the namespaces and processes is dropped (which tears everything down).

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs a SIGINT/SIGTERM/SIGHUP handler that only sets a flag; the waits below notice it.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("install the Ctrl-C handler")
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The error returned once Ctrl-C was seen.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Fails with [`Interrupted`] once Ctrl-C was pressed.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Sleeps `d`, waking up early (with an error) on Ctrl-C.
pub fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// What a bounded command left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Short description of a failure, for error messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{}", self.status);
        let err = self.stderr.trim();
        if !err.is_empty() {
            s.push_str(": ");
            s.push_str(&tail(err, 600));
        }
        s
    }
}

/// Last `max` bytes of `s` (on a char boundary).
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// Runs `cmd` to completion, but for at most `timeout`: stdout and stderr go to
/// `dir/<tag>.out` and `dir/<tag>.err` (no pipe that could fill up while we wait), and the
/// process is killed on timeout or Ctrl-C.
pub fn run_bounded(
    cmd: &mut Command,
    timeout: Duration,
    dir: &Path,
    tag: &str,
) -> Result<Finished> {
    let out_path = dir.join(format!("{tag}.out"));
    let err_path = dir.join(format!("{tag}.err"));
    let out = File::create(&out_path).with_context(|| format!("create {}", out_path.display()))?;
    let err = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().context("wait for child")? {
            break st;
        }
        if interrupted() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupt()?;
            bail!("{cmd:?} did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Finished {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

/// `ip netns exec NS ARGS...` as a [`Command`].
pub fn in_netns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Short bounded command that must succeed; returns its stdout.
pub fn quick_ok(cmd: &mut Command, dir: &Path, tag: &str) -> Result<String> {
    let f = run_bounded(cmd, Duration::from_secs(20), dir, tag)?;
    if !f.status.success() {
        bail!("{cmd:?} failed: {}", f.describe());
    }
    Ok(f.stdout)
}

/// True when a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Checks that the commands the benchmark uses exist.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut missing = Vec::new();
    for t in tools {
        let found = std::env::split_paths(&path).any(|d| d.join(t).is_file())
            || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(t).is_file());
        if !found {
            missing.push(*t);
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (Debian: apt-get install iperf3 iputils-ping ethtool iproute2)",
            missing.join(", ")
        );
    }
    Ok(())
}
