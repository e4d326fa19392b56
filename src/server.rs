//! The accept loops: bound listeners in, HTTP/1.1 keep-alive connections served by each
//! service's router, graceful shutdown.
//!
//! [`bind`] and [`run`] are separate so tests (and the demo) bind `127.0.0.1:0`, read the port,
//! and hand the listeners in.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use crate::config::{Config, LimitsConfig, ServiceConfig};
use crate::proxy::Peer;
use crate::proxy_header::{self, Prefixed};
use crate::router::Router;
use crate::runtime::Runtime;
use crate::tls::Acceptor;

/// A listening socket of one service.
#[derive(Debug)]
pub struct BoundListener {
    /// Index of the service in [`Config::services`].
    pub service: usize,
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
        service: String,
        address: SocketAddr,
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
        for address in service_config.listeners.iter().map(|listener| listener.address) {
            let listener = bind_one(service_config, address).await?;
            listeners.push(BoundListener { service, listener });
        }
    }
    Ok(listeners)
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

/// Serves `listeners` until `shutdown` completes, then stops accepting and gives in-flight
/// requests `config.shutdown_grace` to finish before returning.
pub async fn run(
    config: &Config,
    listeners: Vec<BoundListener>,
    shutdown: impl Future<Output = ()>,
) {
    let runtime = Runtime::start(config.clone(), listeners);
    shutdown.await;
    runtime.shutdown().await;
}

/// The client connections being served, so shutdown can drain them (hyper-util's
/// `GracefulShutdown`); after shutdown began, new connections are refused.
#[derive(Debug)]
pub struct Connections {
    graceful: Mutex<Option<GracefulShutdown>>,
}

impl Connections {
    /// No connection yet.
    pub fn new() -> Connections {
        Connections {
            graceful: Mutex::new(Some(GracefulShutdown::new())),
        }
    }

    /// A watcher for one new connection, or `None` once shutdown began.
    fn watcher(&self) -> Option<Watcher> {
        self.graceful
            .lock()
            .expect("connections lock")
            .as_ref()
            .map(GracefulShutdown::watcher)
    }

    /// Asks every connection to finish its in-flight request and close, and waits up to `grace`.
    pub async fn drain(&self, grace: Duration) {
        let Some(graceful) = self.graceful.lock().expect("connections lock").take() else {
            return;
        };
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "grace period over: closing the remaining connections"
            );
        }
    }
}

impl Default for Connections {
    fn default() -> Connections {
        Connections::new()
    }
}

/// Accepts connections on `listener` for the service whose current router is in `slot`, until
/// `stop` is cancelled.
/// At most `max_connections` are served at once; past it, new clients wait in the kernel's
/// accept queue until one closes, and each wait is counted.
pub async fn accept_loop(
    listener: TcpListener,
    slot: Arc<ArcSwap<Router>>,
    stop: CancellationToken,
    connections: Arc<Connections>,
    max_connections: usize,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                slot.load().metrics().connections_queued.inc();
                tokio::select! {
                    () = stop.cancelled() => return,
                    permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(watcher) = connections.watcher() else {
                    return;
                };
                let slot = Arc::clone(&slot);
                tokio::spawn(async move {
                    serve_connection(stream, peer, slot, watcher).await;
                    drop(permit);
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one client connection: its PROXY header first when the service expects one, then
/// HTTP/1.1 keep-alive requests, each routed by the service's router of the moment, until
/// either side closes or shutdown drains it.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<ArcSwap<Router>>,
    graceful: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let (proxy_protocol, open, limits, tls) = {
        let router = slot.load();
        (
            router.proxy_protocol(),
            router.metrics().connections.clone(),
            router.limits().clone(),
            router.tls().cloned(),
        )
    };
    let _open_until_closed = OpenConnection::new(open);
    let (client, already_read) = if proxy_protocol {
        match proxy_header::read(&mut stream).await {
            Ok((source, rest)) => (source.unwrap_or(peer), rest),
            Err(error) => {
                let router = slot.load();
                router.metrics().proxy_header_rejected.inc();
                tracing::warn!(service = router.name(), %peer, %error, "connection closed: bad PROXY protocol header");
                return;
            }
        }
    } else {
        (peer, Bytes::new())
    };
    let io = Prefixed::new(already_read, stream);
    match tls {
        None => serve_http(io, false, slot, client, &limits, graceful).await,
        // Boxed: the TLS states are twice the size of the rest, and every connection's task
        // would otherwise reserve room for them.
        Some(acceptor) => {
            Box::pin(serve_tls(io, acceptor, slot, client, &limits, graceful)).await;
        }
    }
}

/// Completes the TLS handshake (within `head_timeout`), then serves HTTP/2 or HTTP/1.1 over it
/// as ALPN chose.
async fn serve_tls(
    io: Prefixed<TcpStream>,
    acceptor: Acceptor,
    slot: Arc<ArcSwap<Router>>,
    client: SocketAddr,
    limits: &LimitsConfig,
    graceful: Watcher,
) {
    match tokio::time::timeout(limits.head_timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => {
            let http2 = Acceptor::negotiated_h2(&stream);
            serve_http(stream, http2, slot, client, limits, graceful).await;
        }
        Ok(Err(error)) => tracing::debug!(%client, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
    }
}

/// Serves HTTP on an established connection (HTTP/2 when ALPN chose it, else HTTP/1.1), each
/// request routed by the service's router of the moment.
async fn serve_http<I>(
    io: I,
    http2: bool,
    slot: Arc<ArcSwap<Router>>,
    client: SocketAddr,
    limits: &LimitsConfig,
    graceful: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(Peer::new(client));
    let service = service_fn(move |request| {
        let router = slot.load_full();
        let peer = Arc::clone(&peer);
        // Boxed: hyper keeps room for one request future per connection for the connection's
        // whole life, so an idle connection would hold this (3 KiB) future's space unboxed.
        Box::pin(async move { Ok::<_, Infallible>(router.handle(request, &peer).await) })
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if http2 {
        builder = builder.http2_only();
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    } else {
        builder = builder.http1_only();
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head_timeout)
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true);
        if limits.max_headers != hyper_default_max_headers() {
            // Only when changed: a custom count moves hyper's header array to the heap.
            http1.max_headers(limits.max_headers);
        }
    }
    let connection = graceful.watch(
        builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned(),
    );
    if let Err(error) = connection.await {
        tracing::debug!(%client, %error, "client connection ended with an error");
    }
}

/// hyper's own header-count limit, kept unless the config asks for another.
fn hyper_default_max_headers() -> usize {
    crate::config::file::DEFAULT_MAX_HEADERS
}

/// Counts a client connection in its service's open-connections gauge while it lives.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(gauge: Gauge) -> OpenConnection {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
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
