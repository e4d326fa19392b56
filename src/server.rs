//! The accept loops: bound listeners in, HTTP/1.1 keep-alive connections served by each
//! service's router, graceful shutdown.
//!
//! [`bind`] and [`run`] are separate so tests (and the demo) bind `127.0.0.1:0`, read the port,
//! and hand the listeners in.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use crate::config::Config;
use crate::proxy_header::{self, Prefixed};
use crate::router::Router;

/// Time a client has to send a complete request head (slowloris guard). Default: 30 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
}

/// Binds every listen address of every service.
///
/// # Errors
/// [`ServerError::Bind`] for the first address that cannot be bound.
pub async fn bind(config: &Config) -> Result<Vec<BoundListener>, ServerError> {
    let mut listeners = Vec::new();
    for (service, service_config) in config.services.iter().enumerate() {
        for &address in &service_config.listen {
            let listener =
                TcpListener::bind(address)
                    .await
                    .map_err(|source| ServerError::Bind {
                        service: service_config.name.clone(),
                        address,
                        source,
                    })?;
            listeners.push(BoundListener { service, listener });
        }
    }
    Ok(listeners)
}

/// Serves `listeners` until `shutdown` completes, then stops accepting and gives in-flight
/// requests `config.shutdown_grace` to finish before returning.
pub async fn run(
    config: &Config,
    listeners: Vec<BoundListener>,
    shutdown: impl Future<Output = ()>,
) {
    let routers: Vec<Arc<Router>> = config
        .services
        .iter()
        .map(|service| Arc::new(Router::new(service)))
        .collect();
    let stop = CancellationToken::new();
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_loops = tokio::task::JoinSet::new();
    for bound in listeners {
        let router = Arc::clone(&routers[bound.service]);
        if let Ok(address) = bound.local_addr() {
            tracing::info!(service = router.name(), %address, "listening");
        }
        let proxy_protocol = config.services[bound.service].proxy_protocol;
        accept_loops.spawn(accept_loop(
            bound.listener,
            router,
            proxy_protocol,
            stop.child_token(),
            Arc::clone(&graceful),
        ));
    }
    shutdown.await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: no new connections; waiting for in-flight requests");
    stop.cancel();
    while accept_loops.join_next().await.is_some() {}
    let graceful = Arc::into_inner(graceful).expect("accept loops have ended");
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "grace period over: closing the remaining connections");
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    proxy_protocol: bool,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    Arc::clone(&router),
                    proxy_protocol,
                    graceful.watcher(),
                ));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one client connection: its PROXY header first when the listener expects one, then
/// HTTP/1.1 keep-alive requests until either side closes or shutdown drains it.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Arc<Router>,
    proxy_protocol: bool,
    graceful: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let (client, already_read) = if proxy_protocol {
        match proxy_header::read(&mut stream).await {
            Ok((source, rest)) => (source.unwrap_or(peer), rest),
            Err(error) => {
                tracing::warn!(service = router.name(), %peer, %error, "connection closed: bad PROXY protocol header");
                return;
            }
        }
    } else {
        (peer, Bytes::new())
    };
    let service = service_fn(move |request| {
        let router = Arc::clone(&router);
        async move { Ok::<_, Infallible>(router.handle(request, client).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let io = TokioIo::new(Prefixed::new(already_read, stream));
    let connection = graceful.watch(
        builder
            .serve_connection_with_upgrades(io, service)
            .into_owned(),
    );
    if let Err(error) = connection.await {
        tracing::debug!(%client, %error, "client connection ended with an error");
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
