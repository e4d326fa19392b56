//! The daemon's life under systemd (`Type=notify`): bind, start the services and the admin
//! listener, tell systemd `READY=1`, reload on SIGHUP (`RELOADING=1` ... `READY=1`), keep the
//! watchdog fed when the unit asks for one, and stop on SIGTERM/SIGINT (`STOPPING=1`).
//! Outside systemd the notifications are no-ops.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::{AdminConfig, Config};
use crate::runtime::Services;
use crate::server::{self, ServerError};
use crate::telemetry::{self, LevelChange};

/// Runs the daemon on `config` (loaded from `path`, which SIGHUP re-reads) until SIGTERM or
/// SIGINT, then drains connections within `shutdown_grace`.
///
/// # Errors
/// [`ServerError::Bind`] when a listen address (or the admin address) cannot be bound at start;
/// [`ServerError::Signals`] when signal handlers cannot be installed.
pub async fn run(path: &Path, config: Config) -> Result<(), ServerError> {
    let listeners = server::bind(&config).await?;
    let admin = match &config.admin {
        Some(admin) => {
            let listener =
                TcpListener::bind(admin.bind)
                    .await
                    .map_err(|source| ServerError::Bind {
                        service: "admin".into(),
                        address: admin.bind,
                        source,
                    })?;
            Some((listener, watch::channel(admin.clone())))
        }
        None => None,
    };
    let started = config.clone();
    let services = Services::start(config, listeners);
    let stop = CancellationToken::new();
    let mut reloader = Reloader {
        path: path.to_path_buf(),
        started,
        services: Arc::clone(&services),
        admin: None,
    };
    if let Some((listener, (settings, receiver))) = admin {
        tokio::spawn(admin::serve(
            listener,
            Arc::clone(&services),
            receiver,
            stop.clone(),
        ));
        reloader.admin = Some(settings);
    }
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(feed_watchdog(period / 2, stop.clone()));
    }
    let mut signals = Signals::register().map_err(ServerError::Signals)?;
    notify(&[NotifyState::Ready]);
    while let Request::Reload = signals.next().await {
        reloader.reload().await;
    }
    notify(&[NotifyState::Stopping]);
    stop.cancel();
    services.shutdown().await;
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP, registered before systemd hears `READY=1`: a signal sent
/// right after it must not meet the default action (which ends the process).
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

/// What a signal asks for.
enum Request {
    Stop,
    Reload,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.terminate.recv() => Request::Stop,
            _ = self.interrupt.recv() => Request::Stop,
            _ = self.hangup.recv() => Request::Reload,
        }
    }
}

/// What a SIGHUP needs: the file to re-read, what the process started with (the keys only a
/// restart applies keep those values), the services, and the admin listener's settings.
struct Reloader {
    path: PathBuf,
    started: Config,
    services: Arc<Services>,
    /// Sends new settings to the admin listener, when there is one.
    admin: Option<watch::Sender<AdminConfig>>,
}

impl Reloader {
    /// Re-reads and validates the config (on a blocking thread: file reads and DNS must not
    /// stall a worker, the only one with `threads = 1`) and applies it: the services's
    /// services, `log_level`, the admin listener's token, head timeout and connection cap.
    /// Logs the changed keys only a restart applies (`threads`, `pin_threads`, `[admin]`
    /// `bind`). A bad config leaves the running one in place. The result becomes the unit's
    /// status line (`STATUS=`, shown by `systemctl status`).
    async fn reload(&self) {
        let mut reloading = vec![NotifyState::Reloading];
        reloading.extend(NotifyState::monotonic_usec_now().ok());
        notify(&reloading);
        let path = self.path.clone();
        let status = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(Ok(config)) => self.apply(config).await,
            Ok(Err(error)) => {
                self.services.count_reload(false);
                tracing::error!("reload refused, still running the previous config:\n{error}");
                let first = error.to_string();
                let first = first.lines().next().unwrap_or_default().to_string();
                format!("reload refused, running the previous config: {first}")
            }
            Err(error) => {
                self.services.count_reload(false);
                tracing::error!(%error, "reload failed while loading the config: still running the previous config");
                format!("reload failed, running the previous config: {error}")
            }
        };
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// Applies a loaded `config`; returns what happened, for the unit's status.
    async fn apply(&self, config: Config) -> String {
        let previous_level = self.services.config().log_level;
        let level = config.log_level.clone();
        let access_log = config.access_log;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let admin = config.admin.clone();
        let restart = config.needs_restart(&self.started);
        if let Err(error) = self.services.reload(config).await {
            tracing::error!(%error, "reload failed: still running the previous config");
            return format!("reload failed, running the previous config: {error}");
        }
        telemetry::set_access_format(access_log);
        if level != previous_level {
            match telemetry::set_level(&level) {
                LevelChange::Applied => tracing::info!(%level, "log level changed"),
                LevelChange::OverriddenByRustLog => tracing::info!(
                    %level,
                    "log_level changed, but RUST_LOG set the filter at start and keeps it"
                ),
                LevelChange::NotInstalled => {}
                LevelChange::Invalid(error) => {
                    tracing::error!(%level, %error, "log_level not applied");
                }
            }
        }
        // Without [admin] in the new config, the listener keeps its settings until the
        // restart that stops it (named below).
        if let (Some(sender), Some(admin)) = (&self.admin, admin) {
            sender.send_if_modified(|current| {
                let changed = *current != admin;
                *current = admin;
                changed
            });
        }
        if restart.is_empty() {
            tracing::info!("reload applied");
            "reload applied".to_string()
        } else {
            let status = format!(
                "reload applied; needs a restart to take effect: {}",
                restart.join(", ")
            );
            tracing::warn!("{status}");
            status
        }
    }
}

async fn feed_watchdog(every: std::time::Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => notify(&[NotifyState::Watchdog]),
        }
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "systemd notification failed");
    }
}
