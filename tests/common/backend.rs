//! [`TestBackend`]: the one in-process HTTP backend of the tests, set up with
//! [`TestBackend::builder`] and switched by the test while it runs.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::query_pairs;

/// How long [`TestBackend::settle`] waits for a request in progress before it fails the test.
pub const SETTLE_BOUND: Duration = Duration::from_secs(3);

/// What a test backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method, the target and the fields as the backend received them.
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    /// The whole body; empty when the body failed before its end.
    pub body: Bytes,
}

/// What backends saw, shortened for a report line: method, target, fields and body, each cut.
pub fn describe(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| {
            let headers: Vec<String> = s
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes());
                    format!("{name}: {}", value.chars().take(50).collect::<String>())
                })
                .collect();
            format!(
                "[{} {} {{{}}} body {:?}]",
                s.method,
                s.uri,
                headers.join(", "),
                String::from_utf8_lossy(&s.body)
                    .chars()
                    .take(40)
                    .collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The requests several backends receive from a point on: taken with [`SeenSince::now`],
/// read with [`SeenSince::settled`].
pub struct SeenSince<'a> {
    backends: &'a [&'a TestBackend],
    counts: Vec<usize>,
}

impl<'a> SeenSince<'a> {
    /// From now on, at `backends`.
    pub fn now(backends: &'a [&'a TestBackend]) -> SeenSince<'a> {
        SeenSince {
            backends,
            counts: backends.iter().map(|backend| backend.count()).collect(),
        }
    }

    /// What the backends have received since, once each has taken in everything sent to it
    /// (see [`TestBackend::settle`]), backend by backend in order.
    pub async fn settled(&self) -> Vec<Seen> {
        for backend in self.backends {
            backend.settle().await;
        }
        self.backends
            .iter()
            .zip(&self.counts)
            .flat_map(|(backend, &from)| backend.seen().into_iter().skip(from))
            .collect()
    }
}

/// How a [`TestBackend`] behaves, set before it starts: see [`TestBackend::builder`].
pub struct Builder {
    name: String,
    delay: Duration,
    plain: bool,
    address: SocketAddr,
}

impl Builder {
    /// Answers each request `delay` after its body has arrived, so that requests are in flight
    /// for a while (faults under load). Default: at once.
    pub fn delay(mut self, delay: Duration) -> Builder {
        self.delay = delay;
        self
    }

    /// Answers every request `200 <name>`, whatever its target: no special path, no query read,
    /// nothing that can panic or hang on arbitrary input (property tests). Default: off.
    pub fn plain(mut self) -> Builder {
        self.plain = true;
        self
    }

    /// Listens on `address` (another loopback address, a port of the test's choice).
    /// Default: 127.0.0.1:0.
    pub fn at(mut self, address: SocketAddr) -> Builder {
        self.address = address;
        self
    }

    /// Starts the backend.
    pub async fn spawn(self) -> TestBackend {
        let listener = TcpListener::bind(self.address).await.unwrap();
        let backend = TestBackend {
            name: self.name.clone(),
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared {
                name: self.name,
                delay: self.delay,
                plain: self.plain,
                seen: Mutex::default(),
                release: Mutex::default(),
                sessions: AtomicU64::default(),
                connections: AtomicU64::default(),
                open: watch::Sender::new(0),
                busy: watch::Sender::new(0),
                healthy: AtomicBool::new(true),
                failing: AtomicBool::default(),
                hold: AtomicBool::default(),
                held: watch::Sender::new(0),
                answered: AtomicUsize::default(),
                killed: AtomicUsize::default(),
                probes: Mutex::default(),
            }),
            stop: CancellationToken::new(),
            listening: watch::Sender::new(true),
        };
        tokio::spawn(accept(
            listener,
            Arc::clone(&backend.shared),
            backend.stop.clone(),
            backend.listening.clone(),
        ));
        backend
    }
}

/// An in-process HTTP/1.1 backend on 127.0.0.1:0.
///
/// Every response carries `x-backend: <name>` and the body `<name>`. Paths (none of them with
/// [`Builder::plain`]):
/// - `?set-cookie=<text>`: adds `Set-Cookie: <text>` (percent-decoded) to the response;
/// - `/session/<cookie>`: an app session: when the request has no `<cookie>`, sets
///   `<cookie>=<name>-<n>; Path=/`;
/// - `/stream`: sends `first\n`, then `last\n` once the test calls [`TestBackend::release_stream`];
/// - `/slow`: never answers;
/// - `/ws`: a WebSocket that echoes each text message as `<name>: <message>`;
/// - `/health`: 200, or 503 once the test calls [`TestBackend::set_healthy`] with `false`.
///
/// While [`TestBackend::set_failing`] is on, every path but `/health` answers 500.
pub struct TestBackend {
    /// Its name in configs, `x-backend` and bodies.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// True until the accept loop has dropped the listener.
    listening: watch::Sender<bool>,
}

/// What the accept loop, the connections and the handlers of one [`TestBackend`] share.
struct Shared {
    name: String,
    delay: Duration,
    plain: bool,
    seen: Mutex<Vec<Seen>>,
    release: Mutex<Option<mpsc::Sender<()>>>,
    sessions: AtomicU64,
    connections: AtomicU64,
    /// TCP connections open now: see [`TestBackend::wait_open_connections`].
    open: watch::Sender<usize>,
    /// Connections in the middle of a request: see [`TestBackend::settle`].
    busy: watch::Sender<usize>,
    healthy: AtomicBool,
    failing: AtomicBool,
    /// See [`TestBackend::hold`]; `held` counts the requests it holds.
    hold: AtomicBool,
    held: watch::Sender<usize>,
    answered: AtomicUsize,
    killed: AtomicUsize,
    /// Local addresses of [`TestBackend::settle`]'s probe connections, not served or counted.
    probes: Mutex<HashSet<SocketAddr>>,
}

impl TestBackend {
    /// Starts a backend called `name` with the defaults of [`Builder`].
    pub async fn spawn(name: &str) -> TestBackend {
        TestBackend::builder(name).spawn().await
    }

    /// A backend called `name` to set up before [`Builder::spawn`].
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_string(),
            delay: Duration::ZERO,
            plain: false,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Stops listening and closes every open connection: the backend is dead.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// [`TestBackend::stop`], returning once the listener and every connection are closed and
    /// the requests it cut off are counted in [`TestBackend::killed`].
    pub async fn stop_and_wait(&self) {
        self.stop();
        self.listening
            .subscribe()
            .wait_for(|listening| !listening)
            .await
            .expect("the backend holds the sender");
        self.wait_open_connections(|&open| open == 0).await;
    }

    /// Every request this backend received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many TCP connections this backend accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// How many TCP connections to this backend are open now: accepted and not yet closed (an
    /// upgraded one counts until its upgrade).
    pub fn open_connections(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// Waits until the number of open connections satisfies `until`; returns it.
    pub async fn wait_open_connections(&self, until: impl FnMut(&usize) -> bool) -> usize {
        *self
            .shared
            .open
            .subscribe()
            .wait_for(until)
            .await
            .expect("the backend holds the sender")
    }

    /// How many requests this backend received.
    pub fn count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// How many requests it answered (responses its handler produced).
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// How many requests it received and never answered: cut off by [`TestBackend::stop`] or by
    /// the peer closing the connection.
    pub fn killed(&self) -> usize {
        self.shared.killed.load(Ordering::SeqCst)
    }

    /// Lets a `/stream` response send its last chunk.
    pub async fn release_stream(&self) {
        let sender = self
            .shared
            .release
            .lock()
            .unwrap()
            .take()
            .expect("a /stream request is waiting");
        sender.send(()).await.unwrap();
    }

    /// Whether `/health` answers 200 (`true`, the default) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Whether every path but `/health` answers 500 (`true`) or as usual (`false`, the default).
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// From now on, requests that have had their delay are not answered but held in flight until
    /// the stop cuts them off; returns once at least one is held. Makes sure some requests are in
    /// flight on the backend when it stops, however the scheduler runs the tasks.
    pub async fn hold(&self) {
        self.shared.hold.store(true, Ordering::SeqCst);
        self.shared
            .held
            .subscribe()
            .wait_for(|&held| held > 0)
            .await
            .expect("the backend holds the sender");
    }

    /// Returns once this backend has taken in everything sent to it before the call: every
    /// connection is accepted and every request whose head arrived is in [`TestBackend::seen`]
    /// (or was cut off), so that a test can say that nothing else reached it. Fails the test
    /// when a request is still arriving after [`SETTLE_BOUND`]. Returns at once on a stopped
    /// backend.
    ///
    /// How: a probe connection, neither served nor counted, goes through the accept queue. The
    /// kernel queues connections in order, so once the backend has accepted (and closed) the
    /// probe, it has accepted every connection opened before it, and on a current-thread
    /// runtime it has run the connections woken by bytes that arrived before the probe; a
    /// connection counts as busy from its accept, and from the arrival of each request head,
    /// until the request is in [`TestBackend::seen`].
    pub async fn settle(&self) {
        let socket = TcpSocket::new_v4().expect("an IPv4 socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind the probe");
        let probe = socket.local_addr().expect("the probe's address");
        self.shared.probes.lock().unwrap().insert(probe);
        if let Ok(mut stream) = socket.connect(self.addr).await {
            // The backend closes a probe as soon as it has accepted it.
            let _ = stream.read(&mut [0u8; 1]).await;
        }
        self.shared.probes.lock().unwrap().remove(&probe);
        let mut quiet = self.shared.busy.subscribe();
        tokio::time::timeout(SETTLE_BOUND, quiet.wait_for(|&busy| busy == 0))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: a request was still arriving {SETTLE_BOUND:?} after the exchange",
                    self.name
                )
            })
            .expect("the backend holds the sender");
    }
}

/// Accepts connections until `stop`, then drops the listener and says so on `listening`.
async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    listening: watch::Sender<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        if shared.probes.lock().unwrap().remove(&peer) {
            continue;
        }
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let counted = Counted::one(&shared.open);
        // A new connection is busy until its first request is taken in.
        let request = Arc::new(Busy::new(&shared.busy));
        let (shared, stop) = (Arc::clone(&shared), stop.clone());
        tokio::spawn(async move {
            let _counted = counted;
            let service = service_fn(move |incoming| {
                let (shared, request) = (Arc::clone(&shared), Arc::clone(&request));
                async move { Ok::<_, Infallible>(answer(&shared, &request, incoming).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                () = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
    drop(listener);
    listening.send_replace(false);
}

/// One unit of a count in a `watch`, given back when dropped.
struct Counted(watch::Sender<usize>);

impl Counted {
    fn one(count: &watch::Sender<usize>) -> Counted {
        count.send_modify(|count| *count += 1);
        Counted(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count -= 1);
    }
}

/// Whether one connection is in the middle of a request, counted in [`Shared::busy`] while it
/// is; dropped with the connection.
struct Busy(Mutex<Option<Counted>>, watch::Sender<usize>);

impl Busy {
    fn new(busy: &watch::Sender<usize>) -> Busy {
        Busy(Mutex::new(Some(Counted::one(busy))), busy.clone())
    }

    fn start(&self) {
        let mut on = self.0.lock().unwrap();
        if on.is_none() {
            *on = Some(Counted::one(&self.1));
        }
    }

    fn end(&self) {
        self.0.lock().unwrap().take();
    }
}

/// One request in the handler: ends its connection's [`Busy`] and, unless answered, counts it
/// in [`Shared::killed`] when dropped.
struct InHandler<'a> {
    shared: &'a Shared,
    busy: &'a Busy,
    answered: bool,
}

impl Drop for InHandler<'_> {
    fn drop(&mut self) {
        self.busy.end();
        if !self.answered {
            self.shared.killed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    shared: &Shared,
    busy: &Busy,
    mut request: Request<Incoming>,
) -> Response<TestBody> {
    busy.start();
    let mut handler = InHandler {
        shared,
        busy,
        answered: false,
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let (head, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    shared.seen.lock().unwrap().push(Seen {
        method: head.method.clone(),
        uri: head.uri.clone(),
        headers: head.headers.clone(),
        body,
    });
    busy.end();
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    if shared.hold.load(Ordering::SeqCst) {
        shared.held.send_modify(|held| *held += 1);
        std::future::pending::<()>().await;
    }
    let mut response = if shared.plain {
        Response::new(full(shared.name.clone()))
    } else {
        shared.route(&head, upgrade).await
    };
    response
        .headers_mut()
        .insert("x-backend", shared.name.parse().unwrap());
    handler.answered = true;
    shared.answered.fetch_add(1, Ordering::SeqCst);
    response
}

impl Shared {
    /// The answer to a request by its path (see [`TestBackend`]), without `x-backend`.
    async fn route(
        &self,
        head: &http::request::Parts,
        upgrade: hyper::upgrade::OnUpgrade,
    ) -> Response<TestBody> {
        let path = head.uri.path();
        let with_status = |status: StatusCode| {
            let mut response = Response::new(full(self.name.clone()));
            *response.status_mut() = status;
            response
        };
        let mut response = match path {
            "/health" if !self.healthy.load(Ordering::SeqCst) => {
                with_status(StatusCode::SERVICE_UNAVAILABLE)
            }
            "/health" => with_status(StatusCode::OK),
            _ if self.failing.load(Ordering::SeqCst) => {
                with_status(StatusCode::INTERNAL_SERVER_ERROR)
            }
            "/slow" => std::future::pending().await,
            "/stream" => self.stream(),
            "/ws" => self.websocket(&head.headers, upgrade),
            _ => with_status(StatusCode::OK),
        };
        let headers = response.headers_mut();
        if let Some(cookie) = path.strip_prefix("/session/")
            && stickyd::affinity::cookies::find(&head.headers, cookie).is_none()
        {
            let n = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
            headers.append(
                header::SET_COOKIE,
                format!("{cookie}={}-{n}; Path=/", self.name)
                    .parse()
                    .unwrap(),
            );
        }
        for (key, value) in query_pairs(head.uri.query().unwrap_or("")) {
            if key == "set-cookie" {
                headers.append(header::SET_COOKIE, value.parse().unwrap());
            }
        }
        response
    }

    fn stream(&self) -> Response<TestBody> {
        let (release, mut released) = mpsc::channel::<()>(1);
        *self.release.lock().unwrap() = Some(release);
        let (sender, mut chunks) = mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            sender.send(Bytes::from_static(b"first\n")).await.ok();
            released.recv().await;
            sender.send(Bytes::from_static(b"last\n")).await.ok();
        });
        let frames = futures_util::stream::poll_fn(move |cx| chunks.poll_recv(cx))
            .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
        Response::new(BodyExt::boxed(StreamBody::new(frames)))
    }

    fn websocket(
        &self,
        headers: &HeaderMap,
        upgrade: hyper::upgrade::OnUpgrade,
    ) -> Response<TestBody> {
        let key = headers
            .get("sec-websocket-key")
            .expect("a WebSocket key")
            .as_bytes();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
        let name = self.name.clone();
        tokio::spawn(async move {
            let upgraded = upgrade.await.expect("upgrade");
            let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(Message::Text(text))) = socket.next().await {
                socket
                    .send(Message::text(format!("{name}: {text}")))
                    .await
                    .unwrap();
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "upgrade")
            .header("sec-websocket-accept", accept)
            .body(Empty::new().boxed())
            .unwrap()
    }
}

fn full(text: impl Into<Bytes>) -> TestBody {
    http_body_util::Full::new(text.into()).boxed()
}
