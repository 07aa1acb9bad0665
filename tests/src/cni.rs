//! Calling the `vswitch` CNI plugin binary the way a container runtime does: a CNI environment,
//! the network config on stdin, the result (or error) JSON on stdout. Shared by the CNI
//! integration tests so they all exec the plugin identically.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::bin;

/// `CNI_PATH` as runtimes set it: where delegated IPAM plugins (`host-local`, `static`) live on
/// Debian (`/usr/lib/cni`) and upstream installs (`/opt/cni/bin`).
pub const CNI_PATH: &str = "/usr/lib/cni:/opt/cni/bin";

/// Outcome of one plugin invocation.
pub struct Outcome {
    /// The plugin exited with success.
    pub ok: bool,
    /// The JSON it printed (a result, or a CNI error); `Null` if stdout was not JSON.
    pub out: Value,
    pub stderr: String,
}

impl Outcome {
    /// The first address of an ADD result, without its prefix length; panics (with the output)
    /// when there is none, as a test asserting a successful ADD wants.
    pub fn ip(&self) -> String {
        let a = self.out["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("ADD gave no address: {} {}", self.out, self.stderr));
        a.split('/').next().unwrap().to_string()
    }
}

/// Runs the plugin with command `cmd`, exactly the variables `env` (plus `PATH` and
/// `CNI_COMMAND`: the environment is cleared so nothing of the test's leaks in, as with a runtime)
/// and `stdin` as the config. `stdin` is a string so tests can also send malformed JSON.
pub fn plugin(cmd: &str, env: &[(&str, String)], stdin: &str) -> Outcome {
    let mut c = Command::new(bin("vswitch"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    Outcome {
        ok: o.status.success(),
        out: serde_json::from_str(&text).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&o.stderr).to_string(),
    }
}

/// The common case: `cmd` for container `cid` in the lab namespace `netns_name`
/// (`/run/netns/<netns_name>`), interface `eth0`, with [`CNI_PATH`].
pub fn call(cmd: &str, cid: &str, netns_name: &str, conf: &Value) -> Outcome {
    plugin(
        cmd,
        &[
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_NETNS", format!("/run/netns/{netns_name}")),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", CNI_PATH.to_string()),
        ],
        &conf.to_string(),
    )
}
