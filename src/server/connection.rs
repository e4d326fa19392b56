//! One client connection through every state it can be in, each with its deadline:
//!
//! | state | deadline | holds |
//! |---|---|---|
//! | PROXY header, TLS handshake | `handshake_timeout` | the socket, rustls |
//! | before the first request head | `head_timeout` from the start | the socket only |
//! | reading a request head | `head_timeout` (hyper's header timer) | hyper's buffers |
//! | a request body, a response body | `body_timeout` between two reads (408) or writes | hyper's buffers |
//! | idle between requests (HTTP/1.1) | `keepalive_timeout` | the socket only: parked |
//! | HTTP/2 with no open stream | `head_timeout` first, then `keepalive_timeout` (GOAWAY) | h2's state |
//! | upgraded tunnel | `tunnel_timeout` without a byte either way | buffers only while a write is blocked |
//! | at shutdown | idle: at once; busy: after its exchange; all: `shutdown_grace` | — |
//!
//! **Parking.** hyper keeps a read and a write buffer for an HTTP/1.1 connection's whole life.
//! Between requests stickyd takes the socket back from hyper and waits for readability with no
//! HTTP state at all, as HAProxy releases its buffers on idle connections (`h1_release_buf` in
//! `mux_h1.c`). A connection is parked when hyper has nothing left to do: every exchange's
//! response body is done, every request body ended, its last flush completed and its last read
//! found nothing ([`ConnState::parkable`]). hyper's `poll_without_shutdown` and `into_parts`
//! hand back the socket and any bytes already read (a pipelined request), which the next hyper
//! connection on the socket reads first.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::Listener;
use super::tunnel;
use crate::proxy::Peer;
use crate::proxy::body::{BodyWatcher, RequestBody};
use crate::proxy_protocol::{self, Prefixed};
use crate::router::Router;
use crate::upstream::TunnelLoad;
use crate::upstream::body::ProxyBody;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one accepted connection until it closes, a deadline passes, or shutdown ends it.
pub(super) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    router: Arc<ArcSwap<Router>>,
    shutdown: CancellationToken,
    kill: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let limits = &listener.limits;
    let (client, already_read) = if listener.proxy_protocol {
        match proxy_protocol::read(&mut stream, limits.handshake_timeout).await {
            Ok((source, rest)) => (source.unwrap_or(peer), rest),
            Err(error) => {
                listener.metrics.proxy_header_rejected.inc();
                tracing::warn!(service = %listener.service, %peer, %error, "connection closed: bad PROXY protocol header");
                return;
            }
        }
    } else {
        (peer, Bytes::new())
    };
    let client = crate::proxy::head::canonical(client);
    let peer = Peer::new(client, listener.trusts(client.ip()), listener.tls.is_some());
    let context = |h1| {
        Arc::new(ConnectionContext {
            router,
            peer,
            state: Arc::new(ConnState::default()),
            listener: Arc::clone(&listener),
            shutdown,
            kill,
            h1,
        })
    };
    match &listener.tls {
        None => {
            let head_deadline = Instant::now() + limits.head_timeout;
            let h2 = if listener.h2c {
                match tokio::time::timeout_at(
                    head_deadline,
                    sniff_preface(&mut stream, already_read),
                )
                .await
                {
                    Ok(Ok(sniffed)) => sniffed,
                    Ok(Err(_)) | Err(_) => return,
                }
            } else {
                (false, already_read)
            };
            match h2 {
                (true, read) => {
                    // Boxed, like the TLS path: an HTTP/1.1 connection's task would otherwise
                    // reserve room for the HTTP/2 states.
                    Box::pin(serve_h2(
                        Prefixed::new(read, stream),
                        &context(false),
                        head_deadline,
                    ))
                    .await;
                }
                (false, read) => serve_h1(stream, read, &context(true), head_deadline).await,
            }
        }
        // Boxed: the TLS states are twice the size of the rest, and every connection's task
        // would otherwise reserve room for them.
        Some(acceptor) => {
            let acceptor = acceptor.clone();
            Box::pin(async move {
                let io = Prefixed::new(already_read, stream);
                let accepted =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)).await;
                let tls = match accepted {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%client, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%client, "TLS handshake timed out");
                        return;
                    }
                };
                let head_deadline = Instant::now() + limits.head_timeout;
                if crate::tls::Acceptor::negotiated_h2(&tls) {
                    serve_h2(tls, &context(false), head_deadline).await;
                } else {
                    serve_h1(tls, Bytes::new(), &context(true), head_deadline).await;
                }
            })
            .await;
        }
    }
}

/// Reads the start of a cleartext connection until it is told apart: the HTTP/2 preface
/// (`true`) or anything else (`false`), with every byte read so far.
async fn sniff_preface(stream: &mut TcpStream, already_read: Bytes) -> io::Result<(bool, Bytes)> {
    let mut read = BytesMut::from(&already_read[..]);
    loop {
        let seen = read.len().min(H2_PREFACE.len());
        if read[..seen] != H2_PREFACE[..seen] {
            return Ok((false, read.freeze()));
        }
        if seen == H2_PREFACE.len() {
            return Ok((true, read.freeze()));
        }
        read.reserve(H2_PREFACE.len() - seen);
        if stream.read_buf(&mut read).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// What serving one connection needs, shared with its service.
struct ConnectionContext {
    router: Arc<ArcSwap<Router>>,
    peer: Peer,
    state: Arc<ConnState>,
    listener: Arc<Listener>,
    shutdown: CancellationToken,
    kill: CancellationToken,
    /// HTTP/1.1: request bodies tell the connection when they end (for parking).
    h1: bool,
}

/// What a connection's driver learns from hyper, its service and its bodies.
#[derive(Default)]
struct ConnState {
    /// Exchanges whose response body hyper has not dropped yet (open HTTP/2 streams).
    open_exchanges: AtomicU32,
    /// Exchanges opened on the connection so far: a request head was complete.
    heads: AtomicU32,
    /// Request bodies with content that have not ended.
    open_bodies: AtomicU32,
    /// A request body ended before its last byte: the connection's framing is hyper's to
    /// settle, so it is never parked.
    unsettled: AtomicBool,
    /// hyper's last read found nothing to read.
    read_waiting: AtomicBool,
    /// hyper has read bytes that no request has claimed yet: the start of a request head, or
    /// bytes past a body. Parking then would restart the head's timer, which a client could
    /// use to trickle a head forever (slowloris).
    unclaimed: AtomicBool,
    /// hyper's last write or flush could not complete.
    write_blocked: AtomicBool,
    /// A 101 was answered: the tunnel to run once hyper lets go of the socket.
    tunnel: Mutex<Option<PendingTunnel>>,
    switching: AtomicBool,
    /// Told when an exchange opens or closes (the HTTP/2 idle timer).
    activity: Notify,
}

impl ConnState {
    /// Whether hyper is between requests with nothing buffered to write: the socket can be
    /// taken back without losing a byte.
    fn parkable(&self) -> bool {
        self.open_exchanges.load(Ordering::Acquire) == 0
            && self.open_bodies.load(Ordering::Acquire) == 0
            && !self.unsettled.load(Ordering::Acquire)
            && !self.switching.load(Ordering::Acquire)
            && !self.unclaimed.load(Ordering::Acquire)
            && self.read_waiting.load(Ordering::Acquire)
            && !self.write_blocked.load(Ordering::Acquire)
    }

    fn take_tunnel(&self) -> Option<PendingTunnel> {
        let tunnel = self.tunnel.lock().expect("tunnel lock").take();
        self.switching.store(false, Ordering::Release);
        tunnel
    }
}

impl BodyWatcher for ConnState {
    fn started(&self) {
        self.open_bodies.fetch_add(1, Ordering::AcqRel);
    }

    fn ended(&self, complete: bool) {
        if complete {
            // What hyper read so far was this body's; a read that went past it into a next
            // request costs that request one restart of its head timer at most.
            self.unclaimed.store(false, Ordering::Release);
        } else {
            self.unsettled.store(true, Ordering::Release);
        }
        self.open_bodies.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The backend side of a tunnel a 101 opened, and the load it carries.
struct PendingTunnel {
    backend: OnUpgrade,
    load: Option<TunnelLoad>,
}

/// One request/response exchange while hyper holds its response body.
struct Exchange(Arc<ConnState>);

impl Exchange {
    fn open(state: &Arc<ConnState>) -> Exchange {
        state.unclaimed.store(false, Ordering::Release);
        state.heads.fetch_add(1, Ordering::AcqRel);
        state.open_exchanges.fetch_add(1, Ordering::AcqRel);
        state.activity.notify_one();
        Exchange(Arc::clone(state))
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.open_exchanges.fetch_sub(1, Ordering::AcqRel);
        self.0.activity.notify_one();
    }
}

/// A response body on its way to the client; hyper drops it when the response is written.
struct ServedBody {
    body: ProxyBody,
    _exchange: Exchange,
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What a connection's service returns for each request.
type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<ServedBody>, Infallible>> + Send>>;

/// The service hyper calls for each request of the connection: the service's router of the
/// moment, with the request body bounded by `body_timeout`.
fn service(
    context: &Arc<ConnectionContext>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ServedBody>,
    Error = Infallible,
    Future = ServiceFuture,
> + Unpin
+ Send
+ 'static {
    let context = Arc::clone(context);
    service_fn(move |request: Request<Incoming>| -> ServiceFuture {
        let context = Arc::clone(&context);
        // Opened here, not in the future: hyper calls the service as it parses the head, but
        // may return before it first polls the future, and a connection parked then would
        // lose the request.
        let exchange = Exchange::open(&context.state);
        // Boxed: hyper keeps room for one request future per connection for the connection's
        // whole life (HTTP/1.1), so an idle connection would hold this future's space unboxed.
        Box::pin(async move {
            let watcher = context
                .h1
                .then(|| Arc::clone(&context.state) as Arc<dyn BodyWatcher>);
            let idle = context.listener.limits.body_timeout;
            let request = request.map(|body| RequestBody::new(body, idle, watcher));
            if let Some(port) = context.listener.redirect_https {
                let response =
                    crate::upstream::body::https_redirect(request.uri(), request.headers(), port);
                return Ok(response.map(|body| ServedBody {
                    body,
                    _exchange: exchange,
                }));
            }
            let router = context.router.load_full();
            let mut response = router.handle(request, &context.peer).await;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let tunnel = PendingTunnel {
                    backend: hyper::upgrade::on(&mut response),
                    load: TunnelLoad::take(&mut response),
                };
                *context.state.tunnel.lock().expect("tunnel lock") = Some(tunnel);
                context.state.switching.store(true, Ordering::Release);
            }
            Ok(response.map(|body| ServedBody {
                body,
                _exchange: exchange,
            }))
        })
    })
}

/// A client socket a parked connection waits on.
trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Completes when the client may have sent bytes.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Socket for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
}

impl Socket for tokio_rustls::server::TlsStream<Prefixed<TcpStream>> {
    async fn readable(&self) -> io::Result<()> {
        let tcp = self.get_ref().0;
        if tcp.buffered() {
            return Ok(());
        }
        tcp.get_ref().readable().await
    }
}

/// The client socket as hyper sees it: bytes already read first, then the socket; it tells
/// the connection's state whether hyper's last read or write would block, and fails a write
/// that stays blocked for `send_timeout` (a client that stopped reading its response).
struct ClientIo<S> {
    prefix: Bytes,
    inner: S,
    state: Arc<ConnState>,
    send_timeout: Duration,
    send_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> ClientIo<S> {
    fn new(prefix: Bytes, inner: S, state: Arc<ConnState>, send_timeout: Duration) -> Self {
        ClientIo {
            prefix,
            inner,
            state,
            send_timeout,
            send_timer: None,
        }
    }

    /// Whether a write that would block has done so for `send_timeout`.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let fresh = !self.state.write_blocked.swap(true, Ordering::AcqRel);
        let timeout = self.send_timeout;
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if fresh {
            timer.as_mut().reset(Instant::now() + timeout);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn unblocked(&self) {
        self.state.write_blocked.store(false, Ordering::Release);
    }

    /// The bytes read from the socket that nobody consumed, after `unread` (hyper's).
    fn into_parts(self, unread: Bytes) -> (Bytes, S) {
        let leftover = match (unread.is_empty(), self.prefix.is_empty()) {
            (true, _) => self.prefix,
            (false, true) => unread,
            (false, false) => {
                let mut joined = BytesMut::with_capacity(unread.len() + self.prefix.len());
                joined.extend_from_slice(&unread);
                joined.extend_from_slice(&self.prefix);
                joined.freeze()
            }
        };
        (leftover, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let count = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix.split_to(count));
            this.state.read_waiting.store(false, Ordering::Release);
            this.state.unclaimed.store(true, Ordering::Release);
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, out);
        this.state
            .read_waiting
            .store(polled.is_pending(), Ordering::Release);
        if out.filled().len() > before {
            this.state.unclaimed.store(true, Ordering::Release);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, bytes) {
            Poll::Pending => this.blocked(cx).map(|result| result.map(|()| 0)),
            ready => {
                this.unblocked();
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.blocked(cx).map(|result| result.map(|()| 0)),
            ready => {
                this.unblocked();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.blocked(cx),
            ready => {
                this.unblocked();
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How one hyper connection over the socket ended.
enum Served {
    /// Between requests with nothing buffered: park the socket.
    Park,
    /// A 101 switched the connection: run the tunnel.
    Upgrade(PendingTunnel),
    /// The client closed, asked to close, or broke the protocol: finish and close.
    Closed,
    /// Shutdown's grace is over.
    Killed,
}

/// Serves HTTP/1.1 on `io` (after `read`, bytes already read from it): waits for each request
/// with no buffers, serves it with a hyper connection, and parks again.
///
/// While parked, the connection's task holds only the socket, the bytes read past the last
/// request and this loop's timer: the hyper connection and the request live in
/// [`serve_until_parked`]'s future, and a tunnel in [`run_tunnel`]'s, each boxed for as long as
/// it runs, so an idle connection does not reserve room for them, and a tunnel none for the
/// hyper connection (HAProxy likewise frees an idle connection's buffers).
async fn serve_h1<S: Socket>(
    mut io: S,
    mut read: Bytes,
    context: &Arc<ConnectionContext>,
    head_deadline: Instant,
) {
    let limits = &context.listener.limits;
    // The deadline of the request head under way: from the connection's start for the first,
    // from the first byte for a later one. It holds across parks until a head is complete, so
    // neither a spurious wake-up nor a trickled head can move it.
    let mut head_deadline = Some(head_deadline);
    loop {
        if read.is_empty() {
            let until = head_deadline.unwrap_or_else(|| Instant::now() + limits.keepalive_timeout);
            tokio::select! {
                biased;
                () = context.kill.cancelled() => return,
                () = context.shutdown.cancelled() => return,
                readable = io.readable() => if readable.is_err() { return },
                () = tokio::time::sleep_until(until) => return,
            }
        }
        let deadline = *head_deadline.get_or_insert_with(|| Instant::now() + limits.head_timeout);
        match Box::pin(serve_until_parked(io, read, context, deadline)).await {
            Some(Handoff::Park(Parked {
                read: unread,
                io: socket,
                new_head,
            })) => {
                (read, io) = (unread, socket);
                if new_head {
                    head_deadline = None;
                }
            }
            // Boxed on its own, after the hyper connection's box is freed: an open tunnel
            // holds neither, and a parked connection's task no room for the tunnel.
            Some(Handoff::Tunnel(client, tunnel)) => {
                return Box::pin(run_tunnel(client, tunnel, context)).await;
            }
            None => return,
        }
    }
}

/// What a hyper connection hands back when it lets go of the socket.
enum Handoff<S> {
    /// Between requests: the socket to park.
    Park(Parked<S>),
    /// Switched (101): the socket, after the bytes read past the request, for the tunnel.
    Tunnel(Prefixed<S>, PendingTunnel),
}

/// A connection taken back from hyper between requests.
struct Parked<S> {
    /// Bytes read from the socket that no request consumed.
    read: Bytes,
    io: S,
    /// Whether a request head was completed since the connection was unparked: the next head
    /// gets a deadline of its own.
    new_head: bool,
}

/// Serves `io` (after `read`) with one hyper connection until it can be parked or switched
/// to a tunnel (`Some`), or until it closed or was killed (`None`). `head_deadline` bounds the
/// request head under way.
async fn serve_until_parked<S: Socket>(
    io: S,
    read: Bytes,
    context: &Arc<ConnectionContext>,
    head_deadline: Instant,
) -> Option<Handoff<S>> {
    let limits = &context.listener.limits;
    let head_timeout = head_deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let heads = context.state.heads.load(Ordering::Acquire);
    let state = &context.state;
    state.read_waiting.store(false, Ordering::Release);
    state.write_blocked.store(false, Ordering::Release);
    state.unclaimed.store(false, Ordering::Release);
    let client = ClientIo::new(read, io, Arc::clone(state), limits.body_timeout);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    if limits.max_headers != crate::config::file::DEFAULT_MAX_HEADERS {
        // Only when changed: a custom count moves hyper's header array to the heap.
        builder.max_headers(limits.max_headers);
    }
    let mut connection = builder.serve_connection(TokioIo::new(client), service(context));
    // Drive it until it is parkable, switched, closed or killed; a graceful shutdown lets
    // the current exchange finish with `Connection: close`.
    let mut graceful = false;
    let served = loop {
        let step = tokio::select! {
            biased;
            () = context.kill.cancelled() => break Served::Killed,
            () = context.shutdown.cancelled(), if !graceful => None,
            step = std::future::poll_fn(|cx| match connection.poll_without_shutdown(cx) {
                Poll::Ready(result) => Poll::Ready(Some(Some(result))),
                Poll::Pending if !graceful && state.parkable() => Poll::Ready(Some(None)),
                Poll::Pending => Poll::Pending,
            }) => step,
        };
        match step {
            None => {
                graceful = true;
                Pin::new(&mut connection).graceful_shutdown();
            }
            Some(None) => break Served::Park,
            Some(Some(result)) => {
                if let Err(error) = result {
                    tracing::debug!(client = %context.peer.address, %error, "client connection ended with an error");
                }
                break match state.take_tunnel() {
                    Some(tunnel) => Served::Upgrade(tunnel),
                    None => Served::Closed,
                };
            }
        }
    };
    match served {
        Served::Park => {
            let parts = connection.into_parts();
            let (read, io) = parts.io.into_inner().into_parts(parts.read_buf);
            let new_head = state.heads.load(Ordering::Acquire) != heads;
            Some(Handoff::Park(Parked { read, io, new_head }))
        }
        Served::Upgrade(tunnel) => {
            let parts = connection.into_parts();
            let (read, io) = parts.io.into_inner().into_parts(parts.read_buf);
            Some(Handoff::Tunnel(Prefixed::new(read, io), tunnel))
        }
        Served::Closed => {
            // hyper's own end: flush what it still holds, then shut the socket down.
            tokio::select! {
                () = context.kill.cancelled() => {}
                () = tokio::time::sleep(limits.head_timeout) => {}
                _ = std::future::poll_fn(|cx| Pin::new(&mut connection).poll(cx)) => {}
            }
            None
        }
        Served::Killed => None,
    }
}

/// Runs the WebSocket tunnel of a switched connection: the backend's side once its upgrade
/// completes, then bytes both ways until either side closes, `tunnel_timeout` passes without a
/// byte, or shutdown's grace is over. Counted in the service's open tunnels.
async fn run_tunnel<S: Socket>(
    client: Prefixed<S>,
    tunnel: PendingTunnel,
    context: &ConnectionContext,
) {
    let _load = tunnel.load;
    let backend = tokio::select! {
        () = context.kill.cancelled() => return,
        upgraded = tunnel.backend => match upgraded {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(service = %context.listener.service, %error, "backend upgrade did not complete");
                return;
            }
        },
    };
    let gauge = &context.listener.metrics.open_tunnels;
    gauge.inc();
    let idle = context.listener.limits.tunnel_timeout;
    let result = tunnel::run(client, TokioIo::new(backend), idle, &context.kill).await;
    gauge.dec();
    if let Err(error) = result {
        tracing::debug!(client = %context.peer.address, %error, "tunnel closed");
    }
}

/// Serves HTTP/2 on `io`: hyper's h2 server with the listener's stream and reset limits (the
/// Rapid Reset and CONTINUATION defences), closed with GOAWAY when no stream has been open for
/// `head_timeout` (before the first) or `keepalive_timeout` (after).
async fn serve_h2<S>(io: S, context: &Arc<ConnectionContext>, head_deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &context.listener.limits;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets)
        .max_local_error_reset_streams(limits.http2_max_local_resets);
    let connection = builder.serve_connection(TokioIo::new(io), service(context));
    tokio::pin!(connection);
    let state = &context.state;
    let mut idle_until = Some(head_deadline);
    let mut closing = false;
    loop {
        // Once closing, a client that neither finishes its streams nor answers the GOAWAY's
        // PING gets `head_timeout` more, then the socket is dropped.
        let deadline = idle_until;
        tokio::select! {
            biased;
            () = context.kill.cancelled() => return,
            done = connection.as_mut() => {
                if let Err(error) = done {
                    tracing::debug!(client = %context.peer.address, %error, "HTTP/2 connection ended with an error");
                }
                return;
            }
            () = context.shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
                idle_until = None;
            }
            () = sleep_until_some(deadline), if deadline.is_some() => {
                if closing {
                    return;
                }
                closing = true;
                connection.as_mut().graceful_shutdown();
                idle_until = Some(Instant::now() + limits.head_timeout);
            }
            () = state.activity.notified(), if !closing => {
                idle_until = (state.open_exchanges.load(Ordering::Acquire) == 0)
                    .then(|| Instant::now() + limits.keepalive_timeout);
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
