//! Doing one thing inside another network namespace without any long-lived thread changing
//! namespace (netavark's rule): a fresh thread joins the namespace, runs the closure, and ends.
//! Used to create a pod's tap directly inside the pod, which saves moving the device later (a
//! move costs the kernel tens of milliseconds of RCU synchronisation).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::cvt;

/// Runs `f` on a new thread that has joined the network namespace at `path`.
pub fn run_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(path)?;
    std::thread::Builder::new()
        .name("vswitch-netns".into())
        .spawn(move || -> io::Result<T> {
            // SAFETY: `ns` is an open namespace file we own for the call; CLONE_NEWNET only
            // changes this thread's network namespace, and the thread ends right after `f`.
            cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
}
