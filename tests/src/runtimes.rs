//! Real container runtimes driving the `vswitch` CNI plugin: podman (CNI backend) and containerd
//! (`ctr run --cni`), each with test-owned state, cleaned up on drop.
//!
//! Containers run a local busybox root filesystem (`tests/cni/busybox-rootfs.sh`, from Debian's
//! busybox-static): no registry is involved. Every runtime command runs under `timeout`, so a hung
//! runtime fails the test instead of blocking it.
//!
//! Drop order matters: declare the [`Lab`] (and its daemon) first and the runtime guards after
//! it, so the guards drop first: containers are removed (CNI DEL, answered by the still running
//! vswitchd), then global CNI files, then the lab kills its processes and deletes namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{bin, bin_dir, run, run_ok, Lab};

/// Upper bound for one runtime command (`podman run`, `ctr task exec`, ...).
const CMD_TIMEOUT_SECS: &str = "60";

/// Containers sleep this long and then exit by themselves, should every cleanup fail.
pub const CONTAINER_LIFETIME: &str = "300";

/// Runtime tests need their tools; without them they are skipped with a message, except under
/// `VSWITCH_REQUIRE_ROOT_TESTS=1` (CI), where a skip would hide a missing install step.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !run(Command::new("sh").arg("-c").arg(format!("command -v {t}")))
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: needs {} (run tests/install-deps.sh)",
        missing.join(", ")
    );
    if std::env::var("VSWITCH_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("{msg}: skipped");
    false
}

/// Directory of the tests crate (`tests/`), where the CNI fixtures live.
fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds a busybox root filesystem in `dir` (and a tarball of it if `tarball` is given).
pub fn busybox_rootfs(dir: &Path, tarball: Option<&Path>) -> Result<()> {
    let script = tests_dir().join("cni/busybox-rootfs.sh");
    let mut cmd = Command::new("sh");
    cmd.arg(&script).arg(dir);
    if let Some(t) = tarball {
        cmd.arg(t);
    }
    run_ok(&mut cmd).context("build the busybox rootfs")?;
    Ok(())
}

/// The plugin section of a vswitch network: `{"type": "vswitch", "socket": .., "bridge": ..,
/// "capabilities": {"ips", "mac"}, "ipam": ..}`, plus any `extra` keys.
pub fn vswitch_plugin(socket: &Path, bridge: &str, ipam: Value, extra: Value) -> Value {
    let mut p = json!({
        "type": "vswitch",
        "socket": socket.display().to_string(),
        "bridge": bridge,
        "capabilities": {"ips": true, "mac": true},
        "ipam": ipam,
    });
    if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), extra) {
        p.extend(extra);
    }
    p
}

/// A network configuration list with one plugin. `cniVersions` (CNI 1.1) lets a runtime that
/// knows it pick 1.1.0 and send STATUS and GC; older runtimes read `cniVersion` (1.0.0).
pub fn conflist(name: &str, plugin: Value) -> Value {
    json!({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": name, "plugins": [plugin]})
}

/// Writes `text` to `path` atomically (temp file + rename), so a runtime never reads half a file.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp-vswitch-lab");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// `stdout + stderr` of a command, for failure messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes `/sys/fs/cgroup/<controller>/<name>` (and empty sub-cgroups) in every hierarchy.
fn remove_cgroups(name: &str) {
    let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in ctrls.flatten() {
        let top = c.path().join(name);
        if top.is_dir() {
            // Deepest first; rmdir only removes cgroups without processes.
            let _ = run(Command::new("find")
                .arg(&top)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"]));
        }
    }
}

/// Lazily unmounts every mount point at or below `dir` (leftovers of a failed removal).
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = run(Command::new("umount").args(["-l", p]));
    }
}

/// Removes libcni's cached results (`/var/lib/cni/results/<network>-...`) of `network`.
fn remove_cni_cache(network: &str) {
    let dir = Path::new("/var/lib/cni/results");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{network}-");
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------------

/// podman 4 with the CNI network backend and everything test-owned: its own containers.conf and
/// storage.conf (through `CONTAINERS_CONF` / `CONTAINERS_STORAGE_CONF`), root, runroot, tmp dir,
/// CNI config dir, and a cgroup parent; the image is imported from a busybox rootfs tarball.
/// Dropping it removes every container (podman runs CNI DEL) and what podman left behind.
pub struct Podman {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub storage_conf: PathBuf,
    /// podman's `network_config_dir`: one conflist per network.
    pub net_dir: PathBuf,
    /// Image imported from the busybox rootfs.
    pub image: String,
    cgroup_parent: String,
    networks: Vec<String>,
}

impl Podman {
    /// Writes the configuration under `<lab dir>/podman` and imports the busybox image. CNI
    /// plugins are looked up in the directory of the vswitch binaries, then `/usr/lib/cni`.
    pub fn new(lab: &Lab) -> Result<Podman> {
        let dir = lab.dir.join("podman");
        let (root, runroot, tmp, net_dir) = (
            dir.join("root"),
            dir.join("runroot"),
            dir.join("tmp"),
            dir.join("cni"),
        );
        for d in [&root, &runroot, &tmp, &net_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let plugin_dir = bin_dir();
        anyhow::ensure!(
            plugin_dir.join("vswitch").exists(),
            "CNI plugin {} missing: run `cargo build --workspace --bins`",
            plugin_dir.join("vswitch").display()
        );
        let s = |p: &Path| p.display().to_string();
        // - default_ulimits: podman raises nofile/nproc to 1048576 by default, which needs
        //   CAP_SYS_RESOURCE; stay below the current hard limits instead.
        // - runc with cgroupfs: crun refuses hybrid cgroup v1/v2 hosts, and runc needs cgroups.
        // - events to a file: there is no journald.
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {events:?}
runtime = "runc"
tmp_dir = {tmp:?}
static_dir = {static_dir:?}
volume_path = {volumes:?}

[network]
network_backend = "cni"
network_config_dir = {net_dir:?}
cni_plugin_dirs = [{plugins:?}, "/usr/lib/cni"]
"#,
            events = s(&dir.join("events.log")),
            tmp = s(&tmp),
            static_dir = s(&root.join("libpod")),
            volumes = s(&root.join("volumes")),
            net_dir = s(&net_dir),
            plugins = s(&plugin_dir),
        );
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = {:?}\ngraphroot = {:?}\n",
            s(&runroot),
            s(&root)
        );
        let p = Podman {
            conf: dir.join("containers.conf"),
            storage_conf: dir.join("storage.conf"),
            net_dir,
            image: "localhost/vswitch-lab-busybox:latest".to_string(),
            cgroup_parent: lab.name("podman"),
            networks: Vec::new(),
            dir,
        };
        std::fs::write(&p.conf, conf)?;
        std::fs::write(&p.storage_conf, storage)?;
        let tarball = p.dir.join("rootfs.tar");
        busybox_rootfs(&p.dir.join("rootfs"), Some(&tarball))?;
        p.ok(&["import", &tarball.display().to_string(), &p.image])
            .context("podman import of the busybox rootfs")?;
        Ok(p)
    }

    /// `timeout 60 podman ARGS...` with the test's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "5", CMD_TIMEOUT_SECS, "podman"])
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf);
        c
    }

    /// Runs podman whatever its exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        run(&mut self.command(args))
    }

    /// Runs podman, requiring success; returns stdout. The error carries podman's stderr.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let o = self.output(args)?;
        if !o.status.success() {
            bail!(
                "podman {} failed ({}): {}",
                args.join(" "),
                o.status,
                output_text(&o)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Adds a network: writes `conflist` as `<net_dir>/<name>.conflist`.
    pub fn add_network(&mut self, conflist: &Value) -> Result<()> {
        let name = conflist["name"]
            .as_str()
            .context("conflist without a name")?
            .to_string();
        write_atomic(
            &self.net_dir.join(format!("{name}.conflist")),
            &serde_json::to_string_pretty(conflist)?,
        )?;
        self.networks.push(name);
        Ok(())
    }

    /// `podman run -d --name NAME NET_ARGS... IMAGE sleep 300`; returns the container id.
    pub fn run_container(&self, name: &str, net_args: &[&str]) -> Result<String> {
        let cg = format!("--cgroup-parent=/{}", self.cgroup_parent);
        let mut args = vec!["run", "-d", "--name", name, &cg];
        args.extend_from_slice(net_args);
        args.extend_from_slice(&[&self.image, "sleep", CONTAINER_LIFETIME]);
        self.ok(&args)
    }

    /// `podman exec NAME CMD...`, whatever its exit status.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> Result<Output> {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.output(&args)
    }

    /// One `ping -c 1 -W 1 [-I IFACE] DST` inside the container: (replied?, ping's output).
    pub fn ping(&self, name: &str, dst: &str, iface: Option<&str>) -> (bool, String) {
        let mut cmd = vec!["ping", "-c", "1", "-W", "1"];
        if let Some(i) = iface {
            cmd.extend_from_slice(&["-I", i]);
        }
        cmd.push(dst);
        match self.exec(name, &cmd) {
            Ok(o) => (o.status.success(), output_text(&o)),
            Err(e) => (false, format!("{e:#}")),
        }
    }

    /// Runs one ping per case `(container, destination, interface)`, all at once, and returns
    /// those that got a reply, with ping's output: for checks that something is unreachable,
    /// where every attempt waits out its timeout.
    pub fn pings_answered(&self, cases: &[(&str, &str, Option<&str>)]) -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = cases
                .iter()
                .map(|&(name, dst, iface)| {
                    s.spawn(move || (name, dst, iface, self.ping(name, dst, iface)))
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| {
                    let (name, dst, iface, (ok, out)) = h.join().expect("ping thread");
                    ok.then(|| format!("{name} -> {dst} (interface {iface:?}): {out}"))
                })
                .collect()
        })
    }

    /// Pings until the first reply or `timeout`; returns the last attempt.
    pub fn ping_until(
        &self,
        name: &str,
        dst: &str,
        iface: Option<&str>,
        timeout: Duration,
    ) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let (ok, out) = self.ping(name, dst, iface);
            if ok || Instant::now() >= deadline {
                return (ok, out);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The IPv4 address (without prefix) of `ifname` inside the container.
    pub fn ipv4(&self, name: &str, ifname: &str) -> Result<String> {
        let out = self.ok(&[
            "exec", name, "ip", "-o", "-4", "addr", "show", "dev", ifname,
        ])?;
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .map(str::to_string)
            .with_context(|| format!("no IPv4 address on {ifname} in {name}: {out:?}"))
    }

    /// The full id of a container.
    pub fn container_id(&self, name: &str) -> Result<String> {
        self.ok(&["inspect", "--format", "{{.Id}}", name])
    }

    /// Removes every container of this podman (`rm -a -f -t 0`: CNI DEL for each network).
    pub fn remove_all(&self) -> Result<String> {
        self.ok(&["rm", "-a", "-f", "-t", "0"])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            eprintln!("podman cleanup: {e:#}");
        }
        remove_cgroups(&self.cgroup_parent);
        unmount_below(&self.dir);
        for n in &self.networks {
            remove_cni_cache(n);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Global CNI directories (for runtimes without a per-instance CNI configuration, like `ctr`)
// ---------------------------------------------------------------------------------------------

/// Serialises every test that touches `/etc/cni/net.d` or `/opt/cni/bin`.
static GLOBAL_CNI_LOCK: Mutex<()> = Mutex::new(());

/// The vswitch plugin and one conflist installed in the global CNI directories for as long as
/// this guard lives; dropping it removes them (restoring a `vswitch` binary that was there
/// before) and libcni's cached results of the network. Holds a process-wide lock meanwhile.
pub struct GlobalCni {
    pub conflist: PathBuf,
    network: String,
    plugin: PathBuf,
    plugin_backup: Option<PathBuf>,
    created_dirs: Vec<PathBuf>,
    _lock: MutexGuard<'static, ()>,
}

impl GlobalCni {
    pub const CONF_DIR: &'static str = "/etc/cni/net.d";
    pub const BIN_DIR: &'static str = "/opt/cni/bin";

    /// Installs `target/<profile>/vswitch` into [`Self::BIN_DIR`] and `conflist` as
    /// `00-<lab prefix>vswitch.conflist`, which must then be the first configuration in
    /// [`Self::CONF_DIR`] (runtimes take the first one as the default network).
    pub fn install(lab: &Lab, conflist: &Value) -> Result<GlobalCni> {
        let lock = GLOBAL_CNI_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut created_dirs = Vec::new();
        for d in ["/etc/cni", Self::CONF_DIR, "/opt/cni", Self::BIN_DIR] {
            let d = PathBuf::from(d);
            if !d.exists() {
                std::fs::create_dir(&d).with_context(|| format!("create {}", d.display()))?;
                created_dirs.push(d);
            }
        }
        let network = conflist["name"]
            .as_str()
            .context("conflist without a name")?
            .to_string();
        let mut g = GlobalCni {
            conflist: Path::new(Self::CONF_DIR).join(format!("00-{}vswitch.conflist", lab.prefix)),
            network,
            plugin: Path::new(Self::BIN_DIR).join("vswitch"),
            plugin_backup: None,
            created_dirs,
            _lock: lock,
        };
        if g.plugin.exists() {
            let backup = g
                .plugin
                .with_file_name(format!("vswitch.{}backup", lab.prefix));
            std::fs::rename(&g.plugin, &backup)?;
            g.plugin_backup = Some(backup);
        }
        let tmp = g
            .plugin
            .with_file_name(format!("vswitch.{}tmp", lab.prefix));
        std::fs::copy(bin("vswitch"), &tmp).context("copy the vswitch CNI plugin")?;
        std::fs::rename(&tmp, &g.plugin)?;
        g.update(conflist)?;
        let first = first_config(Path::new(Self::CONF_DIR))?;
        anyhow::ensure!(
            first.as_deref() == Some(g.conflist.as_path()),
            "{} is not the first CNI configuration in {} (first: {first:?}); runtimes would use another network",
            g.conflist.display(),
            Self::CONF_DIR
        );
        Ok(g)
    }

    /// Replaces the installed conflist (atomically).
    pub fn update(&self, conflist: &Value) -> Result<()> {
        write_atomic(&self.conflist, &serde_json::to_string_pretty(conflist)?)
    }
}

/// The configuration file libcni picks as the default network: the first `.conf`, `.conflist`
/// or `.json` in name order.
fn first_config(dir: &Path) -> Result<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

impl Drop for GlobalCni {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.conflist);
        let _ = std::fs::remove_file(&self.plugin);
        if let Some(b) = &self.plugin_backup {
            let _ = std::fs::rename(b, &self.plugin);
        }
        for d in self.created_dirs.iter().rev() {
            // Only if nothing else was put there meanwhile.
            let _ = std::fs::remove_dir(d);
        }
        remove_cni_cache(&self.network);
    }
}

// ---------------------------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------------------------

/// A foreground `ctr run --cni --rm` process: it runs CNI ADD before starting the task and CNI
/// DEL when the task exits (containerd 1.6's ctr does not run DEL for detached containers).
struct CtrRun {
    id: String,
    child: Child,
    log: PathBuf,
}

/// A test-owned containerd (own config, root, state, socket, opt dir; started as a lab process,
/// killed by PID when the lab drops) and the `ctr` processes of the test. Dropping it kills every
/// task (so each `ctr run` runs CNI DEL) and deletes every container.
pub struct Containerd {
    pub dir: PathBuf,
    pub address: PathBuf,
    /// containerd namespace of the test's containers (also their cgroup parent); the CNI
    /// container id of container `ID` is `<namespace>-<ID>`.
    pub namespace: String,
    /// The busybox rootfs every container uses (`ctr run --rootfs`, read-only).
    pub rootfs: PathBuf,
    pub log: PathBuf,
    pid: u32,
    runs: Vec<CtrRun>,
    execs: usize,
    run_containerd_existed: bool,
}

impl Containerd {
    /// Starts containerd (CRI plugin disabled) and waits until it answers.
    pub fn start(lab: &mut Lab) -> Result<Containerd> {
        let dir = lab.dir.join("containerd");
        for d in ["root", "state", "opt", "fifo", "runc"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let s = |p: PathBuf| p.display().to_string();
        let address = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = {root:?}
state = {state:?}
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = {grpc:?}

[ttrpc]
  address = {ttrpc:?}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt:?}
"#,
            root = s(dir.join("root")),
            state = s(dir.join("state")),
            grpc = s(address.clone()),
            ttrpc = format!("{}.ttrpc", address.display()),
            opt = s(dir.join("opt")),
        );
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config)?;
        let rootfs = dir.join("rootfs");
        busybox_rootfs(&rootfs, None)?;
        let log = dir.join("containerd.log");
        let run_containerd_existed = Path::new("/run/containerd").exists();
        let pid = lab.spawn(
            Command::new("containerd")
                .arg("--config")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?),
        )?;
        let c = Containerd {
            dir,
            address,
            namespace: lab.name("ctd"),
            rootfs,
            log,
            pid,
            runs: Vec::new(),
            execs: 0,
            run_containerd_existed,
        };
        let up = wait_for(Duration::from_secs(15), || {
            c.ctr_output(&["version"])
                .ok()
                .filter(|o| o.status.success())
        });
        if up.is_none() {
            bail!(
                "containerd did not answer within 15 s; log:\n{}",
                crate::tail(&c.log_text(), 30)
            );
        }
        Ok(c)
    }

    /// PID of the containerd process (a lab process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// containerd's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// ctr's global arguments for this containerd: `--address A --namespace N`.
    fn ctr_globals(&self) -> [std::ffi::OsString; 4] {
        [
            "--address".into(),
            self.address.clone().into(),
            "--namespace".into(),
            self.namespace.clone().into(),
        ]
    }

    /// `timeout 60 ctr ... ARGS...`, whatever the exit status.
    pub fn ctr_output(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("timeout")
            .args(["-k", "5", CMD_TIMEOUT_SECS, "ctr"])
            .args(self.ctr_globals())
            .args(args))
    }

    /// Like [`Containerd::ctr_output`], requiring success; returns stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let o = self.ctr_output(args)?;
        if !o.status.success() {
            bail!(
                "ctr {} failed ({}): {}",
                args.join(" "),
                o.status,
                output_text(&o)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Status of task `id` from `ctr task ls` (`RUNNING`, `STOPPED`, `CREATED`, ...).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]).ok()?;
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(2).unwrap_or(&"").to_string())
        })
    }

    /// Starts `ctr run --cni --rm --read-only --rootfs ROOTFS ID sleep 300` in the foreground
    /// (a child kept until [`Containerd::kill`] or drop) and waits until the task runs, which
    /// is after CNI ADD succeeded. If ctr exits first (ADD failed), returns its output as error.
    pub fn run_cni(&mut self, id: &str) -> Result<()> {
        let log = self.dir.join(format!("ctr-run-{id}.log"));
        let logf = std::fs::File::create(&log)?;
        // No `timeout`: it lives as long as the container; kill() and drop end it.
        let mut cmd = Command::new("ctr");
        cmd.args(self.ctr_globals())
            .args(["run", "--cni", "--rm", "--read-only"])
            .arg("--fifo-dir")
            .arg(self.dir.join("fifo"))
            .arg("--runc-root")
            .arg(self.dir.join("runc"))
            .args(["--env", "PATH=/bin", "--rootfs"])
            .arg(&self.rootfs)
            .args([id, "sleep", CONTAINER_LIFETIME])
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        self.runs.push(CtrRun {
            id: id.to_string(),
            child,
            log: log.clone(),
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.task_status(id).as_deref() == Some("RUNNING") {
                return Ok(());
            }
            let r = self.runs.last_mut().expect("just pushed");
            if let Ok(Some(status)) = r.child.try_wait() {
                let out = std::fs::read_to_string(&log).unwrap_or_default();
                self.runs.pop();
                self.remove_container(id);
                bail!("ctr run --cni {id} exited ({status}) before its task ran: {out}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "ctr run --cni {id}: task not running after 30 s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr task exec --exec-id eN ID CMD...`, whatever its exit status.
    pub fn exec(&mut self, id: &str, cmd: &[&str]) -> Result<Output> {
        self.execs += 1;
        let exec_id = format!("e{}", self.execs);
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, id];
        args.extend_from_slice(cmd);
        self.ctr_output(&args)
    }

    /// Pings `dst` from container `id` until the first reply or `timeout`; returns the last try.
    pub fn ping_until(&mut self, id: &str, dst: &str, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let (ok, out) = match self.exec(id, &["ping", "-c", "1", "-W", "1", dst]) {
                Ok(o) => (o.status.success(), output_text(&o)),
                Err(e) => (false, format!("{e:#}")),
            };
            if ok || Instant::now() >= deadline {
                return (ok, out);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ctr task kill -s SIGKILL ID`, then waits (30 s at most) for its `ctr run` to run CNI
    /// DEL, delete the container and exit; returns that ctr's output.
    pub fn kill(&mut self, id: &str) -> Result<String> {
        self.ctr(&["task", "kill", "--signal", "SIGKILL", id])?;
        let i = self
            .runs
            .iter()
            .position(|r| r.id == id)
            .with_context(|| format!("no ctr run for {id}"))?;
        let mut r = self.runs.remove(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = r.child.try_wait() {
                return Ok(std::fs::read_to_string(&r.log).unwrap_or_default());
            }
            if Instant::now() >= deadline {
                let _ = r.child.kill();
                let _ = r.child.wait();
                bail!(
                    "ctr run {id} did not exit within 30 s of the task kill: {}",
                    std::fs::read_to_string(&r.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Force-deletes the task and the container `id` (leftovers of a failed run), ignoring errors.
    pub fn remove_container(&self, id: &str) {
        let _ = self.ctr_output(&["task", "delete", "--force", id]);
        let _ = self.ctr_output(&["container", "delete", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Kill every task: each foreground `ctr run` then runs CNI DEL and removes its container.
        for r in &self.runs {
            let _ = self.ctr_output(&["task", "kill", "--signal", "SIGKILL", &r.id]);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for r in &mut self.runs {
            while !matches!(r.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Killed by its PID if it is still there.
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        self.runs.clear();
        if let Ok(list) = self.ctr(&["container", "list", "--quiet"]) {
            for id in list.split_whitespace() {
                self.remove_container(id);
            }
        }
        remove_cgroups(&self.namespace);
        if !self.run_containerd_existed {
            // Created by the shims; rmdir only removes them if empty.
            for d in ["s", "fifo", "runc", ""] {
                let _ = std::fs::remove_dir(Path::new("/run/containerd").join(d));
            }
        }
    }
}
