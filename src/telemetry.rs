//! Logging: `tracing` to stderr (journald adds its own timestamps under systemd).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level` (a `tracing` filter
/// directive such as `info` or `stickyd=debug,info`, validated by the config loader).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(true).init();
}
