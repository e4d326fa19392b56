//! Logging: `tracing` to stderr, coloured only on a terminal.
//!
//! Under systemd with stderr connected to the journal (`JOURNAL_STREAM` names stderr's device
//! and inode, systemd.exec(5)), each line starts with its syslog priority as sd-daemon(3)
//! reads it (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace) and carries no
//! timestamp of its own, since the journal stamps each entry: `journalctl -p err` then shows
//! the errors.
//!
//! The level filter sits behind tracing-subscriber's `reload` layer, so a config reload can
//! apply a new `log_level` ([`set_level`]) without a restart. `RUST_LOG`, when set at start,
//! overrides `log_level` for the life of the process, reloads included. The access log's
//! format ([`AccessFormat`], `access_log`) is switched the same way ([`set_access_format`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The target of access-log events: one per answered request.
pub const ACCESS_TARGET: &str = "stickyd::access";

/// The installed filter's handle, and whether `RUST_LOG` set it.
static FILTER: OnceLock<(reload::Handle<EnvFilter, Registry>, bool)> = OnceLock::new();

/// Whether access lines are written as JSON ([`AccessFormat::Json`]).
static ACCESS_JSON: AtomicBool = AtomicBool::new(false);

/// How access lines are written (`access_log`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// One `key=value` line, like every other log line.
    #[default]
    Text,
    /// One JSON object per line, every field at the top level, numbers as numbers.
    Json,
}

/// Makes `format` the access log's format from the next line on.
pub fn set_access_format(format: AccessFormat) {
    ACCESS_JSON.store(format == AccessFormat::Json, Ordering::Relaxed);
}

fn is_access(metadata: &Metadata<'_>) -> bool {
    metadata.target() == ACCESS_TARGET
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` is `DEVICE:INODE` of it.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|stderr| stream == format!("{}:{}", stderr.dev(), stderr.ino()))
}

/// The syslog priority of `level` (RFC 5424 section 6.2.1).
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A line format with the journal's priority prefix before each line.
struct Journal<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(context, writer, event)
    }
}

type Base = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// Every line but JSON access lines: `key=value` text.
fn text_layer(journal: bool) -> Box<dyn Layer<Base> + Send + Sync> {
    let not_json_access =
        filter_fn(|metadata| !(is_access(metadata) && ACCESS_JSON.load(Ordering::Relaxed)));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if journal {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_ansi(false);
        layer
            .event_format(Journal(format))
            .with_filter(not_json_access)
            .boxed()
    } else {
        let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
        layer
            .with_ansi(colours)
            .with_filter(not_json_access)
            .boxed()
    }
}

/// JSON access lines, when [`AccessFormat::Json`] is on.
fn json_access_layer(journal: bool) -> Box<dyn Layer<Base> + Send + Sync> {
    let json_access =
        filter_fn(|metadata| is_access(metadata) && ACCESS_JSON.load(Ordering::Relaxed));
    let format = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false);
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr);
    if journal {
        layer
            .event_format(Journal(format.without_time().with_level(false)))
            .with_filter(json_access)
            .boxed()
    } else {
        layer.event_format(format).with_filter(json_access).boxed()
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level` (a `tracing` filter
/// directive such as `info` or `stickyd=debug,info`, validated by the config loader); access
/// lines are written in `access`.
pub fn init(level: &str, access: AccessFormat) {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (EnvFilter::new(level), false),
    };
    set_access_format(access);
    let (filter, handle) = reload::Layer::new(filter);
    let journal = stderr_is_journal();
    tracing_subscriber::registry()
        .with(filter)
        .with(vec![text_layer(journal), json_access_layer(journal)])
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
