//! vswitchd: the per-node userspace switch daemon.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vswitch::control::{cluster, daemon::Daemon, server};
use vswitch_config::DaemonConfig;

/// Userspace virtual switch daemon: isolated L2 networks for pods over tap and AF_PACKET ports.
///
/// Runs with no config at all (state in /var/lib/vswitch, control socket
/// /run/vswitch/vswitchd.sock). Flags override the config file.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML config file (state_dir, socket, workers, fdb_aging_secs, [[network]] tables).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Control socket path (overrides the config).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// State directory (overrides the config).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Dataplane worker threads (overrides the config).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(p) => DaemonConfig::load(p)?,
        None => DaemonConfig::default(),
    };
    if let Some(s) = args.socket {
        cfg.socket = s;
    }
    if let Some(d) = args.state_dir {
        cfg.state_dir = d;
    }
    if let Some(w) = args.workers {
        cfg.workers = w;
    }
    cfg.validate()?;

    let mut signals = Signals::new([SIGINT, SIGTERM]).context("install signal handlers")?;
    let listener = server::bind(&cfg.socket)?;
    let socket = cfg.socket.clone();
    let (workers, networks) = (cfg.workers, cfg.networks.len());
    let cluster = cfg.cluster.clone();
    let daemon = match Daemon::start(cfg) {
        Ok(d) => Arc::new(Mutex::new(d)),
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    if let Some(c) = cluster {
        tracing::info!(endpoints = ?c.etcd_endpoints, "cluster mode");
        cluster::spawn(c, daemon.clone()).context("start cluster thread")?;
    }
    {
        // Housekeeping: underlay neighbours for direct routing.
        let daemon = daemon.clone();
        std::thread::Builder::new()
            .name("vswitch-housekeeping".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                match daemon.lock() {
                    Ok(mut d) => d.refresh_peer_macs(),
                    Err(p) => p.into_inner().refresh_peer_macs(),
                }
            })
            .context("start housekeeping thread")?;
    }
    tracing::info!(socket = %socket.display(), workers, networks, "vswitchd ready");
    {
        let daemon = daemon.clone();
        std::thread::Builder::new()
            .name("vswitch-control".into())
            .spawn(move || server::serve(listener, daemon))
            .context("start control thread")?;
    }
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    let mut d = match daemon.lock() {
        Ok(d) => d,
        Err(p) => p.into_inner(),
    };
    d.shutdown();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}
