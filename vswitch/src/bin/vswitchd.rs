//! vswitchd: the per-node userspace switch daemon.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vswitch::control::{cluster, daemon::Daemon, server};
use vswitch_config::DaemonConfig;

/// This binary's build id: `VSWITCH_BUILD_ID` at build time (read here in the binary, not in
/// the library, so a new id relinks only `vswitchd`), else the version with `-dev`. `vswitchctl
/// status` shows it: after an upgrade (SIGTERM the old daemon, start the new binary) it tells
/// which build answers.
fn build_id() -> String {
    match option_env!("VSWITCH_BUILD_ID") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("{}-dev", env!("CARGO_PKG_VERSION")),
    }
}

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
    /// On SIGTERM/SIGINT remove every port (pod interfaces included) before exiting. Without
    /// it pods keep their interfaces and the next start re-attaches them (restart, upgrade).
    #[arg(long)]
    cleanup: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cleanup = args.cleanup;
    let mut cfg = match &args.config {
        Some(p) => DaemonConfig::load(p)?,
        None => DaemonConfig::default(),
    };
    vswitch::observe::logging::init(cfg.log_level.as_deref()).map_err(anyhow::Error::msg)?;
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
    let metrics_addr = cfg.metrics_addr();
    let build = build_id();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), %build, "vswitchd starting");
    let daemon = match Daemon::start(cfg, &build) {
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
                // First round at once: a restarted daemon needs its peers' MACs right away.
                match daemon.lock() {
                    Ok(mut d) => d.refresh_peer_macs(),
                    Err(p) => p.into_inner().refresh_peer_macs(),
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            })
            .context("start housekeeping thread")?;
    }
    let _metrics = match metrics_addr {
        Some(addr) => Some(metrics::start(addr, daemon.clone())?),
        None => None,
    };
    tracing::info!(socket = %socket.display(), workers, networks, %build, "vswitchd ready");
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
    d.shutdown(cleanup);
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}

mod metrics {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use anyhow::Context;
    use vswitch::control::daemon::Daemon;
    use vswitch::observe::http::MetricsServer;

    /// Serves `metrics_listen`: every scrape takes the same snapshot as `vswitchctl stats`.
    pub fn start(addr: SocketAddr, daemon: Arc<Mutex<Daemon>>) -> anyhow::Result<MetricsServer> {
        let server = MetricsServer::start(addr, move || {
            daemon
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .stats_snapshot()
        })
        .with_context(|| format!("metrics_listen {addr}"))?;
        tracing::info!(addr = %server.local_addr(), "metrics endpoint listening");
        Ok(server)
    }
}
