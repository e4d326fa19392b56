//! Logging: `tracing` to stderr, coloured only on a terminal (journald gets plain lines).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level` (a `tracing` filter
/// directive such as `info` or `stickyd=debug,info`, validated by the config loader).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(colours)
        .with_writer(std::io::stderr)
        .init();
}
