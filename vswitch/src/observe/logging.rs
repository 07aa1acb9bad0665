//! The daemon's log setup: structured `tracing` events on stderr, filtered by `RUST_LOG` when
//! set, else by the config's `log_level`, else at `info`. At `info` the daemon logs control-plane
//! events once each (network/port added or removed, underlay ready, peer up/down, etcd lost and
//! regained), never anything per packet.

use tracing_subscriber::EnvFilter;

/// Where the filter came from, for the startup log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterSource {
    Env,
    Config,
    Default,
}

/// The filter: `RUST_LOG` (if set and not empty), else `config`, else `info`.
pub fn filter(
    env: Option<&str>,
    config: Option<&str>,
) -> Result<(EnvFilter, FilterSource), String> {
    let (text, src) = match (env.filter(|e| !e.trim().is_empty()), config) {
        (Some(e), _) => (e, FilterSource::Env),
        (None, Some(c)) => (c, FilterSource::Config),
        (None, None) => ("info", FilterSource::Default),
    };
    let f = EnvFilter::try_new(text).map_err(|e| {
        let what = match src {
            FilterSource::Env => "RUST_LOG",
            _ => "log_level",
        };
        format!("{what} {text:?}: {e}")
    })?;
    Ok((f, src))
}

/// Installs the subscriber for the process.
pub fn init(config: Option<&str>) -> Result<FilterSource, String> {
    let env = std::env::var("RUST_LOG").ok();
    let (f, src) = filter(env.as_deref(), config)?;
    tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_then_config_then_info() {
        assert_eq!(
            filter(Some("debug"), Some("warn")).unwrap().1,
            FilterSource::Env
        );
        assert_eq!(
            filter(Some(" "), Some("warn")).unwrap().1,
            FilterSource::Config
        );
        let (f, src) = filter(None, None).unwrap();
        assert_eq!(
            (f.to_string(), src),
            ("info".to_string(), FilterSource::Default)
        );
        assert!(filter(None, Some("vswitch=nope"))
            .unwrap_err()
            .contains("log_level"));
    }
}
