//! Logging: `tracing` to stderr, coloured only on a terminal (journald gets plain lines).
//!
//! The level filter sits behind tracing-subscriber's `reload` layer, so a config reload can
//! apply a new `log_level` ([`set_level`]) without a restart. `RUST_LOG`, when set at start,
//! overrides `log_level` for the life of the process, reloads included.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The installed filter's handle, and whether `RUST_LOG` set it.
static FILTER: OnceLock<(reload::Handle<EnvFilter, Registry>, bool)> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level` (a `tracing` filter
/// directive such as `info` or `stickyd=debug,info`, validated by the config loader).
pub fn init(level: &str) {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (EnvFilter::new(level), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(true)
                .with_ansi(colours)
                .with_writer(std::io::stderr),
        )
        .init();
    let _ = FILTER.set((handle, from_env));
}

/// What [`set_level`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The new level filters from now on.
    Applied,
    /// `RUST_LOG` set the filter at start and keeps it: the level is not applied.
    OverriddenByRustLog,
    /// No subscriber of ours is installed (stickyd as a library, in tests): nothing to change.
    NotInstalled,
    /// The directive does not parse (the config loader rejects such a level first).
    Invalid(String),
}

/// Makes `level` (a `tracing` filter directive, as `log_level`) the filter of the subscriber
/// [`init`] installed, unless `RUST_LOG` set it at start.
pub fn set_level(level: &str) -> LevelChange {
    let Some((handle, from_env)) = FILTER.get() else {
        return LevelChange::NotInstalled;
    };
    if *from_env {
        return LevelChange::OverriddenByRustLog;
    }
    let filter = match EnvFilter::try_new(level) {
        Ok(filter) => filter,
        Err(error) => return LevelChange::Invalid(error.to_string()),
    };
    match handle.reload(filter) {
        Ok(()) => LevelChange::Applied,
        // The subscriber is gone: the process is ending.
        Err(_) => LevelChange::NotInstalled,
    }
}
