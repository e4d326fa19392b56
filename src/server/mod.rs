//! The bottom connection layer: listening sockets, the accept loop of each listener with its
//! connection cap, and the client connections it serves (`connection.rs`), each of which has a
//! deadline in every state it can be in (`docs/SECURITY.md` lists them).
//!
//! [`bind`] and the accept loops are separate so tests (and the demo) bind `127.0.0.1:0`, read
//! the port, and hand the listeners in.

mod connection;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, LimitsConfig, ListenerConfig, ServiceConfig};
use crate::metrics::ServiceMetrics;
use crate::router::Router;
use crate::tls::Acceptor;
use crate::workers;

/// A listening socket of one service.
#[derive(Debug)]
pub struct BoundListener {
    /// Index of the service in [`Config::services`].
    pub service: usize,
    /// The listener as configured.
    pub config: ListenerConfig,
    /// The socket, already listening.
    pub listener: TcpListener,
}

impl BoundListener {
    /// The address actually bound (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listen address could not be bound.
    #[error(
        "service {service}: cannot listen on {address}: {source} (is another process using it?)"
    )]
    Bind {
        /// The service's name.
        service: String,
        /// The address of the listener.
        address: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// SIGTERM / SIGINT / SIGHUP handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Binds every listen address of every service.
///
/// # Errors
/// [`ServerError::Bind`] for the first address that cannot be bound.
pub async fn bind(config: &Config) -> Result<Vec<BoundListener>, ServerError> {
    let mut listeners = Vec::new();
    for (service, service_config) in config.services.iter().enumerate() {
        for &listener_config in &service_config.listeners {
            let listener = bind_one(service_config, listener_config.address).await?;
            listeners.push(BoundListener {
                service,
                config: listener_config,
                listener,
            });
        }
    }
    Ok(listeners)
}

/// Tries to bind, for a moment, every listen address of `config` and its admin address, as
/// `stickyd check --bind` does before a first start. Returns each that failed: its owner
/// (`service NAME` or `admin`), the address, and why, with a hint when it is in use
/// (`EADDRINUSE`), not an address of this host (`EADDRNOTAVAIL`) or a privileged port
/// (`EACCES`).
pub fn bind_probe(config: &Config) -> Vec<(String, SocketAddr, String)> {
    let services = config.services.iter().flat_map(|service| {
        service
            .listeners
            .iter()
            .map(|listener| (format!("service {}", service.name), listener.address))
    });
    let admin = config
        .admin
        .iter()
        .map(|admin| ("admin".to_string(), admin.bind));
    services
        .chain(admin)
        .filter_map(|(owner, address)| {
            let error = std::net::TcpListener::bind(address).err()?;
            let hint = match error.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    ": another process listens there (`ss -ltnp 'sport = :{}'` names it)",
                    address.port()
                ),
                std::io::ErrorKind::AddrNotAvailable => {
                    ": no interface of this host has that address (`ip -br addr` lists them)"
                        .to_string()
                }
                std::io::ErrorKind::PermissionDenied => {
                    ": ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it)"
                        .to_string()
                }
                _ => String::new(),
            };
            Some((owner, address, format!("{error}{hint}")))
        })
        .collect()
}

/// Binds one listen address of `service`.
///
/// # Errors
/// [`ServerError::Bind`] when the address cannot be bound.
pub async fn bind_one(
    service: &ServiceConfig,
    address: SocketAddr,
) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind {
            service: service.name.clone(),
            address,
            source,
        })
}

/// What the connections of one listener need, read once per connection. A reload replaces it
/// (new certificates, limits), so new connections get the new settings and open ones keep
/// theirs.
#[derive(Debug)]
pub struct Listener {
    /// The service's name, for logs.
    pub service: String,
    /// Cleartext HTTP/2 with prior knowledge is accepted beside HTTP/1.1.
    pub h2c: bool,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Terminates TLS, when the service has certificates.
    pub tls: Option<Acceptor>,
    /// Answer with a redirect to HTTPS on this port rather than proxy (`redirect_https`).
    pub redirect_https: Option<u16>,
    /// Deadlines and sizes.
    pub limits: LimitsConfig,
    /// Clients whose forwarding fields are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The service's metric handles.
    pub metrics: ServiceMetrics,
    /// Cancelled when a reload replaces these settings, so that an accept loop waiting for a
    /// free slot re-reads `max_connections` at once.
    pub replaced: CancellationToken,
}

impl Listener {
    /// The settings of `listener`, one of `service`'s, recording into `metrics`.
    pub fn new(
        service: &ServiceConfig,
        listener: &ListenerConfig,
        metrics: ServiceMetrics,
    ) -> Listener {
        Listener {
            service: service.name.clone(),
            h2c: listener.h2c,
            proxy_protocol: service.proxy_protocol,
            tls: listener.tls.then(|| crate::tls::acceptor(&service.tls)),
            redirect_https: listener.redirect_https,
            limits: service.limits.clone(),
            trusted_proxies: service.trusted_proxies.clone(),
            metrics,
            replaced: CancellationToken::new(),
        }
    }

    /// Whether a client at `address` is one of the trusted proxies.
    fn trusts(&self, address: std::net::IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(&address))
    }
}

/// The client connections being served, so that shutdown can stop and drain them: `shutdown`
/// asks every connection to finish what it is doing and close (idle ones close at once), and
/// `kill` closes whatever is left, tunnels included, when `shutdown_grace` is over.
#[derive(Debug, Default)]
pub struct ClientConnections {
    tasks: TaskTracker,
    shutdown: CancellationToken,
    kill: CancellationToken,
}

impl ClientConnections {
    /// No connection yet.
    pub fn new() -> ClientConnections {
        ClientConnections::default()
    }

    /// Stops every connection: at once for idle ones, after their current exchange for busy
    /// ones, and after `grace` for all that remain (tunnels, slow responses).
    pub async fn drain(&self, grace: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "grace period over: closing the remaining connections"
            );
            self.kill.cancel();
            self.tasks.wait().await;
        }
    }
}

/// The client connections of one listener, counted against its `max_connections`.
#[derive(Debug, Default)]
struct Slots {
    open: AtomicUsize,
    freed: Notify,
}

/// One taken slot: a client connection (or the tunnel it became) while it lives. Also counts
/// it in the service's open-connections gauge.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    gauge: Gauge,
}

impl Slot {
    fn take(slots: &Arc<Slots>, gauge: Gauge) -> Slot {
        slots.open.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        Slot {
            slots: Arc::clone(slots),
            gauge,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
        self.slots.freed.notify_one();
    }
}

/// Accepts connections on `listener` for the service whose current router is in `router`,
/// with the settings in `settings`, until `stop` is cancelled. At most `max_connections`
/// connections (tunnels included) are served at once; past it, new clients wait in the
/// kernel's accept queue until one closes or a reload raises the cap, and each wait is
/// counted.
pub async fn accept_loop(
    listener: TcpListener,
    settings: Arc<ArcSwap<Listener>>,
    router: Arc<ArcSwap<Router>>,
    clients: Arc<ClientConnections>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Slots::default());
    loop {
        let mut queued = false;
        loop {
            let current = settings.load();
            if slots.open.load(Ordering::Acquire) < current.limits.max_connections {
                break;
            }
            if !queued {
                current.metrics.connections_queued.inc();
                queued = true;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = slots.freed.notified() => {}
                () = current.replaced.cancelled() => {}
            }
        }
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if clients.shutdown.is_cancelled() {
                    return;
                }
                let settings = settings.load_full();
                let slot = Slot::take(&slots, settings.metrics.connections.clone());
                let router = Arc::clone(&router);
                let (shutdown, kill) = (clients.shutdown.clone(), clients.kill.clone());
                let Some(workers) = workers::installed() else {
                    clients.tasks.spawn(async move {
                        let _slot = slot;
                        connection::serve(stream, peer, settings, router, shutdown, kill).await;
                    });
                    continue;
                };
                // To the least loaded worker, which registers the socket with its own reactor.
                let assigned = workers.assign();
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(%error, %peer, "cannot hand a connection to a worker");
                        continue;
                    }
                };
                let handle = assigned.handle().clone();
                clients.tasks.spawn_on(
                    async move {
                        let (_slot, _assigned) = (slot, assigned);
                        match TcpStream::from_std(stream) {
                            Ok(stream) => {
                                connection::serve(stream, peer, settings, router, shutdown, kill)
                                    .await;
                            }
                            Err(error) => {
                                tracing::warn!(%error, %peer, "a worker cannot take a connection");
                            }
                        }
                    },
                    &handle,
                );
            }
            Err(error) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops stickyd");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
