//! Trust at the edge, connection lifetime: every state a client connection can be in has a
//! deadline and counts against the listener's cap (cases #58-#61 and #71 of
//! `shared/acceptance/bad_inputs.md` section H), and an idle HTTP/1.1 connection is parked
//! and picked up again.
//!
//! Timeouts here are a few hundred milliseconds and the tests wait for the event (the close,
//! the answer); the bounds on how long it took are loose, because these machines are shared.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use stickyd::config::Config;
use stickyd::runtime::Services;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use common::raw::{self, RawConn};
use common::{TestBackend, config, within_timeout};

/// stickyd over `backends` with `extra` in its `[[service]]` table; its runtime (for metrics and
/// shutdown) and the address of each listener.
async fn start(backends: &[&TestBackend], extra: &str) -> (Arc<Services>, Vec<SocketAddr>) {
    start_text(&config(backends, extra)).await
}

async fn start_text(text: &str) -> (Arc<Services>, Vec<SocketAddr>) {
    let config = Config::parse(text, "<test>").unwrap_or_else(|error| panic!("{error}"));
    let listeners = stickyd::server::bind(&config).await.unwrap();
    let addresses = listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap())
        .collect();
    (Services::start(config, listeners), addresses)
}

/// Asserts that a close after `timeout` came neither early nor much late.
fn closed_at(took: Duration, timeout: Duration, what: &str) {
    assert!(
        took >= timeout.mul_f32(0.8) && took < timeout + Duration::from_secs(5),
        "{what}: closed after {took:?}, the deadline was {timeout:?}"
    );
}

/// The value of metric line `name{labels}` in `metrics`.
fn metric(metrics: &str, line: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|candidate| candidate.strip_prefix(line)?.trim().parse().ok())
}

const SHORT: Duration = Duration::from_millis(400);

/// #58: a connection that sends nothing, part of a request head, or part of the HTTP/2
/// preface is closed at `head_timeout`, on an ordinary and on an h2c listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_complete_a_head_are_closed_at_the_head_timeout() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (_runtime, addresses) = start_text(&format!(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\", {{ address = \"127.0.0.1:0\", h2c = true }}]\n\
             [service.limits]\nhead_timeout = \"400ms\"\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"{}\"\n",
            backend.addr
        ))
        .await;
        let starts: [&[u8]; 4] = [
            b"",
            b"PRI * HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
        ];
        let mut closes = Vec::new();
        for address in &addresses {
            for start in starts {
                closes.push(async move {
                    let mut stream = RawConn::open(*address).await;
                    stream.send(start).await.unwrap();
                    let (read, took) = stream.until_closed(Instant::now()).await;
                    (address, start, read, took)
                });
            }
        }
        for (address, start, read, took) in futures_util::future::join_all(closes).await {
            let what = format!("{address} after {:?}", String::from_utf8_lossy(start));
            if start.len() == 24 && *address == addresses[1] {
                // A whole preface on the h2c listener is HTTP/2: the idle timer (no stream
                // yet, so head_timeout) ends it with a GOAWAY.
                assert!(!read.is_empty(), "{what}: no SETTINGS and GOAWAY");
            } else {
                let refused = |read: &[u8]| match raw::parse_reply(read, true) {
                    raw::Parsed::Reply(reply, _) => reply.status_line().starts_with("HTTP/1.1 4"),
                    _ => false,
                };
                assert!(
                    read.is_empty() || refused(&read),
                    "{what}: got {:?}",
                    String::from_utf8_lossy(&read)
                );
            }
            if start.starts_with(b"PRI") && *address == addresses[0] {
                // HTTP/1.1 refuses the preface's request line at once: closed sooner is fine.
                assert!(took < SHORT + Duration::from_secs(5), "{what}: closed after {took:?}");
            } else {
                closed_at(took, SHORT, &what);
            }
        }
        assert_eq!(backend.count(), 0);
    })
    .await;
}

/// #58: a silent connection that holds the listener's only slot gives it back at the head
/// timeout, and the client queued behind it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_frees_its_slot_at_the_head_timeout() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (runtime, addresses) = start(
            &[&backend],
            "[service.limits]\nhead_timeout = \"400ms\"\nmax_connections = 1\n",
        )
        .await;
        let started = Instant::now();
        let mut silent = RawConn::open(addresses[0]).await;
        // The silent one holds the slot (counted as open) before the next client arrives.
        while metric(
            &runtime.encode_metrics(),
            "stickyd_client_connections{service=\"web\"}",
        ) != Some(1.0)
        {
            tokio::task::yield_now().await;
        }
        let next = tokio::spawn(async move {
            let answer = RawConn::open(addresses[0]).await.get("/").await;
            (answer, started.elapsed())
        });
        let (_, took) = silent.until_closed(started).await;
        closed_at(took, SHORT, "the silent connection");
        let (answer, served_after) = next.await.unwrap();
        assert_eq!((answer.status, answer.body.as_slice()), (200, &b"b1"[..]));
        assert!(
            served_after >= SHORT.mul_f32(0.8),
            "served after {served_after:?}: no cap"
        );
        let queued = metric(
            &runtime.encode_metrics(),
            "stickyd_connections_queued_total{service=\"web\"}",
        );
        assert!(queued >= Some(1.0), "the wait was not counted: {queued:?}");
    })
    .await;
}

/// #58: without `h2c = true` a listener does not speak cleartext HTTP/2, even to a client
/// that sends the whole preface; with it, HTTP/2 with prior knowledge is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_is_served_only_where_the_listener_asks_for_it() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (_runtime, addresses) = start_text(&format!(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\", {{ address = \"127.0.0.1:0\", h2c = true }}]\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"{}\"\n",
            backend.addr
        ))
        .await;
        for (address, served) in [(addresses[0], false), (addresses[1], true)] {
            let stream = TcpStream::connect(address).await.unwrap();
            let handshake = hyper::client::conn::http2::handshake(
                TokioExecutor::new(),
                TokioIo::new(stream),
            )
            .await;
            let answered = async {
                let (mut sender, connection) = handshake.ok()?;
                tokio::spawn(connection);
                let request = Request::get(format!("http://{address}/"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.ok()?;
                let body = response.into_body().collect().await.ok()?.to_bytes();
                Some(body)
            }
            .await;
            match served {
                true => assert_eq!(answered.as_deref(), Some(&b"b1"[..]), "h2c listener"),
                false => assert_eq!(answered, None, "a default listener spoke HTTP/2"),
            }
        }
        assert_eq!(backend.count(), 1);
    })
    .await;
}

/// A self-signed certificate for `localhost` as a `[[service.tls]]` table, and its DER.
fn certificate() -> (String, rustls_pki_types::CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (
        common::temp_file("edge-localhost.crt"),
        common::temp_file("edge-localhost.key"),
    );
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let table = format!(
        "[[service.tls]]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    (table, generated.cert.der().clone())
}

/// #58: a TLS connection that stops in the handshake is closed at `handshake_timeout`, and
/// one that completes it and then says nothing at `head_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_that_stalls_is_closed_at_its_deadline() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (tls, der) = certificate();
        let (_runtime, addresses) = start(
            &[&backend],
            &format!(
                "{tls}[service.limits]\nhandshake_timeout = \"400ms\"\nhead_timeout = \"700ms\"\n"
            ),
        )
        .await;
        // Half a ClientHello: a record header announcing more than is sent.
        let mut half = RawConn::open(addresses[0]).await;
        half.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        let (_, took) = half.until_closed(Instant::now()).await;
        closed_at(took, SHORT, "half a ClientHello");
        // A whole handshake, then silence.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addresses[0]).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();
        let (_, took) = RawConn::over(stream).until_closed(Instant::now()).await;
        closed_at(took, Duration::from_millis(700), "TLS, then silence");
        assert_eq!(backend.count(), 0);
    })
    .await;
}

/// #58 and parking: an idle keep-alive connection is closed at `keepalive_timeout` (not at
/// `head_timeout`), a request that comes before it is served on the parked connection, and so
/// are pipelined requests sent with the previous response still on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_its_next_requests_and_closes_at_the_keepalive_timeout() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (_runtime, addresses) = start(
            &[&backend],
            "[service.limits]\nhead_timeout = \"5s\"\nkeepalive_timeout = \"600ms\"\n",
        )
        .await;
        let mut stream = RawConn::open(addresses[0]).await;
        assert_eq!(stream.get("/one").await.status, 200);
        // Idle for less than the keep-alive timeout: parked, then served again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stream.get("/two").await.status, 200);
        // Three pipelined requests in one write; the first response is still being written
        // when the others are read.
        stream
            .send(b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a\r\n\r\nGET /p3 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(stream.response().await.status, 200);
        }
        // A pipelined request cut in two writes, the second after the first was parked.
        stream.send(b"GET /split HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.send(b"st: a\r\n\r\n").await.unwrap();
        assert_eq!(stream.response().await.status, 200);
        let idle_since = Instant::now();
        let (_, took) = stream.until_closed(idle_since).await;
        closed_at(took, Duration::from_millis(600), "the idle keep-alive connection");
        let paths: Vec<String> = backend.seen().iter().map(|seen| seen.uri.to_string()).collect();
        assert_eq!(paths, ["/one", "/two", "/p1", "/p2", "/p3", "/split"]);
    })
    .await;
}

/// Parking and reload: a keep-alive connection idle between requests when the config is
/// reloaded stays open, and its next request is routed by the new config (to the backend the
/// reload put in place of the old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_survives_a_reload_and_follows_the_new_config() {
    within_timeout(async {
        let old = TestBackend::spawn("old").await;
        let new = TestBackend::spawn("new").await;
        let limits = "[service.limits]\nkeepalive_timeout = \"30s\"\n";
        let (services, addresses) = start(&[&old], limits).await;
        let mut stream = RawConn::open(addresses[0]).await;
        assert_eq!(stream.get("/before").await.backend(), "old");
        let reloaded = Config::parse(&config(&[&new], limits), "<test>").unwrap();
        services
            .reload(reloaded)
            .await
            .unwrap_or_else(|error| panic!("reload failed: {error}"));
        let after = stream.get("/after").await;
        assert_eq!((after.status, after.backend()), (200, "new"));
        assert_eq!(
            old.count(),
            1,
            "the old backend got a request after the reload"
        );
        assert_eq!(new.count(), 1);
    })
    .await;
}

/// Parking: a client that trickles the head of its second request, byte by byte, cannot
/// restart the head timer with each byte (slowloris on a kept-alive connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_second_head_is_cut_at_the_head_timeout() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (_runtime, addresses) = start(
            &[&backend],
            "[service.limits]\nhead_timeout = \"500ms\"\nkeepalive_timeout = \"10s\"\n",
        )
        .await;
        let mut stream = RawConn::open(addresses[0]).await;
        assert_eq!(stream.get("/").await.status, 200);
        let started = Instant::now();
        let (reader, mut writer) = stream.into_inner().into_split();
        let trickle = tokio::spawn(async move {
            for byte in b"GET /slow HTTP/1.1\r\nX-Slow: "
                .iter()
                .chain([b'x'; 200].iter())
            {
                if writer.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let (_, took) = RawConn::over(reader).until_closed(started).await;
        closed_at(took, Duration::from_millis(500), "the trickled head");
        trickle.abort();
        assert_eq!(backend.count(), 1);
    })
    .await;
}

/// #58: an HTTP/2 connection with no open stream is closed (GOAWAY) at `keepalive_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_at_the_keepalive_timeout() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (_runtime, addresses) = start_text(&format!(
            "[[service]]\nname = \"web\"\nlisten = [{{ address = \"127.0.0.1:0\", h2c = true }}]\n\
             [service.limits]\nkeepalive_timeout = \"500ms\"\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"{}\"\n",
            backend.addr
        ))
        .await;
        let stream = TcpStream::connect(addresses[0]).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = Request::get(format!("http://{}/", addresses[0]))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        let idle_since = Instant::now();
        let _ = connection.await.unwrap();
        closed_at(
            idle_since.elapsed(),
            Duration::from_millis(500),
            "the idle HTTP/2 connection",
        );
    })
    .await;
}

/// #59: a client that floods stream resets (Rapid Reset, CVE-2023-44487) gets GOAWAY within
/// the limits, while clients beside it are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_flood_ends_in_goaway_and_other_clients_are_served() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (_runtime, addresses) = start_text(&format!(
            "[[service]]\nname = \"web\"\nlisten = [{{ address = \"127.0.0.1:0\", h2c = true }}]\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"{}\"\n",
            backend.addr
        ))
        .await;
        let address = addresses[0];
        let stop = CancellationToken::new();
        let others = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut served = 0u32;
                while !stop.is_cancelled() {
                    let status = RawConn::open(address).await.get("/").await.status;
                    assert_eq!(status, 200, "a client beside the flood was refused");
                    served += 1;
                }
                served
            }
        });
        let started = Instant::now();
        let tcp = TcpStream::connect(address).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        const FLOOD: u32 = 100_000;
        let mut resets = 0u32;
        while resets < FLOOD {
            let Ok(ready) = client.ready().await else {
                break;
            };
            client = ready;
            let request = Request::get(format!("http://{address}/flood"))
                .body(())
                .unwrap();
            let Ok((_response, mut stream)) = client.send_request(request, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            resets += 1;
        }
        let ended = connection.await.unwrap();
        let took = started.elapsed();
        stop.cancel();
        let served = others.await.unwrap();
        let reached = backend
            .seen()
            .iter()
            .filter(|seen| seen.uri.path() == "/flood")
            .count();
        eprintln!(
            "reset flood: {resets} resets sent in {took:?}, connection ended with {ended:?}; \
             {reached} flood requests reached the backend; {served} other requests served"
        );
        assert!(resets < FLOOD, "the flood was never stopped");
        // stickyd sends GOAWAY (ENHANCE_YOUR_CALM) and closes; a client still writing its
        // flood may see the close (a broken pipe) before it reads the GOAWAY.
        let error = ended.expect_err("the flooding connection was not ended");
        assert!(
            error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(),
            "ended with {error:?}"
        );
        assert!(served > 0, "no client beside the flood was served");
    })
    .await;
}

/// #60: a WebSocket tunnel holds its connection's slot and counts as open, and is closed
/// after `tunnel_timeout` with no byte either way; traffic keeps it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_holds_a_connection_slot_and_closes_when_idle() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (runtime, addresses) = start(
            &[&backend],
            "[service.limits]\ntunnel_timeout = \"600ms\"\nmax_connections = 1\n",
        )
        .await;
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", addresses[0]))
            .await
            .unwrap();
        let metrics = runtime.encode_metrics();
        assert_eq!(
            metric(&metrics, "stickyd_open_tunnels{service=\"web\"}"),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            metric(&metrics, "stickyd_client_connections{service=\"web\"}"),
            Some(1.0)
        );
        // The tunnel is the listener's one connection: the next client waits for it.
        let started = Instant::now();
        let next = tokio::spawn(async move {
            let status = RawConn::open(addresses[0]).await.get("/").await.status;
            (status, started.elapsed())
        });
        // Traffic every 200 ms for over a second keeps the tunnel open past its idle time.
        for round in 0..6 {
            socket
                .send(Message::text(format!("m{round}")))
                .await
                .unwrap();
            let echo = socket.next().await.unwrap().unwrap();
            assert_eq!(echo.into_text().unwrap().as_str(), format!("b1: m{round}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let idle_since = Instant::now();
        match socket.next().await {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {}
            Some(Ok(other)) => panic!("unexpected {other:?} from an idle tunnel"),
        }
        closed_at(
            idle_since.elapsed(),
            Duration::from_millis(400),
            "the idle tunnel",
        );
        let (status, waited) = next.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            waited >= Duration::from_millis(1200),
            "served after {waited:?} beside the tunnel"
        );
        let metrics = runtime.encode_metrics();
        assert_eq!(
            metric(&metrics, "stickyd_open_tunnels{service=\"web\"}"),
            Some(0.0)
        );
    })
    .await;
}

/// #60: a graceful shutdown closes an open tunnel at the end of `shutdown_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_closes_open_tunnels_at_the_end_of_the_grace_period() {
    use futures_util::StreamExt;
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let text = format!("shutdown_grace = \"500ms\"\n{}", config(&[&backend], ""));
        let (runtime, addresses) = start_text(&text).await;
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", addresses[0]))
            .await
            .unwrap();
        let started = Instant::now();
        let stopped = tokio::spawn(async move { runtime.shutdown().await });
        while let Some(Ok(_)) = socket.next().await {}
        closed_at(
            started.elapsed(),
            Duration::from_millis(500),
            "the tunnel at shutdown",
        );
        stopped.await.unwrap();
    })
    .await;
}

/// #61: a client that stops sending a declared body gets 408 at `body_timeout` (never a 504
/// blaming the backend, even with a shorter `response_timeout`), for `Content-Length` and
/// chunked bodies, and the backend is not counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_and_is_not_held_against_the_backend() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (_runtime, addresses) = start(
            &[&backend],
            "response_timeout = \"100ms\"\n[service.health]\npassive_failures = 1\n\
             [service.limits]\nbody_timeout = \"500ms\"\n",
        )
        .await;
        let stalls: [&[u8]; 2] = [
            b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nx",
            b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ];
        for stall in stalls {
            let mut stream = RawConn::open(addresses[0]).await;
            stream.send(stall).await.unwrap();
            let started = Instant::now();
            let status = stream.response().await.status;
            let took = started.elapsed();
            let what = String::from_utf8_lossy(stall);
            assert_eq!(status, 408, "{what}");
            closed_at(took, Duration::from_millis(500), &what);
            let (_, closed) = stream.until_closed(Instant::now()).await;
            assert!(closed < Duration::from_secs(5), "{what}: left open");
            // Not ejected: with passive_failures = 1 a failure would leave no backend (503).
            let after = RawConn::open(addresses[0]).await.get("/after").await;
            assert_eq!((after.status, after.body.as_slice()), (200, &b"b1"[..]), "{what}");
        }
    })
    .await;
}

/// #71: the admin listener closes a silent or partial connection at its head timeout, and
/// serves at most `max_connections` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_closes_stalled_connections_and_caps_them() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (runtime, _) = start(&[&backend], "").await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let admin = stickyd::config::AdminConfig {
            bind: address,
            token: None,
            head_timeout: SHORT,
            max_connections: 1,
        };
        let (_settings, admin) = tokio::sync::watch::channel(admin);
        tokio::spawn(stickyd::admin::serve(
            listener,
            runtime,
            admin,
            CancellationToken::new(),
        ));
        for start in [&b""[..], b"GET /status HTTP/1.1\r\nHo"] {
            let started = Instant::now();
            let mut stream = RawConn::open(address).await;
            stream.send(start).await.unwrap();
            let (_, took) = stream.until_closed(started).await;
            closed_at(
                took,
                SHORT,
                &format!("admin after {:?}", String::from_utf8_lossy(start)),
            );
        }
        // One connection at a time: the second is answered once the first is closed.
        let started = Instant::now();
        let _silent = TcpStream::connect(address).await.unwrap();
        let status = RawConn::open(address).await.get("/status").await.status;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() >= SHORT.mul_f32(0.8),
            "no admin connection cap"
        );
    })
    .await;
}
