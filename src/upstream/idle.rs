//! Keep-alive HTTP/1.1 connections to backends: one idle list per backend, most recently
//! used last, and a reaper that closes idle connections on time.
//!
//! stickyd keeps its own idle connections rather than hyper-util's client so that a request whose
//! connection could not be opened is handed back unsent and can go to another backend.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::socket::Socket;
use crate::pool::InFlight;
use crate::proxy::body::RequestBody;
use crate::workers;

/// An idle connection is closed once idle this long, so stickyd does not race a backend
/// closing it: below Node.js's 5 s `keepAliveTimeout`, the shortest common one. The reaper
/// closes it at most [`REAP_SLACK`] later.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How late the reaper may close an expired idle connection: it wakes at most this often,
/// so idle lists whose connections expire one by one costs at most four wake-ups a second.
pub const REAP_SLACK: Duration = Duration::from_millis(250);
/// Most idle connections kept per backend; more are closed when they become idle.
pub const MAX_IDLE_PER_BACKEND: usize = 512;

/// hyper's handle for sending requests on one connection.
pub type Sender = SendRequest<RequestBody>;

/// A connection to a backend, checked out for one request: hyper's sender and the socket
/// under it.
pub struct Connection {
    sender: Sender,
    socket: Arc<Socket>,
    reused: bool,
}

impl Connection {
    /// Sends `request` (see `SendRequest::try_send_request`: the request comes back with the
    /// error when none of it was written).
    pub fn send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> impl Future<
        Output = Result<
            http::Response<Incoming>,
            hyper::client::conn::TrySendError<Request<RequestBody>>,
        >,
    > + use<> {
        self.sender.try_send_request(request)
    }

    /// Whether it came from the idle list, having served requests before.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// Whether the backend sent anything on it since it was checked out: after a failure,
    /// `false` means the exchange ended before any response byte.
    pub fn received_any(&self) -> bool {
        self.socket.received_any()
    }
}

struct Idle {
    sender: Sender,
    /// Weak, so the socket closes when hyper's connection ends, whatever the idle list holds.
    socket: Weak<Socket>,
    since: Instant,
}

/// The idle connections of every backend of a service, by worker and backend index: a
/// connection's hyper task runs on the worker that opened it, so only that worker reuses it
/// (see [`crate::workers::index`]).
pub struct IdleConnections {
    /// `workers::count()` blocks of `backends` lists.
    idle: Vec<Mutex<Vec<Idle>>>,
    backends: usize,
    /// The service's name, for log lines.
    service: Arc<str>,
    connect_timeout: Duration,
    reaper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections")
            .field("backends", &self.backends)
            .finish()
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

impl IdleConnections {
    /// No idle connection yet, for `backends` backends; new connections time out after `connect_timeout`.
    /// Starts the reaper task, which ends when these are dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(service: &str, backends: usize, connect_timeout: Duration) -> Arc<IdleConnections> {
        Arc::new_cyclic(|this| IdleConnections {
            idle: (0..backends * workers::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            backends,
            service: Arc::from(service),
            connect_timeout,
            reaper: tokio::spawn(reap(this.clone())),
        })
    }

    /// A connection to `backend` at `address`: an idle one when a live one is idle, else a
    /// new one.
    ///
    /// # Errors
    /// The connect error, or `TimedOut` after the connect timeout: nothing was sent.
    pub async fn checkout(&self, backend: usize, address: SocketAddr) -> io::Result<Connection> {
        while let Some(idle) = self.pop_idle(backend) {
            // Gone when hyper's connection ended (it saw the backend close).
            let Some(socket) = idle.socket.upgrade() else {
                continue;
            };
            let mut sender = idle.sender;
            // The sender went idle when its last response ended; `ready` resolves once the
            // connection task has seen that end. Then the socket itself says whether the backend
            // closed it since, which the connection task may not have seen yet.
            if sender.ready().await.is_ok() && socket.reuse() {
                return Ok(Connection {
                    sender,
                    socket,
                    reused: true,
                });
            }
        }
        self.connect(address).await
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// This worker's idle list of `backend`.
    fn list(&self, backend: usize) -> &Mutex<Vec<Idle>> {
        &self.idle[workers::index() * self.backends + backend]
    }

    fn pop_idle(&self, backend: usize) -> Option<Idle> {
        let mut idle = self.list(backend).lock().expect("idle list lock poisoned");
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT && !entry.sender.is_closed() {
                return Some(entry);
            }
        }
        None
    }

    /// A new connection to `address`, never an idle one.
    ///
    /// # Errors
    /// As [`IdleConnections::checkout`].
    pub async fn connect(&self, address: SocketAddr) -> io::Result<Connection> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.connect_timeout),
                )
            })??;
        stream.set_nodelay(true)?;
        let (socket, io) = Socket::new(stream);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(io::Error::other)?;
        let service = Arc::clone(&self.service);
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%service, %address, %error, "backend connection closed with an error");
            }
        });
        Ok(Connection {
            sender,
            socket,
            reused: false,
        })
    }

    fn check_in(&self, backend: usize, sender: Sender, socket: Weak<Socket>) {
        let mut idle = self.list(backend).lock().expect("idle list lock poisoned");
        if idle.len() < MAX_IDLE_PER_BACKEND {
            // Stamped under the lock: each list stays ordered oldest first, for the reaper.
            idle.push(Idle {
                sender,
                socket,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle for [`IDLE_TIMEOUT`] at `now`; returns when the next
    /// one will be.
    fn close_expired(&self, now: Instant) -> Instant {
        let mut next = now + IDLE_TIMEOUT;
        for idle in &self.idle {
            let expired: Vec<Idle> = {
                let mut idle = idle.lock().expect("idle list lock poisoned");
                let count = idle.partition_point(|entry| now - entry.since >= IDLE_TIMEOUT);
                if let Some(oldest_kept) = idle.get(count) {
                    next = next.min(oldest_kept.since + IDLE_TIMEOUT);
                }
                idle.drain(..count).collect()
            };
            // Dropped outside the lock: each drop tells its connection task to close.
            drop(expired);
        }
        next
    }
}

/// The reaper of one pool: closes each idle connection when it expires, at most [`REAP_SLACK`]
/// late, without a timer per connection. A connection checked in after a pass expires after
/// that pass's `now + IDLE_TIMEOUT`, so sleeping until the earliest expiry found, or a
/// whole timeout when none is pooled, misses none. Ends when the pool is dropped.
async fn reap(pool: Weak<IdleConnections>) {
    let mut wake = tokio::time::Instant::now() + IDLE_TIMEOUT;
    loop {
        tokio::time::sleep_until(wake).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let next = pool.close_expired(now).max(now + REAP_SLACK);
        drop(pool);
        wake = tokio::time::Instant::from_std(next);
    }
}

/// What a response body holds until it ends: the connection it came on and the in-flight count.
pub struct Release {
    connections: Arc<IdleConnections>,
    backend: usize,
    sender: Sender,
    socket: Weak<Socket>,
    in_flight: InFlight,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Release {
    /// Ties `connection` (and the in-flight count) to a response of `backend`.
    pub fn new(
        connections: Arc<IdleConnections>,
        backend: usize,
        connection: Connection,
        in_flight: InFlight,
    ) -> Release {
        Release {
            connections,
            backend,
            sender: connection.sender,
            socket: Arc::downgrade(&connection.socket),
            in_flight,
        }
    }

    /// The connection was upgraded (101): it is never pooled, but the request stays in flight.
    pub fn into_in_flight(self) -> InFlight {
        self.in_flight
    }

    /// The response ended cleanly: the connection goes back to the idle list. Dropping a
    /// `Release` instead closes the connection.
    pub fn reuse(self) {
        self.connections
            .check_in(self.backend, self.sender, self.socket);
    }
}
